"""Rollouts in the database: create one from a plan, read them, pause, resume and abort.

Functions take the caller's session (``registry.db.transaction()``) and return frozen
views; :class:`cloud_hub.rollouts.Rollouts` wraps them one transaction per call. Rules:

- a rollout names one registered model version in one format and devices of one fleet
  that are not revoked; a device can be in one unfinished (running or paused) rollout
  at a time;
- each device's assignment remembers the model it ran when the rollout was made (what the
  devices table says it last reported), so a halted wave can go back to it;
- pause and resume move between running and paused; abort ends a running or paused
  rollout; halted, aborted and completed rollouts are final.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import Conflict, InvalidRequest, NotFound
from ..registry import devices, fleets, models
from ..registry._view import View
from .controller import ABORTED, PAUSED, RUNNING
from .gates import parse_gates
from .plan import plan_steps

ID_PREFIX = "ro-"
UNFINISHED = (RUNNING, PAUSED)
MAX_SOAK = timedelta(days=30)
MAX_PROBATION = timedelta(days=7)
MAX_REASON_CHARS = 2000


@dataclass(frozen=True)
class Wave(View):
    index: int
    name: str
    device_ids: list[str]
    started_at: datetime | None
    passed_at: datetime | None
    rolled_back_at: datetime | None


@dataclass(frozen=True)
class Assignment(View):
    device_id: str
    wave_index: int
    desired: str  # none (not yet), target, previous (rolled back)
    phase: str
    percent: int
    reason: str | None
    previous_model: str | None
    previous_version: str | None
    reported_version: str | None
    installed_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class Rollout(View):
    id: str
    fleet: str
    model: str
    version: str
    format: str
    filename: str
    state: str
    plan: dict[str, Any]
    gates: list[str]
    soak_seconds: int
    probation_seconds: int
    failure_tolerance: float
    reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    waves: list[Wave]
    devices: list[Assignment]

    @property
    def current_wave(self) -> Wave | None:
        return next((w for w in self.waves if w.passed_at is None), None)

    def phases(self) -> dict[str, int]:
        """How many devices are in each phase."""
        counts: dict[str, int] = {}
        for device in self.devices:
            counts[device.phase] = counts.get(device.phase, 0) + 1
        return counts


def resolve_format(session: Session, name: str, version: str, format: str | None) -> str:
    """``format``, or the one format ``name`` ``version`` is registered in."""
    if format is not None:
        models.get_model_version(session, name, version, format)  # NotFound names it
        return format
    found = sorted(
        v.format
        for v in models.list_model_versions(session, name=name)  # NotFound: unknown model
        if v.version == version
    )
    if not found:
        raise NotFound(f"model {name} has no version {version} registered")
    if len(found) > 1:
        raise InvalidRequest(
            f"model {name} {version} is registered in {len(found)} formats "
            f"({', '.join(found)}): choose one with --format"
        )
    return found[0]


def create_rollout(
    session: Session,
    *,
    fleet: str,
    model: str,
    version: str,
    format: str | None,
    device_ids: Sequence[str] | None,
    canary_pct: float,
    waves_pct: Sequence[float],
    soak: timedelta,
    probation: timedelta,
    gates: Sequence[str],
    failure_tolerance: float,
    now: datetime,
) -> Rollout:
    """Check everything, plan the steps and store the rollout, running; its first step
    starts at the controller's next round."""
    parsed = parse_gates(gates)
    _check_duration("--soak", soak, timedelta(0), MAX_SOAK)
    _check_duration("--probation", probation, timedelta(0), MAX_PROBATION)
    if not 0 <= failure_tolerance < 1:
        raise InvalidRequest(f"failure tolerance {failure_tolerance:g} must be from 0 to below 1")
    chosen = resolve_format(session, model, version, format)
    version_row = _version_row(session, model, version, chosen)
    fleet_row = fleets.fleet_row(session, fleet)
    targets = _targets(session, fleet_row, device_ids)
    busy = _unfinished_rollouts_of(session, [d.id for d in targets])
    if busy:
        shown = ", ".join(f"{device} ({rollout})" for device, rollout in sorted(busy.items()))
        raise Conflict(
            f"devices already in an unfinished rollout: {shown}; pause or abort it first"
        )
    steps = plan_steps([d.id for d in targets], canary_pct=canary_pct, waves_pct=waves_pct)
    row = orm.Rollout(
        id=ID_PREFIX + secrets.token_hex(5),
        fleet_id=fleet_row.id,
        model_version_id=version_row.id,
        state=RUNNING,
        plan={
            "canary_pct": canary_pct,
            "waves_pct": list(waves_pct),
            "devices": sorted(device_ids) if device_ids else None,
        },
        gates=[str(g) for g in parsed],
        soak_seconds=int(soak.total_seconds()),
        probation_seconds=int(probation.total_seconds()),
        failure_tolerance=failure_tolerance,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()  # the rollout's row first: waves and assignments refer to it
    by_id = {d.id: d for d in targets}
    for index, step in enumerate(steps):
        session.add(
            orm.RolloutWave(
                rollout_id=row.id,
                wave_index=index,
                name=step.name,
                device_ids=list(step.device_ids),
            )
        )
        for device_id in step.device_ids:
            device = by_id[device_id]
            session.add(
                orm.DeviceAssignment(
                    rollout_id=row.id,
                    device_id=device_id,
                    wave_index=index,
                    desired="none",
                    target_version=version,
                    previous_model=device.model_name,
                    previous_version=device.model_version,
                    phase="pending",
                    percent=0,
                    notify=False,
                    created_at=now,
                    updated_at=now,
                )
            )
    session.flush()
    return get_rollout(session, row.id)


def rollout_row(session: Session, rollout_id: str, *, lock: bool = False) -> orm.Rollout:
    query = select(orm.Rollout).where(orm.Rollout.id == rollout_id)
    row = session.scalar(query.with_for_update(of=orm.Rollout) if lock else query)
    if row is None:
        raise NotFound(f"rollout {rollout_id!r} does not exist")
    return row


def get_rollout(session: Session, rollout_id: str) -> Rollout:
    return view(session, rollout_row(session, rollout_id))


def list_rollouts(
    session: Session, *, fleet: str | None = None, state: str | None = None
) -> list[Rollout]:
    """Rollouts, newest first."""
    query = select(orm.Rollout).order_by(orm.Rollout.created_at.desc(), orm.Rollout.id)
    if fleet is not None:
        query = query.where(orm.Rollout.fleet_id == fleets.fleet_row(session, fleet).id)
    if state is not None:
        if state not in orm.ROLLOUT_STATES:
            raise InvalidRequest(
                f"rollout state {state!r} is not one of {', '.join(orm.ROLLOUT_STATES)}"
            )
        query = query.where(orm.Rollout.state == state)
    return [view(session, row) for row in session.scalars(query)]


def pause(session: Session, rollout_id: str, *, now: datetime) -> Rollout:
    """Running -> paused: no new assignments; devices mid-update are told to drop it."""
    row = rollout_row(session, rollout_id, lock=True)
    _require(row, (RUNNING,), "pause")
    row.state, row.updated_at = PAUSED, now
    session.flush()
    return view(session, row)


def resume(session: Session, rollout_id: str, *, now: datetime) -> Rollout:
    """Paused -> running; devices of started waves that have not installed check in again."""
    row = rollout_row(session, rollout_id, lock=True)
    _require(row, (PAUSED,), "resume")
    row.state, row.updated_at = RUNNING, now
    for assignment in _assignments(session, row.id):
        if assignment.desired == "target" and assignment.phase != "installed":
            assignment.notify, assignment.updated_at = True, now
    session.flush()
    return view(session, row)


def abort(session: Session, rollout_id: str, *, now: datetime, reason: str | None) -> Rollout:
    """Running or paused -> aborted (final). Devices that installed keep the new model."""
    row = rollout_row(session, rollout_id, lock=True)
    _require(row, UNFINISHED, "abort")
    row.state, row.updated_at, row.finished_at = ABORTED, now, now
    row.reason = (reason or "aborted by the operator")[:MAX_REASON_CHARS]
    session.flush()
    return view(session, row)


def view(session: Session, row: orm.Rollout) -> Rollout:
    waves = session.scalars(
        select(orm.RolloutWave)
        .where(orm.RolloutWave.rollout_id == row.id)
        .order_by(orm.RolloutWave.wave_index)
    )
    return Rollout(
        id=row.id,
        fleet=row.fleet.name,
        model=row.model_version.model.name,
        version=row.model_version.version,
        format=row.model_version.format,
        filename=row.model_version.filename,
        state=row.state,
        plan=dict(row.plan),
        gates=list(row.gates),
        soak_seconds=row.soak_seconds,
        probation_seconds=row.probation_seconds,
        failure_tolerance=row.failure_tolerance,
        reason=row.reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        waves=[
            Wave(
                index=w.wave_index,
                name=w.name,
                device_ids=list(w.device_ids),
                started_at=w.started_at,
                passed_at=w.passed_at,
                rolled_back_at=w.rolled_back_at,
            )
            for w in waves
        ],
        devices=[assignment_view(a) for a in _assignments(session, row.id)],
    )


def assignment_view(row: orm.DeviceAssignment) -> Assignment:
    return Assignment(
        device_id=row.device_id,
        wave_index=row.wave_index,
        desired=row.desired,
        phase=row.phase,
        percent=row.percent,
        reason=row.reason,
        previous_model=row.previous_model,
        previous_version=row.previous_version,
        reported_version=row.reported_version,
        installed_at=row.installed_at,
        updated_at=row.updated_at,
    )


def _assignments(session: Session, rollout_id: str) -> list[orm.DeviceAssignment]:
    return list(
        session.scalars(
            select(orm.DeviceAssignment)
            .where(orm.DeviceAssignment.rollout_id == rollout_id)
            .order_by(orm.DeviceAssignment.wave_index, orm.DeviceAssignment.device_id)
        )
    )


def _version_row(session: Session, name: str, version: str, format: str) -> orm.ModelVersion:
    row = session.scalar(
        select(orm.ModelVersion)
        .join(orm.ModelVersion.model)
        .where(
            orm.Model.name == name,
            orm.ModelVersion.version == version,
            orm.ModelVersion.format == format,
        )
    )
    if row is None:
        raise NotFound(f"model {name} version {version} ({format}) does not exist")
    return row


def _targets(
    session: Session, fleet: orm.Fleet, device_ids: Sequence[str] | None
) -> list[orm.Device]:
    if not device_ids:
        rows = list(
            session.scalars(
                select(orm.Device)
                .where(orm.Device.fleet_id == fleet.id, orm.Device.revoked_at.is_(None))
                .order_by(orm.Device.id)
            )
        )
        if not rows:
            raise InvalidRequest(f"fleet {fleet.name!r} has no devices to update")
        return rows
    found = []
    for device_id in dict.fromkeys(device_ids):
        row = devices.device_row(session, device_id)
        if row.fleet_id != fleet.id:
            raise InvalidRequest(
                f"device {device_id} is in fleet {row.fleet.name!r}, not {fleet.name!r}"
            )
        if row.revoked_at is not None:
            raise InvalidRequest(f"device {device_id} is revoked")
        found.append(row)
    return found


def _unfinished_rollouts_of(session: Session, device_ids: list[str]) -> dict[str, str]:
    rows = session.execute(
        select(orm.DeviceAssignment.device_id, orm.DeviceAssignment.rollout_id)
        .join(orm.Rollout, orm.Rollout.id == orm.DeviceAssignment.rollout_id)
        .where(orm.Rollout.state.in_(UNFINISHED), orm.DeviceAssignment.device_id.in_(device_ids))
    )
    return {device: rollout for device, rollout in rows}


def _require(row: orm.Rollout, states: Sequence[str], verb: str) -> None:
    if row.state not in states:
        raise Conflict(
            f"cannot {verb} rollout {row.id}: it is {row.state} "
            f"(only a {' or '.join(states)} rollout can be)"
        )


def _check_duration(flag: str, value: timedelta, low: timedelta, high: timedelta) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{flag} {value} must be from {low} to {high}")
