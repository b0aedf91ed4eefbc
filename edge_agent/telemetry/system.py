"""What the device itself is doing: CPU, memory, disk, temperatures, throttling.

:class:`SystemProbe` is read once per telemetry interval. CPU percent is the whole
machine's utilisation since the previous sample (psutil's non-blocking form: the probe
primes it when created, so the first sample covers the time since then). Temperatures
come from the device profile's thermal zones (:func:`edge_agent.detect.read_temperatures`)
under ``root``; the device counts as throttled when any zone is at or above the profile's
``throttle_temp_c``. Without a profile there are no zones to read and nothing is throttled.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import psutil

from edge_agent.detect import read_temperatures
from edge_agent.profiles import DeviceProfile

__all__ = ["SystemProbe"]


class SystemProbe:
    """Samples the ``system`` object of a telemetry body.

    ``state_dir`` is where the agent keeps its state: its free space is reported, since a
    full disk is what stops the spool and model updates first.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        profile: DeviceProfile | None = None,
        root: str | os.PathLike[str] = "/",
    ) -> None:
        self._state_dir = Path(state_dir)
        self._profile = profile
        self._root = root
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)  # primes the counter; the first call returns 0.0

    def sample(self) -> dict[str, Any]:
        """``cpu_pct``, ``mem_pct``, ``rss_bytes``, ``disk_free_bytes``, ``temps_c``,
        ``throttled`` (see :data:`edge_agent.telemetry.schema.TELEMETRY_FIELDS`)."""
        temps = read_temperatures(self._profile, self._root) if self._profile else {}
        limit = self._profile.throttle_temp_c if self._profile else None
        return {
            "cpu_pct": float(psutil.cpu_percent(interval=None)),
            "mem_pct": float(psutil.virtual_memory().percent),
            "rss_bytes": int(self._process.memory_info().rss),
            "disk_free_bytes": self._disk_free(),
            "temps_c": temps,
            "throttled": limit is not None and any(t >= limit for t in temps.values()),
        }

    def _disk_free(self) -> int:
        """Free bytes on the state directory's filesystem (its nearest existing parent)."""
        path = self._state_dir
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return int(shutil.disk_usage(path).free)
        except OSError:
            return 0
