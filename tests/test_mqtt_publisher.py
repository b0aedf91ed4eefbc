"""The telemetry publisher against a real Mosquitto that is stopped, restarted and killed.

The hub side is a :class:`mqtt_broker.Collector` with a persistent session on a broker
with persistence, so whatever the publisher sends while the collector is reconnecting
after a broker restart is queued for it rather than lost to the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_broker import (
    Collector,
    MosquittoBroker,
    make_tls_files,
    wait_until,
    write_password_file,
)

from edge_agent.telemetry.aggregate import Recorder
from edge_agent.telemetry.publisher import TelemetryPublisher
from edge_agent.telemetry.schema import decode, encode
from edge_agent.telemetry.settings import ForwardPolicy, MqttSettings
from edge_agent.telemetry.spool import Spool
from edge_agent.telemetry.system import SystemProbe

ROOT = Path(__file__).resolve().parent.parent
FLEET, DEVICE = "lab", "pi-7"
STATUS = f"edgeloop/v1/{FLEET}/{DEVICE}/status"
MODEL = {"name": "digits-edge", "version": "3", "backend": "onnxruntime", "format": "onnx"}
FAST = ForwardPolicy(reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=10.0)

Factory = Callable[..., TelemetryPublisher]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker", persistence=True) as running:
        yield running


@pytest.fixture
def hub(broker: MosquittoBroker) -> Iterator[Collector]:
    with Collector(broker.port, client_id="test-hub", session=True) as collector:
        yield collector


@pytest.fixture
def make_publisher(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Factory]:
    """``make_publisher(**overrides)``: a started publisher, stopped after the test."""
    made: list[tuple[TelemetryPublisher, Spool]] = []

    def make(
        *,
        settings: MqttSettings | None = None,
        spool: Spool | None = None,
        interval_s: float = 0.5,
        policy: ForwardPolicy = FAST,
        boot_id: str = "boot-1",
        **kwargs: Any,
    ) -> TelemetryPublisher:
        state = tmp_path / "state"
        spool = Spool.in_dir(state) if spool is None else spool
        publisher = TelemetryPublisher(
            settings or MqttSettings(host="127.0.0.1", port=broker.port),
            device=DEVICE,
            fleet=FLEET,
            boot_id=boot_id,
            spool=spool,
            recorder=Recorder(time.time()),
            system=SystemProbe(state),
            model_info=lambda: MODEL,
            interval_s=interval_s,
            policy=policy,
            **kwargs,
        )
        made.append((publisher, spool))
        publisher.start()
        return publisher

    yield make
    for publisher, spool in made:
        publisher.stop(timeout=5)
        spool.close()


def _of(messages: list[dict[str, Any]], kind: str, boot_id: str = "boot-1") -> list[dict]:
    return [m for m in messages if m["kind"] == kind and m["boot_id"] == boot_id]


def _events(messages: list[dict[str, Any]], boot_id: str = "boot-1") -> dict[int, dict]:
    return {m["seq"]: m for m in _of(messages, "events", boot_id)}


def _retained_status(port: int, **auth: Any) -> dict[str, Any]:
    """The retained status as a subscriber arriving now sees it."""
    with Collector(port, STATUS, **auth) as fresh:
        fresh.wait_for(lambda ms: bool(ms), timeout=30, what="the retained status")
        _, payload, retained = fresh.snapshot()[0]
    assert retained and payload is not None
    return payload


def _go_down(broker: MosquittoBroker, publisher: TelemetryPublisher) -> None:
    broker.stop()
    wait_until(lambda: not publisher.connected, what="the publisher to notice the outage")


# -- the normal path -------------------------------------------------------------------------


def test_telemetry_is_aggregated_per_interval_with_the_envelope(
    hub: Collector, make_publisher: Factory, broker: MosquittoBroker
) -> None:
    publisher = make_publisher()
    wait_until(lambda: publisher.connected, what="a connection")
    recorder: Recorder = publisher.recorder
    for i in range(120):
        recorder.record(0.001 + i * 1e-5, i % 12 != 0, np.array([0.1, 0.9]), {"x": np.ones(4)})
    messages = hub.wait_for(
        lambda ms: sum(m["requests"] for m in _of(ms, "telemetry")) == 120,
        what="telemetry counting the 120 requests",
    )
    for message in messages:
        decode(encode(message))  # every message follows the contract
    busy = [m for m in _of(messages, "telemetry") if m["requests"]]
    assert len(busy) <= 2  # one window, or two if the loop straddled a tick: never 120
    assert sum(m["errors"] for m in busy) == 10
    window = busy[0]
    assert window["historical"] is False and window["latency_ms"]["p99"] > 0
    assert window["model"] == MODEL and window["spool"]["dropped"] == 0
    means = [m["inputs"]["x"]["mean"] for m in busy if m["inputs"]]
    assert means and all(mean == 1.0 for mean in means)
    assert set(window["system"]) >= {"cpu_pct", "mem_pct", "disk_free_bytes", "throttled"}
    seqs = [m["seq"] for m in messages if m["kind"] != "status" and not m["historical"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    online = _retained_status(broker.port)
    assert (online["state"], online["kind"], online["boot_id"]) == ("online", "status", "boot-1")


def test_clean_stop_sends_final_telemetry_then_retained_offline(
    hub: Collector, make_publisher: Factory, broker: MosquittoBroker
) -> None:
    publisher = make_publisher(interval_s=3600)  # only the final telemetry
    wait_until(lambda: publisher.connected, what="a connection")
    publisher.recorder.record(0.002, True)
    publisher.stop(timeout=10)
    messages = hub.wait_for(lambda ms: _of(ms, "telemetry"), what="the final telemetry")
    assert [m["requests"] for m in _of(messages, "telemetry")] == [1]
    assert publisher.spool.count == 0
    offline = _retained_status(broker.port)
    assert (offline["state"], offline["reason"]) == ("offline", "stopped")
    assert publisher.stats()["connected"] is False


def test_commands_on_the_cmd_topic_reach_the_handler(
    broker: MosquittoBroker, make_publisher: Factory
) -> None:
    received: list[bytes] = []
    publisher = make_publisher(on_command=received.append)
    wait_until(lambda: publisher.connected, what="a connection")
    with Collector(broker.port, "unused/topic") as sender:
        # the cmd subscription follows CONNACK; send until the first one lands
        def delivered() -> bool:
            sender.client.publish(f"edgeloop/v1/{FLEET}/{DEVICE}/cmd", b'{"check_in":1}', qos=1)
            time.sleep(0.1)
            return bool(received)

        wait_until(delivered, what="the command at the handler")
    assert received[0] == b'{"check_in":1}'


# -- store and forward -----------------------------------------------------------------------


def test_messages_from_an_outage_arrive_after_restart_in_order_flagged_historical(
    hub: Collector, make_publisher: Factory, broker: MosquittoBroker
) -> None:
    publisher = make_publisher()
    wait_until(lambda: publisher.connected, what="a connection")
    before = publisher.publish_event("before", {})
    hub.wait_for(lambda ms: before in _events(ms), what="the event sent while up")
    _go_down(broker, publisher)
    during = [publisher.publish_event("during", {"i": i}) for i in range(40)]
    time.sleep(1.0)  # a couple of telemetry intervals spooled while down
    assert publisher.spool.count >= 40
    broker.start()
    messages = hub.wait_for(
        lambda ms: (
            set(during) <= set(_events(ms)) and any(m["historical"] for m in _of(ms, "telemetry"))
        ),
        what="every event and the telemetry from the outage",
    )
    events = _events(messages)
    assert events[before]["historical"] is False
    assert all(events[seq]["historical"] is True for seq in during)
    assert [events[seq]["data"] for seq in during] == [{"i": i} for i in range(40)]
    historical = [m["seq"] for m in messages if m["historical"] and m["boot_id"] == "boot-1"]
    assert historical == sorted(historical)  # replayed in seq order
    wait_until(lambda: publisher.spool.count == 0, what="the spool to drain")


def test_a_tiny_spool_drops_the_oldest_and_the_next_telemetry_reports_it(
    tmp_path: Path, hub: Collector, make_publisher: Factory, broker: MosquittoBroker
) -> None:
    spool = Spool.in_dir(tmp_path / "state", max_bytes=6000)
    publisher = make_publisher(spool=spool, interval_s=3600)  # telemetry only at stop()
    wait_until(lambda: publisher.connected, what="a connection")
    _go_down(broker, publisher)
    padding = "x" * 300
    seqs = []
    for i in range(60):
        seqs.append(publisher.publish_event("during", {"i": i, "pad": padding}))
        assert spool.stats().bytes <= 6000
    dropped = spool.stats().dropped
    kept = [seq for seq in seqs if f'"seq":{seq},'.encode() in _spooled(spool)]
    assert dropped == len(seqs) - len(kept) > 0
    assert kept == seqs[-len(kept) :]  # the oldest were dropped, the newest kept
    broker.start()
    messages = hub.wait_for(lambda ms: set(kept) <= set(_events(ms)), what="the kept events")
    assert sorted(seq for seq in _events(messages) if seq in seqs) == kept
    publisher.stop()
    messages = hub.wait_for(lambda ms: _of(ms, "telemetry"), what="the final telemetry")
    assert [m["spool"]["dropped"] for m in _of(messages, "telemetry")] == [dropped]


def test_live_messages_flow_while_a_backlog_drains(
    hub: Collector, make_publisher: Factory, broker: MosquittoBroker
) -> None:
    slow = ForwardPolicy(
        backlog_rate=20.0, backlog_inflight=2, reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    publisher = make_publisher(policy=slow, interval_s=3600)
    wait_until(lambda: publisher.connected, what="a connection")
    _go_down(broker, publisher)
    backlog = [publisher.publish_event("backlog", {"i": i}) for i in range(100)]
    broker.start()
    wait_until(lambda: publisher.connected, what="a reconnection")
    live = publisher.publish_event("live", {})
    messages = hub.wait_for(lambda ms: live in _events(ms), what="the live event")
    assert _events(messages)[live]["historical"] is False
    arrived = set(_events(messages))
    assert not set(backlog) <= arrived, "the backlog had drained before the live event"
    messages = hub.wait_for(lambda ms: set(backlog) <= set(_events(ms)), what="the backlog")
    order = [m["seq"] for m in messages if m["kind"] == "events"]
    assert order.index(live) < order.index(backlog[-1])


_CHILD = """
import sys, time
from pathlib import Path
from edge_agent.telemetry.aggregate import Recorder
from edge_agent.telemetry.publisher import TelemetryPublisher
from edge_agent.telemetry.settings import ForwardPolicy, MqttSettings
from edge_agent.telemetry.spool import Spool
from edge_agent.telemetry.system import SystemProbe

port, state, boot_id, count = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
publisher = TelemetryPublisher(
    MqttSettings(host="127.0.0.1", port=port),
    device="pi-7", fleet="lab", boot_id=boot_id, spool=Spool.in_dir(state),
    recorder=Recorder(time.time()), system=SystemProbe(state), model_info=dict,
    interval_s=3600, policy=ForwardPolicy(reconnect_min_s=0.1, reconnect_max_s=0.5),
)
publisher.start()
if sys.argv[5] == "connected":
    while not publisher.connected:
        time.sleep(0.02)
seqs = [publisher.publish_event("child", {"i": i}) for i in range(count)]
print("ready", *seqs, flush=True)
time.sleep(600)
"""


def _run_child(port: int, state: Path, boot_id: str, count: int, wait: str) -> list[int]:
    """Start the child publisher, wait for its "ready" line, SIGKILL it; its seqs."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(port), str(state), boot_id, str(count), wait],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line and line[0] == "ready", line
        return [int(seq) for seq in line[1:]]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout:
            child.stdout.close()


def test_kill_9_loses_nothing_that_was_spooled(
    tmp_path: Path, hub: Collector, make_publisher: Factory, broker: MosquittoBroker
) -> None:
    broker.stop()
    seqs = _run_child(broker.port, tmp_path / "state", "boot-killed", 30, "now")
    broker.start()
    publisher = make_publisher(boot_id="boot-next")
    messages = hub.wait_for(
        lambda ms: set(seqs) <= set(_events(ms, "boot-killed")), what="the killed boot's events"
    )
    events = _events(messages, "boot-killed")
    assert [events[s]["data"] for s in seqs] == [{"i": i} for i in range(30)]
    assert all(events[s]["historical"] for s in seqs)
    wait_until(lambda: publisher.spool.count == 0, what="the spool to drain")


def test_last_will_marks_a_killed_publisher_offline(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    _run_child(broker.port, tmp_path / "state", "boot-will", 1, "connected")

    def offline() -> bool:
        status = _retained_status(broker.port)
        return status["state"] == "offline" and status["boot_id"] == "boot-will"

    wait_until(offline, what="the retained offline status")
    status = _retained_status(broker.port)
    assert status["reason"] == "connection lost" and status["kind"] == "status"


# -- authentication, TLS, refusals -----------------------------------------------------------


def test_username_and_password(tmp_path: Path, make_publisher: Factory) -> None:
    passwords = write_password_file(tmp_path / "passwd", {DEVICE: "s3cret", "hub": "hub-pw"})
    with MosquittoBroker(tmp_path / "auth", password_file=passwords) as secured:
        auth: dict[str, Any] = {"username": "hub", "password": "hub-pw"}
        with Collector(secured.port, **auth) as hub:
            wrong = MqttSettings(host="127.0.0.1", port=secured.port, username=DEVICE, password="x")
            refused = make_publisher(settings=wrong, boot_id="boot-refused")
            wait_until(lambda: "refused" in (refused.stats()["last_error"] or ""), what="a refusal")
            assert not refused.connected
            refused.stop()
            good = MqttSettings(
                host="127.0.0.1", port=secured.port, username=DEVICE, password="s3cret"
            )
            publisher = make_publisher(settings=good, boot_id="boot-ok")
            seq = publisher.publish_event("hello", {})
            # the refused publisher's spooled telemetry is delivered by the next one
            hub.wait_for(lambda ms: seq in _events(ms, "boot-ok"), what="the event")
            hub.wait_for(lambda ms: _of(ms, "telemetry", "boot-refused"), what="old telemetry")
            assert _retained_status(secured.port, **auth)["state"] == "online"


def test_tls_with_a_private_ca(tmp_path: Path, make_publisher: Factory) -> None:
    tls = make_tls_files(tmp_path / "tls")
    secured = MosquittoBroker(tmp_path / "tls-broker", tls=tls)
    with secured, Collector(secured.port, ca_file=tls.ca_file) as hub:
        settings = MqttSettings(
            host="127.0.0.1", port=secured.port, tls=True, ca_file=str(tls.ca_file)
        )
        publisher = make_publisher(settings=settings)
        seq = publisher.publish_event("over-tls", {})
        hub.wait_for(lambda ms: seq in _events(ms), what="the event over TLS")


def test_tls_with_a_client_certificate(tmp_path: Path, make_publisher: Factory) -> None:
    tls = make_tls_files(tmp_path / "tls")
    extra = ["require_certificate true"]
    secured = MosquittoBroker(tmp_path / "mtls-broker", tls=tls, extra_config=extra)
    hub = Collector(
        secured.port,
        ca_file=tls.ca_file,
        cert_file=tls.client_cert_file,
        key_file=tls.client_key_file,
    )
    with secured, hub:
        server_only = MqttSettings(
            host="127.0.0.1", port=secured.port, tls=True, ca_file=str(tls.ca_file)
        )
        anonymous = make_publisher(settings=server_only, boot_id="boot-no-cert")
        wait_until(lambda: anonymous.stats()["last_error"], what="the handshake to fail")
        assert not anonymous.connected
        anonymous.stop()
        mutual = replace(
            server_only, cert_file=str(tls.client_cert_file), key_file=str(tls.client_key_file)
        )
        publisher = make_publisher(settings=mutual, boot_id="boot-cert")
        seq = publisher.publish_event("mutual-tls", {})
        hub.wait_for(lambda ms: seq in _events(ms, "boot-cert"), what="the event over mTLS")


def test_a_message_the_broker_refuses_leaves_the_spool_and_is_counted(
    tmp_path: Path, make_publisher: Factory
) -> None:
    passwords = write_password_file(tmp_path / "passwd", {DEVICE: "pw", "hub": "hub-pw"})
    acl = tmp_path / "acl"
    base = f"edgeloop/v1/{FLEET}/{DEVICE}"
    acl.write_text(  # no events for this device
        f"user {DEVICE}\ntopic write {base}/telemetry\ntopic write {base}/status\n\n"
        "user hub\ntopic read edgeloop/v1/#\n"
    )
    b = MosquittoBroker(tmp_path / "acl-broker", password_file=passwords, acl_file=acl)
    with b, Collector(b.port, username="hub", password="hub-pw") as hub:
        settings = MqttSettings(host="127.0.0.1", port=b.port, username=DEVICE, password="pw")
        publisher = make_publisher(settings=settings)
        seq = publisher.publish_event("not-allowed", {})
        wait_until(lambda: publisher.stats()["rejected"] == 1, what="the refusal")
        wait_until(lambda: publisher.spool.count <= 1, what="the spool to move on")
        hub.wait_for(lambda ms: _of(ms, "telemetry"), what="telemetry, still flowing")
        assert seq not in _events(hub.payloads())


# -- helpers ---------------------------------------------------------------------------------


def _spooled(spool: Spool) -> bytes:
    return b"\n".join(m.payload for m in spool.after(0, 10_000))


def _live_telemetry(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in _of(messages, "telemetry") if not m["historical"]]
