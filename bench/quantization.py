"""What int8 buys and costs: speed-up on MobileNetV2, accuracy on held-out digits.

Speed: fp32 and int8 of ``mobilenetv2-speed`` on one backend, alternating call by call
(batch 1), median of each; the speed-up is fp32 / int8, so above 1 means int8 is faster.
Accuracy: every held-out digit through the fp32 ONNX, int8 ONNX and int8 TFLite models;
accuracies are computed here by running the models, not read from the model cards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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

MOBILENET = Path("mobilenetv2-speed")
DIGITS = Path("digits-edge")
HELDOUT = Path("data", "digits-heldout.npz")
# (figure key suffix, file name suffix) of the digits models whose accuracy is compared.
VARIANTS = (("onnx_fp32", "fp32.onnx"), ("onnx_int8", "int8.onnx"), ("tflite_int8", "int8.tflite"))
AGREE_GOAL = Goal(">=", 0.99)
DROP_GOAL = Goal("<=", 1.0)
# (quick, full) iteration counts: each iteration times one fp32 and one int8 call.
ONNX_ITERATIONS = (100, 1_000)
TFLITE_ITERATIONS = (150, 1_500)
WARMUP = 10


def run(quick: bool) -> dict[str, object]:
    """Measure speed and accuracy, print the table, return the figures."""
    models = reference_dir()
    figures = [
        *measure_speedup(models, "onnx", "onnxruntime", _pick(ONNX_ITERATIONS, quick)),
        *measure_speedup(models, "tflite", "litert", _pick(TFLITE_ITERATIONS, quick)),
        *measure_accuracy(models),
    ]
    print_table(f"quantization: int8 vs fp32, {PROFILE}", figures)
    return figures_dict(figures)


def measure_speedup(models: Path, fmt: str, backend: str, iterations: int) -> list[Figure]:
    """fp32 / int8 median latency of MobileNetV2 in ``fmt`` on ``backend``, interleaved."""
    log(f"quantization: mobilenetv2-speed {fmt} fp32 vs int8, {iterations} interleaved pairs")
    paths = [models / MOBILENET / f"mobilenetv2-speed-{p}.{fmt}" for p in ("fp32", "int8")]
    engines = [Engine.load(path, profile=PROFILE, backend=backend) for path in paths]
    try:
        feeds = _random_batch_of_one(engines[0])
        calls = [lambda e=engine: e.run(feeds) for engine in engines]
        fp32_ns, int8_ns = interleaved_ns(calls, iterations, WARMUP)
    finally:
        for engine in engines:
            engine.close()
    fp32, int8 = p50_us(fp32_ns) / 1e3, p50_us(int8_ns) / 1e3
    return [
        Figure(f"p50_ms_{fmt}_fp32", f"mobilenet {fmt} fp32 p50", fp32, "ms"),
        Figure(f"p50_ms_{fmt}_int8", f"mobilenet {fmt} int8 p50", int8, "ms"),
        Figure(f"int8_speedup_{fmt}", f"mobilenet {fmt} int8 speed-up", fp32 / int8, "x"),
    ]


def measure_accuracy(models: Path) -> list[Figure]:
    """Held-out accuracy of each digits model, int8 top-1 agreement and the worst drop."""
    with np.load(models / HELDOUT) as data:
        x, y = data["x"], data["y"]
    log(f"quantization: {len(y)} held-out digits through fp32/int8 ONNX and int8 TFLite")
    top1 = {key: _top1(models / DIGITS / f"digits-edge-{file}", x) for key, file in VARIANTS}
    acc = {key: float(np.mean(predicted == y)) for key, predicted in top1.items()}
    drop = 100 * max(acc["onnx_fp32"] - acc["onnx_int8"], acc["onnx_fp32"] - acc["tflite_int8"])
    agreement = float(np.mean(top1["onnx_int8"] == top1["tflite_int8"]))
    return [
        *(
            Figure(f"accuracy_{key}", f"digits {key.replace('_', ' ')} accuracy", acc[key], "frac")
            for key, _ in VARIANTS
        ),
        Figure("int8_accuracy_drop_pt", "worst int8 accuracy drop", drop, "pt", DROP_GOAL),
        Figure(
            "int8_top1_agreement", "int8 onnx/tflite top-1 agree", agreement, "frac", AGREE_GOAL
        ),
    ]


def _top1(path: Path, x: np.ndarray) -> np.ndarray:
    """Top-1 class of every row of ``x``, on the backend the profile picks for ``path``."""
    with Engine.load(path, profile=PROFILE) as engine:
        scores = engine.run({engine.inputs[0].name: x})[engine.outputs[0].name]
    return np.asarray(scores.reshape(len(x), -1).argmax(axis=1))


def _random_batch_of_one(engine: Engine) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        spec.name: rng.uniform(-1, 1, [1 if d < 0 else d for d in spec.shape]).astype(spec.dtype)
        for spec in engine.inputs
    }


def _pick(counts: tuple[int, int], quick: bool) -> int:
    return counts[0] if quick else counts[1]
