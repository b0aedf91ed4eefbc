"""End to end: the agent's cascade offloads hard inputs to a real hub, and outlives it.

A private Mosquitto and ``cloud-hub serve`` (helpers of :mod:`test_e2e_fleet`), digits-cloud
registered on the hub, one device enrolled with a token and ``edge-agent run`` serving
digits-edge with an ``[offload]`` section pointing at the hub's gRPC address (the device's own
credential goes with each call). Then, through the agent's local API:

1. hard inputs (under the threshold) are answered by the cloud, easy ones on the device, and
   the hub keeps the offloaded inputs as hard examples with both answers;
2. with the hub stopped every request is still answered, by the device, within the latency
   budget (the offload deadline while the breaker is closed, nothing once it is open);
3. with the hub started again on the same ports, the breaker half-opens and closes, and hard
   inputs go to the cloud again.

SQLite only. On failure the tail of every process's log is printed.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
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

EDGE, CLOUD = "digits-edge", "digits-cloud"
DEVICE = "pi-offload"
THRESHOLD = 0.999  # max probability under this is hard: a good share of held-out digits
DEADLINE_MS = 400
COOLDOWN_S = 1.0
# A request while the hub is down costs at most the deadline (breaker closed) plus the
# local run and the HTTP hop; generous for a loaded 2-core machine.
BUDGET_S = DEADLINE_MS / 1000 + 1.5
RECOVER_TIMEOUT_S = 60.0
ROUNDS = 60


def test_hard_inputs_go_to_the_hub_and_the_agent_outlives_it(
    tmp_path: Path, reference_dir: Path
) -> None:
    data = np.load(reference_dir / "data" / "digits-heldout.npz")
    images = data["x"].astype(np.float32)
    broker = start_broker(tmp_path)
    try:
        with Processes(tmp_path, broker) as processes:
            run_the_cascade(processes, tmp_path, reference_dir, images)
    finally:
        broker.stop()


def run_the_cascade(
    processes: Processes, folder: Path, reference_dir: Path, images: np.ndarray
) -> None:
    config = write_hub_config(folder, f"sqlite:///{folder / 'hub.db'}", processes.broker)
    hub = start_hub(processes, config)
    cloud_model = reference_dir / CLOUD / f"{CLOUD}-fp32.onnx"
    cli_ok(processes, hub.cli("fleet", "create", FLEET))
    cli_ok(
        processes,
        hub.cli(
            *("model", "register", CLOUD, "--version", "1.0.0", "--format", "onnx-fp32"),
            *("--artifact", str(cloud_model)),
        ),
    )
    token = cli_ok(processes, hub.cli("enroll-token", "create", "--fleet", FLEET)).strip()
    state_dir = folder / DEVICE / "state"
    cli_ok(
        processes,
        [
            *(sys.executable, "-m", "edge_agent.cli", "enroll", "--hub", hub.grpc),
            *("--token", token, "--state-dir", str(state_dir), "--timeout", "60"),
        ],
    )
    agent = start_agent(processes, folder, reference_dir / EDGE / f"{EDGE}-fp32.onnx", hub)

    # 1. Hard inputs go to the cloud, easy ones stay; the hub keeps what it answered.
    answers = [answered_by(agent, image) for image in images[:ROUNDS]]
    assert answers.count("cloud") >= 1 and answers.count("edge") >= 1, answers
    kept = hard_examples(processes, hub, answers.count("cloud"))
    assert all(example["model"] == CLOUD for example in kept), kept[:3]
    assert any(example.get("edge_label") is not None for example in kept), kept[:3]

    # 2. The hub goes away: every request is answered on the device, within the budget.
    hub.process.popen.terminate()
    assert hub.process.popen.wait(30) == 0, hub.process.log()[-3000:]
    took: list[float] = []
    for image in images[:ROUNDS]:
        began = time.monotonic()
        assert answered_by(agent, image) == "edge"
        took.append(time.monotonic() - began)
    assert max(took) <= BUDGET_S, f"slowest local answer with the hub down: {max(took):.3f} s"
    # Once the breaker is open, a hard input costs no wait on the dead hub at all.
    assert float(np.median(took[len(took) // 2 :])) < DEADLINE_MS / 1000 / 2, took

    # 3. The hub comes back on the same ports: the breaker closes, the cloud answers again.
    hub = restart_hub(processes, config, hub)
    hard = [image for image, who in zip(images[:ROUNDS], answers, strict=True) if who == "cloud"]

    def cloud_again() -> bool:
        time.sleep(COOLDOWN_S / 2)
        return answered_by(agent, hard[0]) == "cloud"

    poll(cloud_again, RECOVER_TIMEOUT_S, "the breaker to close once the hub is back")
    assert "breaker" in agent.process.log()


# -- steps ----------------------------------------------------------------------------------


def cli_ok(processes: Processes, argv: list[str]) -> str:
    done = processes.run(argv)[0]
    assert done.returncode == 0, f"{' '.join(argv[2:])}: {done.stderr}"
    return done.stdout


def start_agent(processes: Processes, folder: Path, model: Path, hub: Hub) -> Agent:
    state_dir = folder / DEVICE / "state"
    config = folder / DEVICE / "agent.toml"
    config.write_text(
        f'[agent]\nprofile = "x86-64-cpu"\n'
        f'[model]\npath = "{model}"\nname = "{EDGE}"\nversion = "1.0.0"\n'
        f"[http]\nenabled = true\nport = 0\n[mqtt]\nenabled = true\n"
        f"[telemetry]\ninterval_s = {INTERVAL_S}\n"
        f'[offload]\nurl = "grpc://{hub.grpc}"\nmodel = "{CLOUD}"\n'
        f"threshold = {THRESHOLD}\ndeadline_ms = {DEADLINE_MS}\n"
        f"breaker_failures = 2\nbreaker_cooldown_s = {COOLDOWN_S}\n"
    )
    notify = NotifySocket(folder / DEVICE / "agent.sock")
    try:
        process = processes.start(
            DEVICE,
            *(sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)),
            *("--state-dir", str(state_dir)),
            NOTIFY_SOCKET=notify.path,
        )
        return _agent(DEVICE, state_dir, process, notify.wait_ready(process))
    finally:
        notify.close()


def restart_hub(processes: Processes, config: Path, old: Hub) -> Hub:
    """``cloud-hub serve`` again, on the ports the first one had (the agent knows those)."""
    http_port = old.http.rsplit(":", 1)[1]
    grpc_port = old.grpc.rsplit(":", 1)[1]
    again = config.with_name("hub-again.toml")
    text = re.sub(r"(?m)^http_port = 0$", f"http_port = {http_port}", config.read_text())
    again.write_text(re.sub(r"(?m)^grpc_port = 0$", f"grpc_port = {grpc_port}", text))
    hub = start_hub(processes, again, name="hub-again")
    assert hub.grpc == old.grpc, (hub.grpc, old.grpc)
    return hub


def answered_by(agent: Agent, image: np.ndarray) -> str:
    answer: dict[str, Any] = agent.infer(image)
    assert answer["outputs"][0]["shape"] == [1, 10], answer
    return str(answer["parameters"]["edgeloop_answered_by"])


def hard_examples(processes: Processes, hub: Hub, at_least: int) -> list[dict[str, Any]]:
    """The hub's hard examples, once it has written ``at_least`` (it writes in batches)."""

    def listed() -> list[dict[str, Any]]:
        out = cli_ok(
            processes,
            hub.cli("hard-examples", "list", "--fleet", FLEET, "--limit", "1000", "--json"),
        )
        items = json.loads(out)
        return list(items["items"] if isinstance(items, dict) else items)

    poll(lambda: len(listed()) >= at_least, 30.0, f"the hub to keep {at_least} hard examples")
    return listed()
