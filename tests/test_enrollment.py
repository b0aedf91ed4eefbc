"""Enrollment end to end: a real hub gRPC server, a real registry, ``edge-agent enroll`` as a
process.

The hub runs in-process (``HubGrpcServer`` on a free port over SQLite and PostgreSQL); the
agent is the real command line in a child process. What it must show: a device gets an id
and its own credential, keeps them 0600 with a private key that never reaches the hub;
expired, used-up, revoked and unknown tokens are refused with one distinct line each; an
unreachable hub is named; the credential authenticates later calls until ``cloud-hub device
revoke`` cuts it off.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import hub_db
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from mqtt_broker import free_port

from cloud_hub.errors import NotFound
from cloud_hub.grpc_server import HubGrpcServer
from cloud_hub.registry import Registry
from cloud_hub.settings import HubSettings, load_settings
from edge_agent.enroll import device_metadata, generate_keypair
from edge_agent.identity import load_identity
from edge_agent.wire import enrollment_pb2, enrollment_pb2_grpc

database_url = hub_db.database_url_fixture("enrollment")
clock = hub_db.clock_fixture()
registry = hub_db.registry_fixture()

FLEET = "lab"
BAD_PEM = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    return tmp_path / "hub"


@pytest.fixture
def settings(database_url: str, hub_dir: Path) -> HubSettings:
    return load_settings(
        data_dir=hub_dir,
        database_url=database_url,
        grpc_port=0,
        mqtt_public_host="broker.example.net",
        mqtt_public_port=8883,
        mqtt_public_tls=True,
        broker_password_file=hub_dir / "broker" / "passwords",
        broker_acl_file=hub_dir / "broker" / "acl",
    )


@pytest.fixture
def hub(registry: Registry, settings: HubSettings) -> Iterator[HubGrpcServer]:
    registry.create_fleet(FLEET)
    server = HubGrpcServer(registry, settings, max_workers=4)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=None)


def token(registry: Registry, *, uses: int = 1, ttl: timedelta = timedelta(hours=1)) -> str:
    return registry.create_enrollment_token(FLEET, ttl=ttl, uses=uses).token


def enroll(
    hub: HubGrpcServer | str, token: str, state_dir: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    address = hub if isinstance(hub, str) else f"127.0.0.1:{hub.port}"
    return subprocess.run(
        [
            *(sys.executable, "-m", "edge_agent.cli", "enroll", "--hub", address),
            *("--token", token, "--state-dir", str(state_dir), "--profile", "raspberry-pi-5"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
    )


def enrolled(done: subprocess.CompletedProcess[str]) -> str:
    """The device id an ``enroll --json`` run printed."""
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["device_id"])


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def whoami(hub: HubGrpcServer, metadata: Any = ()) -> enrollment_pb2.WhoAmIResponse:
    with grpc.insecure_channel(f"127.0.0.1:{hub.port}") as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        answer: enrollment_pb2.WhoAmIResponse = stub.WhoAmI(
            enrollment_pb2.WhoAmIRequest(), metadata=metadata, timeout=30
        )
        return answer


def call_enroll(hub: HubGrpcServer, **fields: Any) -> enrollment_pb2.EnrollResponse:
    request = {"hostname": "pi-1", "public_key_pem": generate_keypair().public_pem, **fields}
    with grpc.insecure_channel(f"127.0.0.1:{hub.port}") as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        answer: enrollment_pb2.EnrollResponse = stub.Enroll(
            enrollment_pb2.EnrollRequest(**request), timeout=30
        )
        return answer


def files_under(folder: Path) -> bytes:
    """Every byte of every file under ``folder`` (database, WAL, broker files, artifacts)."""
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


# -- success -------------------------------------------------------------------------------


def test_enroll_keeps_identity_and_key_0600_and_the_private_key_stays_on_the_device(
    hub: HubGrpcServer, registry: Registry, hub_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "device"
    done = enroll(hub, token(registry), state, "--json")
    device_id = enrolled(done)
    assert device_id.startswith("dev-")

    for name in ("identity.json", "device.key"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    identity = load_identity(state)
    assert identity is not None and identity.device_id == device_id
    assert identity.fleet == FLEET
    assert identity.hub == f"127.0.0.1:{hub.port}"  # no grpc_public_endpoint: the one used
    assert identity.mqtt is not None
    assert (identity.mqtt.host, identity.mqtt.port, identity.mqtt.tls) == (
        "broker.example.net",
        8883,
        True,
    )
    assert (identity.mqtt.username, identity.mqtt.password) == (device_id, identity.credential)
    assert identity.mqtt.topic_prefix == "edgeloop/v1"

    device = registry.device(device_id)
    assert (device.hostname, device.profile, device.fleet) == (
        os.uname().nodename,
        "raspberry-pi-5",
        FLEET,
    )
    assert device.hardware["detected_profile"]
    private = serialization.load_pem_private_key((state / "device.key").read_bytes(), None)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert device.public_key_pem == public.decode()  # the hub holds the matching public key

    # Neither the private key nor the credential is anywhere the hub keeps data.
    pem_body = b"".join((state / "device.key").read_bytes().splitlines()[1:-1])
    raw = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    secret = identity.credential.encode()
    stored = files_under(hub_dir) + hub_db.dump(registry.db).encode()
    assert public.splitlines()[1] in stored  # (the search does see what the hub stores)
    for needle in (pem_body, raw, raw[-32:], base64.b64encode(raw[-32:]), secret):
        assert needle not in stored


def test_the_credential_authenticates_until_cloud_hub_device_revoke(
    hub: HubGrpcServer, registry: Registry, database_url: str, hub_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "device"
    device_id = enrolled(enroll(hub, token(registry), state, "--json"))
    identity = load_identity(state)
    assert identity is not None

    me = whoami(hub, device_metadata(identity))
    assert (me.device_id, me.fleet) == (device_id, FLEET)

    with pytest.raises(grpc.RpcError) as missing:
        whoami(hub)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in str(missing.value.details())
    wrong = (("authorization", "Bearer not-the-secret"), ("x-edgeloop-device", device_id))
    with pytest.raises(grpc.RpcError) as refused:
        whoami(hub, wrong)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    revoke = subprocess.run(
        [
            *(sys.executable, "-m", "cloud_hub.cli", "device", "revoke", device_id),
            *("--database-url", database_url, "--data-dir", str(hub_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_HUB_")},
            "PYTHONWARNINGS": "ignore",
            "EDGELOOP_HUB_BROKER_PASSWORD_FILE": str(hub_dir / "broker" / "passwords"),
            "EDGELOOP_HUB_BROKER_ACL_FILE": str(hub_dir / "broker" / "acl"),
        },
    )
    assert revoke.returncode == 0, revoke.stderr
    assert f"revoked device {device_id}" in revoke.stdout
    assert "reload Mosquitto" in revoke.stderr  # no pid file or command: it says so

    with pytest.raises(grpc.RpcError) as cut_off:
        whoami(hub, device_metadata(identity))
    assert cut_off.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in str(cut_off.value.details())
    passwords = (hub_dir / "broker" / "passwords").read_text()
    assert f"{device_id}:" not in passwords and "edgeloop-hub:$7$" in passwords


def test_an_enrolled_device_is_refused_a_second_identity_without_force(
    hub: HubGrpcServer, registry: Registry, tmp_path: Path
) -> None:
    state = tmp_path / "device"
    issued = token(registry, uses=3)
    first = enrolled(enroll(hub, issued, state, "--json"))
    key = (state / "device.key").read_bytes()

    again = refusal(enroll(hub, issued, state))
    assert f"already enrolled as {first}" in again and "--force" in again
    assert (state / "device.key").read_bytes() == key

    second = enrolled(enroll(hub, issued, state, "--json", "--force"))
    assert second != first
    identity = load_identity(state)
    assert identity is not None and identity.device_id == second
    assert (state / "device.key").read_bytes() != key  # a new key for the new identity


def test_without_cryptography_the_agent_makes_its_key_with_openssl(
    hub: HubGrpcServer, registry: Registry, tmp_path: Path
) -> None:
    # A package named cryptography that fails to import hides the real one: the agent's
    # base install, where cryptography is absent.
    blocker = tmp_path / "no-cryptography" / "cryptography"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed here')\n")
    path = os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])
    state = tmp_path / "device"
    device_id = enrolled(enroll(hub, token(registry), state, "--json", PYTHONPATH=path))
    text = (state / "device.key").read_text()
    assert text.startswith("-----BEGIN PRIVATE KEY-----")
    private = serialization.load_pem_private_key(text.encode(), None)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert registry.device(device_id).public_key_pem == public.decode()


# -- refusals ------------------------------------------------------------------------------


def test_expired_used_up_revoked_and_unknown_tokens_are_refused_with_distinct_lines(
    hub: HubGrpcServer, registry: Registry, clock: hub_db.FakeClock, tmp_path: Path
) -> None:
    used = token(registry, uses=1)
    enrolled(enroll(hub, used, tmp_path / "first", "--json"))
    revoked = token(registry)
    registry.revoke_enrollment_token(revoked)
    expiring = token(registry, ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=10))
    unknown = "elt_0123456789ab_" + "A" * 43

    lines = {}
    for name, value in [
        ("used-up", used),
        ("revoked", revoked),
        ("expired", expiring),
        ("unknown", unknown),
    ]:
        state = tmp_path / name
        lines[name] = refusal(enroll(hub, value, state))
        assert load_identity(state) is None and not (state / "device.key").exists()
    for line in lines.values():
        assert line.startswith("edge-agent: error: enrollment refused: "), line
    assert "used up (1 of 1 uses)" in lines["used-up"]
    assert "was revoked at" in lines["revoked"]
    assert "expired at 2030-01-01T12:05:00+00:00" in lines["expired"]
    assert "not valid" in lines["unknown"]
    assert len(set(lines.values())) == 4
    assert len(registry.list_devices()) == 1  # only the first enrollment made a device


def test_an_unreachable_hub_is_named_with_its_address(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    line = refusal(enroll(address, "elt_0123456789ab_" + "A" * 43, tmp_path, "--timeout", "2"))
    assert f"cannot reach the hub at {address}" in line
    assert "within 2 s" in line
    assert load_identity(tmp_path) is None


def test_a_bad_hub_address_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    line = refusal(enroll("hub-without-port", "elt_x", tmp_path))
    assert "expected HOST:PORT" in line


# -- what the hub checks -------------------------------------------------------------------


def _pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _dsa_pem() -> str:
    """A DSA public key, which devices may not enroll with (cryptography 51+ warns on DSA)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return _pem(dsa.generate_private_key(2048))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"public_key_pem": ""}, "public_key_pem is required"),
        ({"public_key_pem": BAD_PEM}, "not a PEM public key"),
        ({"public_key_pem": "rsa-1024"}, "1024 bits is too small"),
        ({"public_key_pem": "dsa"}, "is not accepted"),
        ({"hostname": ""}, "hostname is required"),
        ({"hostname": "x" * 256}, "hostname is longer than 255"),
        ({"hostname": "pi\n1"}, "control characters"),
        ({"device_profile": "../etc/passwd"}, "not a profile name"),
        ({"hardware": {f"k{i}": "v" for i in range(65)}}, "more than 64"),
    ],
)  # fmt: skip
def test_malformed_requests_are_invalid_and_spend_no_token_use(
    hub: HubGrpcServer, registry: Registry, fields: dict[str, Any], expected: str
) -> None:
    keys = {
        "rsa-1024": lambda: _pem(rsa.generate_private_key(65537, 1024)),
        "dsa": _dsa_pem,
    }
    if fields.get("public_key_pem") in keys:
        fields = {**fields, "public_key_pem": keys[fields["public_key_pem"]]()}
    issued = token(registry)
    with pytest.raises(grpc.RpcError) as refused:
        call_enroll(hub, enrollment_token=issued, **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in str(refused.value.details())
    assert registry.list_enrollment_tokens()[0].uses_count == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: generate_keypair(using="openssl").public_pem,
        lambda: _pem(ec.generate_private_key(ec.SECP256R1())),
        lambda: _pem(rsa.generate_private_key(65537, 2048)),
    ],
    ids=["ed25519-openssl", "ecdsa-p256", "rsa-2048"],
)
def test_ed25519_ecdsa_and_rsa_keys_are_accepted(
    hub: HubGrpcServer, registry: Registry, make: Any
) -> None:
    answer = call_enroll(hub, enrollment_token=token(registry), public_key_pem=make())
    assert answer.device_id.startswith("dev-") and answer.credential.secret
    assert answer.mqtt.username == answer.device_id


def test_hub_errors_map_to_status_codes_for_every_servicer(
    registry: Registry, settings: HubSettings
) -> None:
    """A servicer added later (OTA, offload) raises hub errors; the table answers for it."""

    def not_found(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise NotFound("model digits@9 does not exist")

    def broken(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("secret internals")

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        return server.auth.authenticate(context).id.encode()

    handlers = {
        "NotFound": grpc.unary_unary_rpc_method_handler(not_found),
        "Broken": grpc.unary_unary_rpc_method_handler(broken),
        "Who": grpc.unary_unary_rpc_method_handler(who),
    }

    def register(servicer: Any, grpc_server: grpc.Server) -> None:
        grpc_server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Probe", servicer),)
        )

    server = HubGrpcServer(registry, settings, broker=None, max_workers=2)
    server.add_servicer(register, handlers)
    with server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        codes = {}
        for method in handlers:
            with pytest.raises(grpc.RpcError) as failed:
                call = channel.unary_unary(f"/test.Probe/{method}", None, None)
                call(b"", timeout=30)
            codes[method] = (failed.value.code(), failed.value.details())
    assert codes["NotFound"] == (grpc.StatusCode.NOT_FOUND, "model digits@9 does not exist")
    assert codes["Broken"][0] == grpc.StatusCode.INTERNAL
    assert "secret internals" not in str(codes["Broken"][1])
    assert codes["Who"][0] == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(Exception, match="before start"):
        server.add_servicer(register, handlers)
