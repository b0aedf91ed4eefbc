"""The Open Inference Protocol v2 REST routes, on top of :class:`ModelService`.

No sockets here: a :class:`Request` (method, path, the JSON part of the body and the
binary part after it) goes in, a :class:`Response` (status and body buffers) comes out.
The transport in :mod:`edge_agent.server.http` reads and writes the bytes.

Routes::

    GET  /v2                                         server metadata
    GET  /v2/health/live | /v2/health/ready          200, or 503 while not ready
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready      200, or 503 while not ready
    POST /v2/models/{name}[/versions/{v}]/infer      inference (JSON and binary tensors)

An inference response carries the response-level parameter ``edgeloop_answered_by``:
``"edge"`` when the local model answered, ``"cloud"`` when the offload cascade's hub did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import unquote

from ..errors import EdgeAgentError
from ._http11 import Reply as Response
from .codec import Buffer, decode_request, encode_error, encode_json, encode_response, output_plan
from .errors import ModelNotReady, status_for
from .models import ModelMetadata, ModelService

_LOG = logging.getLogger(__name__)


class Request(NamedTuple):
    method: str
    path: str  # without the query string
    body: Buffer = b""  # the JSON part
    binary: Buffer | None = None  # what followed it, when Inference-Header-Content-Length said


class NoRoute(Exception):
    """The path names nothing here (404) or not with this method (405)."""

    def __init__(self, status: int, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow


class Routes:
    """Dispatches requests to the service; ``stopping`` says the server is draining."""

    def __init__(self, service: ModelService, stopping: Callable[[], bool]) -> None:
        self.service = service
        self._stopping = stopping
        self._server_metadata = encode_json(service.server_metadata.to_dict())
        self._metadata_cache: tuple[ModelMetadata, bytes] | None = None
        self._routes: dict[tuple[str, str], tuple[_Handler, str, str | None]] = {}

    def handle(self, request: Request) -> Response:
        """Answer one request; every failure becomes a JSON ``{"error": ...}`` response."""
        try:
            key = (request.method, request.path)
            route = self._routes.get(key)
            if route is None:
                route = _route(*key)
                if len(self._routes) >= _MAX_ROUTES:  # bounded: callers pick the paths
                    self._routes.clear()
                self._routes[key] = route
            handler, name, version = route
            return handler(self, request, name, version)
        except NoRoute as exc:
            return error_response(exc.status, str(exc), allow=exc.allow)
        except EdgeAgentError as exc:
            return error_response(status_for(exc).http, str(exc))
        except Exception as exc:  # a bug or a runtime fault: say so, keep serving
            _LOG.exception("%s %s failed", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    # -- handlers ------------------------------------------------------------------------

    def _live(self, request: Request, name: str, version: str | None) -> Response:
        return Response(200, (b'{"live":true}',))

    def _ready(self, request: Request, name: str, version: str | None) -> Response:
        if self._stopping():
            raise ModelNotReady("the server is shutting down")
        if not self.service.ready:
            raise ModelNotReady(f"model {self.service.name!r} is not loaded yet")
        return Response(200, (b'{"ready":true}',))

    def _server(self, request: Request, name: str, version: str | None) -> Response:
        return Response(200, (self._server_metadata,))

    def _metadata(self, request: Request, name: str, version: str | None) -> Response:
        metadata = self.service.model_metadata(name, version)
        cached = self._metadata_cache
        if cached is None or cached[0] is not metadata:
            cached = self._metadata_cache = (metadata, encode_json(metadata.to_dict()))
        return Response(200, (cached[1],))

    def _model_ready(self, request: Request, name: str, version: str | None) -> Response:
        if not self.service.model_ready(name, version):
            raise ModelNotReady(f"model {name!r} is not loaded yet")
        if self._stopping():
            raise ModelNotReady("the server is shutting down")
        body = {"name": name, "version": version or self.service.version, "ready": True}
        return Response(200, (encode_json(body),))

    def _infer(self, request: Request, name: str, version: str | None) -> Response:
        decoded = decode_request(request.body, request.binary)
        wanted = () if decoded.outputs is None else (output.name for output in decoded.outputs)
        result = self.service.infer(name, version, decoded.inputs, wanted)
        plan = output_plan(decoded, result.output_names)
        encoded = encode_response(
            result.outputs,
            plan,
            model_name=name,
            model_version=result.model_version,
            request_id=decoded.id,
            parameters=_ANSWERED_BY[result.answered_by],
        )
        return Response.encoded(encoded)


def error_response(status: int, message: str, *, allow: str | None = None) -> Response:
    headers = () if allow is None else (("Allow", allow),)
    return Response(status, (encode_error(message),), headers=headers)


#: Says who answered: "edge" (this device's model) or "cloud" (the offload cascade's hub).
ANSWERED_BY = "edgeloop_answered_by"
_ANSWERED_BY = {who: {ANSWERED_BY: who} for who in ("edge", "cloud")}
_Handler = Callable[[Routes, Request, str, "str | None"], Response]
_GET, _POST = "GET", "POST"
_MAX_ROUTES = 256  # resolved (method, path) pairs kept
_SIMPLE: dict[tuple[str, ...], _Handler] = {
    ("v2",): Routes._server,
    ("v2", "health", "live"): Routes._live,
    ("v2", "health", "ready"): Routes._ready,
}
_MODEL_ACTIONS: dict[str, tuple[str, _Handler]] = {
    "": (_GET, Routes._metadata),
    "ready": (_GET, Routes._model_ready),
    "infer": (_POST, Routes._infer),
}


def _route(method: str, path: str) -> tuple[_Handler, str, str | None]:
    """The handler, model name and version for ``method`` on ``path``, or :class:`NoRoute`."""
    parts = tuple(path.split("/")[1:]) if path.startswith("/") else ()
    simple = _SIMPLE.get(parts)
    if simple is not None:
        _allowed(method, _GET, path)
        return simple, "", None
    name, version, action = _model_path(parts, path)
    wanted, handler = _MODEL_ACTIONS[action]
    _allowed(method, wanted, path)
    return handler, name, version


def _model_path(parts: tuple[str, ...], path: str) -> tuple[str, str | None, str]:
    """``v2/models/{name}[/versions/{v}][/ready|/infer]`` -> (name, version, action)."""
    if len(parts) < 3 or parts[:2] != ("v2", "models") or not parts[2]:
        raise NoRoute(404, f"no such path {path!r}")
    rest = parts[3:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        version, rest = unquote(rest[1]), rest[2:]
    action = rest[0] if len(rest) == 1 else ""
    if len(rest) > 1 or action not in _MODEL_ACTIONS or (rest and not action):
        raise NoRoute(404, f"no such path {path!r}")
    return unquote(parts[2]), version, action


def _allowed(method: str, wanted: str, path: str) -> None:
    if method != wanted:
        raise NoRoute(405, f"method {method} is not allowed on {path} (use {wanted})", wanted)
