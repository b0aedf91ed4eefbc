"""The rollout controller: :func:`decide` (pure) and :class:`RolloutController` (the loop).

:func:`decide` looks at one rollout, the clock, its current wave's device statuses and
their telemetry rollups, and returns what to do next:

- the first wave not yet passed has not started: **start** it (its devices are assigned
  the new model and told to check in);
- more of its devices reported FAILED or ROLLED_BACK than ``failure_tolerance`` allows, a
  minute of an installed device's telemetry since it installed breaks a gate, or none of
  them could install: **halt** the rollout and roll that wave back to the previous version;
- every device installed (or failed within the tolerance), the last install is ``soak``
  old and each installed device has sent telemetry since installing: the wave **passes**,
  and the next one starts, or the rollout **completes** after the last.

Paused, halted, aborted and completed rollouts are left alone. The loop
(:class:`RolloutController`) reads the state, calls :func:`decide`, writes the actions in
the same transaction (the rollout's row locked on PostgreSQL, so two hubs never apply the
same step twice), and sends ``{"command": "check-in"}`` to devices whose assignment
changed. All state is in the database, so a restarted hub carries on where it was.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..registry import Rollup
from .gates import Gate, first_breach

if TYPE_CHECKING:
    from ..registry import Registry
    from ..settings import HubSettings
    from .notify import CheckInNotifier

_LOG = logging.getLogger(__name__)

RUNNING, PAUSED, HALTED, ABORTED, COMPLETED = "running", "paused", "halted", "aborted", "completed"
INSTALLED = "installed"
FAILURES = ("failed", "rolled_back")
TICK_S = 3.0


@dataclass(frozen=True)
class WaveState:
    index: int
    name: str
    device_ids: tuple[str, ...]
    started_at: datetime | None = None
    passed_at: datetime | None = None


@dataclass(frozen=True)
class RolloutState:
    id: str
    state: str
    gates: tuple[Gate, ...]
    soak: timedelta
    waves: tuple[WaveState, ...]
    failure_tolerance: float = 0.0  # share of a wave's devices that may fail


@dataclass(frozen=True)
class DeviceStatus:
    device_id: str
    phase: str  # pending, downloading, ..., installed, failed, rolled_back
    installed_at: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True)
class StartWave:
    index: int


@dataclass(frozen=True)
class PassWave:
    index: int


@dataclass(frozen=True)
class Halt:
    """Halt the rollout and roll wave ``index`` back to the previous version."""

    index: int
    reason: str


@dataclass(frozen=True)
class Complete:
    pass


Action = StartWave | PassWave | Halt | Complete


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...] = ()
    waiting: str | None = None  # what the rollout waits for, when there is nothing to do


def current_wave(waves: Sequence[WaveState]) -> WaveState | None:
    return next((wave for wave in waves if wave.passed_at is None), None)


def decide(
    rollout: RolloutState,
    now: datetime,
    statuses: Mapping[str, DeviceStatus],
    rollups: Mapping[str, Sequence[Rollup]],
) -> Decision:
    """What the rollout should do now (see the module docstring). Pure."""
    if rollout.state != RUNNING:
        return Decision(waiting=f"the rollout is {rollout.state}")
    wave = current_wave(rollout.waves)
    if wave is None:
        return Decision((Complete(),))
    if wave.started_at is None:
        return Decision((StartWave(wave.index),))
    pending = DeviceStatus("", "pending")
    status = {d: statuses.get(d, pending) for d in wave.device_ids}
    failed = sorted(d for d, s in status.items() if s.phase in FAILURES)
    allowed = math.floor(rollout.failure_tolerance * len(wave.device_ids) + 1e-9)
    if len(failed) > allowed:
        first = status[failed[0]]
        why = f"{first.phase.replace('_', ' ')}: {first.reason or 'no reason given'}"
        return _halt(
            wave,
            f"{len(failed)} of {len(wave.device_ids)} devices in {wave.name} failed "
            f"(at most {allowed} may); {failed[0]} {why}",
        )
    installed = {
        d: s.installed_at
        for d, s in status.items()
        if s.phase == INSTALLED and s.installed_at is not None
    }
    breach = first_breach(rollout.gates, rollups, installed)
    if breach is not None:
        return _halt(wave, str(breach))
    waiting = [d for d in wave.device_ids if d not in installed and d not in failed]
    if waiting:
        return Decision(waiting=f"{len(waiting)} of {len(wave.device_ids)} devices to install")
    if not installed:
        return _halt(wave, f"no device in {wave.name} installed the update")
    soak_end = max(installed.values()) + rollout.soak
    if now < soak_end:
        return Decision(waiting=f"{wave.name} soaks until {soak_end.isoformat()}")
    silent = sorted(
        d for d, at in installed.items() if not any(r.minute >= at for r in rollups.get(d, ()))
    )
    if silent:
        return Decision(waiting=f"telemetry since the install from {', '.join(silent)}")
    after = wave.index + 1
    following = StartWave(after) if after < len(rollout.waves) else Complete()
    return Decision((PassWave(wave.index), following))


def _halt(wave: WaveState, reason: str) -> Decision:
    return Decision((Halt(wave.index, reason),))


class RolloutController:
    """Ticks every ``tick_s`` seconds in its own thread: decide, apply, notify.

    ``start()`` and ``stop()`` are for the owner (the hub); :meth:`tick` does one round
    and may also be called directly (tests drive it with a controllable clock).
    """

    def __init__(
        self,
        registry: Registry,
        settings: HubSettings | None = None,
        *,
        notifier: CheckInNotifier | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self.registry = registry
        self._notifier = notifier
        self._own_notifier = False
        if notifier is None and settings is not None:
            from .notify import MqttCheckInNotifier

            self._notifier = MqttCheckInNotifier(settings)
            self._own_notifier = True
        self._tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the rollout controller is already started")
        if self._own_notifier and self._notifier is not None:
            self._notifier.start()
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the loop (and the notifier it made); False if the thread did not end."""
        self._stop.set()
        stopped = True
        if self._thread is not None:
            self._thread.join(timeout)
            stopped = not self._thread.is_alive()
        if self._own_notifier and self._notifier is not None:
            self._notifier.stop()
        return stopped

    def tick(self) -> dict[str, Decision]:
        """One round over every running rollout, then the pending check-in commands."""
        from . import progress

        decisions: dict[str, Decision] = {}
        for rollout_id in progress.running_rollout_ids(self.registry.db):
            decision = progress.advance(self.registry, rollout_id, decide)
            if decision.actions:
                _LOG.info("rollout %s: %s", rollout_id, _describe(decision.actions))
            decisions[rollout_id] = decision
        if self._notifier is not None:
            progress.send_notifications(self.registry, self._notifier)
        return decisions

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bad round must not end the loop; the next one retries
                _LOG.exception("rollout controller round failed; retrying in %.0f s", self._tick_s)
            self._stop.wait(self._tick_s)


def _describe(actions: Sequence[Action]) -> str:
    words = []
    for action in actions:
        if isinstance(action, StartWave):
            words.append(f"start wave {action.index}")
        elif isinstance(action, PassWave):
            words.append(f"wave {action.index} passed")
        elif isinstance(action, Halt):
            words.append(f"halt, roll wave {action.index} back: {action.reason}")
        else:
            words.append("completed")
    return "; ".join(words)
