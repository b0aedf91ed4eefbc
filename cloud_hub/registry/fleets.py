"""Fleets: named groups of devices that share topics, enrollment tokens and rollouts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import Conflict, NotFound
from . import _checks
from ._view import View


@dataclass(frozen=True)
class Fleet(View):
    id: int
    name: str
    keep_inputs: bool
    created_at: datetime
    devices: int = 0  # enrolled devices, revoked ones included


def create_fleet(session: Session, name: str, *, now: datetime, keep_inputs: bool = True) -> Fleet:
    _checks.name("fleet name", name)
    if session.scalar(select(orm.Fleet.id).where(orm.Fleet.name == name)) is not None:
        raise Conflict(f"fleet {name!r} already exists")
    row = orm.Fleet(name=name, keep_inputs=keep_inputs, created_at=now)
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # created by someone else since the check above
        raise Conflict(f"fleet {name!r} already exists") from exc
    return _view(row, 0)


def fleet_row(session: Session, name: str) -> orm.Fleet:
    row = session.scalar(select(orm.Fleet).where(orm.Fleet.name == name))
    if row is None:
        raise NotFound(f"fleet {name!r} does not exist")
    return row


def get_fleet(session: Session, name: str) -> Fleet:
    row = fleet_row(session, name)
    count = session.scalar(
        select(func.count()).select_from(orm.Device).where(orm.Device.fleet_id == row.id)
    )
    return _view(row, count or 0)


def update_fleet(session: Session, name: str, *, keep_inputs: bool | None = None) -> Fleet:
    """Change what is given (None: unchanged); the fleet as it is afterwards."""
    row = fleet_row(session, name)
    if keep_inputs is not None:
        row.keep_inputs = keep_inputs
        session.flush()
    return get_fleet(session, name)


def list_fleets(session: Session) -> list[Fleet]:
    counts = (
        select(orm.Device.fleet_id, func.count().label("n"))
        .group_by(orm.Device.fleet_id)
        .subquery()
    )
    rows = session.execute(
        select(orm.Fleet, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.fleet_id == orm.Fleet.id)
        .order_by(orm.Fleet.name)
    )
    return [_view(fleet, count) for fleet, count in rows]


def _view(row: orm.Fleet, devices: int) -> Fleet:
    return Fleet(
        id=row.id,
        name=row.name,
        keep_inputs=row.keep_inputs,
        created_at=row.created_at,
        devices=int(devices),
    )
