"""Per-device per-minute rollups, folded in memory per batch (pure; :mod:`.bulk` upserts).

A message counts in the minute its window ended (its ``ts``, the device's clock). The
rules, the same whether a minute is built from one batch or from many (so the upsert can
merge a batch into what is stored):

- ``count`` (messages), ``requests``, ``errors`` and ``offloads`` (``offload.attempted``)
  add up;
- ``latency_p50_ms``, ``latency_p95_ms`` and ``latency_p99_ms`` keep the **maximum** over
  the minute's intervals, not a request-weighted mean: the percentile of a merged
  distribution cannot be recovered from the parts' percentiles, and the worst interval is
  what a rollout gate should see (a quiet interval cannot hide a slow one);
- ``confidence_sum`` adds ``confidence.mean * requests``, so the minute's mean is
  ``confidence_sum / requests``;
- ``cpu_pct_max``, ``mem_pct_max`` and ``temp_c_max`` (the hottest zone) keep the maximum.

A figure missing from a message (or not a finite number) leaves the minute's value as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .messages import Message, count, number

#: The columns of ``telemetry_rollups`` that add up, and those that keep the maximum.
SUMS = ("count", "requests", "errors", "offloads", "confidence_sum")
MAXIMA = (
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "cpu_pct_max",
    "mem_pct_max",
    "temp_c_max",
)

RollupKey = tuple[str, datetime]


@dataclass(slots=True)
class RollupDelta:
    """What one batch adds to one device-minute."""

    count: int = 0
    requests: int = 0
    errors: int = 0
    offloads: int = 0
    confidence_sum: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    cpu_pct_max: float | None = None
    mem_pct_max: float | None = None
    temp_c_max: float | None = None

    def add(self, body: dict[str, Any]) -> None:
        """Fold in one telemetry message's body."""
        requests = count(body, "requests")
        self.count += 1
        self.requests += requests
        self.errors += count(body, "errors")
        self.offloads += count(body.get("offload"), "attempted")
        mean = number(body.get("confidence"), "mean")
        if mean is not None:
            self.confidence_sum += mean * requests
        latency, system = body.get("latency_ms"), body.get("system")
        self.latency_p50_ms = _max(self.latency_p50_ms, number(latency, "p50"))
        self.latency_p95_ms = _max(self.latency_p95_ms, number(latency, "p95"))
        self.latency_p99_ms = _max(self.latency_p99_ms, number(latency, "p99"))
        self.cpu_pct_max = _max(self.cpu_pct_max, number(system, "cpu_pct"))
        self.mem_pct_max = _max(self.mem_pct_max, number(system, "mem_pct"))
        self.temp_c_max = _max(self.temp_c_max, _hottest(system))


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def fold(messages: Iterable[Message]) -> dict[RollupKey, RollupDelta]:
    """The rollup deltas of telemetry ``messages``, per (device, minute)."""
    deltas: dict[RollupKey, RollupDelta] = {}
    for message in messages:
        key = (message.device, minute_of(message.ts))
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = RollupDelta()
        delta.add(message.body)
    return deltas


def rows(deltas: dict[RollupKey, RollupDelta]) -> list[dict[str, Any]]:
    """``deltas`` as ``telemetry_rollups`` rows, in key order (so two hubs upserting
    overlapping minutes lock them in the same order and cannot deadlock)."""
    return [
        {"device_id": device, "minute": minute, **{c: getattr(d, c) for c in (*SUMS, *MAXIMA)}}
        for (device, minute), d in sorted(deltas.items())
    ]


def _max(current: float | None, value: float | None) -> float | None:
    if value is None:
        return current
    return value if current is None or value > current else current


def _hottest(system: Any) -> float | None:
    temps = system.get("temps_c") if isinstance(system, dict) else None
    if not isinstance(temps, dict):
        return None
    hottest: float | None = None
    for zone in temps:
        hottest = _max(hottest, number(temps, zone))
    return hottest
