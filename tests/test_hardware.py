"""Accelerator paths. Each test is marked and skips with a reason where the hardware is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent import Engine
from edge_agent.backends import BackendOptions, backend_class


@pytest.mark.gpu
def test_onnxruntime_cuda_matches_cpu(
    reference_dir: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = heldout
    model = reference_dir / "digits-edge/digits-edge-fp32.onnx"
    cuda = backend_class("onnxruntime")(
        model, BackendOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    )
    assert cuda.accelerators[0] == "CUDAExecutionProvider"
    cpu = backend_class("onnxruntime")(model)
    assert np.allclose(
        cuda.run({"image": x})["probabilities"], cpu.run({"image": x})["probabilities"], atol=1e-4
    )


@pytest.mark.tensorrt
def test_tensorrt_builds_caches_and_matches_onnxruntime(
    reference_dir: Path, tmp_path: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = heldout
    model = reference_dir / "digits-edge/digits-edge-fp32.onnx"
    options = BackendOptions(cache_dir=tmp_path)
    first = backend_class("tensorrt")(model, options)
    cached = list(tmp_path.glob("*.engine"))
    assert len(cached) == 1 and "_trt" in cached[0].name
    out = first.run({"image": x[:16]})["probabilities"]
    first.close()
    # A second load reuses the cached engine, and a saved .engine loads directly.
    second = backend_class("tensorrt")(model, options)
    plan = backend_class("tensorrt")(cached[0].rename(tmp_path / "digits.plan"), options)
    reference = backend_class("onnxruntime")(model).run({"image": x[:16]})["probabilities"]
    assert np.array_equal(out.argmax(1), reference.argmax(1))
    assert np.allclose(second.run({"image": x[:16]})["probabilities"], out, atol=1e-3)
    assert plan.run({"image": x[:4]})["probabilities"].shape == (4, 10)


@pytest.mark.tensorrt
def test_tensorrt_runs_the_int8_qdq_model(
    reference_dir: Path, tmp_path: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    backend = backend_class("tensorrt")(
        reference_dir / "digits-edge/digits-edge-int8.onnx", BackendOptions(cache_dir=tmp_path)
    )
    predictions = backend.run({"image": x[:32]})["probabilities"].argmax(1)
    assert (predictions == y[:32]).mean() > 0.9


@pytest.mark.coral
def test_edgetpu_delegate_is_used_on_a_coral(reference_dir: Path) -> None:
    engine = Engine.load(
        reference_dir / "digits-edge/digits-edge-int8.tflite", profile="raspberry-pi-coral-usb"
    )
    assert "edgetpu" in engine.backend.accelerators
