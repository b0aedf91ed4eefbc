"""An Open Inference Protocol v2 gRPC client for offloading: one ``ModelInfer`` per call.

It speaks the protocol as Triton does (``inference.GRPCInferenceService/ModelInfer``):
inputs go as ``raw_input_contents``; outputs are read from ``raw_output_contents`` or,
from a server that answers that way, the typed ``contents``. Nothing edgeloop-specific
is required of the server; the extras are optional and harmless to any other server:

* ``metadata``: sent with every call, e.g. the device credential
  (``authorization: Bearer <secret>``, ``x-edgeloop-device: <id>``).
* ``parameters``: request-level parameters, e.g. the local answer
  (``edgeloop_edge_label``, ``edgeloop_edge_score``, ``edgeloop_edge_version``).

Every call has a deadline (the gRPC timeout). Failures are :class:`OffloadError`
(a :class:`~edge_agent.errors.TransportError`) naming the gRPC status;
``RESOURCE_EXHAUSTED`` is :class:`RetryLater`, with the server's ``retry-after-ms``
trailing metadata when it sent one. :meth:`OffloadClient.reconnect` drops the channel so
the next call dials afresh (the cascade does so before a half-open trial, rather than
wait out gRPC's reconnect backoff).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from types import TracebackType

import grpc
import numpy as np

from ..errors import InputError, TransportError
from ..server.tensor_codec import (
    CONTENTS_FIELDS,
    array_from_binary,
    array_from_json,
    array_to_binary,
    datatype_of,
    dtype_for,
)
from ..wire import inference_pb2, inference_pb2_grpc
from .address import parse_target

__all__ = ["OffloadClient", "OffloadError", "RetryLater", "parse_target"]

RETRY_AFTER_KEY = "retry-after-ms"
_MAX_RETRY_AFTER_S = 600.0
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)

ParameterValue = bool | int | float | str


class OffloadError(TransportError):
    """An offload call failed; ``code`` is the gRPC status name (or ``BAD_RESPONSE``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class RetryLater(OffloadError):
    """The server is overloaded (RESOURCE_EXHAUSTED); ``retry_after_s`` is its hint, if any."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message, "RESOURCE_EXHAUSTED")
        self.retry_after_s = retry_after_s


class OffloadClient:
    """``ModelInfer`` calls to ``model`` (``version``: None lets the server pick) at ``url``."""

    def __init__(
        self,
        url: str,
        model: str,
        version: str | None = None,
        *,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.target = parse_target(url)
        self.model = model
        self.version = version
        self._metadata = tuple(metadata)
        self._lock = threading.Lock()  # guards the channel swap only, never a call
        self._channel: grpc.Channel | None = None
        self._stub: inference_pb2_grpc.GRPCInferenceServiceStub | None = None

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        timeout_s: float,
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the remote model on ``inputs``; return the ``outputs`` asked for, by name."""
        request = self.request(inputs, outputs, parameters)
        stub = self._stub_now()
        try:
            response = stub.ModelInfer(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _translate(exc, self.target) from exc
        return decode_response(response, outputs)

    def request(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> inference_pb2.ModelInferRequest:
        request = inference_pb2.ModelInferRequest(model_name=self.model)
        if self.version:
            request.model_version = self.version
        for name, array in inputs.items():
            tensor = request.inputs.add(name=name, datatype=datatype_of(array))
            tensor.shape.extend(array.shape)
            request.raw_input_contents.append(bytes(array_to_binary(array)))
        for name in outputs:
            request.outputs.add(name=name)
        for key, value in (parameters or {}).items():
            _set_parameter(request.parameters[key], value)
        return request

    def reconnect(self) -> None:
        """Drop the channel: the next call dials a new connection at once."""
        with self._lock:
            old, self._channel, self._stub = self._channel, None, None
        if old is not None:
            old.close()

    def close(self) -> None:
        self.reconnect()

    def __enter__(self) -> OffloadClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _stub_now(self) -> inference_pb2_grpc.GRPCInferenceServiceStub:
        with self._lock:
            if self._stub is None:
                self._channel = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
                self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            return self._stub


def decode_response(
    response: inference_pb2.ModelInferResponse, wanted: Sequence[str]
) -> dict[str, np.ndarray]:
    """The outputs named in ``wanted`` from raw or typed contents; OffloadError if absent."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise _bad(f"{len(raw)} raw_output_contents for {len(response.outputs)} outputs")
    found: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(response.outputs):
        if wanted and tensor.name not in wanted:
            continue
        where = f"output {tensor.name!r}"
        shape = tuple(tensor.shape)
        try:
            dtype = dtype_for(tensor.datatype, where)
            if raw:
                found[tensor.name] = array_from_binary(raw[index], shape, dtype, where)
            else:
                found[tensor.name] = _from_contents(tensor, shape, dtype, where)
        except InputError as exc:
            raise _bad(str(exc)) from exc
    missing = [name for name in wanted if name not in found]
    if missing:
        raise _bad(f"the response has no output {', '.join(map(repr, missing))}")
    return found


def _from_contents(
    tensor: inference_pb2.ModelInferResponse.InferOutputTensor,
    shape: tuple[int, ...],
    dtype: np.dtype | None,
    where: str,
) -> np.ndarray:
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise InputError(f"{where}: {tensor.datatype} has no typed contents")
    values = list(getattr(tensor.contents, field))
    return array_from_json(values, shape, dtype, where, source=f"contents.{field}")


def _set_parameter(slot: inference_pb2.InferParameter, value: ParameterValue) -> None:
    if isinstance(value, bool):
        slot.bool_param = value
    elif isinstance(value, int):
        slot.int64_param = value
    elif isinstance(value, float):
        slot.double_param = value
    else:
        slot.string_param = value


def _bad(message: str) -> OffloadError:
    return OffloadError(f"bad response from the offload server: {message}", "BAD_RESPONSE")


def _translate(exc: grpc.RpcError, target: str) -> OffloadError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    name = code.name if code is not None else "UNKNOWN"
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    message = f"offload to {target} failed: {name}: {details}"
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        trailing = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
        return RetryLater(message, _retry_after(trailing))
    return OffloadError(message, name)


def _retry_after(metadata: object) -> float | None:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == RETRY_AFTER_KEY:
            try:
                ms = int(value)
            except (TypeError, ValueError):
                return None
            return min(max(ms, 0) / 1000.0, _MAX_RETRY_AFTER_S)
    return None
