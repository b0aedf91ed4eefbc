"""The offload server as one owned part of the hub: pool, service, HTTP, gRPC servicer.

::

    offload = OffloadServer(registry, settings, sink=recorder)   # sink: optional
    offload.add_to(grpc_server)        # before grpc_server.start()
    offload.start()                    # binds offload_http_host:offload_http_port
    ...
    offload.stop()                     # drains HTTP, then unloads the models

``runner_factory`` is the seam tests use to put a fake model behind the real servers;
by default each version loads in ONNX Runtime on CUDA when it is there, else the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..registry import ModelVersion, Registry
from ..settings import HubSettings
from .auth import OffloadAuthenticator
from .grpc_servicer import add_inference_service
from .http import OffloadHttpServer
from .metrics import OffloadMetrics
from .pool import BatchSettings, ModelPool, RunnerFactory
from .routes import Routes
from .runtime import OrtRunner, Runner, choose_providers
from .service import OffloadService
from .sink import HardExampleSink

__all__ = ["OffloadServer", "batch_settings"]

_LOG = logging.getLogger(__name__)


def batch_settings(settings: HubSettings) -> BatchSettings:
    return BatchSettings(
        max_batch=settings.offload_max_batch,
        max_delay_s=settings.offload_max_queue_delay_ms / 1000,
        queue_size=settings.offload_queue_size,
    )


def ort_runner_factory(settings: HubSettings) -> RunnerFactory:
    """Loads versions in ONNX Runtime on the providers the settings and this host allow."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    providers = choose_providers(available, settings.offload_device)
    _LOG.info(
        "offload: ONNX Runtime on %s (device=%s; available here: %s)",
        "CUDA" if providers[0] == "CUDAExecutionProvider" else "the CPU",
        settings.offload_device,
        ", ".join(available),
    )
    threads = settings.offload_threads

    def load(path: Path, version: ModelVersion) -> Runner:
        return OrtRunner(path, providers, threads=threads)

    return load


class OffloadServer:
    """Owns the offload server's parts; ``start`` and ``stop`` bring them up and down."""

    def __init__(
        self,
        registry: Registry,
        settings: HubSettings,
        *,
        sink: HardExampleSink | None = None,
        runner_factory: RunnerFactory | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = OffloadMetrics()
        factory = runner_factory if runner_factory is not None else ort_runner_factory(settings)
        self.pool = ModelPool(
            registry,
            factory,
            self.metrics,
            batch_settings(settings),
            max_loaded=settings.offload_max_loaded_models,
        )
        auth = OffloadAuthenticator(
            registry, enabled=settings.offload_auth, cache_s=settings.offload_auth_cache_s
        )
        self.service = OffloadService(
            self.pool,
            auth,
            self.metrics,
            max_request_bytes=settings.offload_max_request_bytes,
            sink=sink,
        )
        self.http = OffloadHttpServer(
            Routes(self.service),
            settings.offload_http_host,
            settings.offload_http_port,
            max_request_bytes=settings.offload_max_request_bytes + _HEAD_ALLOWANCE,
            max_connections=settings.offload_max_connections,
        )
        self._started = False

    def add_to(self, grpc_server: Any) -> None:
        """Add ``inference.GRPCInferenceService`` to the hub's gRPC server (before it starts)."""
        add_inference_service(grpc_server, self.service)

    def start(self) -> None:
        self.pool.refresh()
        self.http.start()
        self._started = True
        if not self.settings.offload_auth:
            _LOG.warning("offload: authentication is OFF (offload_auth=false): anyone may infer")
        _LOG.info(
            "offload: OIP v2 HTTP on %s; models: %s",
            self.http.url,
            ", ".join(self.pool.names()) or "none registered yet",
        )

    def stop(self) -> None:
        """Drain HTTP, then unload every model (gRPC calls drain with the gRPC server)."""
        self.service.stopping = True
        if self._started:
            self.http.stop(drain_timeout=5.0)
        self.pool.close()

    @property
    def address(self) -> str:
        return self.http.address


# A body is its JSON head plus the tensors: the tensor limit is checked on the tensors,
# and the head (names, shapes; values too for JSON requests) gets this on top.
_HEAD_ALLOWANCE = 64 * 1024
