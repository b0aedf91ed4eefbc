"""The demo (``scripts/demo``): its pure parts, its private broker, and the whole run.

The whole run is ``python -m cloud_hub.demo`` as a child process on the cached reference
models, writing into tmp_path, with a private Mosquitto (the broker on 127.0.0.1:1883 may
serve another hub, which would share our hub's MQTT client id). It must end with exit 0,
the device online, every request counted by the hub, good accuracy, and nothing left
running in its process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.demo.broker import accepts_anonymous, free_port, parse_address, start_private
from cloud_hub.demo.errors import DemoFailed
from cloud_hub.demo.hub import parse_listening
from cloud_hub.demo.processes import Children
from cloud_hub.demo.report import accuracy, requests_seen, worst_p95_ms

REPO = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT_S = 600.0  # a loaded 2-core machine; the demo itself takes seconds


def _record(requests: int, p95: float | None) -> dict[str, object]:
    latency = {} if p95 is None else {"p95": p95}
    return {"payload": {"requests": requests, "latency_ms": latency}}


# -- pure parts -----------------------------------------------------------------------------


def test_telemetry_figures_add_requests_and_keep_the_worst_p95() -> None:
    records = [
        _record(120, 0.4),
        _record(80, 1.5),
        _record(0, 9.0),  # an idle window's figure says nothing
        _record(3, float("nan")),
        _record(2, None),
    ]
    assert requests_seen(records) == 205
    assert worst_p95_ms(records) == 1.5
    assert worst_p95_ms([_record(0, 3.0)]) is None
    assert requests_seen([]) == 0


def test_accuracy_counts_right_answers() -> None:
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == (3, 0.75)
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([1, 2, 3], [1, 2])


def test_listening_line_parses_and_refuses_a_hub_without_a_part() -> None:
    where = parse_listening("http=127.0.0.1:8080 grpc=127.0.0.1:50051 mqtt=127.0.0.1:1883")
    assert where == {"http": "127.0.0.1:8080", "grpc": "127.0.0.1:50051", "mqtt": "127.0.0.1:1883"}
    with pytest.raises(DemoFailed, match="without mqtt"):
        parse_listening("http=127.0.0.1:8080 grpc=127.0.0.1:50051 mqtt=off")


def test_broker_addresses_parse() -> None:
    assert parse_address("broker.lan:1884") == ("broker.lan", 1884)
    assert parse_address("[::1]:1883") == ("::1", 1883)
    for bad in ("broker.lan", ":1883", "host:99999", "host:port"):
        with pytest.raises(DemoFailed, match="expected auto, private or HOST:PORT"):
            parse_address(bad)


# -- the private broker ---------------------------------------------------------------------


def test_private_mosquitto_takes_anonymous_clients_and_stops(tmp_path: Path) -> None:
    with Children(tmp_path) as children:
        broker = start_private(tmp_path, children)
        assert accepts_anonymous(broker.host, broker.port)
        assert (tmp_path / "mosquitto.conf").read_text().startswith(f"listener {broker.port} ")
    assert children.problems == []
    assert not accepts_anonymous(broker.host, broker.port)


def test_nothing_listening_is_no_broker() -> None:
    assert not accepts_anonymous("127.0.0.1", free_port())


# -- the whole demo -------------------------------------------------------------------------


def run_demo(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The demo in its own process group; afterwards nothing may be left in that group."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGELOOP_HUB")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    demo = subprocess.Popen(
        [sys.executable, "-m", "cloud_hub.demo", "--workdir", str(folder / "work"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=folder,
        start_new_session=True,
    )
    try:
        out, err = demo.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        out, err = demo.communicate()
        pytest.fail(f"the demo ran past {DEMO_TIMEOUT_S:.0f} s:\n{out}\n{err}")
    leftover = _group_alive(demo.pid)
    if leftover:
        os.killpg(demo.pid, signal.SIGKILL)
    assert not leftover, f"the demo left processes running:\n{out}\n{err}"
    return subprocess.CompletedProcess(demo.args, demo.returncode, out, err)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_demo_runs_a_fleet_of_one(tmp_path: Path, reference_dir: Path) -> None:
    done = run_demo(tmp_path, "--out", str(reference_dir), "--broker", "private")
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    assert "onnxruntime  digits-edge-int8.onnx" in done.stdout, report
    assert re.search(r"^  device status: +online$", done.stdout, re.MULTILINE), report
    seen = re.search(r"^  requests seen by the hub: +(\d+) \(sent (\d+)\)$", done.stdout, re.M)
    assert seen and seen.groups() == ("200", "200"), report
    right = re.search(r"^  accuracy: +([0-9.]+) \((\d+)/200 held-out digits\)$", done.stdout, re.M)
    assert right and float(right.group(1)) > 0.9, report
    assert re.search(r"^  p95 latency \(telemetry\): +[0-9.]+ ms", done.stdout, re.M), report
    # The cascade: some hard digits went to the hub, which kept every one of them.
    cloud = re.search(
        r"^  answered by the hub: +(\d+) of 200 \(confidence under ", done.stdout, re.M
    )
    assert cloud and 1 <= int(cloud.group(1)) <= 100, report
    kept = re.search(r"^  hard examples on the hub: +(\d+)$", done.stdout, re.M)
    assert kept and int(kept.group(1)) == int(cloud.group(1)), report
    assert "cloud-hub --data-dir" in done.stdout and "Authorization: Bearer eop_" in done.stdout
    for name in ("agent", "hub", "mosquitto"):
        assert f"  stopped {name}\n" in done.stdout, report
    demo = tmp_path / "work" / "demo"
    assert (demo / "hub" / "hub.db").is_file() and (demo / "agent" / "identity.json").is_file()
    assert not (tmp_path / "work" / "reference").exists()  # --out was used, nothing rebuilt


@pytest.mark.slow
def test_demo_fails_clearly_without_a_broker(tmp_path: Path, reference_dir: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = run_demo(tmp_path, "--out", str(reference_dir), "--broker", address)
    assert done.returncode == 1, done.stdout
    assert f"--broker {address}: no MQTT broker there accepts anonymous" in done.stderr
    assert "step 2 FAILED" in done.stderr
