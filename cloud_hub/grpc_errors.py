"""The hub's errors as gRPC status codes: one table, and the interceptor that applies it.

Servicers raise :mod:`cloud_hub.errors` like every other part of the hub;
:class:`HubErrorInterceptor` (installed by :class:`~cloud_hub.grpc_server.HubGrpcServer`)
turns each into the status in :data:`STATUS_CODES` with the error's message as details.
Anything else a servicer raises is our bug: it is logged with its traceback and the
client gets INTERNAL without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import grpc

from .errors import (
    Conflict,
    DependencyMissing,
    Forbidden,
    HubConfigError,
    HubError,
    InvalidRequest,
    NotFound,
    OutOfRange,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS_CODES: Mapping[type[HubError], grpc.StatusCode] = {
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DependencyMissing: grpc.StatusCode.UNIMPLEMENTED,
    HubConfigError: grpc.StatusCode.INTERNAL,
    HubError: grpc.StatusCode.INTERNAL,
}
_INTERNAL_DETAILS = "internal error in the hub (see its log)"


def status_for(exc: HubError) -> grpc.StatusCode:
    """The status for ``exc``: its own class's, else its nearest ancestor's in the table."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: HubError) -> NoReturn:
    """End the call with ``exc``'s status and message (raises, as ``context.abort`` does)."""
    context.abort(status_for(exc), str(exc))
    raise AssertionError("grpc.ServicerContext.abort returned")  # it always raises


class HubErrorInterceptor(grpc.ServerInterceptor):
    """Applies :data:`STATUS_CODES` to every method of every servicer on the server."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is None:
            return handler
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _unary(behavior: Behavior, method: str) -> Behavior:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except HubError as exc:
            _answer(context, exc, method)
        except Exception:
            if _already_answered(context):  # the servicer aborted or set its own status
                raise
            _internal(context, method)

    return call


def _streaming(behavior: Behavior, method: str) -> Behavior:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except HubError as exc:
            _answer(context, exc, method)
        except Exception:
            if _already_answered(context):  # the servicer aborted or set its own status
                raise
            _internal(context, method)

    return call


def _answer(context: grpc.ServicerContext, exc: HubError, method: str) -> NoReturn:
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed: %s", method, exc)
    else:
        log.info("%s refused (%s): %s", method, code.name, exc)
    abort(context, exc)


def _already_answered(context: grpc.ServicerContext) -> bool:
    code = getattr(context, "code", None)
    return callable(code) and code() is not None


def _internal(context: grpc.ServicerContext, method: str) -> NoReturn:
    log.exception("%s failed with an unexpected error", method)
    context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_DETAILS)
    raise AssertionError("grpc.ServicerContext.abort returned")
