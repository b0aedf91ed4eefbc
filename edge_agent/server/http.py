"""The local inference server: Open Inference Protocol v2 over HTTP/1.1 on loopback.

Standard library only, on :class:`.listener.KeepAliveServer`: each connection has its
own thread, which serves keep-alive requests one after another and runs the model in
place (no hand-off between threads). Bounds, time limits and the drain on
:meth:`LocalInferenceServer.stop` are the listener's; the routes are
:class:`.routes.Routes`.
"""

from __future__ import annotations

from ..errors import ConfigError
from ._http11 import Reply, RequestHead
from .codec import Buffer
from .listener import KeepAliveServer
from .models import ModelService
from .routes import Request, Routes

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "LocalInferenceServer"]

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


class LocalInferenceServer(KeepAliveServer):
    """Serves a :class:`ModelService` over HTTP on ``host:port`` (port 0: any free port)."""

    label = "the inference server"
    bind_error = ConfigError

    def __init__(
        self,
        service: ModelService,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        *,
        max_connections: int = 64,
        idle_timeout_s: float = 60.0,
        io_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            host,
            port,
            max_request_bytes=max_request_bytes,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
            io_timeout_s=io_timeout_s,
        )
        self.service = service
        self.routes = Routes(service, lambda: self.stopping)

    def __enter__(self) -> LocalInferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def respond(self, head: RequestHead, body: Buffer, binary: Buffer | None, peer: str) -> Reply:
        return self.routes.handle(Request(head.method, head.path, body, binary))
