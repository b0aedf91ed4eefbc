"""Access control on the broker: a device publishes and reads only as itself.

A private Mosquitto with a password file and an ACL file of the shape the hub deploys:
each device may write its own ``telemetry``, ``events`` and ``status`` and read its own
``cmd``; the ``hub`` user reads everything under ``edgeloop/v1/`` and writes ``cmd``.
Real paho clients (MQTT 5) show what is allowed and what the broker refuses: a forged
publish gets PUBACK 0x87, a wrong password a failed CONNACK. Mosquitto's ``acl_file``
grants every SUBSCRIBE and filters on delivery, so the SUBACK refusal (0x87) is shown
with the same policy in Mosquitto's dynamic-security plugin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_broker import Collector, MosquittoBroker, release, wait_until, write_password_file
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

FLEET = "lab"
PASSWORDS = {"dev-a": "secret-a", "dev-b": "secret-b", "hub": "secret-hub"}
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86


def _acl(fleet: str) -> str:
    lines = []
    for device in ("dev-a", "dev-b"):
        base = f"edgeloop/v1/{fleet}/{device}"
        lines += [f"user {device}"]
        lines += [f"topic write {base}/{kind}" for kind in ("telemetry", "events", "status")]
        lines += [f"topic read {base}/cmd", ""]
    lines += ["user hub", "topic read edgeloop/v1/#", "topic write edgeloop/v1/+/+/cmd", ""]
    return "\n".join(lines)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    passwords = write_password_file(tmp_path / "passwords", PASSWORDS)
    acl = tmp_path / "acl"
    acl.write_text(_acl(FLEET))
    with MosquittoBroker(tmp_path / "broker", password_file=passwords, acl_file=acl) as running:
        yield running


class Client:
    """A paho MQTT 5 client that records the reason codes the broker answers with."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.received: list[tuple[str, bytes]] = []
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{user}-test", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, what=f"CONNACK for {user}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        release(self.client)

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.pubacks, what=f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> ReasonCode:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        wait_until(lambda: mid in self.subacks, what=f"SUBACK for {topic}")
        return self.subacks[mid][0]

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connack = reason

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._lock:
            self.pubacks[mid] = reason

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self.subacks[mid] = reasons

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.closed.set()


Connect = Callable[..., Client]


@pytest.fixture
def connect(broker: MosquittoBroker) -> Iterator[Connect]:
    """``connect(user, password=None)``: a connected client, closed after the test."""
    opened: list[Client] = []

    def open_client(user: str, password: str | None = None) -> Client:
        client = Client(broker.port, user, password or PASSWORDS[user])
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


def _hub(broker: MosquittoBroker) -> Collector:
    return Collector(broker.port, "edgeloop/v1/#", username="hub", password=PASSWORDS["hub"])


def test_device_publishes_its_own_telemetry_and_the_hub_receives_it(
    broker: MosquittoBroker, connect: Connect
) -> None:
    dev_a = connect("dev-a")
    assert dev_a.connack is not None and not dev_a.connack.is_failure
    with _hub(broker) as hub:
        reason = dev_a.publish(f"edgeloop/v1/{FLEET}/dev-a/telemetry", b'{"n": 1}')
        assert not reason.is_failure, reason
        hub.wait_for(lambda ms: {"n": 1} in ms, what="dev-a's telemetry at the hub")


def test_device_cannot_publish_as_another_device(broker: MosquittoBroker, connect: Connect) -> None:
    dev_a = connect("dev-a")
    with _hub(broker) as hub:
        forged = dev_a.publish(f"edgeloop/v1/{FLEET}/dev-b/telemetry", b'{"forged": true}')
        assert forged.value == NOT_AUTHORIZED, forged
        # A message sent after the forged one arrives; the forged one never does.
        dev_a.publish(f"edgeloop/v1/{FLEET}/dev-a/events", b'{"marker": true}')
        received = hub.wait_for(lambda ms: {"marker": True} in ms, what="the marker")
        assert {"forged": True} not in received
        assert all(topic.split("/")[3] != "dev-b" for topic, _, _ in hub.snapshot())


def test_device_cannot_publish_commands_to_itself(
    broker: MosquittoBroker, connect: Connect
) -> None:
    dev_a = connect("dev-a")
    reason = dev_a.publish(f"edgeloop/v1/{FLEET}/dev-a/cmd", b'{"check_in": true}')
    assert reason.value == NOT_AUTHORIZED, reason


def test_device_never_receives_another_devices_commands(
    broker: MosquittoBroker, connect: Connect
) -> None:
    # Mosquitto's acl_file does not refuse a SUBSCRIBE (its SUBACK grants it); it filters
    # each message on delivery instead. The refusal in the SUBACK needs an ACL plugin:
    # see test_dynsec_refuses_subscription_to_another_devices_commands.
    dev_a = connect("dev-a")
    dev_b = connect("dev-b")
    hub = connect("hub")
    dev_a.subscribe(f"edgeloop/v1/{FLEET}/dev-b/cmd")
    dev_a.subscribe(f"edgeloop/v1/{FLEET}/dev-a/cmd")
    dev_b.subscribe(f"edgeloop/v1/{FLEET}/dev-b/cmd")
    assert not hub.publish(f"edgeloop/v1/{FLEET}/dev-b/cmd", b"for-b").is_failure
    assert not hub.publish(f"edgeloop/v1/{FLEET}/dev-a/cmd", b"for-a").is_failure
    wait_until(lambda: dev_a.received and dev_b.received, what="both commands")
    assert dev_a.received == [(f"edgeloop/v1/{FLEET}/dev-a/cmd", b"for-a")]
    assert dev_b.received == [(f"edgeloop/v1/{FLEET}/dev-b/cmd", b"for-b")]


def test_device_cannot_read_other_devices_telemetry(
    broker: MosquittoBroker, connect: Connect
) -> None:
    dev_a = connect("dev-a")
    dev_b = connect("dev-b")
    hub = connect("hub")
    dev_a.subscribe("edgeloop/v1/#")
    assert not dev_b.publish(f"edgeloop/v1/{FLEET}/dev-b/telemetry", b"b-data").is_failure
    assert not hub.publish(f"edgeloop/v1/{FLEET}/dev-a/cmd", b"marker").is_failure
    wait_until(lambda: dev_a.received, what="the marker command")
    assert dev_a.received == [(f"edgeloop/v1/{FLEET}/dev-a/cmd", b"marker")]


def test_wrong_password_is_refused(broker: MosquittoBroker, connect: Connect) -> None:
    intruder = connect("dev-a", "not-the-password")
    assert intruder.connack is not None and intruder.connack.is_failure
    assert intruder.connack.value in (BAD_CREDENTIALS, NOT_AUTHORIZED), intruder.connack
    wait_until(intruder.closed.is_set, what="the broker to close the refused connection")


# -- the same policy through Mosquitto's dynamic-security plugin ---------------------------

DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


def _dynsec_client(user: str, password: str, role: str) -> dict[str, object]:
    """A dynsec client entry: PBKDF2-HMAC-SHA512, 101 rounds, as mosquitto_ctrl writes it."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return {
        "username": user,
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
        "roles": [{"rolename": role}],
    }


def _dynsec_role(device: str) -> dict[str, object]:
    base = f"edgeloop/v1/{FLEET}/{device}"
    acls = [
        {"acltype": "publishClientSend", "topic": f"{base}/{kind}", "allow": True}
        for kind in ("telemetry", "events", "status")
    ]
    acls.append({"acltype": "subscribeLiteral", "topic": f"{base}/cmd", "allow": True})
    return {"rolename": device, "acls": acls}


@pytest.mark.skipif(not DYNSEC_PLUGIN.exists(), reason="needs mosquitto_dynamic_security.so")
def test_dynsec_refuses_subscription_to_another_devices_commands(tmp_path: Path) -> None:
    config = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [_dynsec_client(d, PASSWORDS[d], d) for d in ("dev-a", "dev-b")],
        "roles": [_dynsec_role(d) for d in ("dev-a", "dev-b")],
    }
    config_file = tmp_path / "dynsec.json"
    config_file.write_text(json.dumps(config))
    extra = [f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {config_file}"]
    with MosquittoBroker(tmp_path / "broker", allow_anonymous=False, extra_config=extra) as b:
        dev_a = Client(b.port, "dev-a", PASSWORDS["dev-a"])
        try:
            assert dev_a.connack is not None and not dev_a.connack.is_failure, dev_a.connack
            assert not dev_a.subscribe(f"edgeloop/v1/{FLEET}/dev-a/cmd").is_failure
            refused = dev_a.subscribe(f"edgeloop/v1/{FLEET}/dev-b/cmd")
            assert refused.is_failure and refused.value == NOT_AUTHORIZED, refused
            forged = dev_a.publish(f"edgeloop/v1/{FLEET}/dev-b/telemetry", b"{}")
            assert forged.value == NOT_AUTHORIZED, forged
        finally:
            dev_a.close()
