"""Logging that a flood of bad messages cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """Logs at most ``burst`` lines per ``every_s`` window; says how many it held back.

    The count of suppressed lines is reported by the first line logged in a later window.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._every_s = every_s
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = -float("inf")
        self._logged = 0
        self._suppressed = 0

    def log(self, level: int, message: str) -> None:
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self._every_s:
                suppressed, self._suppressed = self._suppressed, 0
                self._window_start, self._logged = now, 0
                if suppressed:
                    message += f" ({suppressed} similar lines suppressed before this one)"
            if self._logged >= self._burst:
                self._suppressed += 1
                return
            self._logged += 1
        self._logger.log(level, "%s", message)

    def warning(self, message: str) -> None:
        self.log(logging.WARNING, message)

    def error(self, message: str) -> None:
        self.log(logging.ERROR, message)
