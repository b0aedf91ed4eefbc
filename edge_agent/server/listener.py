"""A keep-alive HTTP/1.1 server on a thread per connection, with bounds and a drain.

The transport under both Open Inference Protocol servers: the agent's local one
(:mod:`edge_agent.server.http`) and the hub's offload one (:mod:`cloud_hub.offload.http`).
A subclass says how to answer one request (:meth:`KeepAliveServer.respond`) and which
error a failed bind is; everything about sockets and threads is here.

``socketserver`` accepts on one thread and gives each connection its own, which reads
requests one after another (:mod:`._http11`), calls ``respond`` in place and writes the
reply. Connections are bounded (``max_connections``; over it a client gets 503 at once),
an idle keep-alive connection is closed after ``idle_timeout_s``, and a client that
stalls in the middle of a request is dropped after ``io_timeout_s``.

:meth:`KeepAliveServer.stop` drains: the listener closes (new connections are refused),
idle connections are woken through a pipe and closed, and a request already being read
or answered finishes and goes out with ``Connection: close``. What is still running
after ``drain_timeout`` is cut off and counted.
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
from abc import ABC, abstractmethod
from typing import ClassVar

from ._http11 import (
    HttpError,
    PeerClosed,
    Reply,
    RequestHead,
    SocketReader,
    check_body_headers,
    parse_head,
    send_continue,
    send_reply,
)
from .codec import Buffer, encode_error

__all__ = ["KeepAliveServer"]

_LOG = logging.getLogger(__name__)

_ACCEPT_POLL_S = 0.1  # how soon the accept loop notices stop()
_CUT_OFF_WAIT_S = 1.0  # after the drain timeout, how long sockets get to close once cut
_BUSY_TIMEOUT_S = 1.0  # how long a refused client gets to take its 503


class KeepAliveServer(ABC):
    """Serves HTTP/1.1 on ``host:port`` (port 0: any free port) until :meth:`stop`.

    ``start`` binds and starts the accept thread; ``stop`` drains and closes. The server
    owns every thread it starts.
    """

    #: What the server is called in logs and messages ("the inference server").
    label: ClassVar[str] = "the HTTP server"
    #: The exception a failed bind becomes (called with one message).
    bind_error: ClassVar[type[Exception]] = OSError
    #: How many connections may wait to be accepted.
    backlog: ClassVar[int] = 128

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_request_bytes: int,
        max_connections: int,
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
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.io_timeout_s = io_timeout_s
        self._wanted_port = port
        self._busy = Reply(503, (encode_error(f"too many connections to {self.label}; retry"),))
        self._state = threading.Condition(threading.Lock())
        self._connections: set[socket.socket] = set()
        self._in_flight = 0
        self._stopping = False
        self._drained = False
        self._tcp: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None

    @abstractmethod
    def respond(self, head: RequestHead, body: Buffer, binary: Buffer | None, peer: str) -> Reply:
        """The reply to one request: its head, the JSON part of its body and the binary
        part after it (when ``Inference-Header-Content-Length`` said), the client's address.
        Runs on the connection's thread and must not raise."""

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving in a background thread; :attr:`bind_error` if it cannot."""
        if self._tcp is not None:
            raise RuntimeError(f"{self.label} was already started")
        try:
            tcp = _TCPServer((self.host, self._wanted_port), self)
        except OSError as exc:
            raise self.bind_error(
                f"{self.label} cannot listen on {self.host}:{self._wanted_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._wake = os.pipe()
        self._tcp = tcp
        self._thread = threading.Thread(
            target=tcp.serve_forever,
            args=(_ACCEPT_POLL_S,),
            name=f"http-accept-{self.port}",
            daemon=True,
        )
        self._thread.start()
        _LOG.info("%s listening on %s", self.label, self.url)

    def stop(self, drain_timeout: float = 10.0) -> int:
        """Stop accepting, let requests in flight finish, close; how many were cut off.

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
        left = self._wait_connections(time.monotonic() + max(0.0, drain_timeout))
        if left:
            _LOG.warning("%s: drain timed out with %d request(s) in flight", self.label, left)
            self._cut_off()
            self._wait_connections(time.monotonic() + _CUT_OFF_WAIT_S)
        with self._state:
            self._drained = True
            self._close_wake()  # or the last connection thread will, once it ends
        _LOG.info("%s on %s stopped", self.label, self.url)
        return left

    # -- state ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port bound (the real one when 0 was asked for)."""
        if self._tcp is None:
            raise RuntimeError(f"{self.label} is not started")
        return int(self._tcp.server_address[1])

    @property
    def address(self) -> str:
        """``host:port``, with brackets around an IPv6 host."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

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
            send_reply(sock, self._busy, timeout=_BUSY_TIMEOUT_S, close=True)
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

    def _serve(self, sock: socket.socket, peer: str) -> None:
        """One connection's keep-alive loop (runs on its own thread)."""
        with self._state:
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
                return  # idle too long, or the server is stopping
            with self._state:
                self._in_flight += 1
            try:
                keep_alive = self._serve_one(sock, reader, peer)
            finally:
                with self._state:
                    self._in_flight -= 1
            if not keep_alive:
                return

    def _serve_one(self, sock: socket.socket, reader: SocketReader, peer: str) -> bool:
        """Read, answer and write one request; False when the connection should close."""
        try:
            raw = reader.read_head()
            if raw is None:
                return False
            head = parse_head(raw)
            body, binary = self._read_body(sock, reader, head)
        except HttpError as exc:
            with contextlib.suppress(OSError):
                refusal = Reply(exc.status, (encode_error(str(exc)),))
                send_reply(sock, refusal, timeout=self.io_timeout_s, close=True)
            return False
        except (PeerClosed, OSError):
            return False  # the client went away or stalled: nobody to answer
        reply = self.respond(head, body, binary, peer)
        close = self._stopping or not head.keep_alive
        try:
            send_reply(sock, reply, timeout=self.io_timeout_s, close=close)
        except OSError:
            return False
        return not close

    def _read_body(
        self, sock: socket.socket, reader: SocketReader, head: RequestHead
    ) -> tuple[Buffer, Buffer | None]:
        """(the JSON part, the binary part or None) after the checks made before reading."""
        length, json_length = check_body_headers(head, self.max_request_bytes)
        if not length:
            return b"", None
        send_continue(sock, head, self.io_timeout_s)
        if json_length is None:
            return reader.read_exact(length), None
        body = reader.read_exact(json_length)
        return body, reader.read_exact(length - json_length)


class _Connection(socketserver.BaseRequestHandler):
    server: _TCPServer
    request: socket.socket

    def handle(self) -> None:
        address = self.client_address
        peer = str(address[0]) if isinstance(address, tuple) else str(address)
        self.server.owner._serve(self.request, peer)


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True  # the owner waits for them in stop(); never block interpreter exit
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: KeepAliveServer) -> None:
        self.owner = owner
        self.request_queue_size = owner.backlog
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Connection)

    def verify_request(self, request: socket.socket, client_address: object) -> bool:  # type: ignore[override]
        return self.owner._admit(request)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        self.owner._forget(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        _LOG.exception("%s: connection from %s failed", self.owner.label, client_address)
