"""The writer's SQL: which fleet a device is in, one batch of rows, per-fleet bounds.

Eviction goes by ``id`` (arrival order), oldest first, until the fleet holds at most
``max_count`` rows and at most ``max_bytes`` of stored inputs. It runs in the batch's
transaction, so a fleet is over its bounds only between a batch's insert and its commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from ..db import models as orm


@dataclass(frozen=True)
class FleetOf:
    fleet_id: int
    keep_inputs: bool


def fleets_of(session: Session, device_ids: Iterable[str]) -> dict[str, FleetOf]:
    """The fleet of each known device in ``device_ids``; unknown ones are left out."""
    ids = sorted(set(device_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(orm.Device.id, orm.Fleet.id, orm.Fleet.keep_inputs)
        .join(orm.Fleet, orm.Fleet.id == orm.Device.fleet_id)
        .where(orm.Device.id.in_(ids))
    )
    return {device: FleetOf(fleet, bool(keep)) for device, fleet, keep in rows}


def keep_inputs(session: Session, fleet_ids: Iterable[int]) -> dict[int, bool]:
    """Each fleet's ``keep_inputs`` as stored now (a fleet not found is left out)."""
    ids = sorted(set(fleet_ids))
    if not ids:
        return {}
    rows = session.execute(select(orm.Fleet.id, orm.Fleet.keep_inputs).where(orm.Fleet.id.in_(ids)))
    return {fleet: bool(keep) for fleet, keep in rows}


def insert_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(orm.HardExample), list(rows))


def evict(session: Session, fleet_id: int, *, max_count: int, max_bytes: int) -> int:
    """Delete the fleet's oldest rows until both bounds hold; how many went."""
    table = orm.HardExample
    in_fleet = table.fleet_id == fleet_id
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(table.input_bytes), 0)).where(in_fleet)
    ).one()
    if count <= max_count and total <= max_bytes:
        return 0
    cutoff: int | None = None  # delete ids <= cutoff
    if count > max_count:
        cutoff = session.scalar(
            select(table.id).where(in_fleet).order_by(table.id.desc()).offset(max_count).limit(1)
        )
    if total > max_bytes:
        newest_first = (
            select(
                table.id,
                func.sum(table.input_bytes)
                .over(order_by=table.id.desc(), rows=(None, 0))
                .label("running"),
            )
            .where(in_fleet)
            .subquery()
        )
        by_bytes = session.scalar(
            select(func.max(newest_first.c.id)).where(newest_first.c.running > max_bytes)
        )
        if by_bytes is not None:
            cutoff = by_bytes if cutoff is None else max(cutoff, by_bytes)
    if cutoff is None:
        return 0
    result = session.execute(delete(table).where(in_fleet, table.id <= cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
