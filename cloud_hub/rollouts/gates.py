"""Health gates: ``p99_ms<=50``, ``error_rate<=0.01``... parsed, and judged over rollups. Pure.

A gate bounds one metric of a device's per-minute telemetry rollup
(:class:`cloud_hub.registry.Rollup`) from above (``<=``) or below (``>=``). A minute
without the figure (no requests, so no latency or error rate) says nothing about the gate;
any device-minute outside a bound is a breach.

======================  ==========================================  =====================
gate metric             from the rollup                             on the wire (OTA)
======================  ==========================================  =====================
``p50_ms``              ``latency_p50_ms`` (worst interval)         ``latency_p50_ms``
``p95_ms``              ``latency_p95_ms``                          ``latency_p95_ms``
``p99_ms``              ``latency_p99_ms``                          ``latency_p99_ms``
``error_rate``          ``errors / requests``                       ``error_rate``
``offload_rate``        ``offloads / requests``                     ``offload_rate``
``confidence``          ``confidence_mean``                         ``mean_confidence``
``cpu_pct``             ``cpu_pct_max``                             ``cpu_pct``
``mem_pct``             ``mem_pct_max``                             ``mem_pct``
``temp_c``              ``temp_c_max``                              ``temp_c``
======================  ==========================================  =====================
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import InvalidRequest
from ..registry import Rollup

MAX_GATES = 16


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


_METRICS: dict[str, tuple[str, Callable[[Rollup], float | None]]] = {
    "p50_ms": ("latency_p50_ms", lambda r: r.latency_p50_ms),
    "p95_ms": ("latency_p95_ms", lambda r: r.latency_p95_ms),
    "p99_ms": ("latency_p99_ms", lambda r: r.latency_p99_ms),
    "error_rate": ("error_rate", lambda r: _ratio(r.errors, r.requests)),
    "offload_rate": ("offload_rate", lambda r: _ratio(r.offloads, r.requests)),
    "confidence": ("mean_confidence", lambda r: r.confidence_mean),
    "cpu_pct": ("cpu_pct", lambda r: r.cpu_pct_max),
    "mem_pct": ("mem_pct", lambda r: r.mem_pct_max),
    "temp_c": ("temp_c", lambda r: r.temp_c_max),
}
METRICS = tuple(_METRICS)
_GATE = re.compile(r"\s*([a-z0-9_]+)\s*(<=|>=)\s*([^\s]+)\s*")


@dataclass(frozen=True)
class Gate:
    """``metric <= bound`` (``upper``) or ``metric >= bound``."""

    metric: str
    upper: bool
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{'<=' if self.upper else '>='}{self.bound:g}"

    def value(self, rollup: Rollup) -> float | None:
        return _METRICS[self.metric][1](rollup)

    def passes(self, value: float) -> bool:
        return value <= self.bound if self.upper else value >= self.bound

    def wire(self) -> dict[str, Any]:
        """As the OTA ``Gate`` message's fields: metric, and max_value or min_value."""
        key = "max_value" if self.upper else "min_value"
        return {"metric": _METRICS[self.metric][0], key: self.bound}


@dataclass(frozen=True)
class Breach:
    """One device-minute outside a gate."""

    gate: Gate
    device_id: str
    minute: datetime
    value: float

    def __str__(self) -> str:
        return (
            f"gate {self.gate} breached on {self.device_id} in the minute of "
            f"{self.minute.strftime('%Y-%m-%d %H:%MZ')} ({self.gate.metric} = {self.value:g})"
        )


def parse_gate(text: str) -> Gate:
    """``"p99_ms<=50"`` -> ``Gate("p99_ms", True, 50.0)``; InvalidRequest names the gate."""
    match = _GATE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidRequest(
            f"gate {text!r} is not METRIC<=NUMBER or METRIC>=NUMBER (like 'p99_ms<=50'); "
            f"metrics: {', '.join(METRICS)}"
        )
    metric, op, number = match.groups()
    if metric not in _METRICS:
        raise InvalidRequest(
            f"gate {text!r}: unknown metric {metric!r} (expected one of {', '.join(METRICS)})"
        )
    try:
        bound = float(number)
    except ValueError:
        raise InvalidRequest(f"gate {text!r}: {number!r} is not a number") from None
    if not math.isfinite(bound):
        raise InvalidRequest(f"gate {text!r}: the bound must be a finite number")
    return Gate(metric, op == "<=", bound)


def parse_gates(texts: Iterable[str]) -> tuple[Gate, ...]:
    gates = tuple(parse_gate(text) for text in texts)
    if len(gates) > MAX_GATES:
        raise InvalidRequest(f"{len(gates)} gates given; at most {MAX_GATES}")
    return gates


def breaches(gates: Sequence[Gate], rollups: Iterable[Rollup]) -> list[Breach]:
    """Every device-minute of ``rollups`` outside one of ``gates``, in time order."""
    found = []
    for rollup in rollups:
        for gate in gates:
            value = gate.value(rollup)
            if value is not None and not gate.passes(value):
                found.append(Breach(gate, rollup.device_id, rollup.minute, value))
    return sorted(found, key=lambda b: (b.minute, b.device_id, str(b.gate)))


def first_breach(
    gates: Sequence[Gate], rollups: Mapping[str, Sequence[Rollup]], since: Mapping[str, datetime]
) -> Breach | None:
    """The earliest breach among devices' rollups from the minute of ``since[device]`` on."""
    found: list[Breach] = []
    for device_id, start in since.items():
        minute = start.replace(second=0, microsecond=0)
        window = [r for r in rollups.get(device_id, ()) if r.minute >= minute]
        found += breaches(gates, window)
    return min(found, key=lambda b: (b.minute, b.device_id), default=None)
