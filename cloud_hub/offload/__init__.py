"""The hub's offload server: the cloud models answering what devices were unsure of.

Open Inference Protocol v2 (KServe v2) over HTTP (JSON and binary tensors, plus
``/metrics``) and gRPC (``inference.GRPCInferenceService`` on the hub's gRPC server), with
a dynamic batcher per model version, guards that check every tensor before it is decoded,
device and operator credentials, Prometheus metrics, and a hook that hands every answered
device input to the hard-example store. See ``docs/offload-server.md``.

Modules: :mod:`.server` (the owner), :mod:`.service` (the core both transports call),
:mod:`.pool` (registered ONNX versions, loaded lazily), :mod:`.runtime` (ONNX Runtime,
CUDA first), :mod:`.batcher` and :mod:`.batching` (the queue and its pure decisions),
:mod:`.guards`, :mod:`.auth`, :mod:`.metrics`, :mod:`.errors`, :mod:`.routes` and
:mod:`.http` (REST), :mod:`.grpc_servicer` (gRPC), :mod:`.sink` (the hard-example hook).
"""

from __future__ import annotations

from .auth import Caller, OffloadAuthenticator
from .batcher import DynamicBatcher
from .errors import BatchFailed, DeadlineExceeded, ModelUnloaded, QueueFull
from .pool import BatchSettings, LoadedModel, ModelPool
from .runtime import OrtRunner, Runner, choose_providers
from .server import OffloadServer
from .service import OffloadService
from .sink import HardExampleSink, OffloadedInput

__all__ = [
    "BatchFailed",
    "BatchSettings",
    "Caller",
    "DeadlineExceeded",
    "DynamicBatcher",
    "HardExampleSink",
    "LoadedModel",
    "ModelPool",
    "ModelUnloaded",
    "OffloadAuthenticator",
    "OffloadServer",
    "OffloadService",
    "OffloadedInput",
    "OrtRunner",
    "QueueFull",
    "Runner",
    "choose_providers",
]
