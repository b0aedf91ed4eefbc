"""The offload server's HTTP/1.1 transport, on the agent's keep-alive server.

:class:`edge_agent.server.listener.KeepAliveServer` gives each connection a thread (the
same bounds, time limits and drain as the agent's local server); the connection's thread
reads a request, blocks while its model's batcher answers it (:class:`.routes.Routes`),
and writes the reply. Up to ``max_connections`` (256 by default) connections are held at
once, since devices keep theirs open between offloads.
"""

from __future__ import annotations

from edge_agent.server._http11 import Reply, RequestHead
from edge_agent.server.codec import Buffer
from edge_agent.server.listener import KeepAliveServer

from ..errors import Unavailable
from .routes import Request, Routes

__all__ = ["OffloadHttpServer"]


class OffloadHttpServer(KeepAliveServer):
    """Serves :class:`Routes` on ``host:port`` (0: a free port) until :meth:`stop`."""

    label = "the offload server"
    bind_error = Unavailable
    backlog = 256

    def __init__(
        self,
        routes: Routes,
        host: str,
        port: int,
        *,
        max_request_bytes: int,
        max_connections: int = 256,
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
        self.routes = routes

    def respond(self, head: RequestHead, body: Buffer, binary: Buffer | None, peer: str) -> Reply:
        return self.routes.handle(Request(head.method, head.path, head.headers, peer, body, binary))
