"""The offload server's HTTP/1.1 transport: a thread per connection, keep-alive, drain.

Built from the agent's standard-library pieces (:mod:`edge_agent.server._http11`: read a
head, read a body into a buffer numpy can view, gathered writes). ``socketserver``
accepts on one thread and gives each connection its own; the connection's thread reads a
request, blocks while its model's batcher answers it, and writes the reply. Connections
are bounded (``max_connections``; over it a client gets 503 at once), an idle keep-alive
connection is closed after ``idle_timeout_s``, a stalled client after ``io_timeout_s``.

:meth:`OffloadHttpServer.stop` drains: the listener closes, idle connections are woken
through a pipe and closed, requests in flight finish and are answered with
``Connection: close``; what is left after ``drain_timeout`` is cut off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import socketserver
import threading
import time
from http import HTTPStatus

from edge_agent.server._http11 import (
    HttpError,
    PeerClosed,
    RequestHead,
    SocketReader,
    check_body_headers,
    parse_head,
    send_all,
    send_continue,
)
from edge_agent.server.codec import encode_error

from ..errors import Unavailable
from .routes import Request, Response, Routes

__all__ = ["OffloadHttpServer"]

_LOG = logging.getLogger(__name__)

_ACCEPT_POLL_S = 0.1
_BUSY = Response(503, (encode_error("too many connections to the offload server; retry"),))


class OffloadHttpServer:
    """Serves :class:`Routes` on ``host:port`` (0: a free port) until :meth:`stop`."""

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
        self.routes = routes
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.io_timeout_s = io_timeout_s
        self._wanted_port = port
        self._state = threading.Condition(threading.Lock())
        self._connections: set[socket.socket] = set()
        self._stopping = False
        self._tcp: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None

    def start(self) -> None:
        """Bind and serve in the background; :class:`Unavailable` if it cannot bind."""
        if self._tcp is not None:
            raise RuntimeError("the offload HTTP server was already started")
        try:
            tcp = _TCPServer((self.host, self._wanted_port), self)
        except OSError as exc:
            raise Unavailable(
                f"the offload server cannot listen on {self.host}:{self._wanted_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._wake = os.pipe()
        self._tcp = tcp
        self._thread = threading.Thread(
            target=tcp.serve_forever, args=(_ACCEPT_POLL_S,), name="offload-http", daemon=True
        )
        self._thread.start()

    def stop(self, drain_timeout: float = 5.0) -> int:
        """Stop accepting, let requests in flight finish; how many were cut off."""
        tcp, thread = self._tcp, self._thread
        if tcp is None or thread is None or self._stopping:
            return 0
        with self._state:
            self._stopping = True
        tcp.shutdown()
        tcp.server_close()
        thread.join()
        assert self._wake is not None
        os.write(self._wake[1], b"x")  # idle connections wake up and close
        left = self._wait_connections(time.monotonic() + max(0.0, drain_timeout))
        if left:
            _LOG.warning("offload HTTP: cutting off %d connection(s) after the drain", left)
            with self._state:
                connections = list(self._connections)
            for sock in connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._wait_connections(time.monotonic() + 1.0)
        with self._state:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        return left

    @property
    def port(self) -> int:
        if self._tcp is None:
            raise RuntimeError("the offload HTTP server is not started")
        return int(self._tcp.server_address[1])

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # -- connections -----------------------------------------------------------------------

    def _admit(self, sock: socket.socket) -> bool:
        with self._state:
            if len(self._connections) < self.max_connections and not self._stopping:
                self._connections.add(sock)
                return True
        with contextlib.suppress(OSError):
            sock.settimeout(None)
            self._send(sock, _BUSY, close=True)
        return False

    def _forget(self, sock: socket.socket) -> None:
        with self._state:
            self._connections.discard(sock)
            self._state.notify_all()

    def _wait_connections(self, deadline: float) -> int:
        with self._state:
            while self._connections:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(remaining)
            return len(self._connections)

    def _serve(self, sock: socket.socket, peer: str) -> None:
        """One connection's keep-alive loop, on its own thread."""
        wake = self._wake
        if wake is None:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking: reads and writes bring their own time limits
        reader = SocketReader(sock, self.io_timeout_s)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(wake[0], select.POLLIN)
        fd, idle_ms = sock.fileno(), int(self.idle_timeout_s * 1000)
        while True:
            if not reader.buffered and not any(f == fd for f, _ in poller.poll(idle_ms)):
                return  # idle too long, or stopping
            if not self._serve_one(sock, reader, peer):
                return

    def _serve_one(self, sock: socket.socket, reader: SocketReader, peer: str) -> bool:
        try:
            raw = reader.read_head()
            if raw is None:
                return False
            head = parse_head(raw)
            request = self._read_request(sock, reader, head, peer)
        except HttpError as exc:
            with contextlib.suppress(OSError):
                self._send(sock, Response(exc.status, (encode_error(str(exc)),)), close=True)
            return False
        except (PeerClosed, OSError):
            return False
        response = self.routes.handle(request)
        close = self._stopping or not head.keep_alive
        try:
            self._send(sock, response, close=close)
        except OSError:
            return False
        return not close

    def _read_request(
        self, sock: socket.socket, reader: SocketReader, head: RequestHead, peer: str
    ) -> Request:
        length, json_length = check_body_headers(head, self.max_request_bytes)
        if not length:
            return Request(head.method, head.path, head.headers, peer)
        send_continue(sock, head, self.io_timeout_s)
        if json_length is None:
            return Request(head.method, head.path, head.headers, peer, reader.read_exact(length))
        body = reader.read_exact(json_length)
        binary = reader.read_exact(length - json_length)
        return Request(head.method, head.path, head.headers, peer, body, binary)

    def _send(self, sock: socket.socket, response: Response, *, close: bool) -> None:
        size = sum(len(chunk) for chunk in response.chunks)
        lines = [
            _status_line(response.status),
            b"Content-Type: %s\r\nContent-Length: %d\r\n"
            % (response.content_type.encode("ascii"), size),
        ]
        if response.header_length is not None:
            lines.append(b"Inference-Header-Content-Length: %d\r\n" % response.header_length)
        for name, value in response.headers:
            lines.append(b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1")))
        if close:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        send_all(sock, (b"".join(lines), *response.chunks), self.io_timeout_s)


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))
    return line


class _Connection(socketserver.BaseRequestHandler):
    server: _TCPServer
    request: socket.socket

    def handle(self) -> None:
        address = self.client_address
        peer = str(address[0]) if isinstance(address, tuple) else str(address)
        self.server.owner._serve(self.request, peer)


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True  # the owner waits for them in stop()
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], owner: OffloadHttpServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Connection)

    def verify_request(self, request: socket.socket, client_address: object) -> bool:  # type: ignore[override]
        return self.owner._admit(request)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        self.owner._forget(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        _LOG.exception("offload HTTP: connection from %s failed", client_address)
