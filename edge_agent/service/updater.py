"""The agent's update thread: check in with the hub, install what it assigns, judge probation.

One :class:`Updater` per agent, started and stopped by :class:`~.daemon.Agent`. Its thread
loops: resend an unacknowledged install status (``Installer.report_pending``), check in
with the device's state, and on an assignment refresh the TUF metadata and hand the
verified target to :meth:`Installer.install` (which downloads, verifies, health-checks and
swaps with no request failing). It then waits ``with_jitter(next_check_in_seconds)`` on an
event that :meth:`check_in_now` (the MQTT ``{"command": "check-in"}``) or :meth:`stop` sets.
Once per ``probation_interval_s`` it closes a window of its private :class:`Recorder`
(teed with telemetry's, see :class:`TeeRecorder`) and gives it to
``Installer.check_probation``, which rolls back by itself on a gate breach.

Nothing here raises into the thread's loop: a failed check-in is logged and retried after
the configured interval; the running model keeps serving whatever happens.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..ota.client import DeviceState, OtaClient, StatusReport, with_jitter
from ..ota.client import Phase as WirePhase
from ..ota.installer import Assignment, Installer, StatusUpdate
from ..ota.slots import CurrentModel
from ..ota.trust import TrustedUpdater

__all__ = ["CHECK_IN_COMMAND", "TeeRecorder", "Updater", "reporter_for"]

_LOG = logging.getLogger(__name__)
CHECK_IN_COMMAND = "check-in"
_MAX_COMMAND_BYTES = 4096
_WIRE_VALUES = frozenset(phase.value for phase in WirePhase)


class _Recorder(Protocol):
    def record(
        self,
        latency_s: float,
        ok: bool,
        probabilities: np.ndarray | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> None: ...


class _Snapshots(Protocol):
    def snapshot(self, now: float) -> dict[str, Any]: ...


class TeeRecorder:
    """Hands each inference to every recorder given (telemetry's and probation's)."""

    def __init__(self, *recorders: _Recorder) -> None:
        self.recorders = recorders

    def record(
        self,
        latency_s: float,
        ok: bool,
        probabilities: np.ndarray | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        for recorder in self.recorders:
            recorder.record(latency_s, ok, probabilities=probabilities, inputs=inputs)


def reporter_for(client: OtaClient) -> Callable[[StatusUpdate], bool | None]:
    """The installer's ``reporter``: a status report over gRPC; True when the hub says abort."""

    def report(status: StatusUpdate) -> bool | None:
        if status.phase.value not in _WIRE_VALUES:
            return False  # journal-only phases (switching) have no wire form
        ack = client.report(
            status.phase.value,
            rollout_id=status.rollout_id,
            percent=status.percent,
            reason=status.reason,
            model_name=status.model,
            model_version=status.version,
            timestamp_ms=status.timestamp_ms,
        )
        return ack.abort

    return report


class Updater:
    """Owns the update thread; see the module docstring.

    ``baseline`` is the model from ``[model] path`` (what runs while no slot holds one).
    """

    def __init__(
        self,
        *,
        client: OtaClient,
        trusted: TrustedUpdater,
        installer: Installer,
        probation: _Snapshots,
        boot_id: str,
        profile: str,
        baseline: CurrentModel,
        interval_s: float,
        probation_interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (interval_s > 0 and probation_interval_s > 0):
            raise ValueError("interval_s and probation_interval_s must be more than 0")
        self.client = client
        self.trusted = trusted
        self.installer = installer
        self.boot_id = boot_id
        self.profile = profile
        self.interval_s = interval_s
        self.probation_interval_s = probation_interval_s
        self.check_ins = 0  # completed check-ins, for logs and tests
        self._probation = probation
        self._baseline = baseline
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Updater.start() was already called")
        self._thread = threading.Thread(target=self._run, name="ota-updater", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop the thread (an install in progress finishes first); False if it did not."""
        self._stopping.set()
        self._wake.set()
        stopped = True
        if self._thread is not None:
            self._thread.join(timeout)
            stopped = not self._thread.is_alive()
            if not stopped:
                _LOG.warning("the update thread was still busy after %.0fs", timeout)
        if stopped:
            self.client.close()
        return stopped

    def check_in_now(self) -> None:
        self._wake.set()

    def on_command(self, payload: bytes) -> None:
        """TelemetryPublisher's ``on_command``: ``{"command": "check-in"}`` wakes the thread."""
        try:
            command = json.loads(payload[:_MAX_COMMAND_BYTES]) if payload else None
        except ValueError:
            _LOG.warning("ignored a cmd message that is not JSON (%d bytes)", len(payload))
            return
        if isinstance(command, dict) and command.get("command") == CHECK_IN_COMMAND:
            _LOG.info("the hub asks for a check-in now")
            self.check_in_now()

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        now = time.monotonic()
        next_check, next_probation = now, now + self.probation_interval_s
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_check or self._wake.is_set():
                self._wake.clear()
                next_check = time.monotonic() + with_jitter(self._cycle())
            if self._stopping.is_set():
                return
            if time.monotonic() >= next_probation:
                self._judge_probation()
                next_probation = time.monotonic() + self.probation_interval_s
            wait = min(next_check, next_probation) - time.monotonic()
            self._wake.wait(max(0.0, wait))

    def _cycle(self) -> float:
        """One check-in (and install); seconds until the next one."""
        try:
            self.installer.report_pending()
            assignment, next_s = self.client.check_in(self._state())
            self.check_ins += 1
            if assignment is not None and not self._stopping.is_set():
                self._install(Assignment.from_message(assignment))
            return float(next_s)
        except Exception:
            _LOG.warning("check-in with %s failed", self.client.hub, exc_info=True)
            return self.interval_s

    def _install(self, assignment: Assignment) -> None:
        _LOG.info(
            "assigned %s %s (rollout %s)",
            assignment.model,
            assignment.version,
            assignment.rollout_id,
        )
        self.trusted.refresh()
        target = self.trusted.target_info(assignment.target_path)
        outcome = self.installer.install(assignment, target)
        _LOG.info("update to %s: %s (%s)", outcome.version, outcome.phase.value, outcome.reason)

    def _judge_probation(self) -> None:
        try:
            outcome = self.installer.check_probation(self._probation.snapshot(self._clock()))
        except Exception:
            _LOG.exception("could not judge probation")
            return
        if outcome is not None:
            _LOG.info("probation: %s (%s)", outcome.phase.value, outcome.reason)

    def _state(self) -> DeviceState:
        current = self.installer.slots.current() or self._baseline
        last = self.installer.last_status()
        return DeviceState(
            boot_id=self.boot_id,
            model_name=current.model,
            model_version=current.version,
            model_format=current.format,
            slot=current.slot or "",
            profile=self.profile,
            free_disk_bytes=_free_bytes(self.installer.slots.root),
            last_status=_wire_status(last) if last is not None else None,
        )


def _wire_status(status: StatusUpdate) -> StatusReport | None:
    if status.phase.value not in _WIRE_VALUES:
        return None
    return StatusReport(
        rollout_id=status.rollout_id,
        phase=WirePhase(status.phase.value),
        percent=status.percent,
        reason=status.reason,
        model_name=status.model,
        model_version=status.version,
        timestamp_ms=status.timestamp_ms,
    )


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        return 0
