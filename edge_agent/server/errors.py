"""The server's own errors, and the one table that maps every agent error to a status.

Both transports read :func:`status_for`: HTTP takes the status code, gRPC (added later on
the same core) the canonical code name. The first row whose type matches wins, so a
subclass sits above its base::

    EdgeAgentError
    ├── InputError              400  INVALID_ARGUMENT
    │   └── ModelNotFound       404  NOT_FOUND
    ├── ModelNotReady           503  UNAVAILABLE
    ├── TransportError          503  UNAVAILABLE
    ├── BackendError            500  INTERNAL   (BackendUnavailable: 503 UNAVAILABLE)
    └── anything else           500  INTERNAL

Failures of HTTP itself (no such path 404, wrong method 405, body over the limit 413, a
malformed head 400) never reach the model service; the transport answers them directly.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import (
    BackendError,
    BackendUnavailable,
    EdgeAgentError,
    InputError,
    ModelError,
    TransportError,
)


class ModelNotFound(InputError):
    """The request names a model or a version this server does not serve."""


class ModelNotReady(EdgeAgentError):
    """The model exists but is not loaded and warmed yet (or the server is stopping)."""


class Status(NamedTuple):
    http: int
    grpc: str


_TABLE: tuple[tuple[type[BaseException], Status], ...] = (
    (ModelNotFound, Status(404, "NOT_FOUND")),
    (InputError, Status(400, "INVALID_ARGUMENT")),
    (ModelNotReady, Status(503, "UNAVAILABLE")),
    (BackendUnavailable, Status(503, "UNAVAILABLE")),
    (TransportError, Status(503, "UNAVAILABLE")),
    (BackendError, Status(500, "INTERNAL")),
    (ModelError, Status(500, "INTERNAL")),
    (EdgeAgentError, Status(500, "INTERNAL")),
)
_INTERNAL = Status(500, "INTERNAL")


def status_for(exc: BaseException) -> Status:
    """The status an error is answered with; anything unexpected is internal."""
    for kind, status in _TABLE:
        if isinstance(exc, kind):
            return status
    return _INTERNAL
