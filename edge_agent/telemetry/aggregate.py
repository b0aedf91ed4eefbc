"""Per-interval aggregation of what the agent served: the hot path of telemetry.

:class:`Recorder` is called once per request (``record``) by whoever answers requests,
from any thread, and once per interval (``snapshot``) by the publisher, which turns the
window into a telemetry body and starts a new one. Recording must stay cheap (a
microsecond or two): under a lock it counts the request and appends the latency and the top
probability to two short lists; every :data:`FOLD_AT` values those lists are *folded*
into histograms, sums and samples with a few vectorised numpy calls, so the per-request
cost has no numpy call in it for a small classifier. Input statistics are taken from the
first ``input_sample_first`` requests of each window and then one request in
``input_sample_every`` (on at most ``input_max_elements`` values per tensor), so a quiet
device still reports them and a busy one pays for them rarely.

What a window reports (the fields of :data:`edge_agent.telemetry.schema.TELEMETRY_FIELDS`):

- ``latency_ms``: latencies of *successful* requests (an error is counted, not timed: a
  request rejected in microseconds would pull p50 down). ``buckets`` are upper edges in
  ms, ``counts`` has one more entry for what lies above the last edge. p50/p95/p99 come
  from a uniform sample of up to ``latency_sample`` latencies (bottom-k on random keys,
  i.e. a reservoir), so they are exact while a window holds fewer requests than that.
- ``confidence``: the top probability of each row of ``probabilities``, as a histogram
  over ``[0, 1]`` and a mean. Non-finite latencies and confidences are left out.
- ``inputs``: per input tensor, over the values of the sampled requests: ``count``
  (sampled requests), ``mean``, ``std``, ``min``, ``max``, and ``nonfinite`` (sampled
  requests that held NaN or infinity, left out of the other figures).
- ``offload``: counters fed by :meth:`Recorder.record_offload`, all zero until the agent
  offloads; ``breaker`` is the last state reported, the rest are per window.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

__all__ = [
    "CONFIDENCE_EDGES",
    "FOLD_AT",
    "LATENCY_EDGES_MS",
    "OffloadOutcome",
    "Recorder",
]

#: Upper edges of the latency buckets in milliseconds (one more bucket for above 10 s).
LATENCY_EDGES_MS: tuple[float, ...] = (
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0,
    150.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0, 10000.0,
)  # fmt: skip
#: Upper edges of the confidence buckets (one more bucket for values above 1).
CONFIDENCE_EDGES: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0,
)  # fmt: skip

#: Pending values per window before they are folded into the aggregates.
FOLD_AT = 2048

OffloadOutcome = Literal["succeeded", "failed", "skipped"]
_OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "skipped")
_NUMERIC_KINDS = frozenset("biuf")
_SMALL_OUTPUT = 64  # up to this many probabilities, Python's max beats a numpy reduction
_LATENCY_EDGES_S = np.asarray(LATENCY_EDGES_MS) / 1000.0
_CONFIDENCE_EDGES = np.asarray(CONFIDENCE_EDGES)


class _InputStats:
    """Running sums for one input tensor; std comes from the sum of squares (float64)."""

    __slots__ = ("count", "high", "low", "nonfinite", "total", "total_sq", "values")

    def __init__(self) -> None:
        self.count = 0  # sampled requests
        self.nonfinite = 0
        self.values = 0  # values summed
        self.total = 0.0
        self.total_sq = 0.0
        self.low = math.inf
        self.high = -math.inf

    def report(self) -> dict[str, float | int]:
        if self.values == 0:
            return {"count": self.count, "nonfinite": self.nonfinite}
        mean = self.total / self.values
        variance = max(self.total_sq / self.values - mean * mean, 0.0)
        return {
            "count": self.count,
            "mean": mean,
            "std": math.sqrt(variance),
            "min": self.low,
            "max": self.high,
            "nonfinite": self.nonfinite,
        }


class _Distribution:
    """Values folded in batches: a histogram over fixed upper edges, count, sum, max, and a
    uniform sample of at most ``sample`` values (the ones with the smallest random keys)."""

    def __init__(self, edges: np.ndarray, sample: int) -> None:
        self.edges = edges
        self.counts = np.zeros(len(edges) + 1, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.high = 0.0
        self._sample = sample
        self._keys = np.empty(0)
        self._values = np.empty(0)

    def fold(self, pending: list[float], rng: random.Random) -> None:
        values = np.asarray(pending, dtype=np.float64)
        pending.clear()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        self.counts += np.bincount(
            np.searchsorted(self.edges, values, side="left"), minlength=self.counts.size
        )
        self.count += int(values.size)
        self.total += float(values.sum())
        self.high = max(self.high, float(values.max()))
        if self._sample:
            keys = np.concatenate([self._keys, [rng.random() for _ in range(values.size)]])
            kept = np.concatenate([self._values, values])
            if keys.size > self._sample:
                smallest = np.argpartition(keys, self._sample)[: self._sample]
                keys, kept = keys[smallest], kept[smallest]
            self._keys, self._values = keys, kept

    def percentiles(self, quantiles: list[float]) -> list[float]:
        if self._values.size == 0:
            return [0.0] * len(quantiles)
        return quantiles_of(sorted(self._values.tolist()), quantiles)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class _Window:
    """Everything one interval accumulates; replaced wholesale by ``snapshot``."""

    def __init__(self, start: float, latency_sample: int) -> None:
        self.start = start
        self.requests = 0
        self.errors = 0
        self.latencies: list[float] = []  # seconds, not yet folded
        self.confidences: list[float] = []  # not yet folded
        self.latency = _Distribution(_LATENCY_EDGES_S, latency_sample)
        self.confidence = _Distribution(_CONFIDENCE_EDGES, 0)
        self.inputs: dict[str, _InputStats] = {}
        self.offload = {"succeeded": 0, "failed": 0, "skipped": 0}
        self.offload_latency_ms: list[float] = []
        self.agreed = 0
        self.compared = 0

    def fold(self, rng: random.Random) -> None:
        if self.latencies:
            self.latency.fold(self.latencies, rng)
        if self.confidences:
            self.confidence.fold(self.confidences, rng)


class Recorder:
    """Thread-safe per-interval counters, histograms and input statistics.

    ``start`` is the wall-clock time the first window opens (``time.time()`` by the
    caller); ``snapshot(now)`` closes the window at ``now`` and opens the next one.
    """

    def __init__(
        self,
        start: float,
        *,
        latency_sample: int = 1024,
        input_sample_first: int = 16,
        input_sample_every: int = 512,
        input_max_elements: int = 4096,
        seed: int | None = None,
    ) -> None:
        if min(latency_sample, input_sample_every, input_max_elements) < 1:
            raise ValueError(
                "latency_sample, input_sample_every and input_max_elements must be >= 1 "
                f"(got {latency_sample}, {input_sample_every}, {input_max_elements})"
            )
        self._lock = threading.Lock()
        self._latency_sample = latency_sample
        self._window = _Window(start, latency_sample)
        self._input_first = max(input_sample_first, 0)
        self._input_every = input_sample_every
        self._input_max = input_max_elements
        # stdlib random and quantiles: numpy.random and numpy's percentile would cost the
        # agent ~4.5 MiB of RSS in modules it needs nowhere else
        self._rng = random.Random(seed)
        self._breaker = "closed"

    # -- the hot path --------------------------------------------------------------------

    def record(
        self,
        latency_s: float,
        ok: bool,
        probabilities: np.ndarray | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Count one request: its latency, outcome, confidences and (sampled) inputs."""
        top: float | list[float] | None = None
        if probabilities is not None:
            if probabilities.size <= _SMALL_OUTPUT:
                # A small output, the common case: one tolist and Python's max beat any
                # numpy reduction on an array this size.
                rows = probabilities.tolist()
                first = rows[0] if rows else None
                top = max(first) if len(rows) == 1 and first.__class__ is list and first else None
            if top is None:
                top = _top_probability(probabilities)
        with self._lock:
            w = self._window
            w.requests += 1
            n = w.requests
            if ok:
                w.latencies.append(latency_s)
            else:
                w.errors += 1
            if top is not None:
                if isinstance(top, list):
                    w.confidences += top
                else:
                    w.confidences.append(top)
            if n % FOLD_AT == 0:
                w.fold(self._rng)
        if inputs is not None and (n <= self._input_first or n % self._input_every == 0):
            self._record_inputs(inputs)

    def record_offload(
        self,
        outcome: OffloadOutcome,
        latency_s: float | None = None,
        agreed: bool | None = None,
    ) -> None:
        """Count one offload decision; ``agreed``: did the hub's answer match the local one."""
        if outcome not in _OUTCOMES:
            raise ValueError(f"offload outcome {outcome!r} is not one of {', '.join(_OUTCOMES)}")
        with self._lock:
            w = self._window
            w.offload[outcome] += 1
            if latency_s is not None and len(w.offload_latency_ms) < self._latency_sample:
                w.offload_latency_ms.append(latency_s * 1000.0)
            if agreed is not None:
                w.compared += 1
                w.agreed += int(agreed)

    def set_breaker(self, state: str) -> None:
        """The offload circuit breaker's state, reported as is until it changes."""
        self._breaker = state

    # -- once per interval ---------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """Close the window at ``now``: the telemetry body fields, then start afresh."""
        with self._lock:
            w, self._window = self._window, _Window(now, self._latency_sample)
        w.fold(self._rng)  # the window is ours alone now
        interval = max(now - w.start, 0.0)
        return {
            "interval_s": interval,
            "window_start": w.start,
            "window_end": now,
            "requests": w.requests,
            "errors": w.errors,
            "throughput_rps": w.requests / interval if interval > 0 else 0.0,
            "latency_ms": _latency_report(w),
            "confidence": _confidence_report(w),
            "inputs": {name: stats.report() for name, stats in sorted(w.inputs.items())},
            "offload": self._offload_report(w),
        }

    # -- helpers -------------------------------------------------------------------------

    def _record_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        measured = [(name, _measure(array, self._input_max)) for name, array in inputs.items()]
        with self._lock:
            window_inputs = self._window.inputs
            for name, figures in measured:
                if figures is None:
                    continue
                stats = window_inputs.get(name)
                if stats is None:
                    stats = window_inputs[name] = _InputStats()
                stats.count += 1
                size, total, total_sq, low, high = figures
                if size == 0:
                    stats.nonfinite += 1
                    continue
                stats.values += size
                stats.total += total
                stats.total_sq += total_sq
                stats.low = min(stats.low, low)
                stats.high = max(stats.high, high)

    def _offload_report(self, w: _Window) -> dict[str, Any]:
        attempted = w.offload["succeeded"] + w.offload["failed"]
        return {
            "attempted": attempted,
            **w.offload,
            "rate": attempted / w.requests if w.requests else 0.0,
            "latency_ms_p50": quantiles_of(sorted(w.offload_latency_ms), [50])[0]
            if w.offload_latency_ms
            else 0.0,
            "breaker": self._breaker,
            "agreement": w.agreed / w.compared if w.compared else None,
        }


def quantiles_of(ordered: list[float], percents: list[float]) -> list[float]:
    """Percentiles of sorted values by linear interpolation (numpy's default method)."""
    if not ordered:
        return [0.0] * len(percents)
    last = len(ordered) - 1
    result = []
    for percent in percents:
        position = last * percent / 100.0
        low = math.floor(position)
        high = min(low + 1, last)
        result.append(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
    return result


def _top_probability(probabilities: np.ndarray) -> float | list[float]:
    """The top probability of the one row (a number), or of each row of a batch (a list).

    A small output, the common case, costs one ``tolist`` and a Python ``max``: cheaper
    than any numpy reduction on an array this size.
    """
    if probabilities.size <= _SMALL_OUTPUT:
        rows = probabilities.tolist()
        first = rows[0] if rows else None
        if not isinstance(first, list):  # one row (1-d), or nothing
            return max(rows) if rows else []
        if first and not isinstance(first[0], list):  # rows of scores (2-d)
            return max(first) if len(rows) == 1 else [max(row) for row in rows if row]
    if probabilities.size == 0:
        return []
    if probabilities.ndim <= 1:
        return float(probabilities.max())
    tops: list[float] = probabilities.reshape(-1, probabilities.shape[-1]).max(axis=1).tolist()
    return tops


def _measure(array: np.ndarray, max_elements: int) -> tuple[int, float, float, float, float] | None:
    """(values, sum, sum of squares, min, max) of up to ``max_elements`` evenly spaced values.

    None for a tensor that is not numeric; ``values == 0`` when it holds NaN or infinity.
    """
    values = np.asarray(array)
    if values.dtype.kind not in _NUMERIC_KINDS or values.size == 0:
        return None
    flat = values.reshape(-1)
    if flat.size > max_elements:
        flat = flat[:: -(-flat.size // max_elements)]
    wide = flat.astype(np.float64)
    total = float(wide.sum())
    total_sq = float(np.dot(wide, wide))
    if not (math.isfinite(total) and math.isfinite(total_sq)):
        return (0, 0.0, 0.0, 0.0, 0.0)
    return (int(wide.size), total, total_sq, float(wide.min()), float(wide.max()))


def _latency_report(w: _Window) -> dict[str, Any]:
    latency = w.latency
    p50, p95, p99 = (1000.0 * v for v in latency.percentiles([50, 95, 99]))
    return {
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "max": 1000.0 * latency.high,
        "mean": 1000.0 * latency.mean,
        "buckets": list(LATENCY_EDGES_MS),
        "counts": latency.counts.tolist(),
    }


def _confidence_report(w: _Window) -> dict[str, Any]:
    return {
        "buckets": list(CONFIDENCE_EDGES),
        "counts": w.confidence.counts.tolist(),
        "mean": w.confidence.mean,
    }
