"""Int8 models agree with each other and lose at most one point against fp32.

Measured through the engine, on the held-out digits the models never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent import Engine


def _predict(path: Path, x: np.ndarray) -> np.ndarray:
    with Engine.load(path, profile="x86-64-cpu") as engine:
        scores = engine.run({"image": x})["probabilities"]
    return np.asarray(scores.argmax(axis=1))


def test_int8_agreement_and_accuracy(
    reference_dir: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    assert len(y) >= 400
    fp32 = _predict(reference_dir / "digits-edge/digits-edge-fp32.onnx", x)
    onnx_int8 = _predict(reference_dir / "digits-edge/digits-edge-int8.onnx", x)
    tflite_int8 = _predict(reference_dir / "digits-edge/digits-edge-int8.tflite", x)

    agreement = float((onnx_int8 == tflite_int8).mean())
    assert agreement >= 0.99, f"ONNX int8 and TFLite int8 agree on only {agreement:.2%}"

    accuracy = {
        name: float((p == y).mean())
        for name, p in {"fp32": fp32, "onnx-int8": onnx_int8, "tflite-int8": tflite_int8}.items()
    }
    for name in ("onnx-int8", "tflite-int8"):
        drop_pt = 100 * (accuracy["fp32"] - accuracy[name])
        assert drop_pt <= 1.0, f"{name} loses {drop_pt:.2f} points against fp32: {accuracy}"
    assert accuracy["fp32"] >= 0.95


def test_cloud_model_is_larger_and_more_accurate(
    reference_dir: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    edge_path = reference_dir / "digits-edge/digits-edge-fp32.onnx"
    cloud_path = reference_dir / "digits-cloud/digits-cloud-fp32.onnx"
    edge = float((_predict(edge_path, x) == y).mean())
    cloud = float((_predict(cloud_path, x) == y).mean())
    assert cloud > edge
    assert cloud_path.stat().st_size > 20 * edge_path.stat().st_size
