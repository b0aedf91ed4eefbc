"""``edge-agent enroll``: trade an enrollment token for this device's identity and credential.

::

    edge-agent enroll --hub hub.example.net:50051 --token elt_... [--state-dir DIR]

The device makes its own key pair here (Ed25519; the private key never leaves the device),
sends the public key with the token, its hostname, device profile and what hardware
detection found, and keeps what the hub returns: ``device.key`` (the private key) and
``identity.json`` (device id, fleet, hub endpoint, credential, MQTT settings), both 0600
in the state directory, and the hub's signed TUF root (``tuf/metadata/root.json``, 0600),
which anchors every model update. An existing identity is kept unless ``--force``.

The key pair comes from ``cryptography`` when it is installed, else from the ``openssl``
command (1.1.1 or newer for Ed25519, else ECDSA P-256), so the agent's base install needs
neither: a Raspberry Pi OS or JetPack image has ``openssl``; ``cryptography`` (a hub
dependency) is a 3-4 MB wheel the device does not need for anything else yet.

Refusals are one line each: ``enrollment refused: token 1a2b3c4d5e6f expired at ...``;
an unreachable hub names the address and the deadline.

Later gRPC calls authenticate with :func:`device_metadata`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, EdgeAgentError, TransportError
from .identity import (
    IDENTITY_FILE,
    Identity,
    MqttIdentity,
    load_identity,
    save_identity,
    write_private,
)

__all__ = [
    "AUTHORIZATION",
    "DEFAULT_TIMEOUT_S",
    "DEVICE_HEADER",
    "KEY_FILE",
    "Enrolled",
    "EnrollmentError",
    "EnrollmentRefused",
    "KeyPair",
    "add_parser",
    "device_metadata",
    "enroll",
    "generate_keypair",
]

KEY_FILE = "device.key"
DEFAULT_TIMEOUT_S = 10.0
AUTHORIZATION = "authorization"
DEVICE_HEADER = "x-edgeloop-device"
TOKEN_ENV = "EDGELOOP_ENROLL_TOKEN"
_OPENSSL_TIMEOUT_S = 60.0


class EnrollmentError(EdgeAgentError):
    """Enrollment could not be done here (no way to make a key, a bad argument)."""


class EnrollmentRefused(EnrollmentError):
    """The hub refused the enrollment: the token is unknown, expired, used up or revoked."""


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes  # PKCS#8, unencrypted: goes to device.key only
    public_pem: str  # SubjectPublicKeyInfo
    made_by: str  # "cryptography" or "openssl"

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return f"KeyPair(made_by={self.made_by!r})"


@dataclass(frozen=True)
class Enrolled:
    identity: Identity
    identity_file: Path
    key_file: Path
    key_made_by: str


def device_metadata(identity: Identity) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that authenticates this device on the hub's edgeloop.v1 calls."""
    return (
        (AUTHORIZATION, f"Bearer {identity.credential}"),
        (DEVICE_HEADER, identity.device_id),
    )


# -- keys ---------------------------------------------------------------------------------


def generate_keypair(*, using: str | None = None) -> KeyPair:
    """A new key pair: ``cryptography`` if importable, else ``openssl`` (``using`` forces one)."""
    if using not in (None, "cryptography", "openssl"):
        raise ValueError(f"using must be 'cryptography' or 'openssl', not {using!r}")
    if using in (None, "cryptography"):
        pair = _with_cryptography()
        if pair is not None:
            return pair
        if using == "cryptography":
            raise EnrollmentError("the cryptography package is not installed here")
    return _with_openssl()


def _with_cryptography() -> KeyPair | None:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        return None
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(private, public.decode("ascii"), "cryptography")


def _with_openssl() -> KeyPair:
    """Ed25519 (OpenSSL 1.1.1+), else ECDSA P-256; the private key only passes through pipes."""
    attempts = (
        ("genpkey", "-algorithm", "ed25519"),
        ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
    )
    problems = []
    for args in attempts:
        try:
            private = _openssl(*args)
            public = _openssl("pkey", "-pubout", stdin=private)
        except FileNotFoundError:
            raise EnrollmentError(
                "cannot make the device's key: neither the cryptography package nor the "
                "openssl command is installed (apt install openssl, or pip install cryptography)"
            ) from None
        except subprocess.SubprocessError as exc:
            problems.append(str(exc))
            continue
        return KeyPair(private, public.decode("ascii"), "openssl")
    raise EnrollmentError(f"openssl could not make a key: {'; '.join(problems)}")


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["openssl", *args],
        input=stdin,
        capture_output=True,
        timeout=_OPENSSL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0 or not done.stdout:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise subprocess.SubprocessError(
            f"openssl {args[0]} {' '.join(args[1:3])} failed: {reason[0] if reason else 'no key'}"
        )
    return done.stdout


# -- enrolling ----------------------------------------------------------------------------


def enroll(
    hub: str,
    token: str,
    state_dir: Path,
    *,
    profile: str | None = None,
    force: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    hostname: str | None = None,
    hardware: Mapping[str, str] | None = None,
) -> Enrolled:
    """Enroll this device with the hub at ``hub`` ("host:port") and keep its identity."""
    from .service.state import prepare_state_dir

    _check_address(hub)
    token = token.strip()
    if not token:
        raise EnrollmentError("the enrollment token is empty")
    state_dir = prepare_state_dir(state_dir)
    existing = load_identity(state_dir)
    if existing is not None and not force:
        raise EnrollmentError(
            f"this device is already enrolled as {existing.device_id} in fleet "
            f"{existing.fleet} ({state_dir / IDENTITY_FILE}); pass --force to enroll it again"
        )
    profile_name, found = _profile_and_hardware(profile)
    keys = generate_keypair()
    response = _call_enroll(
        hub,
        timeout,
        token=token,
        public_key_pem=keys.public_pem,
        hostname=hostname or socket.gethostname(),
        device_profile=profile_name,
        hardware={**found, **(hardware or {})},
    )
    identity = _identity(response, hub)
    if response.tuf_root:  # the anchor of every model update this device will accept
        from .ota.trust import pin_root

        pin_root(state_dir, bytes(response.tuf_root))
    key_file = state_dir / KEY_FILE
    write_private(key_file, keys.private_pem)
    identity_file = save_identity(state_dir, identity)
    return Enrolled(identity, identity_file, key_file, keys.made_by)


def _check_address(hub: str) -> None:
    host, _, port = hub.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EnrollmentError(f"--hub {hub!r}: expected HOST:PORT, e.g. hub.example.net:50051")


def _profile_and_hardware(profile: str | None) -> tuple[str, dict[str, str]]:
    from .detect import detect
    from .profiles import load_profile

    detected = detect()
    name = load_profile(profile).name if profile is not None else detected.profile_name
    hardware = {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "detected_profile": detected.profile_name,
    }
    return name, hardware


def _call_enroll(hub: str, timeout: float, **fields: Any) -> Any:
    import grpc

    from .wire import enrollment_pb2, enrollment_pb2_grpc

    request = enrollment_pb2.EnrollRequest(
        enrollment_token=fields["token"],
        public_key_pem=fields["public_key_pem"],
        hostname=fields["hostname"],
        device_profile=fields["device_profile"],
        hardware=fields["hardware"],
        agent_version=__version__,
    )
    with grpc.insecure_channel(hub) as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        try:
            return stub.Enroll(request, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise _translate(exc, hub, timeout) from None


def _translate(exc: Any, hub: str, timeout: float) -> EdgeAgentError:
    import grpc

    code, details = exc.code(), (exc.details() or "").strip()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TransportError(
            f"cannot reach the hub at {hub}: no answer within {timeout:g} s "
            "(is it running, and is the address right?)"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return TransportError(f"cannot reach the hub at {hub}: {details or 'unavailable'}")
    if code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ):
        return EnrollmentRefused(f"enrollment refused: {_shorter(details)}")
    return EnrollmentError(f"the hub at {hub} failed the enrollment ({code.name}): {details}")


def _shorter(details: str) -> str:
    """The hub's reason without a repeated 'enrollment': 'token X expired at ...'."""
    return (
        details.removeprefix("enrollment ")
        if details.startswith("enrollment token")
        else (details or "no reason given")
    )


def _identity(response: Any, hub: str) -> Identity:
    if not response.device_id or not response.credential.secret:
        raise EnrollmentError(f"the hub at {hub} answered without a device id or credential")
    mqtt = None
    if response.mqtt.host:
        mqtt = MqttIdentity(
            host=response.mqtt.host,
            port=response.mqtt.port or (8883 if response.mqtt.tls else 1883),
            username=response.mqtt.username or response.device_id,
            password=response.mqtt.password or response.credential.secret,
            topic_prefix=response.mqtt.topic_prefix or "edgeloop/v1",
            tls=response.mqtt.tls,
        )
    enrolled_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Identity(
        device_id=response.device_id,
        fleet=response.fleet,
        hub=response.hub_endpoint or hub,
        credential=response.credential.secret,
        mqtt=mqtt,
        extra={"enrolled_at": enrolled_at, "key_file": KEY_FILE},
    )


# -- the command --------------------------------------------------------------------------


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser(
        "enroll",
        parents=[common],
        help="enroll this device with a hub using an enrollment token",
        description="Make this device's key pair, enroll it with the hub (gRPC) using a "
        "token from 'cloud-hub enroll-token create', and keep the identity and key in the "
        "state directory (0600). Refuses to replace an existing identity without --force.",
    )
    cmd.add_argument("--hub", required=True, metavar="HOST:PORT", help="the hub's gRPC address")
    token = cmd.add_mutually_exclusive_group()
    token.add_argument("--token", help=f"the enrollment token (or set ${TOKEN_ENV})")
    token.add_argument(
        "--token-file", metavar="PATH", help="read the token from a file ('-': stdin)"
    )
    cmd.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (wins over $EDGELOOP_STATE_DIR; default /var/lib/edgeloop)",
    )
    cmd.add_argument("--profile", help="device profile name (default: detect)")
    cmd.add_argument("--force", action="store_true", help="replace an existing identity")
    cmd.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"how long to wait for the hub (default {DEFAULT_TIMEOUT_S:g} s)",
    )
    cmd.add_argument("--json", action="store_true", help="print JSON for scripts")
    cmd.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from .config import DEFAULT_STATE_DIR, STATE_DIR_ENV

    state_dir = Path(args.state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: expected more than 0 seconds")
    done = enroll(
        args.hub,
        _token(args),
        state_dir,
        profile=args.profile,
        force=args.force,
        timeout=args.timeout,
    )
    identity = done.identity
    if args.json:
        summary = {
            "device_id": identity.device_id,
            "fleet": identity.fleet,
            "hub": identity.hub,
            "identity_file": str(done.identity_file),
            "key_file": str(done.key_file),
        }
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"enrolled as {identity.device_id} in fleet {identity.fleet} "
            f"(identity {done.identity_file}, key {done.key_file})"
        )
    return 0


def _token(args: argparse.Namespace) -> str:
    if args.token is not None:
        return str(args.token)
    if args.token_file is not None:
        try:
            if args.token_file == "-":
                return sys.stdin.read().strip()
            return Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EnrollmentError(f"--token-file {args.token_file}: {exc.strerror}") from exc
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise EnrollmentError(f"no enrollment token: pass --token, --token-file or set {TOKEN_ENV}")
    return token
