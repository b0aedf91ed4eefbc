"""``cloud-hub serve`` as a real process: ports 0, health, tokens from the CLI, SIGTERM.

Each hub gets a data directory in tmp_path, a private Mosquitto for its ingest, and free
ports it picks itself (read back from its ``listening`` line). Runs over SQLite and, with
``--database-url``, PostgreSQL.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import hub_db
import pytest
from mqtt_broker import MosquittoBroker

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for hub commands: no EDGELOOP_HUB_* from outside, home in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_HUB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


class HubProcess:
    """``cloud-hub serve ARGS`` in a child process; its stdout lines arrive in a queue."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.stderr_path = tmp_path / f"hub-{time.monotonic_ns()}.err"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloud_hub.cli", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {prefix!r} line in {timeout:.0f} s:\n{self.log()}")
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    raise AssertionError(
                        f"the hub exited ({self.process.returncode}):\n{self.log()}"
                    ) from None
                continue
            self.stdout.append(line)
            if line.startswith(prefix):
                return line

    def listening(self) -> dict[str, str]:
        """``{"http": "127.0.0.1:PORT", ...}`` from the hub's ``listening`` line."""
        line = self.wait_for_line("listening ")
        return dict(part.split("=", 1) for part in line.split()[1:])

    def terminate(self) -> int:
        """SIGTERM, then the exit status (which must come within STOP_TIMEOUT_S)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the hub did not exit {STOP_TIMEOUT_S:.0f} s after SIGTERM:\n{self.log()}"
            ) from None

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


StartHub = Callable[..., HubProcess]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture(params=hub_db.BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with hub_db.database(request.param, tmp_path, "serve") as url:
        yield url


@pytest.fixture
def start_hub(tmp_path: Path, broker: MosquittoBroker) -> Iterator[StartHub]:
    """``start_hub(*args)``: a hub on free ports with this test's broker; all killed after."""
    started: list[HubProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> HubProcess:
        hub = HubProcess(
            tmp_path,
            [
                "--http-port",
                "0",
                "--grpc-port",
                "0",
                "--offload-port",
                "0",
                "--mqtt-port",
                str(broker.port),
                *args,
            ],
            env or _env(tmp_path),
        )
        started.append(hub)
        return hub

    yield start
    for hub in started:
        hub.stop()


def _cli(tmp_path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", *args],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url}/healthz never answered ok"
        time.sleep(0.1)


def test_serve_answers_with_a_cli_token_and_stops_on_sigterm(
    tmp_path: Path, start_hub: StartHub, broker: MosquittoBroker
) -> None:
    data = tmp_path / "data"
    hub = start_hub("--data-dir", str(data))
    where = hub.listening()
    for part in ("http", "grpc"):
        host, port = where[part].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0, where
    assert where["mqtt"] == f"127.0.0.1:{broker.port}"
    with socket.create_connection(("127.0.0.1", int(where["grpc"].rsplit(":", 1)[1])), 10):
        pass
    url = f"http://{where['http']}"
    _wait_healthy(url)
    hub.wait_for_line("no operator token yet: create one with cloud-hub operator-token create")
    assert (data / "hub.db").is_file()

    token = _cli(tmp_path, "operator-token", "create", "ci", "--data-dir", str(data))
    assert httpx.get(f"{url}/api/v1/fleets", timeout=10).status_code == 401
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{url}/api/v1/fleets", json={"name": "lab"}, headers=headers)
    assert created.status_code == 201, created.text
    assert [f["name"] for f in httpx.get(f"{url}/api/v1/fleets", headers=headers).json()] == ["lab"]

    assert hub.terminate() == 0, hub.log()
    assert "hub stopped" in hub.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)


def test_a_restart_keeps_the_data(tmp_path: Path, start_hub: StartHub, database_url: str) -> None:
    options = ("--data-dir", str(tmp_path / "data"), "--database-url", database_url)
    token = _cli(tmp_path, "operator-token", "create", "ci", *options)
    headers = {"Authorization": f"Bearer {token}"}

    first = start_hub(*options)
    url = f"http://{first.listening()['http']}"
    _wait_healthy(url)
    created = httpx.post(f"{url}/api/v1/fleets", json={"name": "kept"}, headers=headers)
    assert created.status_code == 201, created.text
    assert first.terminate() == 0, first.log()

    second = start_hub(*options)
    url = f"http://{second.listening()['http']}"
    _wait_healthy(url)
    fleets = httpx.get(f"{url}/api/v1/fleets", headers=headers).json()
    assert [f["name"] for f in fleets] == ["kept"]
    assert not any(line.startswith("no operator token") for line in second.stdout)
    assert second.terminate() == 0, second.log()


def test_settings_from_a_toml_file_and_the_environment(tmp_path: Path, start_hub: StartHub) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('data_dir = "from-toml"\nhttp_host = "127.0.0.1"\nhttp_port = 8080\n')
    # The environment wins over the file: port 0 rather than 8080.
    env = _env(tmp_path, EDGELOOP_HUB_HTTP_PORT="0")
    hub = start_hub("--config", str(config), env=env)
    address = hub.listening()["http"]
    assert address != "127.0.0.1:8080"
    _wait_healthy(f"http://{address}")
    assert (tmp_path / "from-toml" / "hub.db").is_file()
    assert hub.terminate() == 0, hub.log()


def test_bad_settings_fail_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", "serve", "--http-port", "70000"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "cloud-hub: error: bad hub setting: http_port = 70000 (from the command line): expected"
    )


def test_a_port_in_use_is_refused_and_nothing_is_left_running(
    tmp_path: Path, start_hub: StartHub
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hub = start_hub("--data-dir", str(tmp_path / "data"), "--http-port", str(port))
        assert hub.process.wait(START_TIMEOUT_S) == 1
    log = hub.log()
    assert f"cannot listen on 127.0.0.1:{port} for the REST API" in log
    assert "close the database" in log
