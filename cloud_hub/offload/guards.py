"""The checks a request passes before any of its tensors is decoded into memory.

Each transport first lists what a request *declares* (name, datatype, shape, and the
bytes it says follow, when it says) from the JSON head or the protobuf, and
:func:`check_declared` holds that against the model: every input known and given once,
every model input present, the model's exact datatype, the rank and fixed dimensions
(dim 0 is the batch and free, at least 1, the same for all inputs), the bytes the shape
implies matching the bytes sent, and all of it within the byte limit. Every error names
the tensor and what was wrong (:class:`~cloud_hub.errors.InvalidRequest`: 400 /
INVALID_ARGUMENT). Only then are tensors decoded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from edge_agent.tensors import TensorSpec, format_shape

from ..errors import InvalidRequest

__all__ = ["Declared", "check_declared", "declared_in_json"]


class Declared(NamedTuple):
    """One input as a request describes it, before its values are looked at."""

    name: str
    datatype: object
    shape: object
    nbytes: int | None  # the bytes the request says it sends; None: values inline as JSON


def check_declared(
    declared: Sequence[Declared], specs: Mapping[str, TensorSpec], max_bytes: int
) -> int:
    """Raise :class:`InvalidRequest` for the first input that is wrong; the request's rows."""
    seen: set[str] = set()
    total = 0
    rows: int | None = None
    for item in declared:
        where = f"input {item.name!r}"
        spec = specs.get(item.name)
        if spec is None:
            known = ", ".join(map(repr, specs))
            raise InvalidRequest(f"{where}: the model has no such input (it has {known})")
        if item.name in seen:
            raise InvalidRequest(f"{where}: given more than once")
        seen.add(item.name)
        if item.datatype != spec.datatype:
            raise InvalidRequest(
                f"{where}: datatype {item.datatype!r} does not match the model's {spec.datatype}"
            )
        shape = _shape(item.shape, where)
        if not spec.matches(shape):
            raise InvalidRequest(
                f"{where}: shape {format_shape(shape)} does not match the model's "
                f"{format_shape(spec.shape)}"
            )
        if shape and spec.shape and spec.shape[0] < 0:
            if shape[0] < 1:
                raise InvalidRequest(f"{where}: the batch dimension (dim 0) must be at least 1")
            if rows is not None and shape[0] != rows:
                raise InvalidRequest(
                    f"{where}: dim 0 is {shape[0]} but another input has {rows}; every input "
                    f"of a request needs the same batch size"
                )
            rows = shape[0]
        expected = math.prod(shape) * spec.dtype.itemsize
        if item.nbytes is not None and item.nbytes != expected:
            raise InvalidRequest(
                f"{where}: {item.nbytes} bytes sent, but shape {list(shape)} of "
                f"{spec.datatype} needs {expected}"
            )
        total += expected
        if total > max_bytes:
            raise InvalidRequest(
                f"{where}: {expected} bytes take the request's tensors to {total} bytes, over "
                f"this server's limit of {max_bytes}"
            )
    missing = [name for name in specs if name not in seen]
    if missing:
        raise InvalidRequest(f"input {missing[0]!r}: the model needs it but the request lacks it")
    return rows if rows is not None else 1


def _shape(raw: object, where: str) -> tuple[int, ...]:
    if isinstance(raw, list | tuple) and all(type(d) is int and d >= 0 for d in raw):
        return tuple(raw)
    raise InvalidRequest(f"{where}: 'shape' must be a list of non-negative integers, got {raw!r}")


# -- the JSON head of an HTTP request ----------------------------------------------------

_MEMO: dict[bytes, tuple[Declared, ...]] = {}
_MEMO_MAX = 256
_MEMO_KEY_MAX = 8 * 1024


def declared_in_json(header: bytes | bytearray | memoryview) -> tuple[Declared, ...]:
    """What an OIP v2 JSON head declares (memoized for small, binary-only heads)."""
    key = bytes(header) if len(header) <= _MEMO_KEY_MAX else None
    found = _MEMO.get(key) if key is not None else None
    if found is not None:
        return found
    try:
        body = json.loads(key if key is not None else bytes(header))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request: body is not valid JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidRequest("request: body must be a JSON object with an 'inputs' list")
    declared = tuple(_declared(raw, index) for index, raw in enumerate(body["inputs"]))
    if key is not None and all(item.nbytes is not None for item in declared):
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[key] = declared
    return declared


def _declared(raw: Any, index: int) -> Declared:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidRequest(f"input #{index}: must be a JSON object with a string 'name'")
    parameters = raw.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None and (type(size) is not int or size < 0):
        raise InvalidRequest(
            f"input {raw['name']!r}: binary_data_size must be a non-negative integer"
        )
    return Declared(raw["name"], raw.get("datatype"), raw.get("shape"), size)
