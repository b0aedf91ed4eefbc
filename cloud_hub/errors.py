"""Errors raised by the cloud hub.

::

    HubError
    ├── HubConfigError     the hub's settings are wrong
    ├── NotFound           a named fleet, device, model or version does not exist
    ├── Conflict           the request contradicts what is stored
    ├── InvalidRequest     the request is malformed (the caller's to fix)
    │   └── OutOfRange     an offset or position lies past the end of what exists
    ├── Unauthorized       no or bad credentials
    ├── Forbidden          valid credentials, but not allowed to do this
    ├── DependencyMissing  an optional extra (train, hub) is not installed
    └── Unavailable        a service the hub depends on (database, broker) cannot be reached
"""

from __future__ import annotations


class HubError(Exception):
    """Root of every error the cloud hub raises."""


class HubConfigError(HubError):
    """The hub's configuration is invalid."""


class NotFound(HubError):
    """A named object does not exist."""


class Conflict(HubError):
    """The request contradicts stored state."""


class InvalidRequest(HubError):
    """The request is malformed."""


class OutOfRange(InvalidRequest):
    """An offset or position lies past the end of the object it points into."""


class Unauthorized(HubError):
    """Credentials are missing or wrong."""


class Forbidden(HubError):
    """Credentials are valid but do not allow this action."""


class DependencyMissing(HubError):
    """An optional extra needed for this command is not installed."""


class Unavailable(HubError):
    """A service the hub depends on (its database, the broker) cannot be reached."""
