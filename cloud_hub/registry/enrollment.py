"""Enrollment: a device trades an enrollment token for its own identity and credential.

One transaction: count a use of the token, create the device in the token's fleet, issue
its credential. If anything fails the transaction rolls back and the token keeps its use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from . import devices
from .credentials import issue_credential
from .tokens import claim_enrollment_token


@dataclass(frozen=True)
class Enrollment:
    """What an enrolled device gets back: ``secret`` is shown this once, stored hashed."""

    device: devices.Device
    secret: str
    token_id: str


def redeem_enrollment_token(
    session: Session,
    token: str,
    *,
    public_key_pem: str | None,
    hostname: str,
    profile: str | None,
    hardware: Mapping[str, Any] | None,
    agent_version: str | None,
    now: datetime,
) -> Enrollment:
    token_row = claim_enrollment_token(session, token, now=now)
    device = devices.create_device(
        session,
        token_row.fleet,
        hostname=hostname,
        profile=profile,
        hardware=hardware,
        agent_version=agent_version,
        public_key_pem=public_key_pem,
        now=now,
    )
    secret = issue_credential(session, device.id, now=now)
    return Enrollment(device=devices.view(device), secret=secret, token_id=token_row.id)
