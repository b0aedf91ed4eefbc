"""Who is calling the offload server: a device, an operator, or nobody (auth off).

The same credentials as the rest of the hub, as HTTP headers or gRPC metadata:

* a device: ``authorization: Bearer <secret>`` and ``x-edgeloop-device: <id>``
  (:mod:`cloud_hub.grpc_auth`), checked by :meth:`Registry.authenticate_device`;
* an operator: ``authorization: Bearer eop_...`` without a device id, checked by
  :meth:`Registry.authenticate_operator`.

Missing or wrong credentials are :class:`~cloud_hub.errors.Unauthorized` (401 /
UNAUTHENTICATED); a revoked device, credential or token is
:class:`~cloud_hub.errors.Forbidden` (403 / PERMISSION_DENIED).

Checking a secret means a slow hash and a database round trip, so a *positive* answer is
kept for ``cache_s`` seconds (default 30), keyed by the id and the SHA-256 of the secret:
**a revoked device or token is refused at the latest ``cache_s`` after its revocation.**
Refusals are never cached. The cache is bounded (the oldest entries go first).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import Unauthorized
from ..grpc_auth import AUTHORIZATION, DEVICE_HEADER, credentials_from
from ..registry import Registry

__all__ = ["ANONYMOUS", "Caller", "OffloadAuthenticator"]

_BEARER = "bearer "
_MAX_TOKEN_CHARS = 512
_CACHE_MAX = 4096
_WANTED = frozenset({AUTHORIZATION, DEVICE_HEADER})


@dataclass(frozen=True)
class Caller:
    """``kind`` is ``device``, ``operator`` or ``anonymous`` (auth off); ``id`` who."""

    kind: str
    id: str | None = None

    @property
    def device_id(self) -> str | None:
        return self.id if self.kind == "device" else None


ANONYMOUS = Caller("anonymous")


class OffloadAuthenticator:
    """Checks credentials against the registry, remembering positive answers briefly."""

    def __init__(
        self,
        registry: Registry,
        *,
        enabled: bool = True,
        cache_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.enabled = enabled
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str, bytes], tuple[float, Caller]] = OrderedDict()

    def check(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller:
        """The caller the headers or metadata (lower-case names) prove; or raise."""
        if not self.enabled:
            return ANONYMOUS
        pairs = [(key, value) for key, value in metadata if key in _WANTED]
        if any(key == DEVICE_HEADER for key, _ in pairs):
            device_id, secret = credentials_from(pairs)
            key = ("device", device_id, _digest(secret))
            return self._cached(key, lambda: self._device(device_id, secret))
        token = _bearer(pairs)
        return self._cached(("operator", "", _digest(token)), lambda: self._operator(token))

    def _device(self, device_id: str, secret: str) -> Caller:
        device = self.registry.authenticate_device(device_id, secret)
        return Caller("device", device.id)

    def _operator(self, token: str) -> Caller:
        operator = self.registry.authenticate_operator(token)
        return Caller("operator", operator.id)

    def _cached(self, key: tuple[str, str, bytes], check: Callable[[], Caller]) -> Caller:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        caller = check()  # raises for refusals, which are never cached
        if self.cache_s > 0:
            with self._lock:
                self._cache[key] = (now + self.cache_s, caller)
                self._cache.move_to_end(key)
                while len(self._cache) > _CACHE_MAX:
                    self._cache.popitem(last=False)
        return caller

    def forget(self) -> None:
        """Drop every remembered answer (each caller's next call is checked afresh)."""
        with self._lock:
            self._cache.clear()


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def _bearer(pairs: list[tuple[str, str | bytes]]) -> str:
    values = [value for key, value in pairs if key == AUTHORIZATION and isinstance(value, str)]
    if not values:
        raise Unauthorized(
            f"no credential: send '{AUTHORIZATION}: Bearer <secret>' with "
            f"'{DEVICE_HEADER}: <device id>' (a device) or 'Bearer eop_...' (an operator)"
        )
    if len(values) > 1:
        raise Unauthorized(f"{AUTHORIZATION!r} was given more than once")
    header = values[0]
    if header[: len(_BEARER)].lower() != _BEARER:
        raise Unauthorized(f"{AUTHORIZATION!r} must be 'Bearer <secret>'")
    token = header[len(_BEARER) :].strip()
    if not token or len(token) > _MAX_TOKEN_CHARS:
        raise Unauthorized("unknown or malformed credential")
    return token
