"""The agent's local inference API: Open Inference Protocol v2 (KServe v2) over HTTP.

One core, two transports: :class:`ModelService` answers metadata, readiness and
inference; :class:`LocalInferenceServer` puts it on HTTP/JSON with the binary tensor
extension (the hub will put the same core on gRPC). The codec in
:mod:`edge_agent.server.codec` is pure and reusable::

    service = ModelService(Engine.load("digits.onnx"), "digits", "1", recorder=recorder)
    server = LocalInferenceServer(service, port=8000)
    server.start()
    ...
    server.stop(drain_timeout=10.0)
"""

from __future__ import annotations

from .errors import ModelNotFound, ModelNotReady, Status, status_for
from .http import DEFAULT_MAX_REQUEST_BYTES, LocalInferenceServer
from .models import InferenceEngine, ModelMetadata, ModelService, Recorder, ServerMetadata

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "InferenceEngine",
    "LocalInferenceServer",
    "ModelMetadata",
    "ModelNotFound",
    "ModelNotReady",
    "ModelService",
    "Recorder",
    "ServerMetadata",
    "Status",
    "status_for",
]
