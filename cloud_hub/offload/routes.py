"""The offload server's REST routes: Open Inference Protocol v2 plus ``/metrics``.

No sockets here: a :class:`Request` goes in, a :class:`Response` comes out
(:mod:`.http` moves the bytes). Routes::

    GET  /v2/health/live | /v2/health/ready           open
    GET  /v2                                          open: server metadata
    GET  /metrics                                     open from loopback or with auth off;
                                                      otherwise needs a credential
    GET  /v2/models/{m}[/versions/{v}]                credential: model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready          credential: 200, or 503
    POST /v2/models/{m}[/versions/{v}]/infer          credential: JSON or binary tensors

Errors are ``{"error": "..."}`` with the status from :func:`.errors.status_for`; a full
queue adds ``Retry-After`` and ``X-Retry-After-Ms``; a 401 adds ``WWW-Authenticate``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import unquote

from edge_agent.errors import InputError
from edge_agent.server._http11 import Reply as Response
from edge_agent.server.codec import (
    Buffer,
    decode_request,
    encode_error,
    encode_json,
    encode_response,
    output_plan,
)

from ..errors import HubError, Unavailable
from .errors import retry_headers, status_for
from .guards import declared_in_json
from .metrics import CONTENT_TYPE
from .service import OffloadService, deadline_from

__all__ = ["Request", "Response", "Routes"]

_LOG = logging.getLogger(__name__)

_LOOPBACK = ("127.", "::1", "::ffff:127.")


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    peer: str  # the client's address
    body: Buffer = b""  # the JSON part
    binary: Buffer | None = None  # the bytes after it


class _NoRoute(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_Handler = Callable[["Routes", Request, str, "str | None"], Response]


class Routes:
    """Dispatches requests to the :class:`OffloadService`."""

    def __init__(self, service: OffloadService) -> None:
        self.service = service

    def handle(self, request: Request) -> Response:
        """Answer one request; every failure becomes an ``{"error": ...}`` response."""
        try:
            handler, name, version = _route(request.method, request.path)
            return handler(self, request, name, version)
        except _NoRoute as exc:
            return _error(exc.status, str(exc))
        except (HubError, InputError) as exc:
            status = status_for(exc)
            extra = retry_headers(exc)
            if status.http == 401:
                extra = (("WWW-Authenticate", "Bearer"),)
            return _error(status.http, str(exc), extra)
        except Exception as exc:  # a bug: say so without internals, keep serving
            _LOG.exception("offload %s %s failed", request.method, request.path)
            return _error(500, f"internal error in the offload server ({type(exc).__name__})")

    # -- open ------------------------------------------------------------------------------

    def _live(self, request: Request, name: str, version: str | None) -> Response:
        return Response(200, (b'{"live":true}',))

    def _ready(self, request: Request, name: str, version: str | None) -> Response:
        if not self.service.ready:
            raise Unavailable("the offload server is stopping")
        return Response(200, (b'{"ready":true}',))

    def _server(self, request: Request, name: str, version: str | None) -> Response:
        return Response(200, (encode_json(self.service.server_metadata()),))

    def _metrics(self, request: Request, name: str, version: str | None) -> Response:
        if self.service.auth.enabled and not request.peer.startswith(_LOOPBACK):
            self.service.authenticate(request.headers.items())
        return Response(200, (self.service.metrics.exposition(),), CONTENT_TYPE)

    # -- with a credential -----------------------------------------------------------------

    def _metadata(self, request: Request, name: str, version: str | None) -> Response:
        self.service.authenticate(request.headers.items())
        return Response(200, (encode_json(self.service.model_metadata(name, version)),))

    def _model_ready(self, request: Request, name: str, version: str | None) -> Response:
        self.service.authenticate(request.headers.items())
        model = self.service.model(name, version)
        if not self.service.ready:
            raise Unavailable("the offload server is stopping")
        body = {"name": model.name, "version": model.version, "ready": True}
        return Response(200, (encode_json(body),))

    def _infer(self, request: Request, name: str, version: str | None) -> Response:
        service = self.service
        caller = service.authenticate(request.headers.items())
        model = service.model(name, version)
        service.check(model, declared_in_json(request.body))
        try:
            decoded = decode_request(request.body, request.binary)
            plan = output_plan(decoded, model.output_names)
            parameters = decoded.parameters or {}
            deadline = deadline_from(parameters, time.monotonic())
        except (InputError, HubError):
            model.metrics.reject("invalid")
            raise
        model, outputs = service.infer(caller, model, decoded.inputs, parameters, deadline)
        encoded = encode_response(
            outputs,
            plan,
            model_name=model.name,
            model_version=model.version,
            request_id=decoded.id,
        )
        return Response.encoded(encoded)


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, (encode_error(message),), headers=headers)


_GET, _POST = "GET", "POST"
_SIMPLE: dict[str, _Handler] = {
    "/v2": Routes._server,
    "/v2/health/live": Routes._live,
    "/v2/health/ready": Routes._ready,
    "/metrics": Routes._metrics,
}
_ACTIONS: dict[str, tuple[str, _Handler]] = {
    "": (_GET, Routes._metadata),
    "ready": (_GET, Routes._model_ready),
    "infer": (_POST, Routes._infer),
}


def _route(method: str, path: str) -> tuple[_Handler, str, str | None]:
    simple = _SIMPLE.get(path.rstrip("/") or "/")
    if simple is not None:
        _allowed(method, _GET, path)
        return simple, "", None
    parts = path.split("/")[1:] if path.startswith("/") else []
    if len(parts) < 3 or parts[:2] != ["v2", "models"] or not parts[2]:
        raise _NoRoute(404, f"no such path {path!r}")
    rest = parts[3:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        version, rest = unquote(rest[1]), rest[2:]
    action = rest[0] if len(rest) == 1 else ""
    if len(rest) > 1 or action not in _ACTIONS or (rest and not action):
        raise _NoRoute(404, f"no such path {path!r}")
    wanted, handler = _ACTIONS[action]
    _allowed(method, wanted, path)
    return handler, unquote(parts[2]), version


def _allowed(method: str, wanted: str, path: str) -> None:
    if method != wanted:
        raise _NoRoute(405, f"method {method} is not allowed on {path} (use {wanted})")
