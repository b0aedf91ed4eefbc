"""End to end: a model update pushed from the hub reaches a running agent, with real processes.

A private Mosquitto with hub-managed auth and ``cloud-hub serve`` on ports 0 (the helpers of
:mod:`test_e2e_fleet`); ``cloud-hub ota init-keys`` signs the update repository before the
device enrolls, so enrollment pins its root. digits-edge fp32 is registered as 1.0.0 and
int8 as 1.1.0, both published as signed targets with a golden health check computed by
:class:`edge_agent.Engine` on held-out digits. The agent runs 1.0.0 from ``[model] path``
while a client thread sends it requests without pause; ``cloud-hub push digits-edge:1.1.0``
starts a rollout (the one device is its canary), the controller tells the device over MQTT
to check in, and the agent downloads, verifies, health-checks and switches to 1.1.0. The
rollout shows the device INSTALLED and then completes, the agent's local API serves 1.1.0,
and not one client request failed during the switch. Restarted, the agent comes back on
1.1.0 (from ``models/current``). A second test pushes with a gate no model meets: the canary
installs, breaches it in its probation, rolls itself back to 1.0.0 without a failed request,
and the hub halts the rollout with the device shown as rolled back.

SQLite only. On failure the tail of every process's log is printed.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from mqtt_broker import MosquittoBroker
from test_e2e_fleet import (
    FLEET,
    INTERVAL_S,
    Agent,
    Hub,
    NotifySocket,
    Processes,
    _agent,
    poll,
    start_broker,
    start_hub,
    write_hub_config,
)

from edge_agent import Engine

MODEL = "digits-edge"
OLD, NEW = "1.0.0", "1.1.0"
FORMATS = {OLD: "onnx-fp32", NEW: "onnx-int8"}
FILES = {OLD: "digits-edge-fp32.onnx", NEW: "digits-edge-int8.onnx"}
GOLDEN_ROWS = 8
UPDATE_TIMEOUT_S = 90.0  # push -> installed on the device (check-in, download, health check)
# installed -> completed: the soak is judged on per-minute telemetry rollups, so a minute
# that began after the install must close first (about 50 s when idle), then a controller tick
COMPLETE_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 30.0
DEVICE = "pi-ota"
CHECK_IN_S = 2.0  # until the hub names its own interval


def test_a_pushed_update_reaches_a_serving_agent_without_a_failed_request(
    tmp_path: Path, reference_dir: Path
) -> None:
    heldout = np.load(reference_dir / "data" / "digits-heldout.npz")["x"].astype(np.float32)
    broker = start_broker(tmp_path)
    try:
        with Processes(tmp_path, broker) as processes:
            run_the_update(processes, tmp_path, broker, reference_dir, heldout)
    finally:
        broker.stop()


def test_a_canary_breaching_a_gate_is_rolled_back_and_halts_the_rollout(
    tmp_path: Path, reference_dir: Path
) -> None:
    heldout = np.load(reference_dir / "data" / "digits-heldout.npz")["x"].astype(np.float32)
    broker = start_broker(tmp_path)
    try:
        with Processes(tmp_path, broker) as processes:
            run_a_breaching_update(processes, tmp_path, broker, reference_dir, heldout)
    finally:
        broker.stop()


def run_a_breaching_update(
    processes: Processes,
    folder: Path,
    broker: MosquittoBroker,
    reference_dir: Path,
    heldout: np.ndarray,
) -> None:
    """A gate no model meets (p99 under a nanosecond): the canary installs, breaches it in
    its probation, rolls itself back to the old model and says so; the rollout halts."""
    hub, state_dir = prepare(processes, folder, broker, reference_dir, heldout)
    agent = start_agent(processes, folder, reference_dir / MODEL / FILES[OLD], DEVICE)
    client = Client(agent, heldout)
    client.start()
    try:
        rollout_id = push(processes, hub, "--gate", "p99_ms<=0.000001", "--probation", "10m")
        poll(
            lambda: rollout_state(processes, hub, rollout_id) == "halted",
            COMPLETE_TIMEOUT_S,
            f"rollout {rollout_id} to halt on the breached gate",
        )
        status = rollout_status(processes, hub, rollout_id)
        (device,) = status["devices"]
        assert device["phase"] == "rolled_back", status
        assert "p99" in json.dumps(device), device
        poll(lambda: served_version(agent) == OLD, UPDATE_TIMEOUT_S, f"{DEVICE} back on {OLD}")
        answered_after = client.versions[OLD]
        poll(lambda: client.versions[OLD] > answered_after + 5, 30.0, "answers after rollback")
    finally:
        client.stop()
    assert client.failures == [], client.failures[:5]
    assert client.versions[NEW] > 0, "the update was never served before its rollback"
    # Back on the baseline ([model] path): nothing installed is current any more.
    current = state_dir / "models" / "current"
    assert not current.exists() or json.loads(current.read_text())["version"] == OLD


def prepare(
    processes: Processes,
    folder: Path,
    broker: MosquittoBroker,
    reference_dir: Path,
    heldout: np.ndarray,
) -> tuple[Hub, Path]:
    """A hub with signed releases OLD and NEW and one enrolled device; its state dir."""
    database_url = f"sqlite:///{folder / 'hub.db'}"
    hub = start_hub(processes, write_hub_config(folder, database_url, broker))
    cli_ok(processes, hub.cli("ota", "init-keys", "--root-key-dir", str(folder / "root-key")))
    cli_ok(processes, hub.cli("fleet", "create", FLEET))
    for version in (OLD, NEW):
        artifact = reference_dir / MODEL / FILES[version]
        golden = write_golden(folder / f"golden-{version}.npz", artifact, heldout[-GOLDEN_ROWS:])
        fmt = ("--version", version, "--format", FORMATS[version])
        cli_ok(processes, hub.cli("model", "register", MODEL, *fmt, "--artifact", str(artifact)))
        cli_ok(processes, hub.cli("ota", "publish", MODEL, *fmt, "--golden", str(golden)))
    token = cli_ok(processes, hub.cli("enroll-token", "create", "--fleet", FLEET)).strip()
    state_dir = folder / DEVICE / "state"
    cli_ok(
        processes,
        [
            *(sys.executable, "-m", "edge_agent.cli", "enroll", "--hub", hub.grpc),
            *("--token", token, "--state-dir", str(state_dir), "--timeout", "60"),
        ],
    )
    assert (state_dir / "tuf" / "metadata" / "root.json").exists(), "enrollment pinned no root"
    return hub, state_dir


def run_the_update(
    processes: Processes,
    folder: Path,
    broker: MosquittoBroker,
    reference_dir: Path,
    heldout: np.ndarray,
) -> None:
    hub, state_dir = prepare(processes, folder, broker, reference_dir, heldout)
    agent = start_agent(processes, folder, reference_dir / MODEL / FILES[OLD], DEVICE)
    assert served_version(agent) == OLD
    client = Client(agent, heldout)
    client.start()
    try:
        rollout_id = push(processes, hub)
        poll(
            lambda: installed(processes, hub, rollout_id, agent),
            UPDATE_TIMEOUT_S,
            f"{DEVICE} to install {MODEL} {NEW}",
        )
        # Requests keep flowing after the switch, and they are answered by the new model.
        poll(lambda: client.versions[NEW] >= 5, UPDATE_TIMEOUT_S, "answers from the new model")
        poll(
            lambda: rollout_state(processes, hub, rollout_id) == "completed",
            COMPLETE_TIMEOUT_S,
            f"rollout {rollout_id} to complete after its soak",
        )
    finally:
        client.stop()
    # The hub named a check-in interval of minutes: the MQTT nudge is what woke the agent.
    assert "the hub asks for a check-in now" in agent.process.log()
    assert client.failures == [], client.failures[:5]
    assert client.versions[OLD] > 0 and client.versions[NEW] > 0, client.versions
    current = json.loads((state_dir / "models" / "current").read_text())
    assert (current["model"], current["version"]) == (MODEL, NEW), current

    # Restarted, it runs the installed model rather than [model] path.
    agent.process.popen.terminate()
    assert agent.process.popen.wait(30) == 0, agent.process.log()[-4000:]
    again = start_agent(processes, folder, reference_dir / MODEL / FILES[OLD], "again")
    assert served_version(again) == NEW
    assert again.infer(heldout[0])["model_version"] == NEW


# -- steps ----------------------------------------------------------------------------------


def cli_ok(processes: Processes, argv: list[str]) -> str:
    done = processes.run(argv)[0]
    assert done.returncode == 0, f"{' '.join(argv[2:])}: {done.stderr}"
    return done.stdout


def write_golden(path: Path, artifact: Path, images: np.ndarray) -> Path:
    """The health check of ``artifact``: its own outputs on ``images``."""
    with Engine.load(artifact, profile="x86-64-cpu") as engine:
        outputs = engine.run({"image": images})
    arrays = {"inputs/image": images, "outputs/probabilities": outputs["probabilities"]}
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    return path


def start_agent(processes: Processes, folder: Path, model: Path, name: str) -> Agent:
    """``edge-agent run`` for the enrolled device (state in ``folder/DEVICE/state``), with
    ``model`` as its [model] path; once it sent READY=1. ``name`` names the process."""
    state_dir = folder / DEVICE / "state"
    config = folder / DEVICE / f"{name}.toml"
    config.write_text(
        f'[agent]\nprofile = "x86-64-cpu"\n'
        f'[model]\npath = "{model}"\nname = "{MODEL}"\nversion = "{OLD}"\n'
        f"[http]\nenabled = true\nport = 0\n[mqtt]\nenabled = true\n"
        f"[telemetry]\ninterval_s = {INTERVAL_S}\n"
        f"[ota]\nenabled = true\ncheck_in_interval_s = {CHECK_IN_S}\n"
    )
    notify = NotifySocket(folder / DEVICE / f"{name}.sock")
    try:
        process = processes.start(
            name,
            *(sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)),
            *("--state-dir", str(state_dir)),
            NOTIFY_SOCKET=notify.path,
        )
        return _agent(name, state_dir, process, notify.wait_ready(process))
    finally:
        notify.close()


def push(processes: Processes, hub: Hub, *extra: str) -> str:
    argv = hub.cli(
        *("push", f"{MODEL}:{NEW}", "--fleet", FLEET),
        *("--canary", "10%", "--waves", "100", "--soak", "1s", "--json", *extra),
    )
    rollout: dict[str, Any] = json.loads(cli_ok(processes, argv))
    return str(rollout["id"])


def installed(processes: Processes, hub: Hub, rollout_id: str, agent: Agent) -> bool:
    status = json.loads(cli_ok(processes, hub.cli("rollout", "status", rollout_id, "--json")))
    phases = [device["phase"] for device in status["devices"]]
    assert "failed" not in phases and "rolled_back" not in phases, status
    return phases == ["installed"] and served_version(agent) == NEW


def rollout_status(processes: Processes, hub: Hub, rollout_id: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(
        cli_ok(processes, hub.cli("rollout", "status", rollout_id, "--json"))
    )
    return status


def rollout_state(processes: Processes, hub: Hub, rollout_id: str) -> str:
    return str(rollout_status(processes, hub, rollout_id)["state"])


def served_version(agent: Agent) -> str:
    with urllib.request.urlopen(
        f"{agent.url}/v2/models/{agent.model}", timeout=REQUEST_TIMEOUT_S
    ) as answer:
        versions: list[str] = json.load(answer)["versions"]
    assert len(versions) == 1, versions
    return versions[0]


class Client:
    """Sends inference requests to the agent one after another until stopped; counts the
    answers by model version and keeps every failure."""

    def __init__(self, agent: Agent, images: np.ndarray) -> None:
        self.agent = agent
        self.images = images
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT_S * 2)
        assert not self._thread.is_alive(), "the client thread did not stop"

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            image = self.images[n % len(self.images)]
            n += 1
            try:
                answer = self.agent.infer(image)
                output = answer["outputs"][0]
                assert output["shape"] == [1, 10], output
                self.versions[str(answer["model_version"])] += 1
            except Exception as exc:  # every kind of failure is what we count
                self.failures.append(f"request {n}: {exc!r}")
