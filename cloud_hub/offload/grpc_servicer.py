"""``inference.GRPCInferenceService`` on the hub's gRPC server, over :class:`OffloadService`.

Conversion between protobuf and numpy happens here and nowhere else. Inputs arrive as
``raw_input_contents`` (what tritonclient and the agent send: one little-endian buffer per
input, in order) or as typed ``contents``; outputs always go back as
``raw_output_contents``, as Triton does. ServerLive, ServerReady and ServerMetadata are
open; ModelReady, ModelMetadata and ModelInfer need a device or operator credential in
the call's metadata. Errors are the status codes of :mod:`.errors`; a full queue adds
the trailing metadata ``retry-after-ms``.

The call's deadline (``grpc-timeout``) and the request parameter ``timeout`` (in
microseconds, as in Triton) both bound the time a request may wait in the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np

from edge_agent.errors import InputError
from edge_agent.server.tensor_codec import (
    CONTENTS_FIELDS,
    array_from_binary,
    array_from_json,
    array_to_binary,
    datatype_of,
    dtype_for,
)
from edge_agent.wire import inference_pb2 as pb
from edge_agent.wire import inference_pb2_grpc

from ..errors import HubError, InvalidRequest
from .errors import RETRY_AFTER_MS_METADATA, QueueFull, status_for
from .guards import Declared
from .pool import LoadedModel
from .service import OffloadService, deadline_from

__all__ = ["InferenceServicer", "add_inference_service"]

T = TypeVar("T")
_NO_DEADLINE_S = 1e8  # grpc reports "no deadline" as a huge time remaining


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: OffloadService) -> None:
        self.service = service

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.service.ready)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**self.service.server_metadata())

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        def ready() -> Any:
            self.service.authenticate(context.invocation_metadata())
            self.service.model(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=self.service.ready)

        return _answer(context, ready)

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def metadata() -> Any:
            self.service.authenticate(context.invocation_metadata())
            found = self.service.model_metadata(request.name, request.version or None)
            tensors = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=found["name"],
                versions=found["versions"],
                platform=found["platform"],
                inputs=[tensors(**spec) for spec in found["inputs"]],
                outputs=[tensors(**spec) for spec in found["outputs"]],
            )

        return _answer(context, metadata)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(context, lambda: self._infer(request, context))

    def _infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        service = self.service
        caller = service.authenticate(context.invocation_metadata())
        model = service.model(request.model_name, request.model_version or None)
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            model.metrics.reject("invalid")
            raise InvalidRequest(
                f"request: {len(raw)} raw_input_contents for {len(request.inputs)} inputs"
            )
        declared = [
            Declared(t.name, t.datatype, list(t.shape), len(raw[i]) if raw else None)
            for i, t in enumerate(request.inputs)
        ]
        service.check(model, declared)
        now = time.monotonic()
        try:
            inputs = {
                t.name: _decode(t, raw[i] if raw else None) for i, t in enumerate(request.inputs)
            }
            wanted = _wanted_outputs(request, model)
            parameters = {key: _value(p) for key, p in request.parameters.items()}
            deadline = _earliest(deadline_from(parameters, now), _call_deadline(context, now))
        except (InputError, HubError):
            model.metrics.reject("invalid")
            raise
        model, outputs = service.infer(caller, model, inputs, parameters, deadline)
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        for name in wanted:
            array = outputs[name]
            response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            response.raw_output_contents.append(bytes(array_to_binary(array)))
        return response


def add_inference_service(server: Any, service: OffloadService) -> None:
    """Register the servicer on a :class:`~cloud_hub.grpc_server.HubGrpcServer`."""
    server.add_servicer(
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(service)
    )


def _answer(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    try:
        return call()
    except (HubError, InputError) as exc:
        _abort(context, exc)


def _abort(context: grpc.ServicerContext, exc: HubError | InputError) -> NoReturn:
    if isinstance(exc, QueueFull):
        context.set_trailing_metadata(((RETRY_AFTER_MS_METADATA, str(exc.retry_after_ms)),))
    context.abort(status_for(exc).grpc, str(exc))
    raise AssertionError("grpc.ServicerContext.abort returned")  # it always raises


def _decode(tensor: Any, raw: bytes | None) -> np.ndarray:
    where = f"input {tensor.name!r}"
    shape = tuple(tensor.shape)
    dtype = dtype_for(tensor.datatype, where)
    if raw is not None:
        return array_from_binary(raw, shape, dtype, where)
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if dtype is None or field is None:
        raise InvalidRequest(f"{where}: send {tensor.datatype} tensors in raw_input_contents")
    values = list(getattr(tensor.contents, field))
    return array_from_json(values, shape, dtype, where, source=f"contents.{field}")


def _wanted_outputs(request: Any, model: LoadedModel) -> tuple[str, ...]:
    if not request.outputs:
        return model.output_names
    for output in request.outputs:
        if output.name not in model.output_names:
            raise InvalidRequest(
                f"output {output.name!r}: the model has no such output "
                f"(it has {', '.join(map(repr, model.output_names))})"
            )
    return tuple(output.name for output in request.outputs)


def _value(parameter: Any) -> object:
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def _call_deadline(context: grpc.ServicerContext, now: float) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return now + max(0.0, remaining)


def _earliest(*deadlines: float | None) -> float | None:
    given = [d for d in deadlines if d is not None]
    return min(given) if given else None
