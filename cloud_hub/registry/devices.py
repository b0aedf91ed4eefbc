"""Devices: what enrolled, what it runs, when it was last seen, whether it is cut off.

Devices are created by enrollment (:mod:`.enrollment`) and never deleted: revoking one
keeps its history and refuses its credentials from then on.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db import models as orm
from ..db.models import DEVICE_STATUSES
from ..errors import InvalidRequest, NotFound
from . import _checks
from ._view import View
from .fleets import fleet_row

ID_PREFIX = "dev-"
MAX_HARDWARE_BYTES = 16 * 1024
MAX_PUBLIC_KEY_CHARS = 8 * 1024


@dataclass(frozen=True)
class Device(View):
    id: str
    fleet: str
    hostname: str
    profile: str | None
    agent_version: str | None
    status: str  # online, offline or unknown (never heard from since enrolling)
    last_seen_at: datetime | None
    boot_id: str | None
    model_name: str | None
    model_version: str | None
    revoked_at: datetime | None
    created_at: datetime
    hardware: dict[str, Any] = field(default_factory=dict)
    public_key_pem: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def new_device_id() -> str:
    return ID_PREFIX + secrets.token_hex(6)


def create_device(
    session: Session,
    fleet: orm.Fleet,
    *,
    hostname: str,
    profile: str | None,
    hardware: Mapping[str, Any] | None,
    agent_version: str | None,
    public_key_pem: str | None,
    now: datetime,
) -> orm.Device:
    """Add a device to ``fleet``; the caller has checked the right to (an enrollment token)."""
    row = orm.Device(
        id=new_device_id(),
        fleet=fleet,
        fleet_id=fleet.id,
        hostname=_checks.text("hostname", hostname, 255, required=True),
        profile=_checks.text("profile", profile, 64),
        hardware=_checks.json_object("hardware", hardware, MAX_HARDWARE_BYTES),
        agent_version=_checks.text("agent_version", agent_version, 64),
        public_key_pem=_public_key(public_key_pem),
        status="unknown",
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def device_row_or_none(session: Session, device_id: str) -> orm.Device | None:
    return session.get(orm.Device, device_id)


def device_row(session: Session, device_id: str) -> orm.Device:
    row = session.get(orm.Device, device_id)
    if row is None:
        raise NotFound(f"device {device_id!r} does not exist")
    return row


def get_device(session: Session, device_id: str) -> Device:
    return view(device_row(session, device_id))


def list_devices(
    session: Session,
    *,
    fleet: str | None = None,
    profile: str | None = None,
    status: str | None = None,
    model_version: str | None = None,
    revoked: bool | None = None,
) -> list[Device]:
    """Devices matching every filter, by fleet then enrollment time. Unknown fleet: NotFound."""
    query = select(orm.Device)
    if fleet is not None:
        query = query.where(orm.Device.fleet_id == fleet_row(session, fleet).id)
    if profile is not None:
        query = query.where(orm.Device.profile == profile)
    if status is not None:
        query = query.where(orm.Device.status == check_status(status))
    if model_version is not None:
        query = query.where(orm.Device.model_version == model_version)
    if revoked is not None:
        revoked_at = orm.Device.revoked_at
        query = query.where(revoked_at.is_not(None) if revoked else revoked_at.is_(None))
    query = query.order_by(orm.Device.fleet_id, orm.Device.created_at, orm.Device.id)
    return [view(row) for row in session.scalars(query)]


def revoke_device(session: Session, device_id: str, *, now: datetime) -> Device:
    """Cut a device off: it and every credential it holds are refused from now on.

    Revoking a revoked device changes nothing and returns it as it is.
    """
    row = device_row(session, device_id)
    if row.revoked_at is None:
        row.revoked_at = now
        row.status = "offline"
        session.execute(
            update(orm.DeviceCredential)
            .where(orm.DeviceCredential.device_id == device_id)
            .where(orm.DeviceCredential.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        session.flush()
    return view(row)


def update_device_state(
    session: Session,
    device_id: str,
    *,
    status: str | None = None,
    seen_at: datetime | None = None,
    boot_id: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
) -> bool:
    """Record what a device reported; arguments left None are not changed.

    ``seen_at`` only moves ``last_seen_at`` forward, so a message replayed late does not
    turn the clock back. Returns False when the device does not exist (ingest drops such
    messages rather than failing).
    """
    values: dict[str, Any] = {}
    if status is not None:
        values["status"] = check_status(status)
    for key, value in (
        ("boot_id", boot_id),
        ("model_name", model_name),
        ("model_version", model_version),
    ):
        if value is not None:
            values[key] = value
    row = session.get(orm.Device, device_id)
    if row is None:
        return False
    for key, value in values.items():
        setattr(row, key, value)
    if seen_at is not None and (row.last_seen_at is None or seen_at > row.last_seen_at):
        row.last_seen_at = seen_at
    session.flush()
    return True


def check_status(status: str) -> str:
    if status not in DEVICE_STATUSES:
        raise InvalidRequest(f"device status {status!r} is not one of {', '.join(DEVICE_STATUSES)}")
    return status


def view(row: orm.Device) -> Device:
    return Device(
        id=row.id,
        fleet=row.fleet.name,
        hostname=row.hostname,
        profile=row.profile,
        agent_version=row.agent_version,
        status=row.status,
        last_seen_at=row.last_seen_at,
        boot_id=row.boot_id,
        model_name=row.model_name,
        model_version=row.model_version,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
        hardware=dict(row.hardware or {}),
        public_key_pem=row.public_key_pem,
    )


def _public_key(pem: str | None) -> str | None:
    checked = _checks.text("public_key_pem", pem, MAX_PUBLIC_KEY_CHARS)
    if checked is not None and not checked.lstrip().startswith("-----BEGIN "):
        raise InvalidRequest("public_key_pem is not a PEM block (no '-----BEGIN ' line)")
    return checked
