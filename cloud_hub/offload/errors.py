"""The offload server's errors and the one table that maps each to HTTP and gRPC.

The server raises :mod:`cloud_hub.errors` like the rest of the hub, plus the few kinds
only a batching server has::

    HubError
    ├── InvalidRequest        400  INVALID_ARGUMENT   (a guard: names the tensor)
    ├── Unauthorized          401  UNAUTHENTICATED
    ├── Forbidden             403  PERMISSION_DENIED
    ├── NotFound              404  NOT_FOUND          (no such model or version)
    ├── Unavailable           503  UNAVAILABLE
    │   ├── QueueFull         503  RESOURCE_EXHAUSTED (with a retry hint)
    │   └── ModelUnloaded     503  UNAVAILABLE        (evicted while a request came in)
    ├── DeadlineExceeded      504  DEADLINE_EXCEEDED  (never computed)
    └── BatchFailed           500  INTERNAL           (the model failed on the batch)

:class:`edge_agent.errors.InputError` (the OIP codec's) is 400 / INVALID_ARGUMENT too.
Retry hint on the wire: HTTP ``Retry-After`` (whole seconds, at least 1) and
``X-Retry-After-Ms``; gRPC trailing metadata ``retry-after-ms``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import grpc

from edge_agent.errors import InputError

from ..errors import (
    Forbidden,
    HubError,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "RETRY_AFTER_MS_HEADER",
    "RETRY_AFTER_MS_METADATA",
    "BatchFailed",
    "DeadlineExceeded",
    "ModelUnloaded",
    "QueueFull",
    "Status",
    "retry_headers",
    "status_for",
]

RETRY_AFTER_MS_HEADER = "X-Retry-After-Ms"
RETRY_AFTER_MS_METADATA = "retry-after-ms"


class QueueFull(Unavailable):
    """The model's queue is full: try again in ``retry_after_ms``."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = max(1, int(retry_after_ms))


class ModelUnloaded(Unavailable):
    """The model was unloaded (evicted or the server is stopping) as the request came in."""


class DeadlineExceeded(HubError):
    """The request's deadline passed while it waited in the queue; it was not computed."""


class BatchFailed(HubError):
    """The model failed on the batch this request was part of."""


class Status(NamedTuple):
    http: int
    grpc: grpc.StatusCode
    reason: str  # the label on the rejections counter


_TABLE: tuple[tuple[type[BaseException], Status], ...] = (
    (QueueFull, Status(503, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_full")),
    (DeadlineExceeded, Status(504, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")),
    (BatchFailed, Status(500, grpc.StatusCode.INTERNAL, "failed")),
    (Unauthorized, Status(401, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")),
    (Forbidden, Status(403, grpc.StatusCode.PERMISSION_DENIED, "forbidden")),
    (NotFound, Status(404, grpc.StatusCode.NOT_FOUND, "not_found")),
    (InvalidRequest, Status(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid")),
    (InputError, Status(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid")),
    (Unavailable, Status(503, grpc.StatusCode.UNAVAILABLE, "unavailable")),
    (HubError, Status(500, grpc.StatusCode.INTERNAL, "error")),
)
_INTERNAL = Status(500, grpc.StatusCode.INTERNAL, "error")


def status_for(exc: BaseException) -> Status:
    """How ``exc`` is answered; the first row whose type matches wins."""
    for kind, status in _TABLE:
        if isinstance(exc, kind):
            return status
    return _INTERNAL


def retry_headers(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """The HTTP retry-hint headers for ``exc`` (none unless it is :class:`QueueFull`)."""
    if not isinstance(exc, QueueFull):
        return ()
    seconds = max(1, math.ceil(exc.retry_after_ms / 1000))
    return (("Retry-After", str(seconds)), (RETRY_AFTER_MS_HEADER, str(exc.retry_after_ms)))
