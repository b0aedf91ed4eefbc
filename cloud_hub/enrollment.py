"""The gRPC Enrollment service: devices trade a token for their identity and credential.

``Enroll`` checks the request (the public key must be a PEM SubjectPublicKeyInfo that
``cryptography`` parses as Ed25519, ECDSA P-256 or larger, or RSA of 2048 bits or more;
hostname, profile, hardware and version within bounds), then redeems the token through
the registry in one transaction that also stores the broker's hash of the new credential,
so the device exists with its MQTT password or not at all. It answers with the device id,
fleet, credential, where the DEVICE reaches the broker (``mqtt_public_host``/``port``,
defaulting to the hub's own ``mqtt_host``/``port``), the hub's public gRPC endpoint and the
signed TUF root of the hub's update repository (``cloud-hub ota init-keys``), if it has one.
After the commit the broker's files are brought in step; a broker that cannot be reloaded
is logged, not the device's problem: the device is enrolled and gets its answer, and the
next sync (another enrollment, ``cloud-hub broker sync``, a restart) lets it in.

``WhoAmI`` answers who the presented credential belongs to (see :mod:`.grpc_auth`).

Token errors come from the registry: unknown or mistyped is UNAUTHENTICATED; expired,
used-up or revoked is PERMISSION_DENIED with a message that says which and when.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc

from edge_agent.wire import enrollment_pb2, enrollment_pb2_grpc

from .errors import DependencyMissing, HubError, InvalidRequest
from .grpc_auth import DeviceAuthenticator
from .registry import Enrollment, Registry
from .registry import enrollment as enrollment_tx
from .settings import HubSettings

if TYPE_CHECKING:
    from .broker import BrokerAuth

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 256
MAX_PUBLIC_KEY_CHARS = 8 * 1024
MAX_HOSTNAME_CHARS = 255
MAX_PROFILE_CHARS = 64
MAX_VERSION_CHARS = 64
MAX_HARDWARE_ENTRIES = 64
MAX_HARDWARE_KEY_CHARS = 64
MAX_HARDWARE_VALUE_CHARS = 1024
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256

_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServicer):
    """``edgeloop.v1.Enrollment``: Enroll and WhoAmI."""

    def __init__(
        self,
        registry: Registry,
        settings: HubSettings,
        *,
        auth: DeviceAuthenticator,
        broker: BrokerAuth | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.auth = auth
        self.broker = broker

    def Enroll(
        self, request: enrollment_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> enrollment_pb2.EnrollResponse:
        public_key = check_public_key(request.public_key_pem)
        hostname = _required("hostname", request.hostname, MAX_HOSTNAME_CHARS)
        profile = _profile(request.device_profile)
        hardware = _hardware(request.hardware)
        version = _text("agent_version", request.agent_version, MAX_VERSION_CHARS)
        if len(request.enrollment_token) > MAX_TOKEN_CHARS:
            raise InvalidRequest(f"enrollment_token is longer than {MAX_TOKEN_CHARS} characters")
        enrolled = self._enroll(
            request.enrollment_token, public_key, hostname, profile, hardware, version
        )
        log.info(
            "enrolled device %s (%s) in fleet %s with token %s from %s",
            enrolled.device.id,
            hostname,
            enrolled.device.fleet,
            enrolled.token_id,
            context.peer(),
        )
        self._sync_broker()
        return self._response(enrolled)

    def WhoAmI(
        self, request: enrollment_pb2.WhoAmIRequest, context: grpc.ServicerContext
    ) -> enrollment_pb2.WhoAmIResponse:
        device = self.auth.authenticate(context)
        return enrollment_pb2.WhoAmIResponse(device_id=device.id, fleet=device.fleet)

    def _enroll(
        self,
        token: str,
        public_key: str,
        hostname: str,
        profile: str | None,
        hardware: dict[str, str],
        version: str | None,
    ) -> Enrollment:
        # One transaction: the token's use, the device, its credential and the broker hash.
        with self.registry.db.transaction() as session:
            enrolled = enrollment_tx.redeem_enrollment_token(
                session,
                token,
                public_key_pem=public_key,
                hostname=hostname,
                profile=profile,
                hardware=hardware,
                agent_version=version,
                now=self.registry.now(),
            )
            if self.broker is not None:
                self.broker.record_credential(session, enrolled.device.id, enrolled.secret)
        return enrolled

    def _sync_broker(self) -> None:
        if self.broker is None:
            return
        try:
            self.broker.sync(self.registry.db)
        except (HubError, OSError) as exc:
            log.error(
                "the broker was not updated after an enrollment (the device cannot publish "
                "until it is; run 'cloud-hub broker sync'): %s",
                exc,
            )

    def _response(self, enrolled: Enrollment) -> enrollment_pb2.EnrollResponse:
        settings = self.settings
        device = enrolled.device
        return enrollment_pb2.EnrollResponse(
            device_id=device.id,
            fleet=device.fleet,
            credential=enrollment_pb2.DeviceCredential(secret=enrolled.secret),
            mqtt=enrollment_pb2.MqttSettings(
                host=settings.mqtt_public_host or settings.mqtt_host,
                port=settings.mqtt_public_port or settings.mqtt_port,
                username=device.id,
                password=enrolled.secret,
                topic_prefix=settings.mqtt_topic_prefix,
                tls=settings.mqtt_public_tls,
            ),
            hub_endpoint=settings.grpc_public_endpoint or "",
            tuf_root=self._tuf_root(),
        )

    def _tuf_root(self) -> bytes:
        """The signed TUF root devices pin (docs/ota.md); empty while the hub has none."""
        from .ota import TufRepository

        repository = TufRepository.for_data_dir(self.settings.data_dir)
        return repository.root_json() if repository.exists else b""


def check_public_key(pem: str) -> str:
    """``pem`` as a canonical SubjectPublicKeyInfo PEM, if it is a key the hub accepts."""
    if not pem.strip():
        raise InvalidRequest("public_key_pem is required (the device's public key, PEM)")
    if len(pem) > MAX_PUBLIC_KEY_CHARS:
        raise InvalidRequest(f"public_key_pem is longer than {MAX_PUBLIC_KEY_CHARS} characters")
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    except ImportError as exc:
        raise DependencyMissing(
            "checking device keys needs cryptography: pip install 'edgeloop[hub]'"
        ) from exc
    try:
        with warnings.catch_warnings():  # cryptography 51+ warns when it loads DSA: refused below
            warnings.simplefilter("ignore", UserWarning)
            key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(
            "public_key_pem is not a PEM public key ('-----BEGIN PUBLIC KEY-----' block "
            f"holding a SubjectPublicKeyInfo): {exc}"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidRequest(
                f"public_key_pem: an RSA key of {key.key_size} bits is too small "
                f"(expected at least {MIN_RSA_BITS})"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < MIN_EC_BITS:
            raise InvalidRequest(
                f"public_key_pem: an ECDSA key on {key.curve.name} is too small "
                f"(expected P-256 or larger)"
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidRequest(
            f"public_key_pem: a {type(key).__name__.removeprefix('_')} is not accepted "
            "(expected Ed25519, ECDSA or RSA)"
        )
    spki = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki.decode("ascii")


def _required(field: str, value: str, max_chars: int) -> str:
    checked = _text(field, value, max_chars)
    if checked is None:
        raise InvalidRequest(f"{field} is required")
    return checked


def _text(field: str, value: str, max_chars: int) -> str | None:
    value = value.strip()
    if not value:
        return None
    if len(value) > max_chars:
        raise InvalidRequest(f"{field} is longer than {max_chars} characters")
    if _CONTROL.search(value):
        raise InvalidRequest(f"{field} {value[:40]!r} contains control characters")
    return value


def _profile(value: str) -> str | None:
    profile = _text("device_profile", value, MAX_PROFILE_CHARS)
    if profile is not None and not _PROFILE.fullmatch(profile):
        raise InvalidRequest(
            f"device_profile {profile!r} is not a profile name (letters, digits, '.', '_' "
            "or '-', starting with a letter or digit)"
        )
    return profile


def _hardware(values: Mapping[str, str]) -> dict[str, str]:
    if len(values) > MAX_HARDWARE_ENTRIES:
        raise InvalidRequest(
            f"hardware has {len(values)} entries, more than {MAX_HARDWARE_ENTRIES}"
        )
    checked: dict[str, str] = {}
    for key, value in values.items():
        name = _required("hardware key", key, MAX_HARDWARE_KEY_CHARS)
        if len(value) > MAX_HARDWARE_VALUE_CHARS:
            raise InvalidRequest(
                f"hardware[{name!r}] is longer than {MAX_HARDWARE_VALUE_CHARS} characters"
            )
        checked[name] = value
    return checked
