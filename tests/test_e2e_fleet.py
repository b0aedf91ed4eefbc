"""End to end: a hub, a broker with auth and ACL, two enrolled agents, and a revocation.

Everything is a real process: a private Mosquitto (``allow_anonymous false``, with the
password and ACL files the hub writes and a pid file the hub sends SIGHUP to),
``cloud-hub serve`` on ports 0, the ``cloud-hub`` CLI for the fleet and the tokens,
``edge-agent enroll`` for two devices sharing one two-use token, and ``edge-agent run``
for each with the real int8 digits model, a one-second telemetry interval and its local
HTTP API on a port it picks (read back from the ``READY=1`` it sends to a
``NOTIFY_SOCKET`` we hold, as systemd would).

The operator's view is the REST API: both devices come online and their telemetry counts
exactly the inference requests we sent. Then ``cloud-hub device revoke`` cuts one device
off: gRPC refuses its credential, the broker drops its connection and refuses the next
one, and its telemetry stops growing while the other device's keeps growing.

Runs on SQLite and on PostgreSQL (skipped, with the reason, when the server is not
reachable). On failure the tail of every process's log is printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import hub_db
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from mqtt_broker import MosquittoBroker, free_port, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.enroll import device_metadata
from edge_agent.identity import Identity, load_identity
from edge_agent.wire import enrollment_pb2, enrollment_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
FLEET = "lab"
START_TIMEOUT_S = 120.0  # a process up and serving (model load) on a loaded 2-core machine
TELEMETRY_TIMEOUT_S = 60.0  # telemetry through the broker and ingest into the REST API
STOP_TIMEOUT_S = 15.0  # SIGTERM to exit, before SIGKILL
CLI_TIMEOUT_S = 120.0
INTERVAL_S = 1.0  # the agents' telemetry interval
REQUESTS = {"pi-a": 5, "pi-b": 3}  # inference requests sent to each agent
LOG_TAIL_CHARS = 4000
POLL_S = 0.25  # between looks at the REST API or a log: gentle on a loaded machine
_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


@pytest.fixture(params=hub_db.BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with hub_db.database(request.param, tmp_path, "e2e") as url:
        yield url


# -- processes ------------------------------------------------------------------------------


class Process:
    """A child process whose stdout and stderr go to one log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], folder: Path):
        self.name = name
        self.log_path = folder / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None


class Processes:
    """Every process the test starts. Leaving the block stops them all (SIGTERM, then
    SIGKILL) and, when the block failed, prints the tail of each one's log."""

    def __init__(self, folder: Path, broker: MosquittoBroker) -> None:
        self.folder = folder
        self.broker = broker
        self.started: list[Process] = []
        self.env = _clean_env(folder)

    def start(self, name: str, *argv: str, **env: str) -> Process:
        process = Process(name, argv, {**self.env, **env}, self.folder)
        self.started.append(process)
        return process

    def run(self, *commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
        """Run ``commands`` side by side to the end; their results in order."""
        running = [
            subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.env,
                cwd=self.folder,
            )
            for argv in commands
        ]
        results = []
        for argv, child in zip(commands, running, strict=True):
            try:
                out, err = child.communicate(timeout=CLI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
            results.append(subprocess.CompletedProcess(list(argv), child.returncode, out, err))
        return results

    def stop(self) -> dict[str, int]:
        """SIGTERM to all, SIGKILL to those still running after STOP_TIMEOUT_S; the exit
        status of each (negative: the signal that ended it)."""
        for process in self.started:
            if process.alive():
                process.popen.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(STOP_TIMEOUT_S)
        return {process.name: process.popen.returncode for process in self.started}

    def report(self) -> None:
        for process in self.started:
            state = "running" if process.alive() else f"exit {process.popen.returncode}"
            print(f"\n===== {process.name} ({state}): last lines of its log =====")
            print(process.log()[-LOG_TAIL_CHARS:])
        print("\n===== mosquitto: last lines of its log =====")
        print(self.broker.log()[-LOG_TAIL_CHARS:])

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is not None:
            self.report()


def poll(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Look every POLL_S until ``predicate()`` is truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def _clean_env(folder: Path) -> dict[str, str]:
    """Our environment without outside hub settings or systemd's variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EDGELOOP_HUB_") and key not in _INHERITED
    }
    env.pop("EDGELOOP_STATE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["XDG_DATA_HOME"] = str(folder / "xdg")
    return env


class NotifySocket:
    """The ``NOTIFY_SOCKET`` of one agent: a real unix datagram socket, as systemd holds."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_ready(self, process: Process) -> str:
        """The STATUS sent with ``READY=1``; AssertionError if it does not come in time."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.alive():
            self.sock.settimeout(0.5)
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            if fields.get("READY") == "1":
                return fields.get("STATUS", "")
        raise AssertionError(f"{process.name} sent no READY=1 in {START_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        self.sock.close()


# -- the hub --------------------------------------------------------------------------------


@dataclass
class Hub:
    config: Path
    process: Process
    http: str  # http://HOST:PORT
    grpc: str  # HOST:PORT
    token: str = ""  # an operator token, once made

    def cli(self, *args: str) -> list[str]:
        return hub_command(self.config, *args)

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.http}/api/v1{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def devices(self) -> dict[str, dict[str, Any]]:
        page = self.get(f"/devices?fleet={FLEET}&limit=1000")
        return {device["id"]: device for device in page["items"]}

    def telemetry(self, device_id: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.get(f"/devices/{device_id}/telemetry?limit=1000")
        return records


def hub_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cloud_hub.cli", *args, "--config", str(config)]


def write_hub_config(folder: Path, database_url: str, broker: MosquittoBroker) -> Path:
    """hub.toml: every hub command and ``serve`` read the same settings from it."""
    files = folder / "broker"
    config = folder / "hub.toml"
    config.write_text(
        f'data_dir = "{folder / "hub-data"}"\n'
        f'database_url = "{database_url}"\n'
        f'mqtt_host = "{broker.host}"\n'
        f"mqtt_port = {broker.port}\n"
        "http_port = 0\n"
        "grpc_port = 0\n"
        "offload_http_port = 0\n"
        f'broker_password_file = "{files / "passwords"}"\n'
        f'broker_acl_file = "{files / "acl"}"\n'
        f'broker_pid_file = "{files / "mosquitto.pid"}"\n'
    )
    return config


def start_broker(folder: Path) -> MosquittoBroker:
    """Mosquitto with auth on, and no users yet: the hub writes them when it starts."""
    files = folder / "broker"
    files.mkdir()
    for name in ("passwords", "acl"):
        (files / name).write_text("")
        (files / name).chmod(0o600)
    pid_file = files / "mosquitto.pid"
    broker = MosquittoBroker(
        files,
        port=free_port(),
        password_file=files / "passwords",
        acl_file=files / "acl",
        extra_config=[
            "per_listener_settings false",
            f"pid_file {pid_file}",
            # As a deployed broker: the helper's 0 makes mosquitto 2.0 drop a client after
            # a refused QoS 1 publish (see tests/test_broker_auth.py).
            "max_queued_messages 1000",
        ],
    )
    broker.start()
    wait_until(pid_file.exists, what="mosquitto's pid file")
    return broker


def start_hub(processes: Processes, config: Path, name: str = "hub") -> Hub:
    process = processes.start(name, *hub_command(config, "serve"))
    line = _wait_for_line(process, r"^listening (.*)$")
    where = dict(part.split("=", 1) for part in line.split())
    assert where.get("mqtt") not in (None, "off"), f"the hub runs without ingest: {line}"
    return Hub(config, process, f"http://{where['http']}", where["grpc"])


def _wait_for_line(process: Process, pattern: str) -> str:
    found: list[str] = []

    def seen() -> bool:
        assert process.alive(), f"{process.name} exited ({process.popen.returncode})"
        match = re.search(pattern, process.log(), re.MULTILINE)
        if match:
            found.append(match.group(1))
        return bool(match)

    poll(seen, START_TIMEOUT_S, f"{pattern!r} from {process.name}")
    return found[0]


# -- the agents -----------------------------------------------------------------------------


@dataclass
class Agent:
    name: str
    state_dir: Path
    identity: Identity
    process: Process
    url: str  # http://HOST:PORT of its local Open Inference Protocol API
    model: str

    def infer(self, image: np.ndarray) -> dict[str, Any]:
        body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, *image.shape],
                    "datatype": "FP32",
                    "data": image.astype(np.float32).ravel().tolist(),
                }
            ]
        }
        request = urllib.request.Request(
            f"{self.url}/v2/models/{self.model}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            result: dict[str, Any] = json.load(answer)
        return result


def write_agent_config(folder: Path, model: Path) -> Path:
    """agent.toml: device, fleet and broker credentials come from the enrolled identity."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "agent.toml"
    config.write_text(
        f'[agent]\nprofile = "x86-64-cpu"\n[model]\npath = "{model}"\n'
        f"[http]\nenabled = true\nport = 0\n[mqtt]\nenabled = true\n"
        f"[telemetry]\ninterval_s = {INTERVAL_S}\n"
    )
    return config


def start_agents(
    processes: Processes, folder: Path, model: Path, names: Sequence[str]
) -> dict[str, Agent]:
    """``edge-agent run`` for each enrolled device, side by side; once each is READY."""
    with ExitStack() as sockets:
        started = []
        for name in names:
            state_dir = folder / name / "state"
            notify = NotifySocket(folder / name / "notify.sock")
            sockets.callback(notify.close)
            config = write_agent_config(folder / name, model)
            process = processes.start(
                name,
                *(sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)),
                *("--state-dir", str(state_dir)),
                NOTIFY_SOCKET=notify.path,
            )
            started.append((name, state_dir, process, notify.wait_ready))
        return {
            name: _agent(name, state_dir, process, ready(process))
            for name, state_dir, process, ready in started
        }


def _agent(name: str, state_dir: Path, process: Process, status: str) -> Agent:
    # READY=1 comes with "STATUS=serving NAME VERSION (BACKEND) on http://HOST:PORT"
    match = re.fullmatch(r"serving (\S+) \S+ \(\S+\) on (http://\S+)", status)
    assert match, f"{name}: unexpected READY status {status!r}"
    identity = load_identity(state_dir)
    assert identity is not None, f"{name} has no identity in {state_dir}"
    return Agent(name, state_dir, identity, process, match.group(2), match.group(1))


def whoami(hub: Hub, identity: Identity) -> enrollment_pb2.WhoAmIResponse:
    with grpc.insecure_channel(hub.grpc) as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        answer: enrollment_pb2.WhoAmIResponse = stub.WhoAmI(
            enrollment_pb2.WhoAmIRequest(), metadata=device_metadata(identity), timeout=30
        )
        return answer


def connack(broker: MosquittoBroker, identity: Identity) -> ReasonCode:
    """What the broker answers a new connection with ``identity``'s MQTT credentials."""
    assert identity.mqtt is not None
    answers: list[ReasonCode] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"probe-{identity.device_id}-{time.monotonic_ns()}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(identity.mqtt.username, identity.mqtt.password)
    client.on_connect = lambda c, u, f, reason, p: answers.append(reason)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        wait_until(lambda: answers, what=f"a CONNACK for {identity.device_id}")
    finally:
        client.disconnect()
        client.loop_stop()
    return answers[0]


def requests_reported(records: list[dict[str, Any]]) -> int:
    return sum(int(record["payload"]["requests"]) for record in records)


# -- the test -------------------------------------------------------------------------------


def test_enrolled_agents_report_to_the_hub_until_one_is_revoked(
    tmp_path: Path, database_url: str, reference_dir: Path
) -> None:
    model = reference_dir / "digits-edge" / "digits-edge-int8.onnx"
    image = np.load(reference_dir / "data" / "digit-sample.npy").reshape(8, 8, 1)
    broker = start_broker(tmp_path)
    try:
        with Processes(tmp_path, broker) as processes:
            run_the_fleet(processes, tmp_path, database_url, broker, model, image)
    finally:
        broker.stop()


def run_the_fleet(
    processes: Processes,
    folder: Path,
    database_url: str,
    broker: MosquittoBroker,
    model: Path,
    image: np.ndarray,
) -> None:
    hub = start_hub(processes, write_hub_config(folder, database_url, broker))
    made = processes.run(
        hub.cli("fleet", "create", FLEET), hub.cli("operator-token", "create", "e2e")
    )
    assert all(done.returncode == 0 for done in made), [done.stderr for done in made]
    hub.token = made[1].stdout.strip()
    issued = processes.run(hub.cli("enroll-token", "create", "--fleet", FLEET, "--uses", "2"))[0]
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()

    def enroll(name: str) -> list[str]:
        state_dir = folder / name / "state"
        return [
            *(sys.executable, "-m", "edge_agent.cli", "enroll", "--hub", hub.grpc),
            *("--token", token, "--state-dir", str(state_dir), "--timeout", "60"),
        ]

    enrolled = processes.run(*(enroll(name) for name in REQUESTS))
    assert all(done.returncode == 0 for done in enrolled), [done.stderr for done in enrolled]
    third = processes.run(enroll("pi-c"))[0]
    assert third.returncode != 0, third.stdout
    assert "enrollment refused" in third.stderr and "used up" in third.stderr, third.stderr

    agents = start_agents(processes, folder, model, list(REQUESTS))
    a, b = agents["pi-a"], agents["pi-b"]
    assert a.identity.device_id != b.identity.device_id
    assert {a.identity.fleet, b.identity.fleet} == {FLEET}
    for agent in agents.values():
        for _ in range(REQUESTS[agent.name]):
            output = agent.infer(image)["outputs"][0]
            assert output["shape"] == [1, 10], output
            assert abs(sum(output["data"]) - 1.0) < 1e-3, output

    show_telemetry_in_the_rest_api(hub, agents)
    show_revocation(processes, hub, revoked=a, other=b)
    # The revoked agent too: SIGTERM ends every process cleanly.
    assert processes.stop() == {"hub": 0, "pi-a": 0, "pi-b": 0}


def show_telemetry_in_the_rest_api(hub: Hub, agents: dict[str, Agent]) -> None:
    """Both devices online, their model known, and every request counted once."""
    ids = {agent.identity.device_id: agent for agent in agents.values()}

    def all_reported() -> bool:
        devices = hub.devices()
        return all(
            devices.get(device_id, {}).get("status") == "online"
            and requests_reported(hub.telemetry(device_id)) >= REQUESTS[agent.name]
            for device_id, agent in ids.items()
        )

    poll(all_reported, TELEMETRY_TIMEOUT_S, "both devices online with their requests")
    devices = hub.devices()
    assert set(devices) == set(ids)
    for device_id, agent in ids.items():
        assert requests_reported(hub.telemetry(device_id)) == REQUESTS[agent.name]
        assert devices[device_id]["model_name"] == agent.model
        assert devices[device_id]["fleet"] == FLEET
        assert not devices[device_id]["revoked"]


def show_revocation(processes: Processes, hub: Hub, *, revoked: Agent, other: Agent) -> None:
    """gRPC refuses the revoked device, the broker drops and refuses it, and its telemetry
    stops growing while the other device's goes on."""
    broker = processes.broker
    gone, kept = revoked.identity, other.identity
    assert whoami(hub, gone).device_id == gone.device_id
    assert not connack(broker, gone).is_failure  # its credential works until revoked
    log_before = len(revoked.process.log())

    done = processes.run(hub.cli("device", "revoke", gone.device_id))[0]
    assert done.returncode == 0, done.stderr
    assert "sent SIGHUP to mosquitto" in done.stderr, done.stderr

    with pytest.raises(grpc.RpcError) as refused:
        whoami(hub, gone)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value
    assert whoami(hub, kept).device_id == kept.device_id

    # The broker drops the agent's live connection and refuses it when it comes back.
    def agent_refused() -> bool:
        new = revoked.process.log()[log_before:]
        return "telemetry: disconnected from" in new and bool(
            re.search(r"telemetry: broker \S+ refused", new)
        )

    poll(agent_refused, TELEMETRY_TIMEOUT_S, f"the broker to drop and refuse {revoked.name}")
    assert connack(broker, gone).is_failure
    assert not connack(broker, kept).is_failure
    assert revoked.process.alive()  # it keeps trying (and spooling); the broker says no

    # Ingest delivers in order: once the other device has something newer, everything the
    # revoked one got through before the drop is stored. After that nothing more comes.
    def kept_grows_by(n: int) -> None:
        start = len(hub.telemetry(kept.device_id))
        poll(
            lambda: len(hub.telemetry(kept.device_id)) >= start + n,
            TELEMETRY_TIMEOUT_S,
            f"{n} more telemetry messages from {other.name}",
        )

    kept_grows_by(2)
    settled = len(hub.telemetry(gone.device_id))
    kept_grows_by(3)
    assert len(hub.telemetry(gone.device_id)) == settled
    assert hub.devices()[gone.device_id]["revoked"]
