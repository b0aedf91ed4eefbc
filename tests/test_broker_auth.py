"""The broker's side of device trust: the hub writes Mosquitto's password and ACL files.

A private Mosquitto (``allow_anonymous false``, ``password_file``, ``acl_file``, a
``pid_file`` for SIGHUP) runs beside a real ``HubGrpcServer``. Devices enroll over gRPC and
then talk MQTT 5 (paho) with the credential they got: a device publishes its own telemetry
and the hub user receives it; it cannot publish as another device (PUBACK 0x87) nor receive
another device's commands; ``cloud-hub device revoke`` drops its live connection and
refuses the next one, while the other device carries on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import hub_db
import paho.mqtt.client as mqtt
import pytest
from mqtt_broker import MOSQUITTO_PASSWD, Collector, MosquittoBroker, free_port, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.broker import (
    BrokerAuth,
    BrokerDevice,
    BrokerReloader,
    hash_password,
    hub_mqtt_login,
    password_matches,
    render_acl,
)
from cloud_hub.errors import HubConfigError, Unavailable
from cloud_hub.grpc_server import HubGrpcServer
from cloud_hub.registry import Registry
from cloud_hub.settings import HubSettings, load_settings
from edge_agent.enroll import generate_keypair
from edge_agent.wire import enrollment_pb2, enrollment_pb2_grpc

database_url = hub_db.database_url_fixture("broker")
clock = hub_db.clock_fixture()
registry = hub_db.registry_fixture()

FLEET = "lab"
PREFIX = "edgeloop/v1"
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86


# -- the pieces, without a broker ----------------------------------------------------------


def test_hashes_agree_with_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-b", "-c", str(path), "dev-a", "s3cret"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    theirs = path.read_text().strip().split(":", 1)[1]
    assert password_matches("s3cret", theirs)
    assert not password_matches("s3creT", theirs)
    ours = hash_password("s3cret")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", ours), ours
    assert password_matches("s3cret", ours) and ours != hash_password("s3cret")  # salted
    for malformed in ("", "$6$abc$def", "$7$x$AAAA$AAAA", "$7$101$!!$AAAA"):
        assert not password_matches("s3cret", malformed)


def test_the_acl_lets_each_device_write_its_own_topics_and_read_its_own_commands() -> None:
    devices = [BrokerDevice("dev-b", "lab", "$7$h"), BrokerDevice("dev-a", "pilot", "$7$h")]
    lines = render_acl(PREFIX, "edgeloop-hub", devices).splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == [
        "",
        "user edgeloop-hub",
        "topic write edgeloop/v1/+/+/cmd",
        "topic read edgeloop/v1/#",
        "",
        "user dev-a",
        "topic write edgeloop/v1/pilot/dev-a/telemetry",
        "topic write edgeloop/v1/pilot/dev-a/events",
        "topic write edgeloop/v1/pilot/dev-a/status",
        "topic read edgeloop/v1/pilot/dev-a/cmd",
        "",
        "user dev-b",
        "topic write edgeloop/v1/lab/dev-b/telemetry",
        "topic write edgeloop/v1/lab/dev-b/events",
        "topic write edgeloop/v1/lab/dev-b/status",
        "topic read edgeloop/v1/lab/dev-b/cmd",
    ]
    with pytest.raises(HubConfigError, match="mqtt_topic_prefix"):
        render_acl("edgeloop/#", "edgeloop-hub", devices)


def test_the_hub_password_is_made_once_0600_and_a_configured_one_wins(tmp_path: Path) -> None:
    managed = {"data_dir": tmp_path, "broker_password_file": tmp_path / "p"}
    first = hub_mqtt_login(load_settings(**managed, broker_acl_file=tmp_path / "a"))
    again = hub_mqtt_login(load_settings(**managed, broker_acl_file=tmp_path / "a"))
    assert first is not None and again == first and first.username == "edgeloop-hub"
    assert first.password and first.password not in repr(first)
    assert (tmp_path / "mqtt-hub-password").stat().st_mode & 0o777 == 0o600
    configured = hub_mqtt_login(
        load_settings(**managed, mqtt_username="ingest", mqtt_password="pw")
    )
    assert configured is not None and (configured.username, configured.password) == (
        "ingest",
        "pw",
    )
    assert hub_mqtt_login(load_settings(data_dir=tmp_path)) is None  # anonymous broker


def test_a_password_file_without_an_acl_file_is_refused(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, broker_password_file=tmp_path / "p")
    with pytest.raises(HubConfigError, match="broker_acl_file is not set"):
        BrokerAuth.from_settings(settings)
    assert BrokerAuth.from_settings(load_settings(data_dir=tmp_path)) is None


def test_a_stale_pid_file_never_gets_another_process_signalled(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{bystander.pid}\n")
        with pytest.raises(Unavailable, match="not mosquitto"):
            BrokerReloader(pid_file=pid_file).reload()
        assert bystander.poll() is None  # no SIGHUP reached it
        with pytest.raises(Unavailable, match="cannot read broker_pid_file"):
            BrokerReloader(pid_file=tmp_path / "missing.pid").reload()
        with pytest.raises(Unavailable, match="exited with 3: nope"):
            BrokerReloader(command="sh -c 'echo nope >&2; exit 3'").reload()
        assert "reload Mosquitto" in BrokerReloader().reload()
    finally:
        bystander.kill()
        bystander.wait(timeout=30)


# -- a real broker -------------------------------------------------------------------------


@dataclass
class Deployment:
    settings: HubSettings
    hub: HubGrpcServer
    broker: MosquittoBroker
    database_url: str

    def hub_collector(self) -> Collector:
        login = hub_mqtt_login(self.settings)
        assert login is not None
        return Collector(
            self.broker.port, f"{PREFIX}/#", username=login.username, password=login.password
        )

    def cloud_hub(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``cloud-hub ARGS`` against this hub's database, data dir and broker files."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_HUB_")}
        env.update(
            PYTHONWARNINGS="ignore",
            EDGELOOP_HUB_BROKER_PASSWORD_FILE=str(s.broker_password_file),
            EDGELOOP_HUB_BROKER_ACL_FILE=str(s.broker_acl_file),
            EDGELOOP_HUB_BROKER_PID_FILE=str(s.broker_pid_file),
        )
        return subprocess.run(
            [
                *(sys.executable, "-m", "cloud_hub.cli", *args),
                *("--database-url", self.database_url, "--data-dir", str(s.data_dir)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )


@pytest.fixture
def deployment(registry: Registry, database_url: str, tmp_path: Path) -> Iterator[Deployment]:
    registry.create_fleet(FLEET)
    port = free_port()
    files = tmp_path / "broker-files"
    settings = load_settings(
        data_dir=tmp_path / "hub",
        database_url=database_url,
        grpc_port=0,
        mqtt_port=port,
        broker_password_file=files / "passwords",
        broker_acl_file=files / "acl",
        broker_pid_file=tmp_path / "mosquitto.pid",
    )
    hub = HubGrpcServer(registry, settings, max_workers=4)
    # Writes both files and the hub user; the reload fails (no broker yet) and is logged.
    hub.start()
    broker = MosquittoBroker(
        tmp_path / "broker",
        port=port,
        password_file=settings.broker_password_file,
        acl_file=settings.broker_acl_file,
        extra_config=[
            "per_listener_settings false",
            f"pid_file {settings.broker_pid_file}",
            # The helper's "max_queued_messages 0" makes mosquitto 2.0.11 drop a client
            # right after it answers a refused QoS 1 publish with PUBACK 0x87; the default
            # (1000) keeps the client connected, as a deployed broker does.
            "max_queued_messages 1000",
        ],
    )
    try:
        broker.start()
        assert settings.broker_pid_file is not None
        wait_until(settings.broker_pid_file.exists, what="mosquitto's pid file")
        yield Deployment(settings, hub, broker, database_url)
    finally:
        broker.stop()
        hub.stop(grace=None)


def enroll(hub: HubGrpcServer, registry: Registry, hostname: str) -> tuple[str, str]:
    """(device id, secret) of a device enrolled over gRPC."""
    issued = registry.create_enrollment_token(FLEET, ttl=timedelta(hours=1), uses=1).token
    request = enrollment_pb2.EnrollRequest(
        enrollment_token=issued, public_key_pem=generate_keypair().public_pem, hostname=hostname
    )
    with grpc.insecure_channel(f"127.0.0.1:{hub.port}") as channel:
        answer = enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(request, timeout=30)
    assert answer.mqtt.username == answer.device_id
    assert answer.mqtt.password == answer.credential.secret
    return answer.device_id, answer.credential.secret


class Device:
    """A paho MQTT 5 client that records what the broker answers."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.received: list[tuple[str, bytes]] = []
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, what=f"CONNACK for {user}")

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.pubacks, what=f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> ReasonCode:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        wait_until(lambda: mid in self.subacks, what=f"SUBACK for {topic}")
        return self.subacks[mid][0]

    def _on_connect(self, c: object, u: object, f: object, reason: ReasonCode, p: object) -> None:
        self.connack = reason
        if not reason.is_failure:
            self.closed.clear()

    def _on_disconnect(self, c: object, u: object, f: object, r: object, p: object) -> None:
        self.closed.set()

    def _on_publish(self, c: object, u: object, mid: int, reason: ReasonCode, p: object) -> None:
        with self._lock:
            self.pubacks[mid] = reason

    def _on_subscribe(
        self, c: object, u: object, mid: int, reasons: list[ReasonCode], p: Properties | None
    ) -> None:
        with self._lock:
            self.subacks[mid] = reasons

    def _on_message(self, c: object, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload)))


@pytest.fixture
def devices(deployment: Deployment) -> Iterator[list[Device]]:
    opened: list[Device] = []
    yield opened
    for device in opened:
        device.close()


def connect_when_allowed(
    deployment: Deployment, devices: list[Device], user: str, password: str
) -> Device:
    """A connected client; the broker may still be reloading when we first try."""
    deadline = time.monotonic() + 30
    while True:
        device = Device(deployment.broker.port, user, password)
        devices.append(device)
        if device.connected or time.monotonic() > deadline:
            assert device.connected, f"{user}: {device.connack}\n{deployment.broker.log()}"
            return device
        time.sleep(0.2)


def topic(device_id: str, kind: str) -> str:
    return f"{PREFIX}/{FLEET}/{device_id}/{kind}"


def test_an_enrolled_device_publishes_only_as_itself_until_it_is_revoked(
    deployment: Deployment, registry: Registry, devices: list[Device]
) -> None:
    a_id, a_secret = enroll(deployment.hub, registry, "pi-a")
    b_id, b_secret = enroll(deployment.hub, registry, "pi-b")
    dev_a = connect_when_allowed(deployment, devices, a_id, a_secret)
    dev_b = connect_when_allowed(deployment, devices, b_id, b_secret)
    hub_cmd = Device(deployment.broker.port, *_hub_login(deployment))
    devices.append(hub_cmd)

    with deployment.hub_collector() as hub:
        # Its own telemetry reaches the hub.
        assert not dev_a.publish(topic(a_id, "telemetry"), b'{"n": 1}').is_failure
        hub.wait_for(lambda ms: {"n": 1} in ms, what="dev-a's telemetry at the hub")
        # Publishing as the other device is refused, and nothing arrives.
        forged = dev_a.publish(topic(b_id, "telemetry"), b'{"forged": true}')
        assert forged.value == NOT_AUTHORIZED, forged
        assert dev_a.publish(topic(a_id, "cmd"), b"{}").value == NOT_AUTHORIZED

        # Mosquitto's acl_file grants the SUBACK and filters on delivery: dev-a, subscribed
        # to dev-b's commands, only ever receives its own.
        dev_a.subscribe(topic(b_id, "cmd"))
        dev_a.subscribe(topic(a_id, "cmd"))
        dev_b.subscribe(topic(b_id, "cmd"))
        assert not hub_cmd.publish(topic(b_id, "cmd"), b"for-b").is_failure
        assert not hub_cmd.publish(topic(a_id, "cmd"), b"for-a").is_failure
        wait_until(lambda: dev_a.received and dev_b.received, what="both commands")
        assert dev_a.received == [(topic(a_id, "cmd"), b"for-a")]
        assert dev_b.received == [(topic(b_id, "cmd"), b"for-b")]

        revoke = deployment.cloud_hub("device", "revoke", a_id)
        assert revoke.returncode == 0, revoke.stderr
        assert "sent SIGHUP to mosquitto" in revoke.stderr

        # The reload drops dev-a's live connection, and its password no longer works.
        wait_until(dev_a.closed.is_set, what="the broker to drop the revoked device")
        again = Device(deployment.broker.port, a_id, a_secret)
        devices.append(again)
        assert again.connack is not None and again.connack.value in (
            BAD_CREDENTIALS,
            NOT_AUTHORIZED,
        ), again.connack
        dev_a.client.publish(topic(a_id, "telemetry"), b'{"after": "revoke"}', qos=1)
        # dev-b is untouched: its marker arrives, dev-a's message never does.
        assert not dev_b.publish(topic(b_id, "telemetry"), b'{"marker": 1}').is_failure
        received = hub.wait_for(lambda ms: {"marker": 1} in ms, what="dev-b's marker")
        assert {"after": "revoke"} not in received
        assert not dev_a.connected or dev_a.closed.is_set()


def test_the_files_are_rebuilt_from_the_database(
    deployment: Deployment, registry: Registry, devices: list[Device]
) -> None:
    device_id, secret = enroll(deployment.hub, registry, "pi-a")
    settings = deployment.settings
    assert settings.broker_password_file is not None and settings.broker_acl_file is not None
    before = settings.broker_password_file.read_text(), settings.broker_acl_file.read_text()
    assert f"{device_id}:$7$101$" in before[0] and f"user {device_id}" in before[1]
    assert secret not in before[0]

    settings.broker_password_file.unlink()
    settings.broker_acl_file.unlink()
    done = deployment.cloud_hub("broker", "sync")
    assert done.returncode == 0, done.stderr
    assert "rewrote" in done.stdout and "1 device(s)" in done.stdout
    assert "sent SIGHUP" in done.stdout
    after = settings.broker_password_file.read_text(), settings.broker_acl_file.read_text()
    assert after[1] == before[1]
    # The device's line comes back as it was (its hash is in the database); the hub user's
    # is hashed again from its password, with a new salt.
    line = next(x for x in before[0].splitlines() if x.startswith(f"{device_id}:"))
    assert line in after[0].splitlines()
    assert settings.broker_password_file.stat().st_mode & 0o777 == 0o640
    connect_when_allowed(deployment, devices, device_id, secret)
    with deployment.hub_collector():
        pass  # the hub user logs in with its password

    # Nothing changed: nothing is rewritten and the broker is left alone.
    auth = BrokerAuth.from_settings(settings)
    assert auth is not None
    result = auth.sync(registry.db)
    assert (result.changed, result.reload, result.devices) == (False, None, 1)


def test_revoke_says_when_the_broker_could_not_be_reloaded(
    deployment: Deployment, registry: Registry, tmp_path: Path
) -> None:
    device_id, _ = enroll(deployment.hub, registry, "pi-a")
    settings = deployment.settings
    assert settings.broker_pid_file is not None
    settings.broker_pid_file.rename(tmp_path / "moved.pid")
    done = deployment.cloud_hub("device", "revoke", device_id)
    assert done.returncode == 1, done.stderr
    message = done.stderr.strip()
    assert f"device {device_id} is revoked in the registry" in message
    assert "cloud-hub broker sync" in message and "cannot read broker_pid_file" in message
    assert registry.device(device_id).revoked
    assert settings.broker_password_file is not None
    assert device_id not in settings.broker_password_file.read_text()


def _hub_login(deployment: Deployment) -> tuple[str, str]:
    login = hub_mqtt_login(deployment.settings)
    assert login is not None and login.password is not None
    return login.username, login.password
