"""Errors as HTTP: one table from :mod:`cloud_hub.errors` to statuses, one JSON shape.

Every error the API returns, ours or FastAPI's, has the body::

    {"error": {"code": "not_found", "message": "device 'dev-0a1b' does not exist"}}

with ``details`` added for request validation (which parameter, what was wrong). A 401
carries ``WWW-Authenticate: Bearer``. Anything unexpected is a 500 whose message points at
the hub's log, never at the exception's text.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    Conflict,
    DependencyMissing,
    Forbidden,
    HubConfigError,
    HubError,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
)

_LOG = logging.getLogger(__name__)

# The one table: the most specific class in an error's MRO decides its status and code.
STATUS_CODES: dict[type[HubError], tuple[int, str]] = {
    Unauthorized: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    InvalidRequest: (422, "invalid_request"),
    Unavailable: (503, "unavailable"),
    HubConfigError: (500, "hub_misconfigured"),
    DependencyMissing: (500, "dependency_missing"),
    HubError: (500, "hub_error"),
}

# Starlette's own HTTP errors (unknown route, wrong method) in our shape.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
_MAX_DETAILS = 20


_DESCRIPTIONS = {
    401: "No operator token, or a wrong one",
    403: "The operator token was revoked",
    404: "No such object",
    409: "Conflicts with what is stored",
    422: "A parameter or the body is not valid",
    503: "The hub's database cannot be reached",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for error statuses a route can answer, in the one shape."""
    from .schemas import ErrorBody

    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in statuses}


def status_of(error: HubError) -> tuple[int, str]:
    """The HTTP status and error code for ``error``."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return STATUS_CODES[HubError]


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="edgeloop-hub"', **(headers or {})}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error ``app`` can raise in the one JSON shape."""
    app.add_exception_handler(HubError, _hub_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


async def _hub_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HubError)
    status, code = status_of(exc)
    if status >= 500:
        _LOG.error("%s %s failed: %s", request.method, request.url.path, exc)
    return error_response(status, code, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [_detail(error) for error in exc.errors()[:_MAX_DETAILS]]
    message = "; ".join(f"{d['location']}: {d['message']}" for d in details[:3])
    return error_response(
        422, "validation_error", message or "the request is not valid", details=details
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # a body FastAPI cannot parse (not UTF-8): like bad JSON
        return error_response(422, "validation_error", f"the request body: {exc.detail}")
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    else:
        message = str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, message, headers=headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated or _is_connection_error(exc):
        _LOG.error("%s %s: database unavailable: %s", request.method, request.url.path, exc.orig)
        return error_response(503, "unavailable", "the hub's database cannot be reached")
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    _LOG.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error in the hub; its log has the details")


def _is_connection_error(exc: DBAPIError) -> bool:
    return isinstance(exc, (OperationalError, InterfaceError))


def _detail(error: Any) -> dict[str, Any]:
    location = ".".join(str(part) for part in error.get("loc", ()))
    return {"location": location, "message": str(error.get("msg", "is not valid"))}
