"""The local inference server: Open Inference Protocol v2 over HTTP/1.1 on loopback.

Standard library only: ``socketserver`` accepts on one thread and gives each connection
its own thread, which serves keep-alive requests one after another and runs the model in
place (no hand-off between threads). Connections are bounded (``max_connections``; over
it a client gets 503 at once), an idle keep-alive connection is closed after
``idle_timeout_s``, and a client that stalls in the middle of a request is dropped after
``io_timeout_s``.

:meth:`LocalInferenceServer.stop` drains: the listener closes (new connections are
refused), idle connections are woken through a pipe and closed, and a request already
being read or run finishes and is answered with ``Connection: close``. What is still
running after ``drain_timeout`` is cut off and counted.
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

from ..errors import ConfigError
from ._http11 import (
    HttpError,
    PeerClosed,
    RequestHead,
    SocketReader,
    check_body_headers,
    parse_head,
    send_continue,
    send_response,
)
from .codec import encode_error
from .models import ModelService
from .routes import Request, Routes

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "LocalInferenceServer"]

_LOG = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
_ACCEPT_POLL_S = 0.1  # how soon the accept loop notices stop()
_CUT_OFF_WAIT_S = 1.0  # after the drain timeout, how long sockets get to close once cut
_BUSY = encode_error("too many connections to the inference server; retry shortly")


class LocalInferenceServer:
    """Serves a :class:`ModelService` over HTTP on ``host:port`` (port 0: any free port).

    ``start`` binds and starts the accept thread; ``stop`` drains and closes. The server
    owns every thread it starts.
    """

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
        if max_request_bytes < 1 or max_connections < 1:
            raise ValueError(
                f"max_request_bytes and max_connections must be >= 1 "
                f"(got {max_request_bytes}, {max_connections})"
            )
        if idle_timeout_s <= 0 or io_timeout_s <= 0:
            raise ValueError(
                f"idle_timeout_s and io_timeout_s must be > 0 (got {idle_timeout_s}, "
                f"{io_timeout_s})"
            )
        self.service = service
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.io_timeout_s = io_timeout_s
        self.routes = Routes(service, lambda: self._stopping)
        self._wanted_port = port
        self._state = threading.Condition(threading.Lock())
        self._connections: set[socket.socket] = set()
        self._in_flight = 0
        self._stopping = False
        self._drained = False
        self._tcp: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving in a background thread; raises ConfigError if it cannot."""
        if self._tcp is not None:
            raise RuntimeError("the inference server was already started")
        try:
            tcp = _TCPServer((self.host, self._wanted_port), self)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.host}:{self._wanted_port}: {exc.strerror or exc}"
            ) from exc
        self._wake = os.pipe()
        self._tcp = tcp
        self._thread = threading.Thread(
            target=tcp.serve_forever,
            args=(_ACCEPT_POLL_S,),
            name=f"oip-http-accept-{self.port}",
            daemon=True,
        )
        self._thread.start()
        _LOG.info("inference server listening on %s", self.url)

    def stop(self, drain_timeout: float = 10.0) -> int:
        """Stop accepting, let requests in flight finish, close; return how many were cut off.

        Returns 0 when everything finished within ``drain_timeout`` seconds (or the server
        was not running).
        """
        tcp, thread = self._tcp, self._thread
        if tcp is None or thread is None or self._stopping:
            return 0
        with self._state:
            self._stopping = True
        tcp.shutdown()  # the accept loop ends ...
        tcp.server_close()  # ... and the listening socket closes: new connections are refused
        thread.join()
        assert self._wake is not None
        os.write(self._wake[1], b"x")  # every idle connection wakes up and closes
        deadline = time.monotonic() + max(0.0, drain_timeout)
        left = self._wait_connections(deadline)
        if left:
            _LOG.warning("drain timed out with %d request(s) in flight; cutting them off", left)
            self._cut_off()
            self._wait_connections(time.monotonic() + _CUT_OFF_WAIT_S)
        with self._state:
            self._drained = True
            self._close_wake()  # or the last connection thread will, once it ends
        _LOG.info("inference server on %s stopped", self.url)
        return left

    def __enter__(self) -> LocalInferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port bound (the real one when 0 was asked for)."""
        if self._tcp is None:
            raise RuntimeError("the inference server is not started")
        return int(self._tcp.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- for the connection threads ------------------------------------------------------

    def _admit(self, sock: socket.socket) -> bool:
        with self._state:
            if len(self._connections) < self.max_connections and not self._stopping:
                self._connections.add(sock)
                return True
        with contextlib.suppress(OSError):
            sock.settimeout(None)
            send_response(sock, 503, (_BUSY,), timeout=1.0, close=True)
        return False

    def _forget(self, sock: socket.socket) -> None:
        with self._state:
            self._connections.discard(sock)
            self._state.notify_all()
            if self._drained:
                self._close_wake()

    def _close_wake(self) -> None:
        """Close the wake-up pipe once no connection thread can poll it (holding _state)."""
        if self._wake is not None and not self._connections:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _wait_connections(self, deadline: float) -> int:
        """Wait for every connection to close; the requests still in flight at the deadline."""
        with self._state:
            while self._connections:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(remaining)
            return self._in_flight

    def _cut_off(self) -> None:
        with self._state:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):  # already closed by its thread
                sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, sock: socket.socket) -> None:
        """One connection's keep-alive loop (runs on its own thread)."""
        assert self._wake is not None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking: reads and writes bring their own time limits
        reader = SocketReader(sock, self.io_timeout_s)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        fd, idle_ms = sock.fileno(), int(self.idle_timeout_s * 1000)
        while True:
            if not reader.buffered and not any(f == fd for f, _ in poller.poll(idle_ms)):
                return  # idle too long, or the server is stopping
            with self._state:
                self._in_flight += 1
            try:
                keep_alive = self._serve_one(sock, reader)
            finally:
                with self._state:
                    self._in_flight -= 1
            if not keep_alive:
                return

    def _serve_one(self, sock: socket.socket, reader: SocketReader) -> bool:
        """Read, answer and write one request; False when the connection should close."""
        try:
            raw = reader.read_head()
            if raw is None:
                return False
            head = parse_head(raw)
            request = self._read_request(sock, reader, head)
        except HttpError as exc:
            with contextlib.suppress(OSError):
                message = (encode_error(str(exc)),)
                send_response(sock, exc.status, message, timeout=self.io_timeout_s, close=True)
            return False
        except (PeerClosed, OSError):
            return False  # the client went away or stalled: nobody to answer
        response = self.routes.handle(request)
        close = self._stopping or not head.keep_alive
        try:
            send_response(
                sock,
                response.status,
                response.chunks,
                timeout=self.io_timeout_s,
                header_length=response.header_length,
                close=close,
                allow=response.allow,
            )
        except OSError:
            return False
        return not close

    def _read_request(
        self, sock: socket.socket, reader: SocketReader, head: RequestHead
    ) -> Request:
        length, json_length = check_body_headers(head, self.max_request_bytes)
        if not length:
            return Request(head.method, head.path)
        send_continue(sock, head, self.io_timeout_s)
        if json_length is None:
            return Request(head.method, head.path, reader.read_exact(length))
        body = reader.read_exact(json_length)
        return Request(head.method, head.path, body, reader.read_exact(length - json_length))


class _Connection(socketserver.BaseRequestHandler):
    server: _TCPServer
    request: socket.socket

    def handle(self) -> None:
        self.server.owner._serve(self.request)


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True  # the owner waits for them in stop(); never block interpreter exit
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: LocalInferenceServer) -> None:
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
        _LOG.exception("inference server: connection from %s failed", client_address)
