"""The rollouts' side of the gRPC ``Ota`` service: :class:`RolloutBackend` for
:class:`cloud_hub.ota.service.OtaServicer`.

- ``check_in``: a device's assignment is the one of the newest rollout that includes it.
  A device in a started wave gets the rollout's model; in a wave the hub rolled back, the
  model it ran before (without probation or gates); in a paused or aborted rollout, or a
  wave not yet started, nothing. A device that says it already runs the assigned model is
  recorded as INSTALLED (its report may have been lost). A re-sent ``last_status`` is
  taken when it is newer than what the hub holds.
- ``report``: the phase, percent and reason go into the device's assignment row. The
  answer's ``abort`` is True when the device should drop the update: the rollout is
  paused or aborted and the device has not finished installing, or the hub rolled its wave
  back and the report is about the new model.
- ``may_fetch``: a device may download a target it is, or was, assigned.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import models as orm
from ..ota.service import (
    DEFAULT_CHECK_IN_S,
    AssignmentSpec,
    CheckInAnswer,
    DeviceState,
    GateSpec,
    StatusInfo,
)
from ..registry import Device, Registry
from .controller import ABORTED, HALTED, INSTALLED, PAUSED, RUNNING
from .gates import parse_gates
from .store import MAX_REASON_CHARS

BUSY_CHECK_IN_S = 30  # while the device has an update to do
FINISHED_PHASES = (INSTALLED, "failed", "rolled_back")


def target_path(model: str, version: str, filename: str) -> str:
    """The TUF target path of a model artifact (docs/ota.md)."""
    return f"models/{model}/{version}/{filename}"


class RolloutBackend:
    """Implements :class:`cloud_hub.ota.service.RolloutBackend` over the registry's database."""

    def __init__(
        self,
        registry: Registry,
        *,
        check_in_seconds: int = DEFAULT_CHECK_IN_S,
        busy_check_in_seconds: int = BUSY_CHECK_IN_S,
    ) -> None:
        self.registry = registry
        self.check_in_seconds = check_in_seconds
        self.busy_check_in_seconds = busy_check_in_seconds

    def check_in(self, device: Device, state: DeviceState) -> CheckInAnswer:
        with self.registry.db.transaction() as session:
            now = self.registry.now()
            row = _newest_assignment(session, device.id)
            if row is None:
                return CheckInAnswer(None, self.check_in_seconds)
            rollout = _rollout(session, row.rollout_id)
            if state.last_status is not None and state.last_status.rollout_id == rollout.id:
                _take_resent(row, rollout, state.last_status, now)
            runs_target = (state.model_name, state.model_version) == (
                rollout.model_version.model.name,
                row.target_version,
            )
            if row.desired == "target" and runs_target and row.phase != INSTALLED:
                _installed(row, now)
            spec = _assignment(session, rollout, row)
            busy = rollout.state == RUNNING and row.desired == "target" and row.phase != INSTALLED
            seconds = self.busy_check_in_seconds if busy else self.check_in_seconds
            return CheckInAnswer(spec, seconds)

    def report(self, device: Device, status: StatusInfo) -> tuple[bool, bool]:
        with self.registry.db.transaction() as session:
            row = session.scalar(
                select(orm.DeviceAssignment).where(
                    orm.DeviceAssignment.rollout_id == status.rollout_id,
                    orm.DeviceAssignment.device_id == device.id,
                )
            )
            if row is None:
                return False, False
            rollout = _rollout(session, row.rollout_id)
            return True, _record(row, rollout, status, self.registry.now())

    def may_fetch(self, device: Device, target: str) -> bool:
        parts = target.split("/")
        if len(parts) != 4 or parts[0] != "models":
            return False
        _, model, version, _ = parts
        with self.registry.db.transaction() as session:
            rows = session.execute(
                select(orm.DeviceAssignment, orm.Model.name)
                .join(orm.Rollout, orm.Rollout.id == orm.DeviceAssignment.rollout_id)
                .join(orm.ModelVersion, orm.ModelVersion.id == orm.Rollout.model_version_id)
                .join(orm.Model, orm.Model.id == orm.ModelVersion.model_id)
                .where(orm.DeviceAssignment.device_id == device.id)
            )
            for row, name in rows:
                if row.desired != "none" and (name, row.target_version) == (model, version):
                    return True
                was = (row.previous_model, row.previous_version)
                if row.desired == "previous" and was == (model, version):
                    return True
        return False


def _newest_assignment(session: Session, device_id: str) -> orm.DeviceAssignment | None:
    return session.scalar(
        select(orm.DeviceAssignment)
        .where(orm.DeviceAssignment.device_id == device_id)
        .order_by(orm.DeviceAssignment.created_at.desc(), orm.DeviceAssignment.id.desc())
        .limit(1)
    )


def _rollout(session: Session, rollout_id: str) -> orm.Rollout:
    row = session.get(orm.Rollout, rollout_id)
    assert row is not None  # a foreign key holds it
    return row


def _assignment(
    session: Session, rollout: orm.Rollout, row: orm.DeviceAssignment
) -> AssignmentSpec | None:
    if rollout.state in (PAUSED, ABORTED) or row.desired == "none":
        return None
    version = rollout.model_version
    if row.desired == "target":
        gates = tuple(GateSpec(**gate.wire()) for gate in parse_gates(rollout.gates))
        return AssignmentSpec(
            rollout_id=rollout.id,
            model_name=version.model.name,
            model_version=version.version,
            model_format=version.format,
            target_path=target_path(version.model.name, version.version, version.filename),
            probation_seconds=rollout.probation_seconds,
            gates=gates,
        )
    previous = _previous_version(session, row, prefer=version.format)
    if previous is None:
        return None
    return AssignmentSpec(
        rollout_id=rollout.id,
        model_name=previous.model.name,
        model_version=previous.version,
        model_format=previous.format,
        target_path=target_path(previous.model.name, previous.version, previous.filename),
    )


def _previous_version(
    session: Session, row: orm.DeviceAssignment, *, prefer: str
) -> orm.ModelVersion | None:
    """The registered version the device ran before, in ``prefer``'s format if there is one."""
    if row.previous_model is None or row.previous_version is None:
        return None
    found = session.scalars(
        select(orm.ModelVersion)
        .join(orm.ModelVersion.model)
        .where(orm.Model.name == row.previous_model)
        .where(orm.ModelVersion.version == row.previous_version)
        .order_by(orm.ModelVersion.id)
    ).all()
    return next((v for v in found if v.format == prefer), found[0] if found else None)


def _record(
    row: orm.DeviceAssignment, rollout: orm.Rollout, status: StatusInfo, now: datetime
) -> bool:
    """Write a report into the assignment; whether the device should abort the update."""
    about_target = status.model_version in ("", row.target_version)
    if rollout.state == HALTED and row.desired == "previous":
        _write(row, status, now)
        return about_target
    if rollout.state in (PAUSED, ABORTED) and status.phase not in (INSTALLED, "rolled_back"):
        # Dropped, not failed: after a resume the device starts over.
        row.phase, row.percent, row.updated_at = "pending", 0, now
        row.reason = f"update dropped: the rollout is {rollout.state} ({status.phase} reported)"
        row.reported_version = status.model_version or None
        return True
    _write(row, status, now)
    if status.phase == INSTALLED and about_target and row.desired == "target":
        _installed(row, now)
    return False


def _write(row: orm.DeviceAssignment, status: StatusInfo, now: datetime) -> None:
    row.phase, row.percent, row.updated_at = status.phase, status.percent, now
    row.reason = status.reason[:MAX_REASON_CHARS] or None
    row.reported_version = status.model_version or None


def _installed(row: orm.DeviceAssignment, now: datetime) -> None:
    row.phase, row.percent, row.updated_at = INSTALLED, 100, now
    if row.installed_at is None:
        row.installed_at = now


def _take_resent(
    row: orm.DeviceAssignment, rollout: orm.Rollout, status: StatusInfo, now: datetime
) -> None:
    """Record a re-sent status when it is newer than the row (a report lost in transit)."""
    sent = datetime.fromtimestamp(status.timestamp_ms / 1000, tz=timezone.utc)
    newer = status.timestamp_ms > 0 and sent > row.updated_at
    if newer and rollout.state == RUNNING and row.phase not in FINISHED_PHASES:
        _record(row, rollout, status, now)
