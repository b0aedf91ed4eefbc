"""The controller's I/O: read a rollout for :func:`~.controller.decide`, write what it
decided, and send the pending "check in now" commands.

Each round of one rollout is one transaction with the rollout's row locked (``SELECT ...
FOR UPDATE`` on PostgreSQL; SQLite serialises writers), so hub processes sharing a
database never apply a step twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import Database
from ..db import models as orm
from ..registry import Registry, Rollup
from .controller import (
    HALTED,
    RUNNING,
    Complete,
    Decision,
    DeviceStatus,
    Halt,
    PassWave,
    RolloutState,
    StartWave,
    WaveState,
    current_wave,
)
from .gates import parse_gates
from .notify import CheckInNotifier
from .store import MAX_REASON_CHARS, rollout_row

_LOG = logging.getLogger(__name__)

Decide = Callable[
    [RolloutState, datetime, Mapping[str, DeviceStatus], Mapping[str, Sequence[Rollup]]],
    Decision,
]
MAX_NOTIFY_PER_ROUND = 1000


def running_rollout_ids(db: Database) -> list[str]:
    with db.transaction() as session:
        query = select(orm.Rollout.id).where(orm.Rollout.state == RUNNING)
        return list(session.scalars(query.order_by(orm.Rollout.created_at)))


def advance(registry: Registry, rollout_id: str, decide: Decide) -> Decision:
    """One round of one rollout: read, decide, apply, in one transaction."""
    with registry.db.transaction() as session:
        row = rollout_row(session, rollout_id, lock=True)
        if row.state != RUNNING:
            return Decision(waiting=f"the rollout is {row.state}")
        now = registry.now()
        waves = _waves(session, rollout_id)
        state = RolloutState(
            id=row.id,
            state=row.state,
            gates=parse_gates(row.gates),
            soak=timedelta(seconds=row.soak_seconds),
            waves=tuple(
                WaveState(w.wave_index, w.name, tuple(w.device_ids), w.started_at, w.passed_at)
                for w in waves
            ),
            failure_tolerance=row.failure_tolerance,
        )
        statuses: dict[str, DeviceStatus] = {}
        rollups: dict[str, list[Rollup]] = {}
        wave = current_wave(state.waves)
        if wave is not None and wave.started_at is not None:
            for assignment in _assignments(session, rollout_id, wave.index):
                statuses[assignment.device_id] = DeviceStatus(
                    assignment.device_id,
                    assignment.phase,
                    assignment.installed_at,
                    assignment.reason,
                )
            since = {s.device_id: s.installed_at for s in statuses.values() if s.installed_at}
            rollups = _rollups(session, since, until=now + timedelta(minutes=1))
        decision = decide(state, now, statuses, rollups)
        _apply(session, row, waves, decision, now)
        return decision


def send_notifications(registry: Registry, notifier: CheckInNotifier) -> int:
    """Send the pending "check in now" commands; returns how many went out."""
    with registry.db.transaction() as session:
        pending = session.execute(
            select(orm.DeviceAssignment, orm.Fleet.name)
            .join(orm.Device, orm.Device.id == orm.DeviceAssignment.device_id)
            .join(orm.Fleet, orm.Fleet.id == orm.Device.fleet_id)
            .where(orm.DeviceAssignment.notify.is_(True))
            .order_by(orm.DeviceAssignment.id)
            .limit(MAX_NOTIFY_PER_ROUND)
        ).all()
        sent = 0
        for assignment, fleet in pending:
            if not notifier.send(fleet, assignment.device_id):
                break  # not connected: the rest wait for the next round
            assignment.notify = False
            sent += 1
        return sent


def _apply(
    session: Session,
    row: orm.Rollout,
    waves: list[orm.RolloutWave],
    decision: Decision,
    now: datetime,
) -> None:
    for action in decision.actions:
        if isinstance(action, StartWave):
            waves[action.index].started_at = now
            for assignment in _assignments(session, row.id, action.index):
                assignment.desired, assignment.notify, assignment.updated_at = "target", True, now
        elif isinstance(action, PassWave):
            waves[action.index].passed_at = now
        elif isinstance(action, Halt):
            row.state, row.finished_at = HALTED, now
            row.reason = action.reason[:MAX_REASON_CHARS]
            waves[action.index].rolled_back_at = now
            for assignment in _assignments(session, row.id, action.index):
                assignment.desired, assignment.notify, assignment.updated_at = "previous", True, now
                assignment.reason = f"rolled back by the hub: {action.reason}"[:MAX_REASON_CHARS]
        elif isinstance(action, Complete):
            row.state, row.finished_at = "completed", now
        row.updated_at = now
    session.flush()


def _waves(session: Session, rollout_id: str) -> list[orm.RolloutWave]:
    return list(
        session.scalars(
            select(orm.RolloutWave)
            .where(orm.RolloutWave.rollout_id == rollout_id)
            .order_by(orm.RolloutWave.wave_index)
        )
    )


def _assignments(session: Session, rollout_id: str, wave: int) -> list[orm.DeviceAssignment]:
    return list(
        session.scalars(
            select(orm.DeviceAssignment)
            .where(
                orm.DeviceAssignment.rollout_id == rollout_id,
                orm.DeviceAssignment.wave_index == wave,
            )
            .order_by(orm.DeviceAssignment.device_id)
        )
    )


def _rollups(
    session: Session, since: Mapping[str, datetime], *, until: datetime
) -> dict[str, list[Rollup]]:
    """Each device's rollups from the minute it installed on, in time order."""
    if not since:
        return {}
    first = min(since.values()).replace(second=0, microsecond=0)
    table = orm.TelemetryRollup
    rows = session.scalars(
        select(table)
        .where(table.device_id.in_(list(since)), table.minute >= first, table.minute < until)
        .order_by(table.device_id, table.minute)
    )
    found: dict[str, list[Rollup]] = {}
    for r in rows:
        if r.minute < since[r.device_id].replace(second=0, microsecond=0):
            continue
        found.setdefault(r.device_id, []).append(
            Rollup(
                device_id=r.device_id,
                minute=r.minute,
                count=r.count,
                requests=r.requests,
                errors=r.errors,
                offloads=r.offloads,
                latency_p50_ms=r.latency_p50_ms,
                latency_p95_ms=r.latency_p95_ms,
                latency_p99_ms=r.latency_p99_ms,
                confidence_mean=r.confidence_sum / r.requests if r.requests else None,
                cpu_pct_max=r.cpu_pct_max,
                mem_pct_max=r.mem_pct_max,
                temp_c_max=r.temp_c_max,
            )
        )
    return found
