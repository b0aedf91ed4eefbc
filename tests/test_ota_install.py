"""The agent's OTA install: A/B slots, verify before load, health check, switch, rollback.

Real models (the reference digits models), a real :class:`ModelService` behind a real
:class:`LocalInferenceServer` answering a client thread during the switch, real files and
real processes killed with SIGKILL. Fakes only at the seams the installer owns: a
downloader that copies a local file (and can cut, or kill its own process, mid-way), a
verifier that checks length and sha256 against a dict, and a reporter that collects.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.engine import Engine
from edge_agent.errors import IntegrityError, TransportError
from edge_agent.ota import client
from edge_agent.ota.health import Gate, HealthSpec, check_health, gate_breach
from edge_agent.ota.installer import Assignment, Installer, Outcome, StatusUpdate
from edge_agent.ota.slots import CurrentModel, Phase, Slots, recover
from edge_agent.server import LocalInferenceServer, ModelService
from edge_agent.telemetry.aggregate import Recorder
from edge_agent.wire import ota_pb2

PROFILE = "x86-64-cpu"
NAME = "digits"
TIMEOUT_S = 120.0
FP32 = "digits-edge/digits-edge-fp32.onnx"
INT8 = "digits-edge/digits-edge-int8.onnx"
CLOUD = "digits-cloud/digits-cloud-fp32.onnx"
TESTS = Path(__file__).resolve().parent


# -- fakes at our own seams ------------------------------------------------------------------


@dataclass(frozen=True)
class FakeTarget:
    path: str
    length: int
    sha256: str
    custom: Mapping[str, Any]


@dataclass
class CopyDownloader:
    """Copies ``files[path]`` into ``dest`` from the bytes ``dest`` already holds."""

    files: dict[str, Path]
    cut_at: int | None = None  # raise TransportError once this many bytes are in dest
    kill_at: int | None = None  # SIGKILL this process once this many bytes are in dest
    starts: list[int] = field(default_factory=list)

    def download_to(
        self,
        path: str,
        dest: Path,
        *,
        expected_length: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        data = self.files[path].read_bytes()[:expected_length]
        offset = dest.stat().st_size if dest.exists() else 0
        self.starts.append(offset)
        with dest.open("ab") as out:
            while offset < len(data):
                stop = min(offset + 4096, len(data))
                for limit in (self.cut_at, self.kill_at):
                    if limit is not None and offset < limit <= stop:
                        stop = limit
                out.write(data[offset:stop])
                out.flush()
                offset = stop
                if progress is not None:
                    progress(offset, len(data))
                if offset == self.kill_at:
                    os.fsync(out.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
                if offset == self.cut_at:
                    self.cut_at = None
                    raise TransportError(f"{path}: stream cut at byte {offset}")


@dataclass
class DictVerifier:
    """Length and sha256 of each target path, as signed metadata would give them."""

    expected: dict[str, tuple[int, str]]

    def verify_file(self, target: Any, path: Path) -> None:
        length, digest = self.expected[target.path]
        data = path.read_bytes()
        if len(data) != length:
            raise IntegrityError(f"{target.path}: {len(data)} bytes, expected {length}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{target.path}: sha256 mismatch")


@dataclass
class Reports:
    updates: list[StatusUpdate] = field(default_factory=list)
    abort: bool = False

    def __call__(self, update: StatusUpdate) -> bool:
        self.updates.append(update)
        return self.abort

    def phases(self) -> list[Phase]:
        return [u.phase for u in self.updates]

    def last(self) -> StatusUpdate:
        return self.updates[-1]


@dataclass
class Loader:
    """Engine.load for the test profile, remembering what it loaded."""

    engines: list[Engine] = field(default_factory=list)

    def __call__(self, path: Path) -> Engine:
        engine = Engine.load(path, profile=PROFILE)
        self.engines.append(engine)
        return engine


# -- fixtures -------------------------------------------------------------------------------


@dataclass
class Release:
    """One installable version: the artifact, its signed facts and its golden outputs."""

    version: str
    file: Path
    target: FakeTarget

    def assignment(self, gates: tuple[Gate, ...] = (), probation: float = 0.0) -> Assignment:
        return Assignment(
            rollout_id=f"r-{self.version}",
            model="digits-edge",
            version=self.version,
            format="onnx",
            target_path=self.target.path,
            probation_seconds=probation,
            gates=gates,
        )


def _health(model: Path, x: np.ndarray, shift: float = 0.0) -> dict[str, Any]:
    with Engine.load(model, profile=PROFILE) as engine:
        expected = engine.run({"image": x})["probabilities"] + shift
    return {
        "inputs": {
            "image": {"shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        },
        "outputs": {
            "probabilities": {
                "shape": list(expected.shape),
                "datatype": "FP32",
                "data": expected.ravel().tolist(),
            }
        },
        "atol": 0.05,
        "latency_budget_ms": 5000.0,  # generous: this checks the plumbing, not the machine
    }


def _release(
    reference_dir: Path, repo: Path, version: str, model: str, health_model: str, shift: float = 0
) -> Release:
    x = np.load(reference_dir / "data" / "digits-heldout.npz")["x"][:8].astype(np.float32)
    source = reference_dir / model
    file = repo / version / source.name
    file.parent.mkdir(parents=True)
    shutil.copyfile(source, file)
    data = file.read_bytes()
    custom = {
        "edgeloop": {
            "model": "digits-edge",
            "version": version,
            "format": "onnx",
            "profiles": [PROFILE, "raspberry-pi-4"],
            "health": _health(reference_dir / health_model, x, shift),
        }
    }
    target = FakeTarget(
        f"models/digits-edge/{version}/{source.name}",
        len(data),
        hashlib.sha256(data).hexdigest(),
        custom,
    )
    return Release(version, file, target)


@pytest.fixture(scope="module")
def releases(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Release]:
    repo = tmp_path_factory.mktemp("repo")
    return {
        "1.1.0": _release(reference_dir, repo, "1.1.0", INT8, INT8),
        "1.2.0": _release(reference_dir, repo, "1.2.0", FP32, FP32),
        # loads and runs, but its outputs are not the golden ones: a bad model
        "6.6.6": _release(reference_dir, repo, "6.6.6", CLOUD, CLOUD, shift=0.5),
    }


def _baseline(reference_dir: Path) -> CurrentModel:
    path = reference_dir / FP32
    return CurrentModel(slot=None, model="digits-edge", version="1.0.0", format="onnx",
                        file=str(path))  # fmt: skip


@dataclass
class Rig:
    """A serving agent's OTA parts: service, server, installer and its fakes."""

    state_dir: Path
    service: ModelService
    server: LocalInferenceServer
    installer: Installer
    downloader: CopyDownloader
    verifier: DictVerifier
    reports: Reports
    loader: Loader
    clock: list[float]

    def serving(self) -> str:
        return _infer(self.server.port)["model_version"]


def _make_rig(
    reference_dir: Path,
    releases: dict[str, Release],
    state_dir: Path,
    service: ModelService,
    server: LocalInferenceServer,
    **options: Any,
) -> Rig:
    files = {r.target.path: r.file for r in releases.values()}
    expected = {r.target.path: (r.target.length, r.target.sha256) for r in releases.values()}
    downloader, verifier = CopyDownloader(files), DictVerifier(expected)
    reports, loader, clock = Reports(), Loader(), [1_000_000.0]
    installer = Installer(
        state_dir,
        service,
        loader,
        downloader,
        verifier,
        reports,
        PROFILE,
        clock=lambda: clock[0],
        baseline=_baseline(reference_dir),
        health_runs=3,
        **options,
    )
    return Rig(state_dir, service, server, installer, downloader, verifier, reports, loader, clock)


@pytest.fixture()
def rig_factory(
    reference_dir: Path, releases: dict[str, Release], tmp_path: Path
) -> Iterator[Callable[..., Rig]]:
    started: list[tuple[LocalInferenceServer, ModelService]] = []

    def make(**options: Any) -> Rig:
        engine = Engine.load(reference_dir / FP32, profile=PROFILE)
        service = ModelService(engine, NAME, "1.0.0")
        server = LocalInferenceServer(service, port=0)
        server.start()
        started.append((server, service))
        state_dir = tmp_path / "state"
        state_dir.mkdir(mode=0o700, exist_ok=True)
        return _make_rig(reference_dir, releases, state_dir, service, server, **options)

    yield make
    for server, service in started:
        server.stop(5.0)
        engine = service.engine
        if isinstance(engine, Engine):
            engine.close()


@pytest.fixture()
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    return rig_factory()


def _infer(port: int) -> dict[str, Any]:
    body = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.5] * 64}
            ]
        }
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        connection.request("POST", f"/v2/models/{NAME}/infer", body,
                           {"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise AssertionError(f"HTTP {response.status}: {payload[:300]!r}")
        return dict(json.loads(payload))
    finally:
        connection.close()


@dataclass
class Traffic:
    """A client thread sending requests until stopped; counts answers and failures."""

    port: int
    versions: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = _infer(self.port)["model_version"]
                self.versions[version] = self.versions.get(version, 0) + 1
            except Exception as exc:
                self.failures.append(repr(exc))


# -- install and switch ---------------------------------------------------------------------


def test_install_switches_with_zero_failed_requests(
    rig: Rig, releases: dict[str, Release], reference_dir: Path
) -> None:
    release = releases["1.1.0"]
    with Traffic(rig.server.port) as traffic:
        _wait_until(lambda: traffic.versions.get("1.0.0", 0) >= 5)
        old = rig.service.engine
        outcome = rig.installer.install(release.assignment(), release.target)
        _wait_until(lambda: traffic.versions.get("1.1.0", 0) >= 5)

    assert outcome == Outcome(Phase.INSTALLED, "installed", "1.1.0")
    assert traffic.failures == []
    assert rig.serving() == "1.1.0"
    assert isinstance(old, Engine) and old.backend._closed  # released, then closed
    phases = rig.reports.phases()
    assert phases[0] is Phase.DOWNLOADING and phases[-1] is Phase.INSTALLED
    assert [p for p in phases if p is not Phase.DOWNLOADING] == [
        Phase.VERIFYING,
        Phase.STAGED,
        Phase.HEALTH_CHECK,
        Phase.INSTALLED,
    ]
    assert max(u.percent for u in rig.reports.updates if u.phase is Phase.DOWNLOADING) == 100
    current = Slots(rig.state_dir).current()
    assert current is not None and (current.slot, current.version) == ("a", "1.1.0")
    assert current.previous == _baseline(reference_dir)
    assert (rig.state_dir / "models" / "a" / release.file.name).read_bytes() == (
        release.file.read_bytes()
    )
    assert recover(rig.state_dir) == current


def test_second_install_goes_to_the_other_slot_and_rollback_returns(
    rig: Rig, releases: dict[str, Release]
) -> None:
    first, second = releases["1.1.0"], releases["1.2.0"]
    assert rig.installer.install(first.assignment(), first.target).installed
    assert rig.installer.install(second.assignment(), second.target).installed
    current = Slots(rig.state_dir).current()
    assert current is not None and (current.slot, current.version) == ("b", "1.2.0")
    assert current.previous is not None and (current.previous.slot, current.previous.version) == (
        "a",
        "1.1.0",
    )
    assert rig.serving() == "1.2.0"

    outcome = rig.installer.rollback("operator asked")
    assert outcome == Outcome(Phase.ROLLED_BACK, "operator asked", "1.1.0")
    assert rig.serving() == "1.1.0"
    assert rig.reports.last().phase is Phase.ROLLED_BACK
    back = Slots(rig.state_dir).current()
    assert back is not None and (back.slot, back.version, back.previous) == ("a", "1.1.0", None)
    assert list((rig.state_dir / "models" / "b").iterdir()) == []  # the bad one is gone
    again = rig.installer.install(first.assignment(), first.target)
    assert again.reason == "already running"


# -- failures before the switch leave the running model alone --------------------------------


def test_full_disk_fails_cleanly(
    rig_factory: Callable[..., Rig], releases: dict[str, Release]
) -> None:
    rig = rig_factory(disk_free=lambda path: releases["1.1.0"].target.length)
    release = releases["1.1.0"]
    outcome = rig.installer.install(release.assignment(), release.target)

    assert outcome.phase is Phase.FAILED
    assert "not enough disk space" in outcome.reason
    assert rig.downloader.starts == [] and rig.loader.engines == []
    assert rig.serving() == "1.0.0"
    assert rig.reports.last() == StatusUpdate(
        "r-1.1.0", "digits-edge", "1.1.0", Phase.FAILED, 100, outcome.reason,
        rig.reports.last().timestamp_ms,
    )  # fmt: skip
    assert Slots(rig.state_dir).current() is None


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_tampered_artifact_is_rejected_before_anything_parses_it(
    rig: Rig, releases: dict[str, Release], tmp_path: Path, damage: str
) -> None:
    release = releases["1.1.0"]
    data = bytearray(release.file.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x10
    bad = tmp_path / "served-by-the-attacker.onnx"
    bad.write_bytes(bytes(data))
    rig.downloader.files[release.target.path] = bad

    outcome = rig.installer.install(release.assignment(), release.target)

    assert outcome.phase is Phase.FAILED
    assert outcome.reason.startswith("verification failed:")
    assert rig.loader.engines == []  # the engine loader never saw the file
    assert Phase.HEALTH_CHECK not in rig.reports.phases()
    assert list((rig.state_dir / "models" / "a").iterdir()) == []
    assert rig.serving() == "1.0.0"


def test_cut_download_resumes_from_its_offset(rig: Rig, releases: dict[str, Release]) -> None:
    release = releases["1.1.0"]
    rig.downloader.cut_at = release.target.length // 2
    first = rig.installer.install(release.assignment(), release.target)
    assert first.phase is Phase.FAILED and "stream cut" in first.reason
    partial = rig.state_dir / "models" / "a" / (release.file.name + ".partial")
    assert partial.stat().st_size == release.target.length // 2

    second = rig.installer.install(release.assignment(), release.target)
    assert second.installed
    assert rig.downloader.starts == [0, release.target.length // 2]
    assert rig.serving() == "1.1.0"


def test_hub_abort_mid_download_drops_the_update(rig: Rig, releases: dict[str, Release]) -> None:
    release = releases["1.1.0"]
    rig.reports.abort = True
    outcome = rig.installer.install(release.assignment(), release.target)
    assert outcome == Outcome(Phase.FAILED, "aborted by the hub", "1.1.0")
    assert rig.loader.engines == []
    assert list((rig.state_dir / "models" / "a").iterdir()) == []
    assert rig.serving() == "1.0.0"


def test_failed_health_check_keeps_the_old_model(rig: Rig, releases: dict[str, Release]) -> None:
    release = releases["6.6.6"]
    with Traffic(rig.server.port) as traffic:
        outcome = rig.installer.install(release.assignment(), release.target)
        _wait_until(lambda: sum(traffic.versions.values()) >= 5)

    assert outcome.phase is Phase.FAILED
    assert "health check: output 'probabilities' is off by" in outcome.reason
    assert traffic.failures == [] and set(traffic.versions) == {"1.0.0"}
    assert rig.loader.engines[0].backend._closed  # loaded, judged, closed
    last = rig.reports.last()
    assert (last.phase, last.reason) == (Phase.FAILED, outcome.reason)
    assert Slots(rig.state_dir).current() is None
    journal = Slots(rig.state_dir).journal()
    assert journal is not None and (journal.phase, journal.reason) == (Phase.FAILED, outcome.reason)


def test_target_for_another_profile_is_refused(rig: Rig, releases: dict[str, Release]) -> None:
    release = releases["1.1.0"]
    custom = {"edgeloop": {**release.target.custom["edgeloop"], "profiles": ["jetson-nano"]}}
    target = FakeTarget(release.target.path, release.target.length, release.target.sha256, custom)
    outcome = rig.installer.install(release.assignment(), target)
    assert outcome.phase is Phase.FAILED and "jetson-nano" in outcome.reason
    assert rig.downloader.starts == []


# -- probation ------------------------------------------------------------------------------


def test_probation_breach_rolls_back_and_reports(rig: Rig, releases: dict[str, Release]) -> None:
    release = releases["1.1.0"]
    gates = (Gate("latency_p99_ms", max_value=50.0), Gate("error_rate", max_value=0.01))
    assert rig.installer.install(release.assignment(gates, probation=600), release.target).installed

    assert rig.installer.check_probation(_window([0.002] * 50)) is None  # healthy window
    with Traffic(rig.server.port) as traffic:
        _wait_until(lambda: traffic.versions.get("1.1.0", 0) >= 3)
        outcome = rig.installer.check_probation(_window([0.002] * 50 + [0.4] * 5))
        _wait_until(lambda: traffic.versions.get("1.0.0", 0) >= 3)

    assert outcome is not None and outcome.phase is Phase.ROLLED_BACK
    assert outcome.reason.startswith("probation: gate latency_p99_ms <= 50 breached")
    assert traffic.failures == []
    assert rig.serving() == "1.0.0"
    last = rig.reports.last()
    assert (last.phase, last.rollout_id, last.reason) == (Phase.ROLLED_BACK, "r-1.1.0",
                                                          outcome.reason)  # fmt: skip
    assert Slots(rig.state_dir).current() is None  # back on [model] path
    assert rig.installer.check_probation(_window([0.4] * 50)) is None  # nothing on probation


def test_probation_passes_when_its_time_is_up(rig: Rig, releases: dict[str, Release]) -> None:
    release = releases["1.1.0"]
    gates = (Gate("error_rate", max_value=0.01),)
    assert rig.installer.install(release.assignment(gates, probation=60), release.target).installed
    rig.clock[0] += 30
    assert rig.installer.check_probation(_window([0.002] * 10)) is None
    rig.clock[0] += 31
    passed = rig.installer.check_probation(_window([0.002] * 10))
    assert passed == Outcome(Phase.INSTALLED, "probation passed", "1.1.0")
    assert rig.installer.check_probation(_window([0.002] * 10, errors=10)) is None
    assert rig.serving() == "1.1.0"


def _window(latencies: list[float], errors: int = 0) -> dict[str, Any]:
    recorder = Recorder(0.0, seed=1)
    for latency in latencies:
        recorder.record(latency, True)
    for _ in range(errors):
        recorder.record(0.0, False)
    return recorder.snapshot(10.0)


@pytest.mark.parametrize(
    ("gate", "latencies", "errors", "breached"),
    [
        (Gate("latency_p99_ms", max_value=50.0), [0.01] * 100, 0, False),
        (Gate("latency_p99_ms", max_value=50.0), [0.01] * 90 + [0.2] * 10, 0, True),
        (Gate("p95_ms", max_value=50.0), [0.01] * 100, 0, False),
        (Gate("error_rate", max_value=0.05), [0.01] * 90, 10, True),
        (Gate("error_rate", max_value=0.05), [0.01] * 99, 1, False),
        (Gate("throughput_rps", min_value=100.0), [0.01] * 10, 0, True),
        (Gate("latency_p99_ms", max_value=50.0), [], 0, False),  # nothing served: no verdict
        (Gate("unknown_metric", max_value=0.0), [0.01] * 10, 0, False),
    ],
)
def test_gate_verdicts(gate: Gate, latencies: list[float], errors: int, breached: bool) -> None:
    assert (gate_breach([gate], _window(latencies, errors)) is not None) is breached


def test_gates_and_assignments_read_from_the_wire() -> None:
    message = ota_pb2.Assignment(
        rollout_id="r1",
        model_name="digits-edge",
        model_version="1.1.0",
        model_format="onnx",
        target_path="models/digits-edge/1.1.0/digits-edge-int8.onnx",
        probation_seconds=300,
        gates=[
            ota_pb2.Gate(metric="latency_p99_ms", max_value=50.0),
            ota_pb2.Gate(metric="mean_confidence", min_value=0.0),
        ],
    )
    assignment = Assignment.from_message(message)
    assert assignment.gates == (
        Gate("latency_p99_ms", 50.0, None),
        Gate("mean_confidence", None, 0.0),
    )
    assert (assignment.version, assignment.probation_seconds) == ("1.1.0", 300.0)
    from_client = client.Assignment(
        "r1", "digits-edge", "1.1.0", "onnx", message.target_path, 300,
        (client.Gate("latency_p99_ms", max_value=50.0), client.Gate("mean_confidence", None, 0.0)),
    )  # fmt: skip
    assert Assignment.from_message(from_client) == assignment
    assert client.Phase(Phase.ROLLED_BACK.value) is client.Phase.ROLLED_BACK  # same names


def test_health_check_judges_latency_and_shape(
    reference_dir: Path, releases: dict[str, Release]
) -> None:
    spec = HealthSpec.from_custom(releases["1.1.0"].target.custom)
    with Engine.load(reference_dir / INT8, profile=PROFILE) as engine:
        assert check_health(engine, spec, runs=3).ok
        slow = HealthSpec(spec.inputs, spec.outputs, spec.atol, latency_budget_ms=1e-9)
        verdict = check_health(engine, slow, runs=3)
        assert not verdict.ok and "over the budget" in verdict.reason
        wrong = {"probabilities": spec.outputs["probabilities"][:4]}
        verdict = check_health(engine, HealthSpec(spec.inputs, wrong, 0.05, 5000.0), runs=1)
        assert not verdict.ok and "shape" in verdict.reason
    with pytest.raises(ValueError, match="health"):
        HealthSpec.from_custom({"edgeloop": {}})


# -- SIGKILL at each phase, then recover() in a fresh process --------------------------------

CRASH_POINTS = [
    # (where, the version recover() must return, the journal phase after recovery)
    ("downloading", "1.1.0", Phase.FAILED),
    ("verifying", "1.1.0", Phase.FAILED),
    ("staged", "1.1.0", Phase.FAILED),
    ("health_check", "1.1.0", Phase.FAILED),
    ("switching", "1.1.0", Phase.FAILED),
    ("swapped", "1.1.0", Phase.FAILED),
    ("current_written", "1.2.0", Phase.INSTALLED),
    ("installed", "1.2.0", Phase.INSTALLED),
]


@pytest.mark.parametrize(("where", "version", "phase"), CRASH_POINTS)
def test_sigkill_at_each_phase_recovers_a_good_model(
    reference_dir: Path,
    releases: dict[str, Release],
    rig: Rig,
    where: str,
    version: str,
    phase: Phase,
) -> None:
    first = releases["1.1.0"]
    assert rig.installer.install(first.assignment(), first.target).installed  # in slot a

    release = releases["1.2.0"]  # into slot b, in a child that kills itself
    spec = {
        "state_dir": str(rig.state_dir),
        "reference_dir": str(reference_dir),
        "crash_at": where,
        "file": str(release.file),
        "target": {"path": release.target.path, "length": release.target.length,
                   "sha256": release.target.sha256, "custom": release.target.custom},
    }  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    child = subprocess.run(
        [sys.executable, "-c", "import sys, test_ota_install as t; t.crash_child(sys.argv[1])",
         json.dumps(spec)],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]

    recovered = _recover_in_a_new_process(rig.state_dir)
    assert recovered["version"] == version
    with Engine.load(Path(recovered["path"]), profile=PROFILE) as engine:  # a good model
        assert engine.run(engine.example_inputs())["probabilities"].shape == (1, 10)
    journal = Slots(rig.state_dir).journal()
    assert journal is not None and (journal.version, journal.phase) == ("1.2.0", phase)
    if phase is Phase.FAILED:
        assert f"restarted during {where if where != 'swapped' else 'switching'}" in journal.reason
        slot_b = sorted(p.name for p in (rig.state_dir / "models" / "b").iterdir())
        assert slot_b == ([release.file.name + ".partial"] if where == "downloading" else [])
    else:
        assert journal.probation_until is not None  # still on probation after the restart

    # the hub hears the truth on the next occasion
    rig.reports.updates.clear()
    assert rig.installer.report_pending() is True
    assert [(u.phase, u.version, u.rollout_id) for u in rig.reports.updates] == [
        (phase, "1.2.0", "r-1.2.0")
    ]
    assert rig.installer.report_pending() is False  # acknowledged


def _recover_in_a_new_process(state_dir: Path) -> dict[str, str]:
    code = (
        "import json, sys; from pathlib import Path; from edge_agent.ota.slots import recover\n"
        "m = recover(Path(sys.argv[1]))\n"
        "print(json.dumps({'version': m.version, 'path': str(m.path(Path(sys.argv[1])))}))"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(state_dir)],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=True,
    )  # fmt: skip
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def crash_child(raw: str) -> None:
    """In a child process: serve 1.1.0 from slot a, install 1.2.0, SIGKILL at ``crash_at``."""
    spec = json.loads(raw)
    state_dir = Path(spec["state_dir"])
    target = FakeTarget(**spec["target"])
    current = Slots(state_dir).current()
    assert current is not None
    service = ModelService(Engine.load(current.path(state_dir), profile=PROFILE), NAME,
                           current.version)  # fmt: skip
    where = spec["crash_at"]

    def checkpoint(name: str) -> None:
        if name == where:
            os.kill(os.getpid(), signal.SIGKILL)

    downloader = CopyDownloader({target.path: Path(spec["file"])})
    if where == "downloading":
        downloader.kill_at = target.length // 2
    installer = Installer(
        state_dir, service, Loader(), downloader,
        DictVerifier({target.path: (target.length, target.sha256)}),
        Reports(), PROFILE, checkpoint=checkpoint, health_runs=3,
    )  # fmt: skip
    assignment = Assignment("r-1.2.0", "digits-edge", "1.2.0", "onnx", target.path, 300.0)
    installer.install(assignment, target)
    raise SystemExit("the install finished without reaching its crash point")


# -- helpers --------------------------------------------------------------------------------


def _wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.01)
