"""An Open Inference Protocol v2 **HTTP** client for offloading (REST, binary tensors).

The same contract as :class:`~edge_agent.offload.client.OffloadClient`, over
``POST {base}/v2/models/{model}[/versions/{v}]/infer`` with the binary tensor extension
(Triton's, KServe's): inputs travel as bytes after a JSON header whose length is the
``Inference-Header-Content-Length`` header; outputs are asked for as bytes and read
from bytes or from JSON ``data``, whichever the server sends.

* ``metadata`` pairs become HTTP headers (``authorization``, ``x-edgeloop-device``);
  ``parameters`` become the request's ``parameters`` object.
* The deadline covers the whole call (connect, send, every read): the socket timeout is
  set to what is left before each step, and a call past it is ``DEADLINE_EXCEEDED``.
* HTTP 503 or 429 is :class:`~.client.RetryLater`; its hint is ``X-Retry-After-Ms``
  (milliseconds) or else ``Retry-After`` (whole seconds). Other non-200 answers are
  :class:`~.client.OffloadError` with code ``HTTP_<status>``.

One connection per call (no pool): simple and thread-safe, at the price of a TCP
handshake per offload, so prefer gRPC where the server offers it.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import InputError
from ..server.tensor_codec import (
    array_from_binary,
    array_from_json,
    array_to_binary,
    datatype_of,
    dtype_for,
)
from .address import parse_address
from .client import OffloadError, ParameterValue, RetryLater

__all__ = ["HttpOffloadClient"]

HEADER_LENGTH = "Inference-Header-Content-Length"
_MAX_RETRY_AFTER_S = 600.0
_MAX_RESPONSE = 64 * 1024 * 1024
_CHUNK = 64 * 1024
_RETRY_STATUSES = (429, 503)


class HttpOffloadClient:
    """``infer`` calls to ``model`` at ``url`` (``http://host:port[/base]``)."""

    def __init__(
        self,
        url: str,
        model: str,
        version: str | None = None,
        *,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        address = parse_address(url)
        if address.scheme != "http":
            raise ValueError(f"{url!r} is not an http:// address")
        self.target = address.target
        host, _, port = address.target.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        versioned = f"/versions/{quote(version, safe='')}" if version else ""
        self.path = f"{address.path}/v2/models/{quote(model, safe='')}{versioned}/infer"
        self.model = model
        self.version = version
        self._headers = dict(metadata)

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        timeout_s: float,
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the remote model on ``inputs``; return the ``outputs`` asked for, by name."""
        end = time.monotonic() + timeout_s
        header, chunks = encode_request(inputs, outputs, parameters)
        headers = {
            **self._headers,
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH: str(len(header)),
            "Content-Length": str(len(header) + sum(len(c) for c in chunks)),
        }
        connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
        response: http.client.HTTPResponse | None = None
        try:
            connection.connect()
            sock = connection.sock  # the response reads from it after the connection let go
            _settimeout(sock, end)
            connection.request("POST", self.path, body=b"".join([header, *chunks]), headers=headers)
            _settimeout(sock, end)
            response = connection.getresponse()
            body = _read(response, sock, end)
        except TimeoutError as exc:
            raise self._error("DEADLINE_EXCEEDED", f"no answer within {timeout_s:g}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._error("UNAVAILABLE", f"{type(exc).__name__}: {exc}") from exc
        finally:
            if response is not None:
                response.close()
            connection.close()
        if response.status != 200:
            raise self._status_error(response, body)
        return decode_response(body, response.getheader(HEADER_LENGTH), outputs)

    def reconnect(self) -> None:
        """Nothing to drop: every call dials afresh."""

    def close(self) -> None:
        """Nothing held between calls."""

    def __enter__(self) -> HttpOffloadClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _error(self, code: str, detail: str) -> OffloadError:
        return OffloadError(f"offload to http://{self.target} failed: {code}: {detail}", code)

    def _status_error(self, response: http.client.HTTPResponse, body: bytes) -> OffloadError:
        try:
            detail = str(json.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            detail = body[:200].decode("utf-8", "replace") or response.reason
        message = f"offload to http://{self.target} failed: HTTP {response.status}: {detail}"
        if response.status in _RETRY_STATUSES:
            return RetryLater(message, _retry_after(response))
        return OffloadError(message, f"HTTP_{response.status}")


def encode_request(
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    parameters: Mapping[str, ParameterValue] | None = None,
) -> tuple[bytes, list[bytes]]:
    """The JSON header and the binary chunks of a binary-extension infer request."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in inputs.items():
        chunk = bytes(array_to_binary(array))
        tensors.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array),
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
        chunks.append(chunk)
    body: dict[str, Any] = {
        "inputs": tensors,
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    if parameters:
        body["parameters"] = dict(parameters)
    return json.dumps(body, separators=(",", ":")).encode(), chunks


def decode_response(
    body: bytes, header_length: str | None, wanted: Sequence[str]
) -> dict[str, np.ndarray]:
    """The outputs named in ``wanted`` from a (binary-extension) infer response."""
    try:
        split = len(body) if header_length is None else int(header_length)
        if not 0 <= split <= len(body):
            raise ValueError(f"{HEADER_LENGTH} {split} but the body has {len(body)} bytes")
        parsed = json.loads(body[:split])
        tensors = parsed["outputs"]
        if not isinstance(tensors, list):
            raise TypeError("'outputs' is not a list")
        found: dict[str, np.ndarray] = {}
        offset = split
        for tensor in tensors:
            name, where = tensor["name"], f"output {tensor.get('name')!r}"
            shape = [int(d) for d in tensor["shape"]]
            dtype = dtype_for(tensor["datatype"], where)
            size = (tensor.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                chunk, offset = body[offset : offset + int(size)], offset + int(size)
                array = array_from_binary(chunk, shape, dtype, where)
            else:
                array = array_from_json(tensor["data"], shape, dtype, where)
            if not wanted or name in wanted:
                found[name] = array
    except (InputError, ValueError, KeyError, TypeError) as exc:
        raise _bad(f"{type(exc).__name__}: {exc}") from exc
    missing = [name for name in wanted if name not in found]
    if missing:
        raise _bad(f"the response has no output {', '.join(map(repr, missing))}")
    return found


def _settimeout(sock: socket.socket | None, end: float) -> None:
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    if sock is not None:
        sock.settimeout(left)


def _read(response: http.client.HTTPResponse, sock: socket.socket | None, end: float) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        _settimeout(sock, end)
        part = response.read1(_CHUNK)  # what one recv gives; a timeout is TimeoutError
        if not part:
            return b"".join(parts)
        total += len(part)
        if total > _MAX_RESPONSE:
            raise http.client.HTTPException(f"response over {_MAX_RESPONSE} bytes")
        parts.append(part)


def _retry_after(response: http.client.HTTPResponse) -> float | None:
    for header, scale in (("X-Retry-After-Ms", 1000.0), ("Retry-After", 1.0)):
        value = response.getheader(header)
        if value is not None and value.strip().isdigit():
            return min(int(value.strip()) / scale, _MAX_RETRY_AFTER_S)
    return None


def _bad(message: str) -> OffloadError:
    return OffloadError(f"bad response from the offload server: {message}", "BAD_RESPONSE")
