"""Tensor descriptions shared by every backend, the local API and offload.

Datatype names follow the Open Inference Protocol v2 (``FP32``, ``INT8``, ...), so a
:class:`TensorSpec` converts directly into model metadata on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

_DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NUMPY_TO_DATATYPE = {dtype: name for name, dtype in _DATATYPE_TO_NUMPY.items()}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for an Open Inference Protocol datatype name such as ``"FP32"``."""
    try:
        return _DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        known = ", ".join(_DATATYPE_TO_NUMPY)
        raise InputError(f"unknown datatype {datatype!r} (expected one of {known})") from None


def datatype_name(dtype: np.dtype | type) -> str:
    """The Open Inference Protocol datatype name for a numpy dtype."""
    try:
        return _NUMPY_TO_DATATYPE[np.dtype(dtype)]
    except KeyError:
        raise InputError(f"dtype {np.dtype(dtype)} has no inference-protocol datatype") from None


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: ``real = scale * (stored - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, values: np.ndarray, stored: np.dtype) -> np.ndarray:
        info = np.iinfo(stored)
        scaled = np.rint(values / self.scale) + self.zero_point
        return np.clip(scaled, info.min, info.max).astype(stored)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        return (values.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as callers see it.

    ``shape`` uses -1 for a dimension the model leaves open (usually the batch).
    ``dtype`` is what callers pass and receive; ``stored_dtype`` is what the model
    holds. They differ only for quantized tensors, which the backend converts.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stored_dtype: np.dtype
    quantization: Quantization | None = None

    @property
    def datatype(self) -> str:
        return datatype_name(self.dtype)

    def matches(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        # A plain loop: this runs on every request, and a generator costs a microsecond.
        for want, got in zip(self.shape, shape, strict=False):  # lengths checked above
            if want >= 0 and want != got:
                return False
        return True

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def format_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join("?" if dim < 0 else str(dim) for dim in shape) + "]"


def check_input(spec: TensorSpec, value: object) -> np.ndarray:
    """Return ``value`` as an array the model accepts, or raise :class:`InputError`.

    The dtype kind must match (a float tensor takes any float array, an integer
    tensor any integer array); the shape must match every fixed dimension.
    """
    if not isinstance(value, np.ndarray):
        raise InputError(f"input {spec.name!r}: expected a numpy array, got {type(value).__name__}")
    if value.dtype != spec.dtype:
        if not _same_kind(value.dtype, spec.dtype):
            raise InputError(
                f"input {spec.name!r}: dtype {value.dtype} does not match the model's "
                f"{spec.datatype}"
            )
        value = value.astype(spec.dtype)
    if not spec.matches(value.shape):
        raise InputError(
            f"input {spec.name!r}: shape {format_shape(value.shape)} does not match the "
            f"model's {format_shape(spec.shape)}"
        )
    return value


def _same_kind(got: np.dtype, want: np.dtype) -> bool:
    kinds = {"f": "f", "i": "i", "u": "i", "b": "b"}
    return kinds.get(got.kind) == kinds.get(want.kind) and got.kind in kinds
