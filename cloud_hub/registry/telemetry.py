"""Telemetry as the registry reads it: the latest raw messages, per-minute series, events.

The ingest (:mod:`cloud_hub.ingest`) writes ``telemetry_raw`` (deduplicated by the unique
``(device_id, boot_id, seq)``), folds each message into ``telemetry_rollups`` and appends
``device_events``; this module only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import InvalidRequest
from ._view import View
from .devices import device_row

MAX_TAIL = 10_000
MAX_SERIES_MINUTES = 31 * 24 * 60


@dataclass(frozen=True)
class TelemetryRecord(View):
    """One telemetry message as it arrived (``payload`` is the whole JSON message)."""

    id: int
    device_id: str
    boot_id: str
    seq: int
    ts: datetime
    received_at: datetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class Rollup(View):
    """One device-minute; see :class:`cloud_hub.db.models.TelemetryRollup` for the rules."""

    device_id: str
    minute: datetime
    count: int
    requests: int
    errors: int
    offloads: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    confidence_mean: float | None
    cpu_pct_max: float | None
    mem_pct_max: float | None
    temp_c_max: float | None


@dataclass(frozen=True)
class DeviceEvent(View):
    id: int
    device_id: str
    ts: datetime
    kind: str
    body: dict[str, Any]


def tail(
    session: Session,
    device_id: str,
    *,
    limit: int = 20,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[TelemetryRecord]:
    """The device's last ``limit`` messages by arrival, oldest first (like ``tail``).

    ``since`` and ``until`` (optional) keep the messages the hub received in
    ``since <= received_at < until``.
    """
    device_row(session, device_id)  # NotFound for an unknown device
    _check_limit(limit)
    query = select(orm.TelemetryRaw).where(orm.TelemetryRaw.device_id == device_id)
    if since is not None:
        query = query.where(orm.TelemetryRaw.received_at >= since)
    if until is not None:
        query = query.where(orm.TelemetryRaw.received_at < until)
    rows = session.scalars(
        query.order_by(orm.TelemetryRaw.received_at.desc(), orm.TelemetryRaw.id.desc()).limit(limit)
    ).all()
    return [_record(row) for row in reversed(rows)]


def series(session: Session, device_id: str, *, since: datetime, until: datetime) -> list[Rollup]:
    """The device's per-minute rollups with ``since <= minute < until``, in time order."""
    device_row(session, device_id)
    if until <= since:
        raise InvalidRequest(
            f"until ({until.isoformat()}) must be after since ({since.isoformat()})"
        )
    if (until - since).total_seconds() > MAX_SERIES_MINUTES * 60:
        raise InvalidRequest(f"a series spans at most {MAX_SERIES_MINUTES // 1440} days")
    rows = session.scalars(
        select(orm.TelemetryRollup)
        .where(orm.TelemetryRollup.device_id == device_id)
        .where(orm.TelemetryRollup.minute >= since, orm.TelemetryRollup.minute < until)
        .order_by(orm.TelemetryRollup.minute)
    )
    return [_rollup(row) for row in rows]


def events(session: Session, device_id: str, *, limit: int = 50) -> list[DeviceEvent]:
    """The device's last ``limit`` events, oldest first."""
    device_row(session, device_id)
    _check_limit(limit)
    rows = session.scalars(
        select(orm.DeviceEvent)
        .where(orm.DeviceEvent.device_id == device_id)
        .order_by(orm.DeviceEvent.ts.desc(), orm.DeviceEvent.id.desc())
        .limit(limit)
    ).all()
    return [
        DeviceEvent(id=r.id, device_id=r.device_id, ts=r.ts, kind=r.kind, body=dict(r.body))
        for r in reversed(rows)
    ]


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_TAIL:
        raise InvalidRequest(f"limit {limit!r} must be from 1 to {MAX_TAIL}")


def _record(row: orm.TelemetryRaw) -> TelemetryRecord:
    return TelemetryRecord(
        id=row.id,
        device_id=row.device_id,
        boot_id=row.boot_id,
        seq=row.seq,
        ts=row.ts,
        received_at=row.received_at,
        payload=dict(row.payload),
    )


def _rollup(row: orm.TelemetryRollup) -> Rollup:
    mean = row.confidence_sum / row.requests if row.requests else None
    return Rollup(
        device_id=row.device_id,
        minute=row.minute,
        count=row.count,
        requests=row.requests,
        errors=row.errors,
        offloads=row.offloads,
        latency_p50_ms=row.latency_p50_ms,
        latency_p95_ms=row.latency_p95_ms,
        latency_p99_ms=row.latency_p99_ms,
        confidence_mean=mean,
        cpu_pct_max=row.cpu_pct_max,
        mem_pct_max=row.mem_pct_max,
        temp_c_max=row.temp_c_max,
    )
