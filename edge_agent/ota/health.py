"""Is a freshly loaded model fit to serve, and is a switched one still fit? Verdicts only.

:func:`check_health` runs the golden inputs that travel in the signed target metadata
(``custom.edgeloop.health``, docs/ota.md) on an engine, compares the outputs with the
expected ones within ``atol``, and times repeated runs against the p95 latency budget.
:func:`gate_breach` judges the rollout's probation gates against one window of the
telemetry :class:`~edge_agent.telemetry.aggregate.Recorder`'s numbers. Neither touches the
disk or the service; the installer acts on what they say.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import EdgeAgentError
from ..tensors import numpy_dtype

__all__ = ["Gate", "HealthSpec", "Verdict", "check_health", "gate_breach", "metric_value"]

DEFAULT_RUNS = 20


class _Runnable(Protocol):
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class HealthSpec:
    """Golden inputs, their expected outputs, the tolerance and the latency budget."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    atol: float
    latency_budget_ms: float

    @classmethod
    def from_custom(cls, custom: Mapping[str, Any]) -> HealthSpec:
        """Parse a target's ``custom``; ValueError naming the key when it is malformed."""
        try:
            health = custom["edgeloop"]["health"]
            inputs = _tensors(health["inputs"], "inputs")
            outputs = _tensors(health["outputs"], "outputs")
            atol = float(health["atol"])
            budget = float(health["latency_budget_ms"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"custom.edgeloop.health: missing or malformed {exc}") from exc
        if not inputs or not outputs:
            raise ValueError("custom.edgeloop.health: needs at least one input and one output")
        if not (atol >= 0 and budget > 0 and math.isfinite(atol) and math.isfinite(budget)):
            raise ValueError(
                f"custom.edgeloop.health: atol {atol} must be >= 0 and "
                f"latency_budget_ms {budget} > 0"
            )
        return cls(inputs, outputs, atol, budget)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    max_error: float = math.nan
    p95_ms: float = math.nan


def check_health(
    engine: _Runnable,
    spec: HealthSpec,
    *,
    runs: int = DEFAULT_RUNS,
    clock: Callable[[], float] = time.perf_counter,
) -> Verdict:
    """Run the golden inputs on ``engine``: outputs within ``atol``, p95 within the budget."""
    try:
        got = engine.run(spec.inputs)
    except EdgeAgentError as exc:
        return Verdict(False, f"health check: the model failed on the golden inputs: {exc}")
    worst = 0.0
    for name, expected in spec.outputs.items():
        actual = got.get(name)
        if actual is None:
            return Verdict(False, f"health check: the model has no output {name!r}")
        if actual.shape != expected.shape:
            return Verdict(
                False,
                f"health check: output {name!r} has shape {actual.shape}, expected "
                f"{expected.shape}",
            )
        error = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0))
        if not error <= spec.atol:  # also catches NaN
            return Verdict(
                False,
                f"health check: output {name!r} is off by {error:.4g}, over atol {spec.atol:g}",
                max_error=error,
            )
        worst = max(worst, error)
    try:
        p95 = _p95_ms(engine, spec.inputs, runs, clock)
    except EdgeAgentError as exc:
        return Verdict(False, f"health check: the model failed while timed: {exc}", worst)
    if p95 > spec.latency_budget_ms:
        return Verdict(
            False,
            f"health check: p95 latency {p95:.2f} ms is over the budget of "
            f"{spec.latency_budget_ms:g} ms",
            worst,
            p95,
        )
    return Verdict(True, f"healthy: max error {worst:.3g}, p95 {p95:.2f} ms", worst, p95)


@dataclass(frozen=True)
class Gate:
    """A probation gate (the wire's ``Gate``): a metric with optional bounds."""

    metric: str
    max_value: float | None = None
    min_value: float | None = None

    @classmethod
    def from_message(cls, message: Any) -> Gate:
        """From an ``edgeloop.v1.Gate`` (proto3 ``optional`` bounds), a mapping, or any
        object with ``metric``, ``max_value`` and ``min_value`` (``client.Gate``)."""
        if isinstance(message, Mapping):
            return cls(str(message["metric"]), message.get("max_value"), message.get("min_value"))
        has = getattr(message, "HasField", None)

        def bound(name: str) -> float | None:
            if has is not None and not has(name):
                return None
            value = getattr(message, name)
            return None if value is None else float(value)

        return cls(str(message.metric), bound("max_value"), bound("min_value"))

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "max_value": self.max_value, "min_value": self.min_value}


def metric_value(metric: str, stats: Mapping[str, Any]) -> float | None:
    """A gate metric from a :meth:`Recorder.snapshot`; None when the window cannot say.

    Known: ``latency_p50_ms``, ``latency_p95_ms``, ``latency_p99_ms``, ``latency_max_ms``
    (also ``p50_ms`` ... as the hub's CLI spells them), ``error_rate``, ``offload_rate``,
    ``mean_confidence``, ``throughput_rps``.
    """
    requests = int(stats.get("requests", 0))
    name = metric.removeprefix("latency_")
    if name in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        served = requests - int(stats.get("errors", 0))
        return float(stats["latency_ms"][name.removesuffix("_ms")]) if served > 0 else None
    if name == "error_rate":
        return int(stats.get("errors", 0)) / requests if requests else None
    if name == "offload_rate":
        return float(stats["offload"]["rate"]) if requests else None
    if name == "mean_confidence":
        counts = stats.get("confidence", {}).get("counts", [])
        return float(stats["confidence"]["mean"]) if sum(counts) else None
    if name == "throughput_rps":
        return float(stats.get("throughput_rps", 0.0))
    return None


def gate_breach(gates: Iterable[Gate], stats: Mapping[str, Any]) -> str | None:
    """The first breached gate, as a reason; None when every gate it can judge holds."""
    for gate in gates:
        value = metric_value(gate.metric, stats)
        if value is None:
            continue
        if gate.max_value is not None and value > gate.max_value:
            return f"gate {gate.metric} <= {gate.max_value:g} breached: {value:.4g}"
        if gate.min_value is not None and value < gate.min_value:
            return f"gate {gate.metric} >= {gate.min_value:g} breached: {value:.4g}"
    return None


# -- helpers --------------------------------------------------------------------------------


def _tensors(raw: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    tensors = {}
    for name, tensor in raw.items():
        try:
            dtype = numpy_dtype(str(tensor["datatype"]))
            shape = [int(d) for d in tensor["shape"]]
            tensors[name] = np.asarray(tensor["data"], dtype=dtype).reshape(shape)
        except (EdgeAgentError, ValueError) as exc:
            raise ValueError(f"custom.edgeloop.health.{where}.{name}: {exc}") from exc
    return tensors


def _p95_ms(
    engine: _Runnable, feeds: Mapping[str, np.ndarray], runs: int, clock: Callable[[], float]
) -> float:
    latencies = []
    for _ in range(max(runs, 1)):
        start = clock()
        engine.run(feeds)
        latencies.append((clock() - start) * 1000.0)
    return float(np.percentile(latencies, 95))
