"""Open Inference Protocol v2 over JSON, with the binary tensor data extension.

Pure functions from bytes to numpy arrays and back: no sockets, no model. The agent's
local HTTP server uses them, and the hub's offload server can reuse them as they are.

Wire facts (KServe v2 REST and Triton's ``binary_tensor_data`` extension):

* A request body is a JSON object, optionally followed by raw tensor bytes. When bytes
  follow, the HTTP header ``Inference-Header-Content-Length`` says how long the JSON part
  is; each input that travels as bytes carries ``parameters.binary_data_size`` instead of
  ``data``, and the inputs' bytes follow one another in the order the inputs are listed.
* Raw tensor bytes are little-endian, row-major and unpadded; BOOL is one byte per element;
  a BYTES element is a 4-byte little-endian length followed by that many bytes.
* An output is returned as bytes when its ``parameters.binary_data`` is true, or, when it
  does not say, when the request's ``parameters.binary_data_output`` is true. The response
  then carries ``parameters.binary_data_size`` on those outputs and the same header.
* JSON ``data`` may be flat or nested (row-major either way).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..errors import InputError
from .tensor_codec import (
    DATATYPES,
    Buffer,
    array_from_binary,
    array_from_json,
    array_to_binary,
    array_to_json,
    datatype_of,
    dtype_for,
)

__all__ = [
    "BINARY_EXTENSION",
    "DATATYPES",
    "HEADER_LENGTH",
    "Buffer",
    "EncodedResponse",
    "InferenceRequest",
    "OutputRequest",
    "array_from_binary",
    "array_from_json",
    "array_to_binary",
    "array_to_json",
    "datatype_of",
    "decode_request",
    "encode_error",
    "encode_json",
    "encode_response",
    "output_plan",
]

#: HTTP header giving the length of the JSON part of a body that has binary tensors after it.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: The extension name a server lists in its metadata.
BINARY_EXTENSION = "binary_tensor_data"


_EMPTY = memoryview(b"")
_NO_PARAMETERS: dict[str, Any] = {}


class OutputRequest(NamedTuple):
    """One entry of a request's ``outputs``: a name and whether it should come back as bytes.

    ``binary`` is None when the entry does not say (the request-level default applies).
    """

    name: str
    binary: bool | None = None


class InferenceRequest(NamedTuple):
    """A decoded inference request.

    ``inputs`` keeps the request's order; ``outputs`` is None when the request names none
    (every model output is wanted); ``binary_output`` is ``parameters.binary_data_output``.
    """

    inputs: dict[str, np.ndarray]
    outputs: tuple[OutputRequest, ...] | None = None
    binary_output: bool = False
    id: str | None = None
    parameters: Mapping[str, Any] | None = None


class EncodedResponse(NamedTuple):
    """A response body as buffers to write one after another.

    ``header_length`` is the JSON part's length when binary outputs follow it (send it as
    :data:`HEADER_LENGTH`), and None when the body is JSON only.
    """

    chunks: tuple[Buffer, ...]
    header_length: int | None

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)  # memoryviews here are byte-shaped


# -- requests ----------------------------------------------------------------------------


def decode_request(header: Buffer, binary: Buffer | None = None) -> InferenceRequest:
    """Decode a request from its JSON part and the binary bytes that followed it (if any).

    Binary inputs become arrays over ``binary`` without a copy when it is writable and
    aligned (pass a ``bytearray``); otherwise they are copied. Raises :class:`InputError`
    naming the tensor and what is wrong.
    """
    layout = _layout(header)
    view = memoryview(binary).cast("B") if binary is not None else _EMPTY
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in layout.inputs:
        if item.size is None:
            inputs[item.name] = array_from_json(item.data, item.shape, item.dtype, item.where)
            continue
        end = offset + item.size
        if end > len(view):
            raise InputError(
                f"{item.where}: binary_data_size {item.size} runs past the end of the binary "
                f"data ({len(view) - offset} bytes left)"
            )
        inputs[item.name] = array_from_binary(view[offset:end], item.shape, item.dtype, item.where)
        offset = end
    if offset != len(view):
        raise InputError(
            f"request: {len(view)} bytes of binary tensor data follow the JSON, but the "
            f"inputs' binary_data_size add up to {offset}"
        )
    return InferenceRequest(
        inputs, layout.outputs, layout.binary_output, layout.id, layout.parameters
    )


class _Input(NamedTuple):
    name: str
    where: str  # "input 'name'", for messages
    shape: tuple[int, ...]
    dtype: np.dtype | None  # None for BYTES
    size: int | None  # binary_data_size; None when the values are in ``data``
    data: Any


class _Layout(NamedTuple):
    """A request's JSON part without the tensor values that follow it."""

    inputs: tuple[_Input, ...]
    outputs: tuple[OutputRequest, ...] | None
    binary_output: bool
    id: str | None
    parameters: Mapping[str, Any]


# Clients that send binary tensors send the same JSON part again and again: its layout is
# kept (a memo of a pure function, bounded, safe to share between threads).
_LAYOUTS: dict[bytes, _Layout] = {}
_LAYOUTS_MAX = 128
_LAYOUT_KEY_MAX = 8 * 1024


def _layout(header: Buffer) -> _Layout:
    key = header if isinstance(header, bytes) else bytes(header)
    layout = _LAYOUTS.get(key)
    if layout is not None:
        return layout
    layout = _parse_layout(key)
    if len(key) <= _LAYOUT_KEY_MAX and all(item.size is not None for item in layout.inputs):
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


def _parse_layout(header: bytes) -> _Layout:
    body = _parse_json(header)
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InputError("request: 'inputs' must be a non-empty list of tensors")
    inputs = tuple(_decode_input(raw, index) for index, raw in enumerate(raw_inputs))
    names = [item.name for item in inputs]
    for name in names:
        if names.count(name) > 1:
            raise InputError(f"input {name!r}: given more than once")
    parameters = body.get("parameters") or _NO_PARAMETERS
    if not isinstance(parameters, dict):
        raise InputError("request: 'parameters' must be a JSON object")
    return _Layout(
        inputs=inputs,
        outputs=_decode_outputs(body.get("outputs")),
        binary_output=_flag(parameters.get("binary_data_output"), "binary_data_output"),
        id=_request_id(body.get("id")),
        parameters=parameters,
    )


def _parse_json(header: bytes) -> dict[str, Any]:
    try:
        body = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"request: body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InputError(f"request: body must be a JSON object, got {type(body).__name__}")
    return body


def _decode_input(raw: object, index: int) -> _Input:
    if not isinstance(raw, dict):
        raise InputError(f"input #{index}: must be a JSON object, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"input #{index}: 'name' must be a non-empty string")
    where = f"input {name!r}"
    shape = _shape(raw.get("shape"), where)
    dtype = dtype_for(raw.get("datatype"), where)
    parameters = raw.get("parameters") or _NO_PARAMETERS
    if not isinstance(parameters, dict):
        raise InputError(f"{where}: 'parameters' must be a JSON object")
    if "shared_memory_region" in parameters:
        raise InputError(f"{where}: the shared-memory extension is not supported")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise InputError(f"{where}: has neither 'data' nor parameters.binary_data_size")
        return _Input(name, where, shape, dtype, None, raw["data"])
    if "data" in raw:
        raise InputError(f"{where}: has both 'data' and parameters.binary_data_size")
    if type(size) is not int or size < 0:
        raise InputError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
    return _Input(name, where, shape, dtype, size, None)


def _decode_outputs(raw: object) -> tuple[OutputRequest, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InputError("request: 'outputs' must be a list")
    wanted: list[OutputRequest] = []
    for index, output in enumerate(raw):
        if not isinstance(output, dict):
            raise InputError(f"output #{index}: must be a JSON object, got {type(output).__name__}")
        name = output.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"output #{index}: 'name' must be a non-empty string")
        parameters = output.get("parameters") or _NO_PARAMETERS
        if not isinstance(parameters, dict):
            raise InputError(f"output {name!r}: 'parameters' must be a JSON object")
        if parameters.get("classification"):
            raise InputError(f"output {name!r}: the classification extension is not supported")
        if "shared_memory_region" in parameters:
            raise InputError(f"output {name!r}: the shared-memory extension is not supported")
        binary = parameters.get("binary_data")
        wanted.append(OutputRequest(name, None if binary is None else _flag(binary, name)))
    return tuple(wanted)


def _shape(raw: object, where: str) -> tuple[int, ...]:
    if isinstance(raw, list):
        for dim in raw:
            if type(dim) is not int or dim < 0:  # JSON gives exact ints; bool is not one
                break
        else:
            return tuple(raw)
    raise InputError(f"{where}: 'shape' must be a list of non-negative integers, got {raw!r}")


def _flag(raw: object, where: str) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise InputError(f"{where}: binary_data flags must be true or false, got {raw!r}")
    return raw


def _request_id(raw: object) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    raise InputError(f"request: 'id' must be a string, got {type(raw).__name__}")


# -- responses ---------------------------------------------------------------------------


def output_plan(request: InferenceRequest, model_outputs: Sequence[str]) -> list[tuple[str, bool]]:
    """Which outputs to return, in order, and whether each goes as bytes."""
    default = request.binary_output
    if request.outputs is None:
        return [(name, default) for name in model_outputs]
    known = set(model_outputs)
    plan: list[tuple[str, bool]] = []
    for wanted in request.outputs:
        if wanted.name not in known:
            raise InputError(
                f"output {wanted.name!r}: the model has no such output "
                f"(it has {', '.join(map(repr, model_outputs))})"
            )
        plan.append((wanted.name, default if wanted.binary is None else wanted.binary))
    return plan


def encode_response(
    outputs: Mapping[str, np.ndarray],
    plan: Sequence[tuple[str, bool]],
    *,
    model_name: str,
    model_version: str,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> EncodedResponse:
    """The response body for ``outputs``, each as JSON or bytes as ``plan`` says;
    ``parameters`` become the response-level ``parameters`` object."""
    tensors: list[bytes] = []
    binaries: list[Buffer] = []
    for name, binary in plan:
        array = outputs[name]
        datatype = datatype_of(array)
        if binary:
            raw = array_to_binary(array)
            binaries.append(raw)
            tensors.append(_binary_output(name, datatype, array.shape, len(raw)))
        else:
            data = array_to_json(array, f"output {name!r}")
            tensor = {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}
            tensors.append(encode_json(tensor))
    parts = [_response_prefix(model_name, model_version)]
    if request_id is not None:
        parts += (b'"id":', encode_json(request_id), b",")
    if parameters:
        parts += (b'"parameters":', encode_json(parameters), b",")
    parts += (b'"outputs":[', b",".join(tensors), b"]}")
    header = b"".join(parts)
    if not binaries:
        return EncodedResponse((header,), None)
    return EncodedResponse((header, *binaries), len(header))


@functools.lru_cache(maxsize=16)
def _response_prefix(model_name: str, model_version: str) -> bytes:
    names = encode_json({"model_name": model_name, "model_version": model_version})
    return names[:-1] + b","  # the object stays open for the outputs


@functools.lru_cache(maxsize=256)
def _binary_output(name: str, datatype: str, shape: tuple[int, ...], size: int) -> bytes:
    return encode_json(
        {
            "name": name,
            "datatype": datatype,
            "shape": list(shape),
            "parameters": {"binary_data_size": size},
        }
    )


def encode_json(body: object) -> bytes:
    """Compact JSON bytes (ASCII, so its length in bytes is its length in characters)."""
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def encode_error(message: str) -> bytes:
    """The protocol's error body: ``{"error": message}``."""
    return encode_json({"error": message})
