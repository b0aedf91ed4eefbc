"""The little of HTTP/1.1 the local server needs: read a request head and body, write a reply.

A request head is read with one ``recv`` in the usual case and split on CRLF; the body is
received straight into a ``bytearray`` that numpy can view without a copy; a reply goes out
in one gathered write. ``http.server.BaseHTTPRequestHandler`` parses headers through the
``email`` package and costs about 30 µs more per keep-alive round trip (measured with
``http.client`` on a trivial handler: 88 µs against 59 µs; asyncio streams: 120 µs).
Only what clients send is accepted: ``Content-Length`` bodies (no chunked uploads), no
compression, ``Expect: 100-continue`` honoured. A malformed head is an :class:`HttpError`,
answered once, and then the connection is closed.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Sequence
from http import HTTPStatus
from typing import NamedTuple

from .codec import Buffer, EncodedResponse

#: The most a request line plus headers may take, and how many header lines.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
_RECV = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SINGLE = frozenset({"content-length", "inference-header-content-length"})


class HttpError(Exception):
    """A request the server answers with ``status`` and then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PeerClosed(Exception):
    """The client closed the connection in the middle of a request."""


class RequestHead(NamedTuple):
    method: str
    path: str  # the target without its query string
    version: str
    headers: dict[str, str]  # names in lower case

    @property
    def keep_alive(self) -> bool:
        tokens = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return False  # HTTP/1.0: one request per connection

    def content_length(self) -> int:
        raw = self.headers.get("content-length")
        if raw is None:
            return 0
        if not raw.isdigit() or not raw.isascii():
            raise HttpError(400, f"Content-Length {raw!r} is not a number of bytes")
        return int(raw)


class SocketReader:
    """Buffered reads from one connection's (blocking) socket, each with a time limit.

    A read is first tried without waiting (``MSG_DONTWAIT``); only when no data is there
    yet does it poll, for at most ``timeout`` seconds. A socket timeout would instead poll
    before every read: one more system call on every request.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def read_head(self) -> bytes | None:
        """The request line and headers (without the blank line); None if the peer is done."""
        buf = self._buf
        searched = 0
        while True:
            while buf.startswith(b"\r\n"):  # stray CRLFs between requests are allowed
                del buf[:2]
            end = buf.find(b"\r\n\r\n", max(0, searched - 3))
            if end >= 0:
                head = bytes(buf[:end])
                del buf[: end + 4]
                return head
            if len(buf) > MAX_HEAD_BYTES:
                raise HttpError(431, f"request head is over {MAX_HEAD_BYTES} bytes")
            searched = len(buf)
            data = self._recv()
            if not data:
                if buf:
                    raise PeerClosed("connection closed inside a request head")
                return None
            buf += data

    def read_exact(self, size: int) -> bytearray:
        """Exactly ``size`` body bytes, in a new (aligned, writable) buffer."""
        out = bytearray(size)
        have = min(size, len(self._buf))
        if have:
            out[:have] = self._buf[:have]
            del self._buf[:have]
        view = memoryview(out)
        while have < size:
            try:
                got = self._sock.recv_into(view[have:], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                wait_for(self._sock, select.POLLIN, self._timeout)
                continue
            if not got:
                raise PeerClosed(f"connection closed after {have} of {size} body bytes")
            have += got
        return out

    def _recv(self) -> bytes:
        while True:
            try:
                return self._sock.recv(_RECV, socket.MSG_DONTWAIT)
            except BlockingIOError:
                wait_for(self._sock, select.POLLIN, self._timeout)


def wait_for(sock: socket.socket, event: int, timeout: float) -> None:
    """Wait until ``sock`` is ready for ``event``; TimeoutError after ``timeout`` seconds."""
    poller = select.poll()
    poller.register(sock, event)
    if not poller.poll(int(timeout * 1000)):
        raise TimeoutError(f"the client sent or read nothing for {timeout:g} s")


def send_all(sock: socket.socket, buffers: Sequence[Buffer], timeout: float) -> None:
    """Write ``buffers`` in order with gathered writes, giving up after ``timeout`` stalled."""
    views = [memoryview(buffer).cast("B") for buffer in buffers]
    while views:
        try:
            sent = sock.sendmsg(views, (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            wait_for(sock, select.POLLOUT, timeout)
            continue
        while sent:
            first = len(views[0])
            if sent < first:
                views[0] = views[0][sent:]
                break
            views.pop(0)
            sent -= first


def parse_head(raw: bytes) -> RequestHead:
    """Split a request head into method, path, version and lower-cased headers."""
    lines = raw.split(b"\r\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header lines")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, f"malformed request line {lines[0][:100]!r}") from None
    if not version.startswith("HTTP/1."):
        raise HttpError(505, f"HTTP version {version!r} is not supported (use HTTP/1.1)")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:100]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key in _SINGLE and headers.get(key, text) != text:
            raise HttpError(400, f"conflicting {key} headers")
        headers[key] = text
    return RequestHead(method, target.partition("?")[0], version, headers)


def check_body_headers(head: RequestHead, max_bytes: int) -> tuple[int, int | None]:
    """(body length, JSON part length or None) after the checks made before any body is read."""
    if "transfer-encoding" in head.headers:
        raise HttpError(501, "Transfer-Encoding is not supported; send a Content-Length")
    encoding = head.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise HttpError(415, f"Content-Encoding {encoding!r} is not supported; send it plain")
    length = head.content_length()
    if length > max_bytes:
        raise HttpError(
            413, f"request body of {length} bytes is over this server's limit of {max_bytes}"
        )
    raw = head.headers.get("inference-header-content-length")
    if raw is None:
        return length, None
    if not raw.isdigit() or not raw.isascii() or int(raw) > length:
        raise HttpError(
            400,
            f"Inference-Header-Content-Length {raw!r} must be a number of bytes no larger "
            f"than the body ({length})",
        )
    return length, int(raw)


def send_continue(sock: socket.socket, head: RequestHead, timeout: float) -> None:
    if head.headers.get("expect", "").lower() == "100-continue":
        send_all(sock, (_CONTINUE,), timeout)


JSON = "application/json"
OCTETS = "application/octet-stream"


class Reply(NamedTuple):
    """A whole response: status, body buffers (written in order) and its headers."""

    status: int
    chunks: tuple[Buffer, ...]
    content_type: str = JSON
    header_length: int | None = None  # the JSON part's length when binary tensors follow
    headers: tuple[tuple[str, str], ...] = ()  # more, e.g. ("Allow", "GET") with a 405

    @classmethod
    def encoded(cls, encoded: EncodedResponse) -> Reply:
        """A 200 carrying an inference response (binary when it has binary outputs)."""
        if encoded.header_length is None:
            return cls(200, encoded.chunks)
        return cls(200, encoded.chunks, OCTETS, encoded.header_length)


def send_reply(sock: socket.socket, reply: Reply, *, timeout: float, close: bool = False) -> None:
    """Write ``reply``: status line, headers and body in one gathered write."""
    size = sum(len(chunk) for chunk in reply.chunks)
    lines = [
        _status_line(reply.status),
        b"Content-Type: %s\r\nContent-Length: %d\r\n" % (reply.content_type.encode("ascii"), size),
    ]
    if reply.header_length is not None:
        lines.append(b"Inference-Header-Content-Length: %d\r\n" % reply.header_length)
    for name, value in reply.headers:
        lines.append(b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1")))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    send_all(sock, (b"".join(lines), *reply.chunks), timeout)


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
