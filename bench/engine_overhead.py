"""What ``Engine.run`` costs over calling ONNX Runtime directly.

Both paths run the *same* ``InferenceSession`` on the *same* input arrays, alternating
call by call in one loop (see :func:`bench._harness.interleaved_ns`), so the ratio of the
two medians is the engine's own overhead: feed checks, dtype handling, error wrapping.
One function per measurement; each returns its figures, and :func:`run` joins them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.backends.onnx_runtime import OnnxRuntimeBackend
from edge_agent.engine import Engine

from ._harness import (
    PROFILE,
    Figure,
    Goal,
    figures_dict,
    interleaved_ns,
    log,
    p50_us,
    print_table,
    reference_dir,
)
from ._local_api import measure_http_over_inprocess

DIGITS = Path("digits-edge", "digits-edge-fp32.onnx")
MOBILENET = Path("mobilenetv2-speed", "mobilenetv2-speed-fp32.onnx")
DIGITS_GOAL = Goal("<=", 1.25)
MOBILENET_GOAL = Goal("<=", 1.05)
# (quick, full) iteration counts: each iteration times one engine call and one raw call.
DIGITS_ITERATIONS = (10_000, 100_000)
MOBILENET_ITERATIONS = (150, 1_500)
WARMUP = 20


def run(quick: bool) -> dict[str, object]:
    """Measure every model, print the table, return the figures."""
    models = reference_dir()
    figures = [
        *measure_digits(models, quick),
        *measure_mobilenet(models, quick),
        *measure_http_over_inprocess(models, quick),
    ]
    title = "Engine.run vs InferenceSession.run, and the local HTTP API vs Engine.run"
    print_table(f"engine_overhead: {title}, batch 1, {PROFILE}", figures)
    return figures_dict(figures)


def measure_digits(models: Path, quick: bool) -> list[Figure]:
    """The small model, where per-call overhead shows the most."""
    return _overhead("digits", models / DIGITS, _pick(DIGITS_ITERATIONS, quick), DIGITS_GOAL)


def measure_mobilenet(models: Path, quick: bool) -> list[Figure]:
    """A real-sized model, where overhead should vanish in the compute."""
    iterations = _pick(MOBILENET_ITERATIONS, quick)
    return _overhead("mobilenet", models / MOBILENET, iterations, MOBILENET_GOAL)


def _overhead(tag: str, path: Path, iterations: int, goal: Goal) -> list[Figure]:
    log(f"engine_overhead: {tag}: {path.name}, {iterations} interleaved pairs")
    with Engine.load(path, profile=PROFILE, backend="onnxruntime") as engine:
        engine_call, raw_call = paired_calls(engine)
        engine_ns, raw_ns = interleaved_ns([engine_call, raw_call], iterations, WARMUP)
    raw, wrapped = p50_us(raw_ns), p50_us(engine_ns)
    return [
        Figure(f"raw_p50_us_{tag}", f"{tag}: InferenceSession.run p50", raw, "us"),
        Figure(f"engine_p50_us_{tag}", f"{tag}: Engine.run p50", wrapped, "us"),
        Figure(f"ratio_p50_{tag}", f"{tag}: engine / raw", wrapped / raw, "x", goal),
    ]


def paired_calls(engine: Engine) -> tuple[Callable[[], object], Callable[[], object]]:
    """``engine.run`` and the raw session call on one session and one set of arrays."""
    backend = engine.backend
    if not isinstance(backend, OnnxRuntimeBackend):
        raise TypeError(f"engine_overhead needs onnxruntime, got {backend.name}")
    session = backend.session
    names = [spec.name for spec in engine.outputs]
    feeds = _batch_of_one(engine)
    _check_same_answer(engine.run(feeds), session.run(names, feeds), names)
    return (lambda: engine.run(feeds)), (lambda: session.run(names, feeds))


def _batch_of_one(engine: Engine) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        spec.name: rng.random([1 if d < 0 else d for d in spec.shape]).astype(spec.dtype)
        for spec in engine.inputs
    }


def _check_same_answer(
    wrapped: dict[str, np.ndarray], raw: list[np.ndarray], names: list[str]
) -> None:
    for name, value in zip(names, raw, strict=True):
        if not np.array_equal(wrapped[name], value):
            raise RuntimeError(f"engine and raw session disagree on output {name!r}")


def _pick(counts: tuple[int, int], quick: bool) -> int:
    return counts[0] if quick else counts[1]
