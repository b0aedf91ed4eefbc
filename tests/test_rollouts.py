"""Staged rollouts: the plan, the gates and the controller's decisions (tables), the
controller and the OTA backend on SQLite and PostgreSQL with a controllable clock, a hub
restart mid-rollout, and the ``cloud-hub push`` / ``cloud-hub rollout`` commands."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hub_db
import pytest

from cloud_hub.errors import Conflict, InvalidRequest, NotFound
from cloud_hub.ingest.messages import parse
from cloud_hub.ingest.store import write_batch
from cloud_hub.ota.service import DeviceState, StatusInfo
from cloud_hub.registry import Device, Registry, Rollup
from cloud_hub.rollouts import (
    RolloutController,
    Rollouts,
    decide,
    parse_gate,
    parse_percent,
    parse_waves,
    plan_steps,
)
from cloud_hub.rollouts.backend import RolloutBackend
from cloud_hub.rollouts.controller import (
    Complete,
    DeviceStatus,
    Halt,
    PassWave,
    RolloutState,
    StartWave,
    WaveState,
)
from cloud_hub.rollouts.gates import breaches
from cloud_hub.settings import load_settings

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
PREFIX = "edgeloop/v1"

database_url = hub_db.database_url_fixture("rollouts")
clock = hub_db.clock_fixture()
registry = hub_db.registry_fixture()


# -- the plan ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "canary", "waves", "sizes"),
    [
        (10, 10, (25, 50, 100), [1, 2, 2, 5]),
        (100, 10, (25, 50, 100), [10, 15, 25, 50]),
        (1, 10, (25, 50, 100), [1]),  # one device: only the canary
        (3, 10, (25, 50, 100), [1, 1, 1]),  # at least one new device per step
        (4, 0, (50, 100), [2, 2]),  # no canary
        (7, 50, (100,), [4, 3]),
        (2, 1, (1, 2, 100), [1, 1]),  # steps left without devices are dropped
    ],
)
def test_plan_splits_devices_into_canary_and_waves(
    devices: int, canary: float, waves: tuple[float, ...], sizes: list[int]
) -> None:
    ids = [f"dev-{i:012x}" for i in range(devices)]
    steps = plan_steps(ids, canary_pct=canary, waves_pct=waves)
    assert [len(s.device_ids) for s in steps] == sizes
    assert sorted(d for s in steps for d in s.device_ids) == sorted(ids)
    assert steps[0].name == ("canary" if canary else "wave 1")
    shuffled = random.Random(1).sample(ids, len(ids))
    assert plan_steps(shuffled, canary_pct=canary, waves_pct=waves) == steps


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("50,25,100", "must increase"),
        ("25,50", "must be 100%"),
        ("25,,100", "comma-separated"),
        ("ten,100", "not a percentage"),
        ("0,100", "above 0%"),
    ],
)
def test_bad_waves_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_waves(text)


def test_percentages_parse_with_or_without_the_sign() -> None:
    assert parse_percent("10%") == parse_percent("10") == 10.0
    assert parse_waves("25%, 50%, 100%") == (25.0, 50.0, 100.0)
    with pytest.raises(InvalidRequest, match="--canary '120%' must be from 0% to 100%"):
        parse_percent("120%", what="--canary")
    with pytest.raises(InvalidRequest, match="at least one device"):
        plan_steps([], canary_pct=10, waves_pct=(100,))


# -- gates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown", "wire"),
    [
        ("p99_ms<=50", "p99_ms<=50", {"metric": "latency_p99_ms", "max_value": 50.0}),
        (" error_rate <= 0.01 ", "error_rate<=0.01", {"metric": "error_rate", "max_value": 0.01}),
        ("p95_ms<=20.5", "p95_ms<=20.5", {"metric": "latency_p95_ms", "max_value": 20.5}),
        ("cpu_pct<=90", "cpu_pct<=90", {"metric": "cpu_pct", "max_value": 90.0}),
        ("temp_c<=80", "temp_c<=80", {"metric": "temp_c", "max_value": 80.0}),
        ("confidence>=0.6", "confidence>=0.6", {"metric": "mean_confidence", "min_value": 0.6}),
    ],
)
def test_gates_parse(text: str, shown: str, wire: dict[str, Any]) -> None:
    gate = parse_gate(text)
    assert str(gate) == shown
    assert gate.wire() == wire


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99_ms<<50", "gate 'p99_ms<<50' is not METRIC<=NUMBER"),
        ("latency<=5", "gate 'latency<=5': unknown metric 'latency'"),
        ("p99_ms<=fast", "gate 'p99_ms<=fast': 'fast' is not a number"),
        ("p99_ms<=inf", "gate 'p99_ms<=inf': the bound must be a finite number"),
        ("", "gate '' is not"),
    ],
)
def test_bad_gates_are_refused_naming_the_gate(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        parse_gate(text)


def rollup(device: str, minute: datetime, **values: Any) -> Rollup:
    fields: dict[str, Any] = {
        "count": 6,
        "requests": 100,
        "errors": 0,
        "offloads": 5,
        "latency_p50_ms": 2.0,
        "latency_p95_ms": 5.0,
        "latency_p99_ms": 10.0,
        "confidence_mean": 0.9,
        "cpu_pct_max": 20.0,
        "mem_pct_max": 40.0,
        "temp_c_max": 50.0,
    }
    fields.update(values)
    return Rollup(device_id=device, minute=minute, **fields)


@pytest.mark.parametrize(
    ("gate", "values", "breached"),
    [
        ("p99_ms<=50", {"latency_p99_ms": 50.0}, False),
        ("p99_ms<=50", {"latency_p99_ms": 50.1}, True),
        ("p99_ms<=50", {"latency_p99_ms": None}, False),  # no figure, no verdict
        ("error_rate<=0.01", {"errors": 1}, False),
        ("error_rate<=0.01", {"errors": 2}, True),
        ("error_rate<=0.01", {"errors": 0, "requests": 0}, False),
        ("temp_c<=70", {"temp_c_max": 71.0}, True),
        ("confidence>=0.8", {"confidence_mean": 0.7}, True),
    ],
)
def test_gates_judge_each_device_minute(gate: str, values: dict[str, Any], breached: bool) -> None:
    found = breaches([parse_gate(gate)], [rollup("dev-a", T0, **values)])
    assert bool(found) is breached
    if breached:
        assert f"gate {gate} breached on dev-a" in str(found[0])


# -- decisions ---------------------------------------------------------------------------

SOAK = timedelta(minutes=10)


def state(
    *started: datetime | None,
    passed: int = 0,
    status: str = "running",
    tolerance: float = 0.0,
) -> RolloutState:
    """Three steps: canary [a], wave 1 [b, c], wave 2 [d, e, f, g]."""
    devices = (("a",), ("b", "c"), ("d", "e", "f", "g"))
    names = ("canary", "wave 1", "wave 2")
    waves = tuple(
        WaveState(
            i,
            names[i],
            devices[i],
            started[i] if i < len(started) else None,
            T0 if i < passed else None,
        )
        for i in range(3)
    )
    return RolloutState(
        "ro-1",
        status,
        (parse_gate("p99_ms<=50"), parse_gate("error_rate<=0.01")),
        SOAK,
        waves,
        tolerance,
    )


def installed(*devices: str, at: datetime = T0) -> dict[str, DeviceStatus]:
    return {d: DeviceStatus(d, "installed", at) for d in devices}


def healthy(*devices: str, minutes: int = 11) -> dict[str, list[Rollup]]:
    return {d: [rollup(d, T0 + timedelta(minutes=m)) for m in range(minutes)] for d in devices}


LATER = T0 + SOAK + timedelta(minutes=1)


@pytest.mark.parametrize(
    ("rollout", "now", "statuses", "rollups", "actions", "waiting"),
    [
        # the canary goes first
        (state(), T0, {}, {}, [StartWave(0)], None),
        # nobody installed yet
        (state(T0), LATER, {}, {}, [], "1 of 1 devices to install"),
        # installed, but the soak is not over
        (state(T0), T0 + timedelta(minutes=5), installed("a"), healthy("a"), [], "soaks until"),
        # soaked with passing gates: the canary passes and wave 1 starts
        (state(T0), LATER, installed("a"), healthy("a"), [PassWave(0), StartWave(1)], None),
        # soaked, but no telemetry since the install: wait for it
        (state(T0), LATER, installed("a"), {}, [], "telemetry since the install from a"),
        # half of wave 1 installed
        (state(T0, T0, passed=1), LATER, installed("b"), healthy("b"), [], "1 of 2 devices"),
        # the last wave passes: complete
        (
            state(T0, T0, T0, passed=2),
            LATER,
            installed(*"defg"),
            healthy(*"defg"),
            [PassWave(2), Complete()],
            None,
        ),
        # paused, halted, aborted: nothing happens
        (state(T0, status="paused"), LATER, installed("a"), healthy("a"), [], "paused"),
        (state(T0, status="aborted"), LATER, {}, {}, [], "aborted"),
    ],
)
def test_decide(
    rollout: RolloutState,
    now: datetime,
    statuses: dict[str, DeviceStatus],
    rollups: dict[str, list[Rollup]],
    actions: list[Any],
    waiting: str | None,
) -> None:
    decision = decide(rollout, now, statuses, rollups)
    assert list(decision.actions) == actions
    if waiting is None:
        assert decision.waiting is None
    else:
        assert decision.waiting is not None and waiting in decision.waiting


def test_a_gate_breach_halts_before_the_soak_is_over() -> None:
    rollups = healthy("b", "c", minutes=3)
    rollups["c"][2] = rollup("c", T0 + timedelta(minutes=2), latency_p99_ms=80.0)
    decision = decide(
        state(T0, T0, passed=1), T0 + timedelta(minutes=3), installed("b", "c"), rollups
    )
    (halt,) = decision.actions
    assert isinstance(halt, Halt) and halt.index == 1
    assert "gate p99_ms<=50 breached on c" in halt.reason and "80" in halt.reason


def test_telemetry_from_before_the_install_minute_does_not_count() -> None:
    bad_before = {"a": [rollup("a", T0 - timedelta(minutes=1), latency_p99_ms=500.0)]}
    bad_before["a"] += healthy("a")["a"]
    decision = decide(state(T0), LATER, installed("a"), bad_before)
    assert list(decision.actions) == [PassWave(0), StartWave(1)]


def test_failures_halt_beyond_the_tolerance_only() -> None:
    failed = {
        **installed("d", "e", "f"),
        "g": DeviceStatus("g", "failed", None, "health check: outputs off by 0.4"),
    }
    strict = decide(state(T0, T0, T0, passed=2), LATER, failed, healthy(*"def"))
    (halt,) = strict.actions
    assert isinstance(halt, Halt) and halt.index == 2
    assert "1 of 4 devices in wave 2 failed (at most 0 may)" in halt.reason
    assert "g failed: health check: outputs off by 0.4" in halt.reason
    tolerant = decide(state(T0, T0, T0, passed=2, tolerance=0.25), LATER, failed, healthy(*"def"))
    assert list(tolerant.actions) == [PassWave(2), Complete()]
    rolled_back = {"a": DeviceStatus("a", "rolled_back", None, "p95 over budget on device")}
    (halt,) = decide(state(T0), LATER, rolled_back, {}).actions
    assert isinstance(halt, Halt) and "a rolled back: p95 over budget" in halt.reason


# -- the controller and the OTA backend on a real database --------------------------------


class RecordingNotifier:
    """The controller's notifier seam: records who was told to check in."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.connected = True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def send(self, fleet: str, device_id: str) -> bool:
        if self.connected:
            self.sent.append((fleet, device_id))
        return self.connected

    def take(self) -> set[str]:
        devices = {device for _, device in self.sent}
        self.sent.clear()
        return devices


class Fleet:
    """A fleet of enrolled devices running digits-edge 1.0.0, and 1.1.0 registered."""

    def __init__(self, registry: Registry, clock: hub_db.FakeClock, tmp_path: Path, n: int):
        self.registry, self.clock = registry, clock
        registry.create_fleet("lab")
        token = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=n)
        self.ids = []
        for i in range(n):
            device = registry.redeem_enrollment_token(
                token.token, public_key_pem=None, hostname=f"pi-{i}"
            ).device
            registry.update_device_state(device.id, model_name="digits-edge", model_version="1.0.0")
            self.ids.append(device.id)
        for version in ("1.0.0", "1.1.0"):
            artifact = tmp_path / f"digits-edge-{version}.onnx"
            artifact.write_bytes(f"model {version}".encode())
            registry.register_model("digits-edge", version, "onnx-int8", artifact)
        self.seq = 0

    def device(self, device_id: str) -> Device:
        return self.registry.device(device_id)

    def telemetry(self, device_id: str, at: datetime, *, p99_ms: float = 10.0) -> None:
        """One telemetry message through ingest's parser and writer, as the hub stores it."""
        self.seq += 1
        body = {
            "schema": 1,
            "kind": "telemetry",
            "device": device_id,
            "fleet": "lab",
            "boot_id": "boot-1",
            "seq": self.seq,
            "ts": at.timestamp(),
            "historical": False,
            "interval_s": 10.0,
            "window_start": at.timestamp() - 10,
            "window_end": at.timestamp(),
            "requests": 50,
            "errors": 0,
            "throughput_rps": 5.0,
            "latency_ms": {"p50": 2.0, "p95": p99_ms / 2, "p99": p99_ms},
            "confidence": {"mean": 0.9},
            "inputs": {},
            "offload": {"attempted": 1},
            "system": {"cpu_pct": 20.0, "mem_pct": 40.0, "temps_c": {"cpu": 50.0}},
            "model": {"name": "digits-edge", "version": "1.1.0"},
            "spool": {"dropped": 0, "backlog": 0},
        }
        topic = f"{PREFIX}/lab/{device_id}/telemetry"
        message = parse(topic, json.dumps(body).encode(), PREFIX)
        with self.registry.db.transaction() as session:
            assert write_batch(session, [message], now=self.clock()).stored == 1


def check_in(backend: RolloutBackend, fleet: Fleet, device_id: str, runs: str = "1.0.0") -> Any:
    state = DeviceState(
        device_id=device_id,
        boot_id="boot-1",
        model_name="digits-edge",
        model_version=runs,
        model_format="onnx-int8",
        slot="a",
        profile="x86-64-cpu",
        free_disk_bytes=10**10,
        agent_version="0.1.0",
        last_status=None,
    )
    return backend.check_in(fleet.device(device_id), state).assignment


def report(
    backend: RolloutBackend,
    fleet: Fleet,
    device_id: str,
    rollout_id: str,
    phase: str,
    *,
    version: str = "1.1.0",
    reason: str = "",
) -> tuple[bool, bool]:
    status = StatusInfo(
        device_id=device_id,
        rollout_id=rollout_id,
        phase=phase,
        percent=100 if phase == "installed" else 40,
        reason=reason,
        model_name="digits-edge",
        model_version=version,
        timestamp_ms=int(fleet.clock().timestamp() * 1000),
    )
    return backend.report(fleet.device(device_id), status)


@pytest.fixture
def fleet(registry: Registry, clock: hub_db.FakeClock, tmp_path: Path) -> Fleet:
    return Fleet(registry, clock, tmp_path, 4)


def install_and_soak(
    backend: RolloutBackend, fleet: Fleet, devices: list[str], rollout_id: str, p99_ms: float
) -> None:
    """The devices install 1.1.0 and send 11 minutes of telemetry as the clock moves."""
    for device_id in devices:
        assert report(backend, fleet, device_id, rollout_id, "downloading") == (True, False)
        assert report(backend, fleet, device_id, rollout_id, "installed") == (True, False)
    for _ in range(11):
        fleet.clock.advance(timedelta(minutes=1))
        for device_id in devices:
            fleet.telemetry(device_id, fleet.clock(), p99_ms=p99_ms)


def push(fleet: Fleet, **options: Any) -> Any:
    return Rollouts(fleet.registry).push(
        "digits-edge",
        "1.1.0",
        fleet="lab",
        canary_pct=25,
        waves_pct=(50, 100),
        soak=timedelta(minutes=10),
        gates=["p99_ms<=50", "error_rate<=0.01"],
        **options,
    )


def test_canary_then_waves_advance_after_soak_with_passing_gates(fleet: Fleet) -> None:
    notifier = RecordingNotifier()
    controller = RolloutController(fleet.registry, notifier=notifier)
    backend = RolloutBackend(fleet.registry)
    rollout = push(fleet)
    assert [len(w.device_ids) for w in rollout.waves] == [1, 1, 2]
    canary = rollout.waves[0].device_ids
    assert all(check_in(backend, fleet, d) is None for d in fleet.ids)  # not started yet

    controller.tick()
    assert notifier.take() == set(canary)
    assignment = check_in(backend, fleet, canary[0])
    assert assignment.rollout_id == rollout.id
    assert (assignment.model_version, assignment.model_format) == ("1.1.0", "onnx-int8")
    assert assignment.target_path == "models/digits-edge/1.1.0/digits-edge-1.1.0.onnx"
    assert assignment.probation_seconds == 600
    assert [(g.metric, g.max_value) for g in assignment.gates] == [
        ("latency_p99_ms", 50.0),
        ("error_rate", 0.01),
    ]
    others = [d for d in fleet.ids if d not in canary]
    assert all(check_in(backend, fleet, d) is None for d in others)
    assert backend.may_fetch(fleet.device(canary[0]), assignment.target_path)
    assert not backend.may_fetch(fleet.device(others[0]), assignment.target_path)

    install_and_soak(backend, fleet, canary, rollout.id, p99_ms=10.0)
    controller.tick()
    after = Rollouts(fleet.registry).get(rollout.id)
    assert after.waves[0].passed_at is not None and after.waves[1].started_at is not None
    assert notifier.take() == set(after.waves[1].device_ids)

    install_and_soak(backend, fleet, after.waves[1].device_ids, rollout.id, p99_ms=10.0)
    controller.tick()
    install_and_soak(backend, fleet, after.waves[2].device_ids, rollout.id, p99_ms=10.0)
    controller.tick()
    done = Rollouts(fleet.registry).get(rollout.id)
    assert done.state == "completed" and done.finished_at is not None
    assert done.phases() == {"installed": 4}


def test_a_canary_breaching_a_gate_halts_and_is_rolled_back(fleet: Fleet) -> None:
    notifier = RecordingNotifier()
    controller = RolloutController(fleet.registry, notifier=notifier)
    backend = RolloutBackend(fleet.registry)
    rollout = push(fleet)
    controller.tick()
    canary = notifier.take()
    (device_id,) = canary
    install_and_soak(backend, fleet, [device_id], rollout.id, p99_ms=80.0)
    controller.tick()

    halted = Rollouts(fleet.registry).get(rollout.id)
    assert halted.state == "halted"
    assert halted.reason is not None and f"gate p99_ms<=50 breached on {device_id}" in halted.reason
    assert halted.waves[0].rolled_back_at is not None and halted.waves[1].started_at is None
    assert notifier.take() == {device_id}  # told to check in: its assignment changed
    back = check_in(backend, fleet, device_id, runs="1.1.0")
    assert (back.model_version, back.probation_seconds, back.gates) == ("1.0.0", 0, ())
    assert back.target_path == "models/digits-edge/1.0.0/digits-edge-1.0.0.onnx"
    assert backend.may_fetch(fleet.device(device_id), back.target_path)
    # a report about the new model is answered with abort; the rollback itself is not
    assert report(backend, fleet, device_id, rollout.id, "installed") == (True, True)
    assert report(backend, fleet, device_id, rollout.id, "installed", version="1.0.0") == (
        True,
        False,
    )
    others = [d for d in fleet.ids if d != device_id]
    assert all(check_in(backend, fleet, d) is None for d in others)
    controller.tick()  # a halted rollout stays halted
    assert Rollouts(fleet.registry).get(rollout.id).state == "halted"


def test_a_failed_install_halts_the_rollout(fleet: Fleet) -> None:
    controller = RolloutController(fleet.registry, notifier=RecordingNotifier())
    backend = RolloutBackend(fleet.registry)
    rollout = push(fleet)
    controller.tick()
    canary = Rollouts(fleet.registry).get(rollout.id).waves[0].device_ids[0]
    why = "health check: probabilities off by 0.31 (atol 0.05)"
    assert report(backend, fleet, canary, rollout.id, "failed", reason=why) == (True, False)
    controller.tick()
    halted = Rollouts(fleet.registry).get(rollout.id)
    assert halted.state == "halted" and why in (halted.reason or "")


def test_pause_mid_download_aborts_it_and_resume_carries_on(fleet: Fleet) -> None:
    notifier = RecordingNotifier()
    controller = RolloutController(fleet.registry, notifier=notifier)
    backend = RolloutBackend(fleet.registry)
    rollouts = Rollouts(fleet.registry)
    rollout = push(fleet)
    controller.tick()
    (canary,) = notifier.take()
    assert report(backend, fleet, canary, rollout.id, "downloading") == (True, False)

    assert rollouts.pause(rollout.id).state == "paused"
    assert report(backend, fleet, canary, rollout.id, "downloading") == (True, True)
    assert check_in(backend, fleet, canary) is None
    dropped = rollouts.get(rollout.id).devices
    assert {d.device_id: d.phase for d in dropped}[canary] == "pending"
    fleet.clock.advance(timedelta(hours=1))
    controller.tick()  # nothing moves while paused
    assert rollouts.get(rollout.id).waves[1].started_at is None
    with pytest.raises(Conflict, match=r"cannot pause rollout .* it is paused"):
        rollouts.pause(rollout.id)

    assert rollouts.resume(rollout.id).state == "running"
    controller.tick()
    assert notifier.take() == {canary}  # told to check in again
    assert check_in(backend, fleet, canary).model_version == "1.1.0"
    install_and_soak(backend, fleet, [canary], rollout.id, p99_ms=10.0)
    controller.tick()
    assert rollouts.get(rollout.id).waves[1].started_at is not None


def test_abort_ends_the_rollout_for_good(fleet: Fleet) -> None:
    controller = RolloutController(fleet.registry, notifier=RecordingNotifier())
    backend = RolloutBackend(fleet.registry)
    rollouts = Rollouts(fleet.registry)
    rollout = push(fleet)
    controller.tick()
    canary = rollouts.get(rollout.id).waves[0].device_ids[0]
    report(backend, fleet, canary, rollout.id, "verifying")
    aborted = rollouts.abort(rollout.id, reason="wrong model")
    assert (aborted.state, aborted.reason) == ("aborted", "wrong model")
    assert report(backend, fleet, canary, rollout.id, "staged") == (True, True)
    assert check_in(backend, fleet, canary) is None
    with pytest.raises(Conflict, match="it is aborted"):
        rollouts.resume(rollout.id)
    # the devices are free for the next rollout
    assert push(fleet).state == "running"


def test_a_device_in_an_unfinished_rollout_cannot_join_another(fleet: Fleet) -> None:
    push(fleet, devices=fleet.ids[:2])
    with pytest.raises(Conflict, match=f"{fleet.ids[1]} \\(ro-"):
        push(fleet, devices=fleet.ids[1:])


def test_a_device_already_running_the_target_counts_as_installed(fleet: Fleet) -> None:
    notifier = RecordingNotifier()
    controller = RolloutController(fleet.registry, notifier=notifier)
    backend = RolloutBackend(fleet.registry)
    rollout = push(fleet)
    controller.tick()
    (canary,) = notifier.take()
    assert check_in(backend, fleet, canary, runs="1.1.0") is not None
    assert {d.device_id: d.phase for d in Rollouts(fleet.registry).get(rollout.id).devices}[
        canary
    ] == "installed"


def test_unreachable_broker_keeps_the_check_in_command_for_later(fleet: Fleet) -> None:
    notifier = RecordingNotifier()
    notifier.connected = False
    controller = RolloutController(fleet.registry, notifier=notifier)
    push(fleet)
    controller.tick()
    assert notifier.sent == []
    notifier.connected = True
    controller.tick()
    assert len(notifier.take()) == 1


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"version": "9.9.9"}, NotFound, "model digits-edge has no version 9.9.9"),
        ({"format": "tflite-int8"}, NotFound, r"1.1.0 \(tflite-int8\) does not exist"),
        ({"fleet": "nowhere"}, NotFound, "fleet 'nowhere' does not exist"),
        ({"gates": ["p99<=5"]}, InvalidRequest, "unknown metric 'p99'"),
        ({"devices": ["dev-000000000000"]}, NotFound, "device 'dev-000000000000'"),
    ],
)
def test_push_refuses_what_it_cannot_do(
    fleet: Fleet, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    options: dict[str, Any] = {"fleet": "lab", "version": "1.1.0", **change}
    with pytest.raises(error, match=message):
        Rollouts(fleet.registry).push(
            "digits-edge",
            options.pop("version"),
            fleet=options.pop("fleet"),
            **options,
        )


def test_a_restarted_hub_carries_on_the_rollout(
    fleet: Fleet, database_url: str, tmp_path: Path
) -> None:
    notifier = RecordingNotifier()
    backend = RolloutBackend(fleet.registry)
    rollout = push(fleet)
    RolloutController(fleet.registry, notifier=notifier).tick()
    (canary,) = notifier.take()
    assert report(backend, fleet, canary, rollout.id, "installed") == (True, False)
    fleet.clock.advance(timedelta(minutes=4))
    fleet.telemetry(canary, fleet.clock())

    # a new hub: new registry, controller and backend over the same database
    settings = load_settings(data_dir=tmp_path / "hub2", database_url=database_url)
    with Registry.open(settings, clock=fleet.clock) as reopened:
        again = RolloutController(reopened, notifier=notifier)
        assert again.tick()[rollout.id].waiting is not None  # still soaking
        assert notifier.sent == []  # nothing is sent twice
        fleet.clock.advance(timedelta(minutes=7))
        fleet.telemetry(canary, fleet.clock())
        again.tick()
        after = Rollouts(reopened).get(rollout.id)
        assert after.waves[0].passed_at is not None and after.waves[1].started_at is not None
        assert notifier.take() == set(after.waves[1].device_ids)
        assert check_in(RolloutBackend(reopened), fleet, after.waves[1].device_ids[0])


def test_the_controller_thread_starts_and_stops(fleet: Fleet) -> None:
    notifier = RecordingNotifier()
    controller = RolloutController(fleet.registry, notifier=notifier, tick_s=0.05)
    push(fleet)
    controller.start()
    try:
        deadline = datetime.now(timezone.utc) + timedelta(seconds=60)
        while not notifier.sent and datetime.now(timezone.utc) < deadline:
            controller._stop.wait(0.05)
    finally:
        assert controller.stop(timeout=30)
    assert len(notifier.sent) == 1


# -- the command line --------------------------------------------------------------------


def hub(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_HUB_")}
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**clean, "PYTHONWARNINGS": "ignore"},
    )


@pytest.fixture(scope="module")
def cli_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("rollout-cli")
    with Registry.open(load_settings(data_dir=data_dir)) as opened:
        Fleet(opened, hub_db.FakeClock(), data_dir, 5)
        opened.create_fleet("empty")
    yield data_dir


def test_push_status_pause_resume_abort_from_the_command_line(cli_hub: Path) -> None:
    pushed = hub(
        cli_hub,
        "push",
        "digits-edge:1.1.0",
        "--fleet",
        "lab",
        "--canary",
        "20%",
        "--waves",
        "50,100",
        "--soak",
        "5m",
        "--gate",
        "p99_ms<=50",
        "--gate",
        "error_rate<=0.01",
    )
    assert pushed.returncode == 0, pushed.stderr
    lines = pushed.stdout.splitlines()
    rollout_id = lines[-1]
    assert rollout_id.startswith("ro-")
    assert "to 5 devices of fleet lab" in lines[0]
    assert any(line.split()[:2] == ["canary", "1"] for line in lines)
    assert "gates: p99_ms<=50, error_rate<=0.01; soak 5m" in pushed.stdout

    status = hub(cli_hub, "rollout", "status", rollout_id, "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["state"], shown["gates"]) == ("running", ["p99_ms<=50", "error_rate<=0.01"])
    assert [len(w["device_ids"]) for w in shown["waves"]] == [1, 2, 2]
    table = hub(cli_hub, "rollout", "status", rollout_id)
    assert "state:  running" in table.stdout and "canary" in table.stdout

    for verb, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        done = hub(cli_hub, "rollout", verb, rollout_id)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"rollout {rollout_id} is {state}"
    again = hub(cli_hub, "rollout", "resume", rollout_id)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"cloud-hub: error: cannot resume rollout {rollout_id}: it is aborted "
        "(only a paused rollout can be)"
    )
    listed = json.loads(hub(cli_hub, "rollout", "list", "--json").stdout)
    assert (rollout_id, "aborted") in [(r["id"], r["state"]) for r in listed]
    assert rollout_id in hub(cli_hub, "rollout", "list").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("digits-edge:2.0.0", "--fleet", "lab"),
            "model digits-edge has no version 2.0.0 registered",
        ),
        (
            ("digits-edge:1.1.0", "--fleet", "lab", "--gate", "p99_ms=<50"),
            "gate 'p99_ms=<50' is not METRIC<=NUMBER or METRIC>=NUMBER",
        ),
        (("digits-edge:1.1.0", "--fleet", "empty"), "fleet 'empty' has no devices to update"),
        (("digits-edge", "--fleet", "lab"), "'digits-edge' is not MODEL:VERSION"),
        (("digits-edge:1.1.0", "--fleet", "lab", "--soak", "soon"), "--soak: 'soon' is not"),
        (("digits-edge:1.1.0", "--fleet", "lab", "--waves", "50"), "must be 100%"),
    ],
)
def test_push_errors_are_one_line(cli_hub: Path, args: tuple[str, ...], message: str) -> None:
    done = hub(cli_hub, "push", *args)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("cloud-hub: error: ") and message in line, line


def test_push_watch_follows_the_rollout_until_it_ends(cli_hub: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_HUB_")}
    command = [sys.executable, "-m", "cloud_hub.cli", "push", "digits-edge:1.1.0"]
    command += ["--fleet", "lab", "--watch", "--watch-interval", "0.2"]
    watch = subprocess.Popen(
        [*command, "--data-dir", str(cli_hub)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert watch.stdout is not None
        lines = []
        for line in watch.stdout:
            lines.append(line)
            if line.startswith("ro-"):
                break
        rollout_id = lines[-1].strip() if lines else ""
        assert rollout_id.startswith("ro-"), "".join(lines)
        assert hub(cli_hub, "rollout", "abort", rollout_id).returncode == 0
        out, err = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 1, err
    # (the abort may land before the first poll, so a "running" line is not promised)
    assert out.splitlines()[-1].endswith(
        "aborted at canary (1/4); 5 pending: aborted by the operator"
    )


def test_unknown_rollout_is_one_line(cli_hub: Path) -> None:
    done = hub(cli_hub, "rollout", "status", "ro-0000000000")
    assert done.returncode == 1
    assert done.stderr.strip() == "cloud-hub: error: rollout 'ro-0000000000' does not exist"
