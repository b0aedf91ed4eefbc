"""A circuit breaker for calls to the hub: a dead or slow hub stops costing requests time.

States (:class:`BreakerState`)::

    closed ──N failures in a row──> open ──cool-down passed──> half_open (one trial call)
       ^                                                          │ trial fails: open again
       └─────────────────────── trial succeeds ───────────────────┘

While open, :meth:`CircuitBreaker.allow` says no at once, so a request pays nothing for a
hub known to be down. After ``cooldown_s`` exactly one caller gets a trial; the others
still hear no until it reports. A caller that was allowed must report :meth:`success`,
:meth:`failure` or :meth:`release` (not tried after all). A trial that never reports is
given up after another cool-down, so a lost caller cannot wedge the breaker half-open.

Thread-safe; the clock is injected (``time.monotonic`` by default). ``on_change`` is
called with the new state's name after each transition, outside the lock.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failures`` failures in a row; half-opens ``cooldown_s`` later."""

    def __init__(
        self,
        failures: int = 5,
        cooldown_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        if not cooldown_s > 0:
            raise ValueError(f"cooldown_s must be > 0, got {cooldown_s}")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._in_a_row = 0
        self._opened_at = 0.0
        self._trial_since: float | None = None  # when the half-open trial was handed out

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cool-down passed reads half_open)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._cooled(self._clock()):
                return BreakerState.HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a call go out now? True hands out the one trial when half-open."""
        changed = None
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if not self._cooled(now):
                    return False
                self._state = changed = BreakerState.HALF_OPEN
                self._trial_since = None
            if self._trial_since is not None and now - self._trial_since < self.cooldown_s:
                return False  # the trial is out
            self._trial_since = now
        self._notify(changed)
        return True

    def success(self) -> None:
        """The call went through: close (a trial's success) and forget past failures."""
        changed = None
        with self._lock:
            self._in_a_row = 0
            self._trial_since = None
            if self._state is not BreakerState.CLOSED:
                self._state = changed = BreakerState.CLOSED
        self._notify(changed)

    def failure(self) -> None:
        """The call failed or timed out: count it; a failed trial opens again."""
        changed = None
        with self._lock:
            self._in_a_row += 1
            reopen = self._state is BreakerState.HALF_OPEN
            if reopen or (self._state is BreakerState.CLOSED and self._in_a_row >= self.failures):
                self._state = changed = BreakerState.OPEN
                self._opened_at = self._clock()
                self._trial_since = None
        self._notify(changed)

    def release(self) -> None:
        """An allowed call did not go out after all (or says nothing of the hub's health)."""
        with self._lock:
            self._trial_since = None

    def _cooled(self, now: float) -> bool:
        return now - self._opened_at >= self.cooldown_s

    def _notify(self, state: BreakerState | None) -> None:
        if state is not None and self._on_change is not None:
            self._on_change(state.value)
