"""Telemetry ingest against a real Mosquitto and real SQLite and PostgreSQL databases.

Each test gets its own shared-subscription group (so sessions left in the module's broker
by earlier tests take no share of its messages) and enrolls its own devices. Messages are
built the way the agent builds them: a real :class:`Recorder` window and the envelope of
:mod:`edge_agent.telemetry.schema`. The crash test runs the hub as a child process
(``python -m cloud_hub.ingest``) and kills it while the database is locked, so messages
are in its hands but not committed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hub_db
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from mqtt_broker import MosquittoBroker, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select, text

from cloud_hub.broker import hash_password, hub_mqtt_login, render_acl, render_password_file
from cloud_hub.db import Database
from cloud_hub.db import models as orm
from cloud_hub.errors import HubConfigError, InvalidRequest
from cloud_hub.ingest import IngestOptions, IngestService, delete_expired
from cloud_hub.ingest._ratelog import RateLimitedLog
from cloud_hub.ingest.messages import parse
from cloud_hub.ingest.rollup import fold
from cloud_hub.registry import Registry
from cloud_hub.settings import HubSettings, load_settings
from edge_agent.telemetry.aggregate import Recorder
from edge_agent.telemetry.schema import encode

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "edgeloop/v1"
MODEL = {"name": "digits-edge", "version": "7", "backend": "onnxruntime", "format": "onnx"}
WAIT_S = 60.0
STRANGER = "dev-000000000000"  # never enrolled

database_url = hub_db.database_url_fixture("ingest")
clock = hub_db.clock_fixture()
registry = hub_db.registry_fixture()


# -- messages as the agent sends them ----------------------------------------------------


def agent_body(
    end: float,
    *,
    latencies_ms: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 30.0),
    errors: int = 0,
    cpu_pct: float = 20.0,
    temps_c: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A telemetry body from a real Recorder window ending at ``end``."""
    recorder = Recorder(end - 10.0, seed=0)
    probabilities = np.array([[0.1, 0.9]], dtype=np.float32)
    image = np.zeros((1, 8, 8, 1), dtype=np.float32)
    for latency in latencies_ms:
        recorder.record(latency / 1e3, True, probabilities, {"image": image})
    for _ in range(errors):
        recorder.record(0.0, False)
    body = recorder.snapshot(end)
    body["system"] = {
        "cpu_pct": cpu_pct,
        "mem_pct": 41.5,
        "rss_bytes": 80_000_000,
        "disk_free_bytes": 10**10,
        "temps_c": {"cpu": 51.0} if temps_c is None else temps_c,
        "throttled": False,
    }
    body["model"] = dict(MODEL)
    body["spool"] = {"dropped": 0, "backlog": 0, "bytes": 0}
    return body


class FakeDevice:
    """Builds one device's messages (envelope, seq per boot) and their topics."""

    def __init__(self, device: str, fleet: str = "lab", boot_id: str = "boot-1") -> None:
        self.id, self.fleet, self.boot_id = device, fleet, boot_id
        self.seq = 0

    def topic(self, kind: str) -> str:
        return f"{PREFIX}/{self.fleet}/{self.id}/{kind}"

    def envelope(self, kind: str, ts: float, seq: int | None = None) -> dict[str, Any]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return {
            "schema": 1,
            "kind": kind,
            "device": self.id,
            "fleet": self.fleet,
            "boot_id": self.boot_id,
            "seq": seq,
            "ts": ts,
            "historical": False,
        }

    def telemetry(self, ts: float, seq: int | None = None, **body: Any) -> dict[str, Any]:
        return {**self.envelope("telemetry", ts, seq), **agent_body(ts, **body)}

    def status(self, state: str, ts: float) -> dict[str, Any]:
        return {**self.envelope("status", ts), "state": state, "reason": "test"}

    def event(self, name: str, ts: float, data: dict[str, Any]) -> dict[str, Any]:
        return {**self.envelope("events", ts), "event": name, "data": data}


class Publisher:
    """A plain MQTT 5 client that publishes QoS 1 and waits for each PUBACK."""

    def __init__(self, port: int, login: tuple[str, str] | None = None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-publisher-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | dict[str, Any], *, retain: bool = False) -> None:
        data = encode(payload) if isinstance(payload, dict) else payload
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path_factory.mktemp("broker")) as running:
        yield running


class Hub:
    """One test's world: the registry, settings for the broker, services and devices."""

    def __init__(
        self, registry: Registry, broker: MosquittoBroker, tmp_path: Path, clock: Any
    ) -> None:
        self.registry = registry
        self.broker = broker
        self.clock = clock
        self.group = f"test-{secrets.token_hex(4)}"
        self.settings = self.make_settings(tmp_path)
        self.publisher = Publisher(broker.port)
        self.services: list[IngestService] = []
        self.devices: list[FakeDevice] = []
        self.now = clock.now.timestamp() - 30.0  # device clock a little behind the hub's
        registry.create_fleet("lab")
        registry.create_fleet("other")

    def make_settings(self, tmp_path: Path, **overrides: Any) -> HubSettings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "hub",
            "database_url": self.registry.db.url.render_as_string(hide_password=False),
            "mqtt_port": self.broker.port,
        }
        return load_settings(**(values | overrides))

    def service(
        self, settings: HubSettings | None = None, *, client_id: str | None = None, **options: Any
    ) -> IngestService:
        """A started, subscribed IngestService in this test's group (stopped at the end)."""
        name = client_id or f"{self.group}-{len(self.services)}"
        service = IngestService(
            self.registry,
            settings or self.settings,
            options=IngestOptions(group=self.group, client_id=name, **options),
        )
        self.services.append(service)
        service.start()
        assert service.wait_ready(WAIT_S), "the ingest service did not subscribe"
        return service

    def enroll(self, count: int = 1, fleet: str = "lab") -> list[FakeDevice]:
        issued = self.registry.create_enrollment_token(fleet, ttl=timedelta(hours=1), uses=count)
        devices = []
        for n in range(count):
            enrolled = self.registry.redeem_enrollment_token(
                issued.token, public_key_pem=None, hostname=f"pi-{n}"
            )
            devices.append(FakeDevice(enrolled.device.id, fleet))
        self.devices += devices
        return devices

    def send(self, device: FakeDevice, message: dict[str, Any], *, retain: bool = False) -> None:
        self.publisher.send(device.topic(message["kind"]), message, retain=retain)

    def raw_count(self) -> int:
        with self.registry.db.transaction() as session:
            return int(session.scalar(select(func.count()).select_from(orm.TelemetryRaw)) or 0)

    def close(self) -> None:
        """Stop the services (ending their sessions), clear the retained statuses."""
        for service in self.services:
            service.stop(timeout=15.0, leave=True)
        for device in [*self.devices, FakeDevice(STRANGER)]:
            self.publisher.send(device.topic("status"), b"", retain=True)
        self.publisher.close()


@pytest.fixture
def hub(registry: Registry, broker: MosquittoBroker, tmp_path: Path, clock: Any) -> Iterator[Hub]:
    world = Hub(registry, broker, tmp_path, clock)
    try:
        yield world
    finally:
        world.close()


def wait_stats(
    service: IngestService, predicate: Callable[[dict[str, int]], object], what: str
) -> dict[str, int]:
    try:
        wait_until(lambda: predicate(service.stats()), WAIT_S, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stats then: {service.stats()}") from None
    return service.stats()


# -- storing, deduplicating, refusing ------------------------------------------------------


def test_agent_telemetry_is_stored_and_visible_through_the_registry(hub: Hub) -> None:
    (device,) = hub.enroll()
    service = hub.service()
    sent = [device.telemetry(hub.now + n) for n in range(3)]
    for message in sent:
        hub.send(device, message)
    wait_stats(service, lambda s: s["acked"] == 3, "3 stored and acknowledged")

    tail = hub.registry.telemetry_tail(device.id)
    assert [record.seq for record in tail] == [1, 2, 3]
    assert [record.payload for record in tail] == sent
    assert {record.boot_id for record in tail} == {"boot-1"}
    assert tail[0].ts == datetime.fromtimestamp(hub.now, timezone.utc)
    assert tail[0].received_at == hub.clock.now
    seen = hub.registry.device(device.id)
    assert seen.status == "online"  # telemetry from a device never heard of before
    assert (seen.boot_id, seen.model_name, seen.model_version) == ("boot-1", "digits-edge", "7")
    assert seen.last_seen_at == hub.clock.now
    stats = service.stats()
    assert stats["received"] == stats["stored"] == 3
    assert stats["duplicates"] == stats["malformed"] == stats["unknown_device"] == 0


def test_a_message_sent_twice_is_stored_once(hub: Hub) -> None:
    (device,) = hub.enroll()
    service = hub.service()
    first = device.telemetry(hub.now)
    hub.send(device, first)
    hub.send(device, first)  # most likely in the same batch
    wait_stats(service, lambda s: s["stored"] + s["duplicates"] == 2, "both handled")
    replayed = {**first, "historical": True}  # the agent replays its spool like this
    hub.send(device, replayed)
    hub.send(device, device.telemetry(hub.now + 10))
    stats = wait_stats(service, lambda s: s["stored"] == 2, "the new one stored")
    wait_stats(service, lambda s: s["duplicates"] == 2, "two duplicates")

    assert [r.seq for r in hub.registry.telemetry_tail(device.id)] == [1, 2]
    assert hub.registry.telemetry_tail(device.id)[0].payload == first
    assert stats["received"] == 4
    series = hub.registry.telemetry_series(
        device.id, since=hub.clock.now - timedelta(hours=1), until=hub.clock.now
    )
    assert sum(rollup.count for rollup in series) == 2  # duplicates are not rolled up


def test_malformed_messages_are_counted_and_ingest_goes_on(hub: Hub) -> None:
    (device,) = hub.enroll()
    service = hub.service()
    topic = device.topic("telemetry")
    good = device.telemetry(hub.now)
    bad: list[tuple[str, bytes | dict[str, Any]]] = [
        (topic, b"{not json"),
        (topic, b"\xff\xfe binary"),
        (topic, b"[1, 2, 3]"),
        (topic, {**device.telemetry(hub.now), "schema": 2}),
        (topic, {**device.telemetry(hub.now), "seq": "7"}),
        (topic, {**device.telemetry(hub.now), "requests": 1.5}),
        (topic, {k: v for k, v in device.telemetry(hub.now).items() if k != "latency_ms"}),
        (topic, encode(device.telemetry(hub.now, latencies_ms=(1.25,))).replace(b"1.25", b"NaN")),
        (topic, {**device.telemetry(hub.now), "device": "dev-someoneelse"}),
        (device.topic("events"), device.telemetry(hub.now)),  # kind differs from the topic
    ]
    for where, payload in bad:
        hub.publisher.send(where, payload)
    hub.send(device, good)
    stats = wait_stats(service, lambda s: s["acked"] == len(bad) + 1, "all acknowledged")
    assert stats["stored"] == 1
    assert stats["malformed"] == len(bad)
    assert [r.payload for r in hub.registry.telemetry_tail(device.id)] == [good]


def test_messages_from_unknown_revoked_or_misfiled_devices_are_dropped(hub: Hub) -> None:
    known, revoked = hub.enroll(2)
    hub.registry.revoke_device(revoked.id)
    service = hub.service()
    hub.send(revoked, revoked.telemetry(hub.now))
    stranger = FakeDevice(STRANGER)
    hub.send(stranger, stranger.telemetry(hub.now))
    hub.send(stranger, stranger.status("online", hub.now), retain=True)
    misfiled = FakeDevice(known.id, fleet="other")  # topic and payload say another fleet
    hub.send(misfiled, misfiled.telemetry(hub.now))
    hub.send(known, known.telemetry(hub.now))

    wait_stats(service, lambda s: s["stored"] == 1, "the known device's message")
    wait_stats(service, lambda s: s["unknown_device"] == 4, "4 dropped")
    assert hub.raw_count() == 1
    assert hub.registry.device(revoked.id).status == "offline"  # as revoking left it


def test_status_messages_take_a_device_online_and_offline(hub: Hub) -> None:
    (device,) = hub.enroll()
    service = hub.service()
    assert hub.registry.device(device.id).status == "unknown"
    hub.send(device, device.status("online", hub.now), retain=True)
    wait_until(lambda: hub.registry.device(device.id).status == "online", WAIT_S, "online")
    online = hub.registry.device(device.id)
    assert online.boot_id == "boot-1"
    assert online.last_seen_at == hub.clock.now

    hub.clock.advance(timedelta(minutes=5))
    hub.send(device, device.status("offline", hub.now), retain=True)  # the last will
    wait_until(lambda: hub.registry.device(device.id).status == "offline", WAIT_S, "offline")
    assert hub.registry.device(device.id).last_seen_at == online.last_seen_at
    rebooted = FakeDevice(device.id, boot_id="boot-2")
    hub.send(rebooted, rebooted.status("online", hub.now), retain=True)
    wait_until(lambda: hub.registry.device(device.id).boot_id == "boot-2", WAIT_S, "new boot")
    assert hub.registry.device(device.id).status == "online"
    assert service.stats()["statuses"] == 3


def test_events_are_stored_once(hub: Hub) -> None:
    (device,) = hub.enroll()
    service = hub.service()
    event = device.event("model_switched", hub.now, {"from": "6", "to": "7"})
    hub.send(device, event)
    hub.send(device, event)
    wait_stats(service, lambda s: s["acked"] == 2, "both acknowledged")
    (stored,) = hub.registry.device_events(device.id)
    assert stored.kind == "model_switched"
    assert stored.ts == datetime.fromtimestamp(hub.now, timezone.utc)
    assert stored.body == {
        "boot_id": "boot-1",
        "seq": 1,
        "historical": False,
        "data": event["data"],
    }
    assert service.stats()["events"] == 1


def test_a_message_the_database_refuses_is_dropped_alone(hub: Hub) -> None:
    """A row the database will not take (here a trigger refuses seq 13) costs only itself."""
    (device,) = hub.enroll()
    db = hub.registry.db
    with db.transaction() as session:
        if db.backend == "sqlite":
            session.execute(
                text(
                    "CREATE TRIGGER refuse_13 BEFORE INSERT ON telemetry_raw WHEN NEW.seq = 13 "
                    "BEGIN SELECT RAISE(ABORT, 'seq 13 is refused'); END"
                )
            )
        else:
            session.execute(
                text(
                    "CREATE FUNCTION refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.seq = 13 THEN RAISE EXCEPTION 'seq 13 is refused'; END IF; "
                    "RETURN NEW; END $$"
                )
            )
            session.execute(
                text(
                    "CREATE TRIGGER refuse_13 BEFORE INSERT ON telemetry_raw "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_13()"
                )
            )
    try:
        service = hub.service(batch_wait_s=2.0)  # the three share one batch
        for seq in (12, 13, 14):
            hub.send(device, device.telemetry(hub.now + seq, seq=seq))
        # All three acknowledged: the refused one is not redelivered forever.
        stats = wait_stats(service, lambda s: s["acked"] == 3, "all three acknowledged")
        assert stats["stored"] == 2
        assert stats["failed"] == 1
        assert [r.seq for r in hub.registry.telemetry_tail(device.id)] == [12, 14]
    finally:
        with db.transaction() as session:
            session.execute(
                text(
                    "DROP TRIGGER refuse_13"
                    + ("" if db.backend == "sqlite" else " ON telemetry_raw")
                )
            )
            if db.backend != "sqlite":
                session.execute(text("DROP FUNCTION refuse_13()"))


# -- rollups and retention ---------------------------------------------------------------


def test_rollups_per_minute(hub: Hub) -> None:
    (device,) = hub.enroll()
    service = hub.service()
    minute = datetime(2030, 1, 1, 11, 0, tzinfo=timezone.utc)
    start = minute.timestamp()
    fast = device.telemetry(start + 10, latencies_ms=(1.0, 2.0, 3.0), cpu_pct=30.0)
    slow = device.telemetry(
        start + 50,
        latencies_ms=(20.0, 40.0, 80.0, 90.0),
        errors=2,
        cpu_pct=10.0,
        temps_c={"cpu": 61.0, "gpu": 66.5},
    )
    later = device.telemetry(start + 70)
    hub.send(device, fast)
    wait_stats(service, lambda s: s["stored"] == 1, "the first stored")
    for message in (slow, later, slow):  # the duplicate must not count twice
        hub.send(device, message)
    wait_stats(service, lambda s: s["stored"] == 3 and s["duplicates"] == 1, "all handled")

    first, second = hub.registry.telemetry_series(
        device.id, since=minute, until=minute + timedelta(minutes=2)
    )
    assert (first.minute, second.minute) == (minute, minute + timedelta(minutes=1))
    assert first.count == 2 and second.count == 1
    assert first.requests == fast["requests"] + slow["requests"] == 9
    assert first.errors == 2
    for name in ("p50", "p95", "p99"):
        expected = max(fast["latency_ms"][name], slow["latency_ms"][name])
        assert getattr(first, f"latency_{name}_ms") == pytest.approx(expected)
    weighted = (
        fast["confidence"]["mean"] * fast["requests"]
        + slow["confidence"]["mean"] * slow["requests"]
    ) / first.requests
    assert first.confidence_mean == pytest.approx(weighted)
    assert (first.cpu_pct_max, first.mem_pct_max, first.temp_c_max) == (30.0, 41.5, 66.5)
    assert second.latency_p95_ms == pytest.approx(later["latency_ms"]["p95"])


def test_rollup_rules_keep_the_worst_and_skip_what_is_missing() -> None:
    device = FakeDevice("dev-aaaaaaaaaaaa")
    ts = datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp() + 5
    full = device.telemetry(ts, latencies_ms=(5.0,), temps_c={})
    partial = device.telemetry(ts + 1)
    partial["latency_ms"] = {"p95": "slow"}  # not a number: ignored, not a failure
    partial["system"] = {}
    messages = [parse(device.topic("telemetry"), encode(m), PREFIX) for m in (full, partial)]
    ((key, delta),) = fold(messages).items()
    assert key == (device.id, datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert (delta.count, delta.requests) == (2, full["requests"] + partial["requests"])
    assert delta.latency_p95_ms == pytest.approx(full["latency_ms"]["p95"])
    assert delta.cpu_pct_max == 20.0
    assert delta.temp_c_max is None  # no zone reported a temperature


def test_retention_deletes_expired_raw_rows_and_keeps_rollups(hub: Hub, tmp_path: Path) -> None:
    (device,) = hub.enroll()
    settings = hub.make_settings(tmp_path, raw_retention="1h")
    service = hub.service(settings)
    for n in range(3):
        hub.send(device, device.telemetry(hub.now + n))
    wait_stats(service, lambda s: s["stored"] == 3, "3 stored")
    hub.clock.advance(timedelta(minutes=61))
    hub.send(device, device.telemetry(hub.now + 3700))
    wait_stats(service, lambda s: s["stored"] == 4, "the new one stored")

    assert service.run_retention() == 3
    assert [r.seq for r in hub.registry.telemetry_tail(device.id)] == [4]
    series = hub.registry.telemetry_series(
        device.id,
        since=hub.clock.now - timedelta(hours=3),
        until=hub.clock.now + timedelta(hours=1),
    )
    assert sum(rollup.count for rollup in series) == 4

    # The writer's own schedule deletes what expires next.
    hub.clock.advance(timedelta(minutes=61))
    periodic = hub.service(settings, retention_every_s=0.1)
    wait_stats(periodic, lambda s: s["retention_deleted"] == 1, "the last row deleted")
    assert hub.raw_count() == 0


def test_delete_expired_goes_in_bounded_batches(hub: Hub) -> None:
    (device,) = hub.enroll()
    service = hub.service()
    for n in range(7):
        hub.send(device, device.telemetry(hub.now + n))
    wait_stats(service, lambda s: s["stored"] == 7, "7 stored")
    cutoff = hub.clock.now + timedelta(seconds=1)
    assert delete_expired(hub.registry.db, cutoff, batch=3, max_batches=1) == 3
    assert hub.raw_count() == 4
    assert delete_expired(hub.registry.db, hub.clock.now, batch=3) == 0  # nothing older
    assert delete_expired(hub.registry.db, cutoff, batch=3) == 4
    assert hub.raw_count() == 0


# -- sharing the load, crashing, leaving ---------------------------------------------------


def test_two_services_in_one_group_split_the_messages(hub: Hub) -> None:
    devices = hub.enroll(4)
    first, second = hub.service(), hub.service()
    total = 200
    for n in range(total):
        device = devices[n % len(devices)]
        hub.send(device, device.telemetry(hub.now + n))
    wait_until(
        lambda: first.stats()["stored"] + second.stats()["stored"] == total,
        WAIT_S,
        f"{total} stored between the two",
    )
    a, b = first.stats(), second.stats()
    assert a["received"] > 0 and b["received"] > 0
    assert a["received"] + b["received"] == total  # each message went to one of them
    assert a["duplicates"] == b["duplicates"] == 0
    assert hub.raw_count() == total


def test_a_service_leaving_its_group_hands_its_share_to_the_others(hub: Hub) -> None:
    (device,) = hub.enroll()
    staying = hub.service()
    leaving = hub.service()
    leaving.stop(leave=True)
    for n in range(40):
        hub.send(device, device.telemetry(hub.now + n))
    wait_stats(staying, lambda s: s["stored"] == 40, "every message with the one left")


def test_storing_waits_out_a_locked_database_then_stores_everything(hub: Hub) -> None:
    (device,) = hub.enroll()
    service = hub.service()
    with locked_raw_table(hub.registry.db):
        for n in range(5):
            hub.send(device, device.telemetry(hub.now + n))
        wait_stats(service, lambda s: s["received"] == 5, "5 received")
        assert service.stats()["stored"] == 0
        assert service.stats()["acked"] == 0
    stats = wait_stats(service, lambda s: s["acked"] == 5, "5 acknowledged after the lock")
    assert stats["stored"] == 5


def test_a_hub_killed_before_committing_loses_nothing(hub: Hub, tmp_path: Path) -> None:
    """Kill -9 with messages received but not committed; the restarted hub gets them all."""
    (device,) = hub.enroll()
    stats_file = tmp_path / "stats.json"
    with locked_raw_table(hub.registry.db):
        process = start_hub_process(hub, stats_file)
        try:
            wait_until(lambda: read_stats(stats_file).get("subscribed"), WAIT_S, "subscribed")
            for n in range(30):
                hub.send(device, device.telemetry(hub.now + n))
            wait_until(lambda: read_stats(stats_file).get("received") == 30, WAIT_S, "30 held")
            assert read_stats(stats_file)["stored"] == 0
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=WAIT_S)
    assert hub.raw_count() == 0
    for n in range(30, 40):  # sent while no hub runs: the broker queues them
        hub.send(device, device.telemetry(hub.now + n))

    stats_file.unlink()
    process = start_hub_process(hub, stats_file)
    try:
        wait_until(lambda: hub.raw_count() == 40, WAIT_S, "all 40 stored after the restart")
        wait_until(lambda: read_stats(stats_file).get("acked") == 40, WAIT_S, "all acked")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 0
    assert [r.seq for r in hub.registry.telemetry_tail(device.id, limit=100)] == list(range(1, 41))
    final = read_stats(stats_file)
    assert final["duplicates"] == 0 and final["stored"] == 40


def start_hub_process(hub: Hub, stats_file: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        EDGELOOP_HUB_DATABASE_URL=hub.settings.database_url,
        EDGELOOP_HUB_DATA_DIR=str(hub.settings.data_dir),
        EDGELOOP_HUB_MQTT_PORT=str(hub.broker.port),
    )
    command = [
        sys.executable, "-m", "cloud_hub.ingest", "--group", hub.group,
        "--client-id", f"{hub.group}-process", "--stats-file", str(stats_file),
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)


def read_stats(path: Path) -> dict[str, int]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}


@contextmanager
def locked_raw_table(db: Database) -> Iterator[None]:
    """Hold a lock that makes every INSERT into telemetry_raw wait (reads still work)."""
    connection: Any
    if db.backend == "sqlite":
        connection = sqlite3.connect(str(db.url.database), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        url = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        connection = psycopg.connect(url)
        connection.execute("LOCK TABLE telemetry_raw IN SHARE MODE")
    try:
        yield
    finally:
        connection.rollback()
        connection.close()


def test_ingest_logs_in_as_the_hub_on_a_broker_the_hub_manages(hub: Hub, tmp_path: Path) -> None:
    """Password file and ACL as :mod:`cloud_hub.broker` writes them: the hub user may read
    what its shared subscriptions name."""
    files = tmp_path / "broker-files"
    files.mkdir()
    passwords, acl = files / "passwords", files / "acl"
    managed = {"broker_password_file": passwords, "broker_acl_file": acl}
    login = hub_mqtt_login(hub.make_settings(tmp_path, **managed))
    assert login is not None and login.password is not None
    publisher_login = ("test-publisher", secrets.token_urlsafe(16))
    users = {login.username: login.password, publisher_login[0]: publisher_login[1]}
    passwords.write_text(render_password_file({u: hash_password(p) for u, p in users.items()}))
    passwords.chmod(0o600)
    acl.write_text(
        render_acl(PREFIX, login.username, [])
        + f"\nuser {publisher_login[0]}\ntopic write {PREFIX}/#\n"
    )
    (device,) = hub.enroll()
    with MosquittoBroker(tmp_path / "auth-broker", password_file=passwords, acl_file=acl) as mq:
        settings = hub.make_settings(tmp_path, mqtt_port=mq.port, **managed)
        service = IngestService(hub.registry, settings, options=IngestOptions(group=hub.group))
        publisher = Publisher(mq.port, publisher_login)
        service.start()
        try:
            assert service.wait_ready(WAIT_S), "the hub user could not subscribe"
            publisher.send(device.topic("telemetry"), device.telemetry(hub.now))
            wait_stats(service, lambda s: s["stored"] == 1, "the message stored")
        finally:
            publisher.close()
            service.stop(timeout=15.0, leave=True)


# -- the real agent ------------------------------------------------------------------------


def test_the_agents_publisher_feeds_the_hub(hub: Hub, tmp_path: Path) -> None:
    from edge_agent.telemetry.publisher import TelemetryPublisher
    from edge_agent.telemetry.settings import ForwardPolicy, MqttSettings
    from edge_agent.telemetry.spool import Spool
    from edge_agent.telemetry.system import SystemProbe

    (device,) = hub.enroll()
    service = hub.service()
    state = tmp_path / "agent"
    spool = Spool.in_dir(state)
    recorder = Recorder(time.time())
    publisher = TelemetryPublisher(
        MqttSettings(host="127.0.0.1", port=hub.broker.port),
        device=device.id,
        fleet=device.fleet,
        boot_id="agent-boot",
        spool=spool,
        recorder=recorder,
        system=SystemProbe(state),
        model_info=lambda: MODEL,
        interval_s=0.3,
        policy=ForwardPolicy(reconnect_min_s=0.1, reconnect_max_s=0.5),
    )
    publisher.start()
    try:
        recorder.record(0.004, True, np.array([[0.2, 0.8]]))
        wait_stats(service, lambda s: s["stored"] >= 2, "two intervals stored")
        wait_until(lambda: hub.registry.device(device.id).status == "online", WAIT_S, "online")
    finally:
        publisher.stop()
        spool.close()
    wait_until(lambda: hub.registry.device(device.id).status == "offline", WAIT_S, "offline")
    seen = hub.registry.device(device.id)
    assert (seen.boot_id, seen.model_version) == ("agent-boot", "7")
    assert service.stats()["malformed"] == 0


# -- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"boot_id": "x" * 65}, "boot_id must be 1 to 64"),
        ({"boot_id": "a\x00b"}, "no NUL"),
        ({"seq": 2**63}, "seq .* is over"),
        ({"ts": 1e300}, "not a usable time"),
        ({"requests": -1}, "'requests' = -1 is not from 0"),
        ({"fleet": "other"}, "payload fleet 'other' does not match the topic's 'lab'"),
    ],
)
def test_parse_refuses_what_would_not_fit(change: dict[str, Any], message: str) -> None:
    device = FakeDevice("dev-aaaaaaaaaaaa")
    payload = {**device.telemetry(1.9e9), **change}
    with pytest.raises(InvalidRequest, match=message):
        parse(device.topic("telemetry"), json.dumps(payload).encode(), PREFIX)


def test_parse_refuses_oversized_payloads_and_foreign_topics() -> None:
    device = FakeDevice("dev-aaaaaaaaaaaa")
    with pytest.raises(InvalidRequest, match="over 262144"):
        parse(device.topic("telemetry"), b" " * (256 * 1024 + 1), PREFIX)
    with pytest.raises(InvalidRequest, match="is not under 'edgeloop/v1'"):
        parse("elsewhere/lab/x/telemetry", encode(device.telemetry(1.9e9)), PREFIX)
    event = device.event("x" * 65, 1.9e9, {})
    with pytest.raises(InvalidRequest, match="event name"):
        parse(device.topic("events"), encode(event), PREFIX)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group": "a/b"}, "group = 'a/b'"),
        ({"queue_max": 0}, "queue_max = 0"),
        ({"batch_max": 10, "queue_max": 5}, "at most queue_max"),
        ({"batch_wait_s": 0}, "batch_wait_s = 0"),
        ({"client_id": ""}, "client_id = ''"),
    ],
)
def test_bad_options_fail_with_the_name_and_value(options: dict[str, Any], message: str) -> None:
    with pytest.raises(HubConfigError, match=message):
        IngestOptions(**options)


def test_rate_limited_log_says_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(
        logging.getLogger("test.ratelog"), every_s=10, burst=2, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for n in range(5):
            limited.warning(f"bad {n}")
        now[0] = 11.0
        limited.warning("bad later")
    assert [r.getMessage() for r in caplog.records] == [
        "bad 0",
        "bad 1",
        "bad later (3 similar lines suppressed before this one)",
    ]
