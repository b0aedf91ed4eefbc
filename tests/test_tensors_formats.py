"""Tensor checks, quantization arithmetic and model-format recognition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import InputError, ModelFormatError, ModelLoadError
from edge_agent.formats import ModelFormat, detect_format
from edge_agent.tensors import (
    Quantization,
    TensorSpec,
    check_input,
    datatype_name,
    numpy_dtype,
)

F32 = np.dtype(np.float32)
IMAGE = TensorSpec("image", (-1, 8, 8, 1), F32, F32)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            np.zeros((1, 8, 8), np.float32),
            "shape [1, 8, 8] does not match the model's [?, 8, 8, 1]",
        ),
        (np.zeros((1, 8, 8, 2), np.float32), "shape [1, 8, 8, 2]"),
        (np.zeros((1, 8, 8, 1), np.int32), "dtype int32 does not match the model's FP32"),
        (np.zeros((1, 8, 8, 1), np.bool_), "dtype bool"),
        (np.array(["x"]), "dtype <U1"),
        ([[1.0]], "expected a numpy array, got list"),
    ],
)
def test_bad_inputs_name_the_tensor_and_the_problem(value: object, message: str) -> None:
    with pytest.raises(InputError) as info:
        check_input(IMAGE, value)
    assert "'image'" in str(info.value)
    assert message in str(info.value)


def test_any_batch_and_float64_are_accepted() -> None:
    out = check_input(IMAGE, np.ones((5, 8, 8, 1), np.float64))
    assert out.dtype == np.float32
    assert out.shape == (5, 8, 8, 1)


def test_quantization_round_trip_and_saturation() -> None:
    quant = Quantization(scale=1 / 255, zero_point=-128)
    values = np.array([0.0, 0.6, 1.0, 2.0, -1.0], np.float32)
    stored = quant.quantize(values, np.dtype(np.int8))
    assert stored.tolist() == [-128, 25, 127, 127, -128]
    assert np.allclose(quant.dequantize(stored)[:3], [0.0, 153 / 255, 1.0], atol=1e-6)


def test_datatype_names_follow_the_inference_protocol() -> None:
    assert datatype_name(np.float32) == "FP32"
    assert numpy_dtype("INT8") == np.int8
    with pytest.raises(InputError, match="unknown datatype 'FLOAT'"):
        numpy_dtype("FLOAT")


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_formats_are_recognised_by_suffix_and_bytes(tmp_path: Path) -> None:
    assert detect_format(_write(tmp_path, "m.onnx", b"\x08\x07rest")) is ModelFormat.ONNX
    assert detect_format(_write(tmp_path, "m.tflite", b"\x1c\0\0\0TFL3")) is ModelFormat.TFLITE
    assert detect_format(_write(tmp_path, "m.plan", b"ptrt")) is ModelFormat.TENSORRT_ENGINE


@pytest.mark.parametrize(
    ("name", "data", "error", "message"),
    [
        ("m.pt", b"x", ModelFormatError, "unknown model format '.pt'"),
        ("model", b"x", ModelFormatError, "'(no suffix)'"),
        ("m.onnx", b"", ModelLoadError, "model file is empty"),
        ("m.tflite", b"\x08\x07onnx-really", ModelLoadError, "not a TFLite flatbuffer"),
        ("m.onnx", b"\x1c\0\0\0TFL3", ModelLoadError, "not an ONNX model"),
    ],
)
def test_bad_model_files(
    tmp_path: Path, name: str, data: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        detect_format(_write(tmp_path, name, data))


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such model file"):
        detect_format(tmp_path / "absent.onnx")
