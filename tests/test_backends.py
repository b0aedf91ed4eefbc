"""The ONNX Runtime and LiteRT backends on the real reference models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.backends import BackendOptions, backend_class
from edge_agent.backends.onnx_runtime import OnnxRuntimeBackend
from edge_agent.errors import BackendError, BackendUnavailable, InputError, ModelLoadError

DIGITS = {
    "onnx-fp32": ("onnxruntime", "digits-edge/digits-edge-fp32.onnx"),
    "onnx-int8": ("onnxruntime", "digits-edge/digits-edge-int8.onnx"),
    "tflite-int8": ("litert", "digits-edge/digits-edge-int8.tflite"),
}


@pytest.mark.parametrize("variant", sorted(DIGITS))
def test_float_in_float_out_on_every_variant(
    reference_dir: Path, heldout: tuple[np.ndarray, np.ndarray], variant: str
) -> None:
    backend_name, file = DIGITS[variant]
    x, y = heldout
    with backend_class(backend_name)(reference_dir / file, BackendOptions()) as backend:
        assert [s.name for s in backend.inputs] == ["image"]
        assert [s.name for s in backend.outputs] == ["probabilities"]
        assert backend.inputs[0].shape == (-1, 8, 8, 1)
        assert backend.inputs[0].datatype == "FP32"
        out = backend.run({"image": x[:7]})["probabilities"]
        assert out.dtype == np.float32 and out.shape == (7, 10)
        assert np.allclose(out.sum(axis=1), 1.0, atol=0.02)
        # Changing the batch size works (LiteRT resizes its tensors), and so does going back.
        whole = backend.run({"image": x})["probabilities"]
        assert (whole.argmax(axis=1) == y).mean() > 0.95
        again = backend.run({"image": x[:7]})["probabilities"]
        assert np.allclose(again, out)


def test_tflite_int8_tensors_are_quantized_by_the_backend(reference_dir: Path) -> None:
    backend = backend_class("litert")(reference_dir / DIGITS["tflite-int8"][1])
    spec = backend.inputs[0]
    assert spec.stored_dtype == np.int8 and spec.quantization is not None
    assert backend.outputs[0].stored_dtype == np.int8
    backend.close()


@pytest.mark.parametrize("variant", sorted(DIGITS))
@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"image": np.zeros((1, 8, 8), np.float32)}, "shape [1, 8, 8]"),
        ({"image": np.zeros((1, 8, 8, 1), np.int64)}, "dtype int64"),
        ({"pixels": np.zeros((1, 8, 8, 1), np.float32)}, "missing input(s) 'image'"),
        ({}, "missing input(s) 'image'"),
    ],
)
def test_bad_feeds_are_refused_before_the_runtime(
    reference_dir: Path, variant: str, feeds: dict[str, np.ndarray], message: str
) -> None:
    backend_name, file = DIGITS[variant]
    with backend_class(backend_name)(reference_dir / file) as backend:
        with pytest.raises(InputError) as info:
            backend.run(feeds)
        assert message in str(info.value)


def test_input_byte_cap(reference_dir: Path) -> None:
    options = BackendOptions(max_input_bytes=1000)
    with backend_class("onnxruntime")(reference_dir / DIGITS["onnx-fp32"][1], options) as b:
        b.run({"image": np.zeros((1, 8, 8, 1), np.float32)})  # 256 bytes: fine
        with pytest.raises(InputError, match="over the limit of 1000"):
            b.run({"image": np.zeros((4, 8, 8, 1), np.float32)})


def _corrupt(source: Path, target: Path, how: str) -> Path:
    data = bytearray(source.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 3]
    else:  # garbage after the header
        rng = np.random.default_rng(0)
        data[16:] = rng.integers(0, 256, len(data) - 16, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("variant", sorted(DIGITS))
@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_corrupt_models_raise_model_load_error(
    reference_dir: Path, tmp_path: Path, variant: str, how: str
) -> None:
    backend_name, file = DIGITS[variant]
    broken = _corrupt(reference_dir / file, tmp_path / Path(file).name, how)
    with pytest.raises(ModelLoadError) as info:
        backend_class(backend_name)(broken)
    assert broken.name in str(info.value)
    assert backend_name in str(info.value)


def test_closed_backend_refuses_to_run(reference_dir: Path) -> None:
    backend = backend_class("onnxruntime")(reference_dir / DIGITS["onnx-fp32"][1])
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.run({"image": np.zeros((1, 8, 8, 1), np.float32)})


def test_onnxruntime_threads_come_from_options_and_never_spin(reference_dir: Path) -> None:
    options = BackendOptions(intra_op_threads=2, inter_op_threads=1)
    backend = backend_class("onnxruntime")(reference_dir / DIGITS["onnx-fp32"][1], options)
    assert isinstance(backend, OnnxRuntimeBackend)
    opts = backend.session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    backend.close()


def test_onnxruntime_without_any_wanted_provider(reference_dir: Path) -> None:
    options = BackendOptions(providers=("CUDAExecutionProvider",))
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("this host has CUDA")
    with pytest.raises(BackendUnavailable, match="none of the providers"):
        backend_class("onnxruntime")(reference_dir / DIGITS["onnx-fp32"][1], options)


def test_unknown_backend_name() -> None:
    with pytest.raises(BackendUnavailable, match="unknown backend 'openvino'"):
        backend_class("openvino")
