"""A small, real Open Inference Protocol v2 gRPC server for tests: ONNX Runtime, no extras.

It implements ``inference.GRPCInferenceService`` the way any OIP v2 server (Triton,
KServe, MLServer) does, knowing nothing of edgeloop: it reads ``raw_input_contents`` (or
typed ``contents``), runs one ONNX model, and answers with ``raw_output_contents`` (or
typed ``contents`` when ``typed_outputs`` is set). Knobs for the cascade's tests, changed
at any time from the test thread:

* ``delay_s``: sleep this long before answering (a slow hub); ``stop`` cuts the sleep.
* ``fail_with``: answer every call with this gRPC status (a broken hub).
* ``exhausted_retry_after_ms``: answer RESOURCE_EXHAUSTED with trailing metadata
  ``retry-after-ms`` (an overloaded hub); ``exhausted_count`` limits how many times.

It remembers what arrived (``calls``: model name, version, parameters, metadata, rows) so
a test can check what the agent sent. ``start`` binds ``port`` (0: a free one); a server
can be stopped and a new one started on the same port (the hub coming back).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from edge_agent.wire import inference_pb2, inference_pb2_grpc

_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "UINT8": np.dtype("u1"),
}
_DATATYPE = {dtype: name for name, dtype in _DTYPES.items()}
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}


@dataclass
class Call:
    model: str
    version: str
    parameters: dict[str, Any]
    metadata: dict[str, str]
    rows: int
    at: float = field(default_factory=time.monotonic)


class OipGrpcServer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves ``model_path`` as ``name`` on 127.0.0.1; see the module docstring."""

    def __init__(self, model_path: Path, name: str, *, port: int = 0, version: str = "1") -> None:
        self.name = name
        self.version = version
        self.port = port
        self.delay_s = 0.0
        self.fail_with: grpc.StatusCode | None = None
        self.exhausted_retry_after_ms: int | None = None
        self.exhausted_count: int | None = None  # None: every call while set
        self.typed_outputs = False
        self.calls: list[Call] = []
        self._session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        self._stopped = threading.Event()
        self._server: grpc.Server | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> OipGrpcServer:
        self._stopped.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(10)
            self._server = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def __enter__(self) -> OipGrpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the protocol --------------------------------------------------------------------

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return inference_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return inference_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return inference_pb2.ModelReadyResponse(ready=request.name == self.name)

    def ModelInfer(
        self, request: inference_pb2.ModelInferRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ModelInferResponse:
        inputs = _inputs(request, context)
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        with self._lock:
            self.calls.append(
                Call(
                    model=request.model_name,
                    version=request.model_version,
                    parameters={k: _value(v) for k, v in request.parameters.items()},
                    metadata={k: str(v) for k, v in context.invocation_metadata()},
                    rows=rows,
                )
            )
            exhausted = self.exhausted_retry_after_ms is not None and (
                self.exhausted_count is None or self.exhausted_count > 0
            )
            if exhausted and self.exhausted_count is not None:
                self.exhausted_count -= 1
        if self.delay_s:
            self._stopped.wait(self.delay_s)
        if exhausted:
            context.set_trailing_metadata((("retry-after-ms", str(self.exhausted_retry_after_ms)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if self.fail_with is not None:
            context.abort(self.fail_with, "failing on purpose")
        if request.model_name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
        wanted = [o.name for o in request.outputs] or None
        results = self._session.run(wanted, inputs)
        names = wanted or [o.name for o in self._session.get_outputs()]
        response = inference_pb2.ModelInferResponse(
            model_name=self.name, model_version=self.version, id=request.id
        )
        for name, array in zip(names, results, strict=True):
            array = np.ascontiguousarray(array)
            datatype = _DATATYPE[array.dtype.newbyteorder("<")]
            tensor = response.outputs.add(name=name, datatype=datatype)
            tensor.shape.extend(array.shape)
            if self.typed_outputs:
                getattr(tensor.contents, _CONTENTS[datatype]).extend(array.ravel().tolist())
            else:
                response.raw_output_contents.append(array.tobytes())
        return response


def _inputs(
    request: inference_pb2.ModelInferRequest, context: grpc.ServicerContext
) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    raw = request.raw_input_contents
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype not in _DTYPES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"datatype {tensor.datatype}")
        dtype: np.dtype[Any] = _DTYPES[tensor.datatype]
        shape = tuple(tensor.shape)
        if raw:
            array = np.frombuffer(raw[index], dtype=dtype).reshape(shape)
        else:
            values = getattr(tensor.contents, _CONTENTS[tensor.datatype])
            array = np.asarray(list(values), dtype=dtype).reshape(shape)
        inputs[tensor.name] = array
    return inputs


def _value(parameter: inference_pb2.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind is not None else None
