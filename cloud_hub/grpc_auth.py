"""Device authentication for the hub's gRPC services.

Every edgeloop.v1 call but Enroll carries the device's credential as two metadata
entries (see protos/edgeloop/v1/enrollment.proto)::

    authorization: Bearer <secret>
    x-edgeloop-device: <device id>

The id is needed because the hub keeps secrets hashed: it finds the device's hashes by
id and compares. A servicer authenticates a call in one line::

    device = self.auth.authenticate(context)   # aborts UNAUTHENTICATED / PERMISSION_DENIED

Missing, malformed or wrong credentials are UNAUTHENTICATED; a revoked device or
credential is PERMISSION_DENIED with when it was revoked.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from .errors import HubError, Unauthorized
from .grpc_errors import abort
from .registry import Device, Registry

AUTHORIZATION = "authorization"
DEVICE_HEADER = "x-edgeloop-device"
_BEARER = "bearer "
_MAX_SECRET_CHARS = 512
_MAX_DEVICE_ID_CHARS = 64


def credentials_from(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[str, str]:
    """``(device id, secret)`` from a call's metadata; :class:`Unauthorized` if missing."""
    found: dict[str, str] = {}
    for key, value in metadata:
        if key in (AUTHORIZATION, DEVICE_HEADER) and isinstance(value, str):
            if key in found:
                raise Unauthorized(f"metadata {key!r} was given more than once")
            found[key] = value
    header = found.get(AUTHORIZATION)
    if header is None:
        raise Unauthorized(
            f"no credential: send metadata '{AUTHORIZATION}: Bearer <secret>' and "
            f"'{DEVICE_HEADER}: <device id>'"
        )
    if not header[: len(_BEARER)].lower() == _BEARER:
        raise Unauthorized(f"metadata {AUTHORIZATION!r} must be 'Bearer <secret>'")
    secret = header[len(_BEARER) :].strip()
    device_id = found.get(DEVICE_HEADER, "").strip()
    if not device_id:
        raise Unauthorized(f"no device id: send metadata '{DEVICE_HEADER}: <device id>'")
    if not secret or len(secret) > _MAX_SECRET_CHARS or len(device_id) > _MAX_DEVICE_ID_CHARS:
        raise Unauthorized("unknown device or wrong credential")
    return device_id, secret


class DeviceAuthenticator:
    """Checks the device credential on a gRPC call against the registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def check(self, metadata: Iterable[tuple[str, str | bytes]]) -> Device:
        """The device the metadata's credential belongs to; raises Unauthorized/Forbidden."""
        device_id, secret = credentials_from(metadata)
        return self.registry.authenticate_device(device_id, secret)

    def authenticate(self, context: grpc.ServicerContext) -> Device:
        """The calling device; aborts the call UNAUTHENTICATED or PERMISSION_DENIED."""
        try:
            return self.check(context.invocation_metadata())
        except HubError as exc:
            abort(context, exc)
