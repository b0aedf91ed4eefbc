"""Durations as operators write them: ``90s``, ``30m``, ``1h``, ``7d``, ``2w``, or ``1h30m``.

Used by the settings (``raw_retention = "7d"``) and the command line
(``cloud-hub enroll-token create --ttl 1h``). A bare number is seconds.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


def parse_duration(text: str) -> timedelta:
    """``"1h30m"`` -> ``timedelta(hours=1, minutes=30)``; raises ValueError naming the input."""
    cleaned = text.strip().lower().replace(" ", "")
    try:
        return timedelta(seconds=float(cleaned))
    except ValueError:
        pass
    if not _WHOLE.fullmatch(cleaned):
        raise ValueError(
            f"{text!r} is not a duration (expected a number of seconds or forms like "
            "90s, 30m, 1h, 7d, 2w, 1h30m)"
        )
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact form: ``timedelta(days=7)`` -> ``"7d"``, 90 s -> ``"1m30s"``."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)
