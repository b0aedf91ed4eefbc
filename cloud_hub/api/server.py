"""The REST API on a real socket: uvicorn in a thread that :class:`HttpServer` owns.

The socket is bound before uvicorn starts, so port 0 (any free port) works and
:attr:`HttpServer.port` is the port chosen. :meth:`HttpServer.stop` asks uvicorn to exit
(``should_exit``), lets in-flight requests finish for a bounded grace period, and joins
the thread. Used by ``cloud-hub serve`` and by the tests, which need a server on a free
loopback port.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from ..errors import HubConfigError, Unavailable

_LOG = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
GRACE_S = 2.0


class HttpServer:
    """Serve an ASGI ``app`` on ``host:port`` from a thread of its own."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        grace_s: float = GRACE_S,
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._grace_s = grace_s
        self._access_log = access_log
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the HTTP server has not started")
        return self._port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Bind, start uvicorn and return once it accepts connections."""
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("the HTTP server was already started")
        sock = _bind(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,  # our logging, not uvicorn's
            access_log=self._access_log,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(self._grace_s)),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="hub-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                sock.close()
                raise Unavailable(f"the REST API on {self.address} stopped while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"the REST API on {self.address} did not start in {timeout_s}s")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish in-flight requests (up to the grace period), join."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(2.0)
        if self._thread.is_alive():
            _LOG.error("the REST API thread did not stop within %.0fs", timeout_s)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HubConfigError(f"http_host {host!r} cannot be resolved ({exc})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise HubConfigError(
            f"cannot listen on {host}:{port} for the REST API ({exc.strerror or exc}); "
            "is another hub running there? Change http_port (0 picks a free port)"
        ) from exc
    return sock
