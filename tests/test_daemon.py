"""`edge-agent run` as a real process: systemd notify, signals, start-up failures, draining.

Every test starts the daemon as a subprocess with a real model and, where systemd would,
a real unix datagram socket in ``NOTIFY_SOCKET``; every process is killed at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mqtt_broker import Collector, MosquittoBroker, wait_until

from edge_agent.engine import Engine
from edge_agent.model_card import read_card

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0  # model load and warm-up on a loaded 2-core machine
EXIT_TIMEOUT_S = 10.0  # what the issue promises after SIGTERM


@pytest.fixture
def model(reference_dir: Path) -> Path:
    return reference_dir / "digits-edge" / "digits-edge-int8.onnx"


def write_config(
    folder: Path,
    model: Path,
    *,
    http: bool = False,
    mqtt: str = "enabled = false",
    extra: str = "",
) -> Path:
    config = folder / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "state"\nprofile = "x86-64-cpu"\ndevice_id = "dev-1"\n'
        f'fleet = "lab"\n[model]\npath = "{model}"\n'
        f"[http]\nenabled = {'true' if http else 'false'}\nport = 0\n"
        f"[mqtt]\n{mqtt}\n{extra}"
    )
    return config


def clean_env() -> dict[str, str]:
    """Our environment without what systemd may have given the test run itself."""
    inherited = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    env.pop("EDGELOOP_STATE_DIR", None)
    return dict(env, PYTHONPATH=str(ROOT))


class NotifyListener:
    """A real NOTIFY_SOCKET: collects every datagram the daemon sends."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(
        self, check: Callable[[dict[str, str]], bool], timeout: float, proc: subprocess.Popen[bytes]
    ) -> dict[str, str]:
        """The first message (seen or new) for which ``check`` holds."""
        for message in self.messages:
            if check(message):
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                if proc.poll() is not None:
                    break
                continue
            message = dict(line.split("=", 1) for line in data.splitlines() if line)
            self.messages.append(message)
            if check(message):
                return message
        raise AssertionError(f"no matching notify message; got {self.messages}")

    def count(self, key: str) -> int:
        return sum(key in message for message in self.messages)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    notify: NotifyListener
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def ready(self) -> dict[str, str]:
        try:
            return self.notify.wait_for(lambda m: m.get("READY") == "1", START_TIMEOUT_S, self.proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr:\n{self.stderr}") from None

    def exit_code_after(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=EXIT_TIMEOUT_S)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(
        config: Path,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        argv: list[str] | None = None,
    ) -> Daemon:
        notify = NotifyListener(tmp_path)
        stderr_path = tmp_path / f"stderr-{len(started)}.log"
        full_env = dict(clean_env(), NOTIFY_SOCKET=notify.path, **(env or {}))
        command = argv or [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "run",
            "--config",
            str(config),
            *args,
        ]
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                command, env=full_env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path
            )
        daemon = Daemon(proc, notify, stderr_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=30)
        daemon.notify.close()


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
        cwd=cwd,
        env=clean_env(),
    )


# -- systemd notify and signals ---------------------------------------------------------


def test_daemon_notifies_ready_status_watchdog_and_stopping(
    tmp_path: Path, model: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(write_config(tmp_path, model), env={"WATCHDOG_USEC": "1000000"})
    ready = daemon.ready()
    assert ready["STATUS"].startswith("serving digits-edge")
    assert ready["MAINPID"] == str(daemon.proc.pid)
    statuses = [m["STATUS"] for m in daemon.notify.messages if "STATUS" in m]
    assert any(s.startswith("loading model") for s in statuses)
    # WATCHDOG_USEC = 1 s: a ping every 0.5 s from the main loop; wait for several.
    daemon.notify.wait_for(lambda _: daemon.notify.count("WATCHDOG") >= 3, 30, daemon.proc)
    assert daemon.exit_code_after(signal.SIGTERM) == 0
    stopping = daemon.notify.wait_for(lambda m: m.get("STOPPING") == "1", 5, daemon.proc)
    assert "SIGTERM" in stopping["STATUS"]
    order = [next(iter(m)) for m in daemon.notify.messages if "READY" in m or "STOPPING" in m]
    assert order == ["READY", "STOPPING"]
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_sigint_stops_the_same_way_and_logs_for_the_journal(
    tmp_path: Path, model: Path, start_daemon: Callable[..., Daemon]
) -> None:
    # JOURNAL_STREAM names the daemon's stderr the way systemd sets it: "<device>:<inode>".
    config = write_config(tmp_path, model)
    probe = tmp_path / "stderr-0.log"
    probe.touch()
    info = probe.stat()
    daemon = start_daemon(config, env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    daemon.ready()
    assert daemon.exit_code_after(signal.SIGINT) == 0
    daemon.notify.wait_for(lambda m: m.get("STOPPING") == "1", 5, daemon.proc)
    lines = daemon.stderr.splitlines()
    assert lines and all(line.startswith(("<6>", "<7>", "<4>")) for line in lines), lines
    assert any(line.startswith("<6>edge_agent.service.daemon: ready") for line in lines)


def test_without_journal_stream_lines_carry_a_timestamp(
    tmp_path: Path, model: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(write_config(tmp_path, model), args=("--log-level", "debug"))
    daemon.ready()
    assert daemon.exit_code_after(signal.SIGTERM) == 0
    lines = daemon.stderr.splitlines()
    assert any(" DEBUG edge_agent.service.daemon: profile: " in line for line in lines)
    assert all(line[:2] == "20" and line[4] == "-" for line in lines), lines


# -- start-up failures ------------------------------------------------------------------


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("edge-agent: error: "), done.stderr
    return last


def test_a_missing_model_fails_start_up_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "missing.onnx")
    done = _run_cli("--config", str(config), "--log-level", "warning", cwd=tmp_path)
    assert (
        _one_error_line(done)
        == f"edge-agent: error: {tmp_path / 'missing.onnx'}: no such model file"
    )
    assert done.stderr.count("\n") == 1


def test_a_corrupt_model_fails_start_up_with_one_line(tmp_path: Path, model: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    done = _run_cli("--config", str(write_config(tmp_path, corrupt)), cwd=tmp_path)
    line = _one_error_line(done)
    assert f"{corrupt}: onnxruntime cannot load this model" in line


def test_a_bad_config_fails_with_the_key_and_the_value(tmp_path: Path, model: Path) -> None:
    config = write_config(tmp_path, model, extra="[shutdown]\ndrain_timeout = 3\n")
    done = _run_cli("--config", str(config), cwd=tmp_path)
    assert _one_error_line(done) == (
        f"edge-agent: error: {config}: shutdown.drain_timeout = 3: expected one of drain_timeout_s"
    )
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "state").exists()


def test_a_group_writable_state_dir_is_refused(tmp_path: Path, model: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o770)
    done = _run_cli("--config", str(write_config(tmp_path, model)), cwd=tmp_path)
    line = _one_error_line(done)
    assert f"state directory {state}: mode 0770 is group- or world-writable" in line


def test_state_dir_flag_wins_over_env_and_config(tmp_path: Path, model: Path) -> None:
    config = write_config(tmp_path, model)
    flagged = tmp_path / "flagged"
    done = _run_cli("--config", str(config), "--state-dir", str(flagged), "--check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"state_dir  {flagged}" in done.stdout


def test_print_example_config_prints_a_valid_config(tmp_path: Path) -> None:
    done = _run_cli("--print-example-config", cwd=tmp_path)
    assert done.returncode == 0
    assert "[model]" in done.stdout and "drain_timeout_s" in done.stdout


# -- telemetry --------------------------------------------------------------------------

TOPICS = "edgeloop/v1/lab/dev-1/#"


def test_with_mqtt_the_daemon_goes_online_reports_and_goes_offline_on_sigterm(
    tmp_path: Path, model: Path, start_daemon: Callable[..., Daemon]
) -> None:
    broker_dir = tmp_path / "broker"
    with MosquittoBroker(broker_dir) as broker, Collector(broker.port, TOPICS) as hub:
        mqtt = f'enabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
        extra = "[telemetry]\ninterval_s = 0.5\n"
        config = write_config(tmp_path, model, http=True, mqtt=mqtt, extra=extra)
        daemon = start_daemon(config)
        url = daemon.ready()["STATUS"].rsplit(" on ", 1)[1]
        answers: list[object] = []
        _infer(url, np.zeros((3, 8, 8, 1), np.float32), answers)
        assert isinstance(answers[0], tuple) and answers[0][0] == 200, answers
        hub.wait_for(
            lambda ms: any(m["kind"] == "status" and m["state"] == "online" for m in ms),
            what="status online",
        )
        started = hub.wait_for(
            lambda ms: any(m["kind"] == "events" for m in ms), what="the started event"
        )
        event = next(m for m in started if m["kind"] == "events")
        assert event["event"] == "started"
        assert event["data"]["name"] == "digits-edge"
        # the HTTP server feeds the recorder the publisher aggregates
        telemetry = hub.wait_for(
            lambda ms: sum(m["requests"] for m in ms if m["kind"] == "telemetry") >= 1,
            what="telemetry counting the request",
        )
        first = next(m for m in telemetry if m["kind"] == "telemetry")
        card = read_card(model)
        assert card is not None
        assert first["model"] == {
            "name": "digits-edge",
            "version": card.version,
            "backend": "onnxruntime",
            "format": "onnx",
        }
        assert daemon.exit_code_after(signal.SIGTERM) == 0
        statuses = hub.wait_for(
            lambda ms: [m["state"] for m in ms if m["kind"] == "status"][-1:] == ["offline"],
            what="status offline",
        )
    boot_ids = {m["boot_id"] for m in statuses}
    assert len(boot_ids) == 1
    assert (tmp_path / "state" / "telemetry-spool.sqlite3").exists()


# -- draining on SIGTERM ----------------------------------------------------------------

# The daemon with the real model behind a gate, a seam we own: the engine is a subclass of
# Engine whose run() waits, for a batch of more than one, until the test opens the gate,
# so a request is certainly in flight when SIGTERM arrives.
GATED_DAEMON = """
import sys, time
from pathlib import Path
from edge_agent.config import load_config
from edge_agent.engine import Engine
from edge_agent.service.daemon import serve
from edge_agent.service.logs import configure_logging

GATE = Path(sys.argv[2])

class GatedEngine(Engine):
    def run(self, feeds):
        if next(iter(feeds.values())).shape[0] > 1:
            (GATE.parent / "entered").touch()
            deadline = time.monotonic() + 120
            while not GATE.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().run(feeds)

configure_logging("info")
sys.exit(serve(load_config(sys.argv[1]), engine_loader=GatedEngine.load))
"""


def _infer(url: str, batch: np.ndarray, results: list[object]) -> None:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "data": batch.ravel().tolist(),
                }
            ]
        }
    ).encode()
    request = urllib.request.Request(
        f"{url}/v2/models/digits-edge/infer",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            results.append((response.status, json.loads(response.read())))
    except Exception as exc:  # reported by the test's assertion
        results.append(exc)


def _refuses(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # caught in the backlog of a listener that is closing: look again


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    tmp_path: Path,
    model: Path,
    heldout: tuple[np.ndarray, np.ndarray],
    start_daemon: Callable[..., Daemon],
) -> None:
    config = write_config(tmp_path, model, http=True, extra="[shutdown]\ndrain_timeout_s = 60\n")
    gate = tmp_path / "gate"
    daemon = start_daemon(config, argv=[sys.executable, "-c", GATED_DAEMON, str(config), str(gate)])
    url = daemon.ready()["STATUS"].rsplit(" on ", 1)[1]
    batch = heldout[0][:4].astype(np.float32)
    results: list[object] = []
    client = threading.Thread(target=_infer, args=(url, batch, results))
    client.start()
    try:
        wait_until(lambda: (tmp_path / "entered").exists(), 60, "the request to reach the model")
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.notify.wait_for(lambda m: m.get("STOPPING") == "1", 30, daemon.proc)
        wait_until(lambda: _refuses(url), 30, "new connections to be refused")
        assert daemon.proc.poll() is None  # still draining: the request holds it
    finally:
        gate.touch()
        client.join(timeout=120)
    assert daemon.proc.wait(timeout=EXIT_TIMEOUT_S) == 0
    assert len(results) == 1 and isinstance(results[0], tuple), results
    status, answer = results[0]
    assert status == 200
    output = next(o for o in answer["outputs"] if o["name"] == "probabilities")
    probabilities = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    with Engine.load(model, profile="x86-64-cpu") as engine:
        expected = engine.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
