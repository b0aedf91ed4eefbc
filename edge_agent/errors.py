"""Errors raised by the edge agent.

Every error the agent raises derives from :class:`EdgeAgentError`, so an
application can catch one type. The tree says who is at fault::

    EdgeAgentError
    ├── ConfigError            a config or device profile is wrong (the operator's to fix)
    ├── ModelError             a model file cannot be used
    │   ├── ModelFormatError   the format is unknown or unsupported
    │   └── ModelLoadError     the file is truncated, corrupt or rejected by the runtime
    ├── InputError             a request's tensors do not match the model (the caller's to fix)
    ├── BackendError           a runtime failed while running a valid request
    │   └── BackendUnavailable the runtime or its hardware is not present here
    ├── IntegrityError         downloaded data or update metadata failed a check (do not trust it)
    └── TransportError         a peer could not be reached in time (retry later)

Vendor exceptions are translated at the boundary with ``raise ... from exc`` so
the original stays attached for ``--debug``.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of every error the edge agent raises."""


class ConfigError(EdgeAgentError):
    """A configuration file or device profile is invalid.

    The message names the file, the key, the value found and what was expected.
    """


class ModelError(EdgeAgentError):
    """A model file cannot be used."""


class ModelFormatError(ModelError):
    """The model's format is unknown or not supported by any backend here."""


class ModelLoadError(ModelError):
    """The model file is truncated or corrupt, or the runtime rejected it."""


class InputError(EdgeAgentError):
    """A request's tensors do not match what the model declares."""


class BackendError(EdgeAgentError):
    """A runtime failed while running a request that passed validation."""


class BackendUnavailable(BackendError):
    """A runtime, delegate or accelerator is not available on this device."""


class IntegrityError(EdgeAgentError):
    """Downloaded data or update metadata failed a check: wrong length, hash or signature.

    The peer sent something other than what was promised; retrying the same source does
    not help, and nothing it sent may be used.
    """


class TransportError(EdgeAgentError):
    """A network peer could not be reached, or did not answer in time."""
