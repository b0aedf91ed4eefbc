"""One tensor's values on the wire: JSON ``data`` lists and raw little-endian bytes.

Pure functions between numpy arrays and the Open Inference Protocol's two encodings of
tensor values, shared by requests and responses (see :mod:`edge_agent.server.codec`).
Raw bytes are little-endian, row-major and unpadded; BOOL is one byte per element; a BYTES
element is a 4-byte little-endian length and then its bytes. BYTES tensors are numpy
object arrays of ``bytes``.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np

from ..errors import InputError

Buffer: TypeAlias = bytes | bytearray | memoryview

_NUMERIC: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_KIND_TO_DATATYPE = {(dt.kind, dt.itemsize): name for name, dt in _NUMERIC.items()}
#: Every datatype handled here; BYTES tensors are numpy object arrays of ``bytes``.
DATATYPES = (*_NUMERIC, "BYTES")
#: The typed ``contents`` field of the gRPC protocol's tensors for each datatype (FP16
#: and BF16 have none: they travel in the raw contents only).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LENGTH = struct.Struct("<I")
_NATIVE_LITTLE = sys.byteorder == "little"
_SMALL = 64 * 1024  # outputs up to this size are copied to bytes: cheaper than a view


# -- datatypes ---------------------------------------------------------------------------


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of ``array`` (object arrays are BYTES)."""
    if array.dtype.kind == "O":
        return "BYTES"
    name = _KIND_TO_DATATYPE.get((array.dtype.kind, array.dtype.itemsize))
    if name is None:
        raise InputError(f"numpy dtype {array.dtype} has no inference-protocol datatype")
    return name


def dtype_for(datatype: object, where: str) -> np.dtype | None:
    """The numpy dtype for ``datatype`` (None for BYTES), or InputError naming ``where``."""
    if datatype == "BYTES":
        return None
    if isinstance(datatype, str) and datatype in _NUMERIC:
        return _NUMERIC[datatype]
    raise InputError(
        f"{where}: unsupported datatype {datatype!r} (expected one of {', '.join(DATATYPES)})"
    )


# -- tensors: JSON -----------------------------------------------------------------------


def array_from_json(
    data: object,
    shape: Sequence[int],
    dtype: np.dtype | None,
    where: str,
    *,
    source: str = "'data'",
) -> np.ndarray:
    """A tensor from JSON ``data`` (flat or nested); ``dtype`` None means BYTES.

    Also the gRPC protocol's typed ``contents`` (a flat list, named by ``source`` in
    errors): the same checks, integers that must fit and an element count to match.
    """
    if not isinstance(data, list):
        data = [data]
    try:
        if dtype is None:
            values = _bytes_elements(np.asarray(data, dtype=object).ravel(), where)
        elif dtype.kind == "f":
            values = np.asarray(data, dtype=dtype).ravel()
        else:
            values = _exact(np.asarray(data).ravel(), dtype, where)
    except (ValueError, TypeError, OverflowError) as exc:
        kind = "BYTES" if dtype is None else _KIND_TO_DATATYPE[(dtype.kind, dtype.itemsize)]
        raise InputError(f"{where}: {source} is not a {kind} tensor ({exc})") from None
    count = math.prod(shape)
    if values.size != count:
        raise InputError(
            f"{where}: shape {list(shape)} holds {count} elements but {source} has {values.size}"
        )
    return values.reshape(shape)


def _exact(values: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """Integer and BOOL data must be given as such: no silent truncation."""
    name = _KIND_TO_DATATYPE[(dtype.kind, dtype.itemsize)]
    if values.size == 0:
        return values.astype(dtype)
    if dtype.kind == "b":
        if values.dtype.kind != "b":
            raise InputError(f"{where}: BOOL data must be true/false, got {values.dtype} values")
        return values
    if values.dtype.kind not in "iu":
        raise InputError(f"{where}: {name} data must be integers, got {values.dtype} values")
    info = np.iinfo(dtype)
    low, high = int(values.min()), int(values.max())
    if low < info.min or high > info.max:
        raise InputError(
            f"{where}: values from {low} to {high} do not fit {name} ({info.min}..{info.max})"
        )
    return values.astype(dtype)


def _bytes_elements(values: np.ndarray, where: str) -> np.ndarray:
    out = np.empty(values.size, dtype=object)
    for i, item in enumerate(values):
        if not isinstance(item, str):
            raise InputError(f"{where}: BYTES data must be strings, got {type(item).__name__}")
        out[i] = item.encode("utf-8")
    return out


def array_to_json(array: np.ndarray, where: str) -> list[Any]:
    """A tensor's flat ``data`` list (BYTES elements must be UTF-8 text)."""
    if array.dtype.kind != "O":
        return array.ravel().tolist()
    out = []
    for item in array.ravel():
        try:
            out.append(item.decode("utf-8") if isinstance(item, bytes) else str(item))
        except UnicodeDecodeError:
            raise InputError(
                f"{where}: holds bytes that are not UTF-8 text; request it with binary_data"
            ) from None
    return out


# -- tensors: binary ---------------------------------------------------------------------


def array_from_binary(
    chunk: Buffer, shape: Sequence[int], dtype: np.dtype | None, where: str
) -> np.ndarray:
    """A tensor over the raw bytes ``chunk``: a view when aligned, else a copy."""
    count = math.prod(shape)
    if dtype is None:
        return _deserialize_bytes(memoryview(chunk).cast("B"), count, where).reshape(shape)
    size = memoryview(chunk).nbytes
    expected = count * dtype.itemsize
    if size != expected:
        datatype = _KIND_TO_DATATYPE[(dtype.kind, dtype.itemsize)]
        raise InputError(
            f"{where}: binary_data_size is {size} bytes but shape {list(shape)} of "
            f"{datatype} needs {expected}"
        )
    array = np.frombuffer(chunk, dtype=dtype, count=count)
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def array_to_binary(array: np.ndarray) -> Buffer:
    """The raw little-endian bytes of ``array``, without a copy where it is already so."""
    if array.dtype.kind == "O":
        return _serialize_bytes(array)
    if array.nbytes <= _SMALL and _little_endian(array.dtype):
        return array.tobytes()  # C order whatever the strides
    little = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    contiguous = np.ascontiguousarray(array, dtype=little)
    return contiguous.data.cast("B")


def _little_endian(dtype: np.dtype) -> bool:
    order = dtype.byteorder
    return order in "<|" or (order == "=" and _NATIVE_LITTLE)


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _deserialize_bytes(view: memoryview, count: int, where: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InputError(f"{where}: BYTES data ends inside element {i} of {count}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InputError(f"{where}: BYTES element {i} runs past binary_data_size")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InputError(
            f"{where}: binary_data_size is {len(view)} bytes but its {count} BYTES "
            f"elements use {offset}"
        )
    return out
