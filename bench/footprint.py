"""What the running agent costs a device: memory over a bare ONNX Runtime, and idle CPU.

Two processes run side by side in one measurement, with the same int8 digits model and
the same intra-op thread count:

- the **daemon**: ``edge-agent run`` with the HTTP server on and telemetry to a private
  Mosquitto (or the one on 127.0.0.1:1883 when ``mosquitto`` is not installed), after a
  few requests so the serving path is loaded;
- the **bare** process: Python that imports onnxruntime, opens an ``InferenceSession`` on
  the model and runs it once — the least any Python agent could hold.

``rss_ratio`` is the daemon's RSS over the bare one's (goal <= 1.3); ``idle_cpu_pct`` is
the daemon's CPU time over a few idle seconds, in percent of one core.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil

from ._harness import PROFILE, Figure, Goal, figures_dict, log, print_table, reference_dir

RSS_RATIO_GOAL = 1.3
IDLE_CPU_GOAL_PCT = 1.0
_START_TIMEOUT_S = 120.0
_ROOT = Path(__file__).resolve().parent.parent
_MOSQUITTO = "/usr/sbin/mosquitto"

_BARE = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
session.run(None, {name: np.zeros((1, 8, 8, 1), np.float32)})
print("ready", flush=True)
sys.stdin.read()
"""


def run(quick: bool) -> dict[str, object]:
    model = reference_dir() / "digits-edge" / "digits-edge-int8.onnx"
    idle_s = 3.0 if quick else 10.0
    threads, interval_s = _profile_settings()
    with tempfile.TemporaryDirectory(prefix="edgeloop-footprint-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        broker_port = stack.enter_context(_broker(work))
        daemon, url = stack.enter_context(_daemon(work, model, broker_port))
        bare = stack.enter_context(_bare(model, threads))
        served = _requests(url, 20 if quick else 200)
        # Measure the steady state: after the first telemetry interval has been aggregated,
        # spooled and published (its first run imports and allocates what later ones reuse).
        log(f"daemon pid {daemon.pid} served {served} requests; waiting {interval_s:g}s for "
            f"a telemetry interval, then idling {idle_s:g}s")  # fmt: skip
        time.sleep(interval_s + 1.0)
        mqtt_connected = _connected_to(daemon, broker_port)
        cpu_before, started = daemon.cpu_times(), time.monotonic()
        time.sleep(idle_s)
        cpu_after, elapsed = daemon.cpu_times(), time.monotonic() - started
        rss_daemon = daemon.memory_info().rss
        rss_bare = bare.memory_info().rss
    used = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    idle_cpu_pct = 100.0 * used / elapsed
    figures = [
        Figure("rss_ratio", "daemon RSS / bare onnxruntime RSS", rss_daemon / rss_bare, "x",
               Goal("<=", RSS_RATIO_GOAL)),
        Figure("idle_cpu_pct", "idle daemon CPU (% of one core)", idle_cpu_pct, "pt",
               Goal("<=", IDLE_CPU_GOAL_PCT)),
    ]  # fmt: skip
    if not mqtt_connected:
        log("warning: the daemon was not connected to the broker while measured")
    print_table(f"footprint: digits-edge int8 ONNX, {threads} intra-op thread(s)", figures)
    print(f"  daemon RSS {rss_daemon / 2**20:.1f} MiB, bare RSS {rss_bare / 2**20:.1f} MiB\n")
    return {
        **figures_dict(figures),
        "rss_daemon_mib": round(rss_daemon / 2**20, 2),
        "rss_bare_mib": round(rss_bare / 2**20, 2),
        "idle_s": idle_s,
        "http_requests": served,
        "mqtt_connected": mqtt_connected,
    }


def _profile_settings() -> tuple[int, float]:
    """The daemon's intra-op threads (as the engine caps them) and telemetry interval."""
    from edge_agent.profiles import load_profile

    profile = load_profile(PROFILE)
    return min(profile.intra_op_threads, os.cpu_count() or 1), profile.telemetry_interval_s


def _connected_to(process: psutil.Process, port: int) -> bool:
    """Whether ``process`` holds an established TCP connection to ``port`` (the broker)."""
    connections = process.net_connections(kind="tcp")
    return any(c.raddr and c.raddr.port == port and c.status == "ESTABLISHED" for c in connections)


# -- the processes ------------------------------------------------------------------------


@contextmanager
def _broker(work: Path) -> Iterator[int]:
    """A private mosquitto on a free port, or the system's on 1883 when there is none."""
    if not Path(_MOSQUITTO).exists():
        log("mosquitto not installed here: using the broker on 127.0.0.1:1883")
        yield 1883
        return
    port = _free_port()
    config = work / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [_MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, proc)
        yield port
    finally:
        _end(proc)


@contextmanager
def _daemon(work: Path, model: Path, broker_port: int) -> Iterator[tuple[psutil.Process, str]]:
    config = work / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "state"\nprofile = "{PROFILE}"\ndevice_id = "footprint"\n'
        f'[model]\npath = "{model}"\n[http]\nport = 0\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = work / "notify.sock"
    notify.bind(str(notify_path))
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "JOURNAL_STREAM")}
    env.update(NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(_ROOT))
    command = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        status = _wait_ready(notify, proc)
        url = status.rsplit(" on ", 1)[1] if " on http://" in status else ""
        log(f"daemon ready: {status}")
        yield psutil.Process(proc.pid), url
    finally:
        _end(proc)
        notify.close()


@contextmanager
def _bare(model: Path, threads: int) -> Iterator[psutil.Process]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _BARE, str(model), str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the bare onnxruntime process did not start (said {line!r})")
        yield psutil.Process(proc.pid)
    finally:
        if proc.stdin:
            proc.stdin.close()
        _end(proc)


def _wait_ready(notify: socket.socket, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        notify.settimeout(0.5)
        try:
            data = notify.recv(65536).decode()
        except TimeoutError:
            if proc.poll() is not None:
                break
            continue
        fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        if fields.get("READY") == "1":
            return fields.get("STATUS", "")
    raise RuntimeError(f"edge-agent run did not become ready (exit status {proc.poll()})")


def _requests(url: str, count: int) -> int:
    """Send ``count`` inference requests over the daemon's HTTP API; how many succeeded."""
    if not url:
        return 0
    body = json.dumps(
        {"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32",
                     "data": [0.0] * 64}]}
    ).encode()  # fmt: skip
    done = 0
    for _ in range(count):
        request = urllib.request.Request(
            f"{url}/v2/models/digits-edge/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            done += response.status == 200
    return done


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on port {port}")


def _end(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
