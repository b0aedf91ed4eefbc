"""The device's offload budget: how many offloads a second and how many bytes a minute.

Two token buckets. ``max_per_second`` refills one offload every ``1 / max_per_second``
seconds and holds up to ``max(1, max_per_second)`` (a short burst); ``max_bytes_per_minute``
refills that many bytes over a minute and holds one minute's worth. An offload goes out
only when both buckets can pay for it, and then both pay; otherwise nothing is taken and
the caller skips it (answers locally). ``None`` leaves a limit off.

Thread-safe; the clock is injected (``time.monotonic`` by default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Budget"]


class _Bucket:
    def __init__(self, rate_per_s: float, capacity: float, now: float) -> None:
        self.rate = rate_per_s
        self.capacity = capacity
        self.level = capacity
        self.at = now

    def refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = max(self.at, now)


class Budget:
    """Offloads per second and bytes per minute; :meth:`take` says whether one may go."""

    def __init__(
        self,
        max_per_second: float | None = None,
        max_bytes_per_minute: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for label, value in (
            ("max_per_second", max_per_second),
            ("max_bytes_per_minute", max_bytes_per_minute),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{label} must be > 0 or None, got {value}")
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._calls = (
            _Bucket(max_per_second, max(1.0, max_per_second), now)
            if max_per_second is not None
            else None
        )
        self._bytes = (
            _Bucket(max_bytes_per_minute / 60.0, float(max_bytes_per_minute), now)
            if max_bytes_per_minute is not None
            else None
        )

    @property
    def limited(self) -> bool:
        return self._calls is not None or self._bytes is not None

    def take(self, nbytes: int) -> bool:
        """Pay for one offload of ``nbytes``; False (and nothing paid) when over budget."""
        if self._calls is None and self._bytes is None:
            return True
        with self._lock:
            now = self._clock()
            calls, sizes = self._calls, self._bytes
            if calls is not None:
                calls.refill(now)
                if calls.level < 1.0:
                    return False
            if sizes is not None:
                sizes.refill(now)
                if sizes.level < nbytes:
                    return False
            if calls is not None:
                calls.level -= 1.0
            if sizes is not None:
                sizes.level -= nbytes
            return True
