"""Device credentials: the secret a device proves itself with, to gRPC and to the broker.

A device gets one at enrollment (and could get more, to rotate); only its sha256 is
stored (see :mod:`._secret`). The device presents ``(device_id, secret)``; gRPC sends the
secret as ``authorization: Bearer <secret>`` and MQTT as the password for the username
``device_id``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import Forbidden, Unauthorized
from . import devices
from ._secret import hash_secret, new_secret, secret_matches

_REFUSED = "unknown device or wrong credential"


def issue_credential(session: Session, device_id: str, *, now: datetime) -> str:
    """A new secret for ``device_id``; returned once, stored hashed."""
    secret = new_secret()
    session.add(
        orm.DeviceCredential(device_id=device_id, secret_hash=hash_secret(secret), created_at=now)
    )
    session.flush()
    return secret


def authenticate_device(session: Session, device_id: str, secret: str) -> devices.Device:
    """The device whose credential ``secret`` is; refuses unknown, wrong and revoked.

    Unknown device and wrong secret are the same :class:`Unauthorized`, so the answer
    does not tell a caller which device ids exist. A right secret for a revoked device or
    credential is :class:`Forbidden` with when it was revoked.
    """
    row = devices.device_row_or_none(session, device_id) if device_id else None
    if row is None or not secret:
        raise Unauthorized(_REFUSED)
    credentials = session.scalars(
        select(orm.DeviceCredential).where(orm.DeviceCredential.device_id == device_id)
    ).all()
    # Check every credential, so the time taken does not say which one matched.
    matches = [c for c in credentials if secret_matches(secret, c.secret_hash)]
    if not matches:
        raise Unauthorized(_REFUSED)
    if row.revoked_at is not None:
        raise Forbidden(f"device {device_id} was revoked at {row.revoked_at.isoformat()}")
    credential = matches[0]
    if credential.revoked_at is not None:
        raise Forbidden(
            f"this credential of device {device_id} was revoked at "
            f"{credential.revoked_at.isoformat()}"
        )
    return devices.view(row)
