"""Step 2's device: ``edge-agent enroll``, then ``edge-agent run`` as a child process.

The agent serves its local Open Inference Protocol v2 API on a free port (0). It says
which the way it tells systemd it is ready: ``READY=1`` with
``STATUS=serving NAME VERSION (BACKEND) on http://HOST:PORT``, sent to the unix datagram
socket named in ``NOTIFY_SOCKET``. The demo holds that socket (in the abstract namespace,
so no file and no path-length limit), as systemd would.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge_agent.identity import load_identity

from .errors import DemoFailed
from .processes import Child, Children

START_TIMEOUT_S = 120.0  # model load and broker connection on a loaded machine
ENROLL_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0
TELEMETRY_INTERVAL_S = 1.0
_READY_STATUS = re.compile(r"serving (\S+) \S+ \(\S+\) on (http://\S+)")


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent.cli", *args]


def enroll(children: Children, hub_grpc: str, token: str, state_dir: Path) -> str:
    """Enroll a device into ``state_dir`` with ``token``; its device id."""
    children.run(
        agent_command(
            *("enroll", "--hub", hub_grpc, "--token", token),
            *("--state-dir", str(state_dir), "--timeout", str(ENROLL_TIMEOUT_S)),
        ),
        "edge-agent enroll",
    )
    identity = load_identity(state_dir)
    if identity is None:
        raise DemoFailed(f"edge-agent enroll left no identity in {state_dir}")
    return identity.device_id


def write_config(folder: Path, model: Path, hub_grpc: str, cloud_model: str) -> Path:
    """agent.toml: the model, a free HTTP port, the broker from the enrolled identity, and
    offload of hard inputs to ``cloud_model`` on the hub (threshold: :func:`calibrate`)."""
    config = folder / "agent.toml"
    config.write_text(
        "# Written by the demo. Device, fleet and MQTT credentials come from the\n"
        "# identity `edge-agent enroll` put in the state directory.\n"
        f"[model]\npath = {json.dumps(str(model.resolve()))}\n"
        "[http]\nenabled = true\nport = 0\n"
        "[mqtt]\nenabled = true\n"
        f"[telemetry]\ninterval_s = {TELEMETRY_INTERVAL_S}\n"
        f"[offload]\nurl = {json.dumps(f'grpc://{hub_grpc}')}\nmodel = {json.dumps(cloud_model)}\n"
    )
    return config


def calibrate(
    children: Children, model: Path, validation: Path, target: float, config: Path
) -> float:
    """``edge-agent calibrate --target-offload TARGET --write CONFIG``; the threshold."""
    out = children.run(
        agent_command(
            *("calibrate", str(model), "--data", str(validation)),
            *("--target-offload", str(target), "--write", str(config), "--json"),
        ),
        "edge-agent calibrate",
    )
    try:
        return float(json.loads(out)["chosen"]["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DemoFailed(f"edge-agent calibrate printed no threshold: {out[:300]!r}") from exc


@dataclass(frozen=True)
class RunningAgent:
    child: Child
    url: str  # http://HOST:PORT of its local inference API
    model: str


def parse_ready(status: str) -> tuple[str, str]:
    """(model name, URL) from the agent's READY status; DemoFailed when it says otherwise."""
    match = _READY_STATUS.fullmatch(status)
    if match is None:
        raise DemoFailed(f"the agent is ready but does not say where it serves: {status!r}")
    return match.group(1), match.group(2)


def start_agent(children: Children, config: Path, state_dir: Path) -> RunningAgent:
    """``edge-agent run`` once it reports READY=1."""
    ready = ReadySocket()
    children.on_stop(ready.close)  # open while the agent runs: it notifies until it stops
    child = children.start(
        "agent",
        agent_command("run", "--config", str(config), "--state-dir", str(state_dir)),
        NOTIFY_SOCKET=ready.address,
    )
    status = ready.wait(child, START_TIMEOUT_S)
    model, url = parse_ready(status)
    return RunningAgent(child, url, model)


class ReadySocket:
    """The ``NOTIFY_SOCKET`` of one agent: a unix datagram socket in the abstract namespace."""

    def __init__(self) -> None:
        name = f"edgeloop-demo-{os.getpid()}-{secrets.token_hex(4)}"
        self.address = "@" + name  # how NOTIFY_SOCKET spells an abstract name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + name)
        self._sock.settimeout(0.5)

    def wait(self, child: Child, timeout: float) -> str:
        """The STATUS sent with READY=1; DemoFailed if the agent exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise child.failure("the agent exited before it was ready")
            try:
                data = self._sock.recv(65536).decode(errors="replace")
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            if fields.get("READY") == "1":
                return fields.get("STATUS", "")
        raise child.failure(f"the agent was not ready within {timeout:.0f} s")

    def close(self) -> None:
        self._sock.close()


class Answer(NamedTuple):
    label: int  # the most probable class
    answered_by: str  # "edge" or "cloud", as the agent's response parameter says


def classify(agent: RunningAgent, images: np.ndarray) -> list[Answer]:
    """One Open Inference Protocol request per image (JSON, one keep-alive connection);
    the most probable class of each and who answered it."""
    where = urllib.parse.urlsplit(agent.url)
    connection = http.client.HTTPConnection(
        where.hostname or "127.0.0.1", where.port, timeout=REQUEST_TIMEOUT_S
    )
    path = f"/v2/models/{agent.model}/infer"
    try:
        return [_classify_one(connection, path, image) for image in images]
    except (OSError, http.client.HTTPException) as exc:
        raise DemoFailed(f"POST {agent.url}{path}: {exc}") from exc
    finally:
        connection.close()


def _classify_one(connection: http.client.HTTPConnection, path: str, image: np.ndarray) -> Answer:
    batch = image[np.newaxis].astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ]
    }
    connection.request(
        "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    answer = connection.getresponse()
    payload = answer.read()
    if answer.status != 200:
        detail = payload.decode(errors="replace")[:500]
        raise DemoFailed(f"POST {path}: HTTP {answer.status} {detail}")
    answer = json.loads(payload)
    by = str(answer.get("parameters", {}).get("edgeloop_answered_by", "edge"))
    return Answer(int(np.argmax(answer["outputs"][0]["data"])), by)
