"""What dynamic batching buys the hub's offload server: throughput and tail latency.

Two offload servers run the same code in two child processes, on the same registry and
the ``digits-cloud`` model (fp32, about 300 us per single input on the reference
machine): one with the defaults (``offload_max_batch`` 32, ``offload_max_queue_delay_ms``
2) and one with batching off (max batch 1, no delay). Both require an operator token, as
in production. This process is the load: ``c`` closed-loop clients, each a thread with
one keep-alive connection sending single-digit binary-tensor requests (pre-encoded raw
HTTP, so the client costs little beside the server). For each concurrency the two
servers are measured in alternating rounds, so drift and a noisy neighbour hit both.

Figures: requests per second, and p50/p95/p99 latency seen by the client, per
concurrency and mode, over all rounds. The ratios are taken per round (the two modes
measured back to back) and the median round is reported, so a burst from a neighbour
spoils one round, not the figure. Goals: ``throughput_gain_c16`` (on / off at 16
clients) >= 1.5, ``p95_ratio_c16`` (on / off) <= 1.5, ``p50_ratio_c1`` (on / off with one
client: what batching costs a lone caller) <= 1.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._harness import Figure, Goal, figures_dict, log, print_table, reference_dir

MODEL = "digits-cloud"
CLOUD = Path("digits-cloud", "digits-cloud-fp32.onnx")
HELDOUT = Path("data", "digits-heldout.npz")
CONCURRENCY = (1, 4, 16, 32)
# (quick, full): seconds per round, rounds per (concurrency, mode).
ROUND_S = (0.6, 1.5)
ROUNDS = (4, 8)
WARMUP_S = 0.3
START_TIMEOUT_S = 120.0
MODES: dict[str, dict[str, Any]] = {
    "on": {},  # the defaults: max batch 32, max queue delay 2 ms
    "off": {"offload_max_batch": 1, "offload_max_queue_delay_ms": 0},
}


def run(quick: bool) -> dict[str, object]:
    models = reference_dir()
    round_s, rounds = ROUND_S[0 if quick else 1], ROUNDS[0 if quick else 1]
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        token = _prepare(Path(tmp), models)
        servers = {mode: _Child(Path(tmp), mode) for mode in MODES}
        try:
            ports = {mode: child.port() for mode, child in servers.items()}
            images = np.load(models / HELDOUT)["x"]
            results: dict[tuple[str, int], list[np.ndarray]] = {}
            completed: dict[tuple[str, int], float] = {}
            for c in CONCURRENCY:
                log(f"batching: {c} client(s), {rounds} round(s) of {round_s:g} s per mode")
                for r in range(rounds):
                    order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                    for mode in order:
                        latencies, seconds = _load(ports[mode], token, images, c, round_s)
                        results.setdefault((mode, c), []).append(latencies)
                        completed[(mode, c)] = completed.get((mode, c), 0.0) + seconds
        finally:
            for child in servers.values():
                child.stop()
    table, figures = _figures(results, completed)
    print(table)
    gain = _median_ratio(results, 16, lambda lat: lat.size)
    p95 = _median_ratio(results, 16, lambda lat: float(np.percentile(lat, 95)))
    p50 = _median_ratio(results, 1, lambda lat: float(np.percentile(lat, 50)))
    goals = [
        Figure(
            "throughput_gain_c16", "throughput on / off, 16 clients", gain, "x", Goal(">=", 1.5)
        ),
        Figure("p95_ratio_c16", "p95 on / off, 16 clients", p95, "x", Goal("<=", 1.5)),
        Figure("p50_ratio_c1", "p50 on / off, 1 client", p50, "x", Goal("<=", 1.1)),
    ]
    print_table(f"batching: {MODEL} fp32, single-digit binary HTTP requests, same server", goals)
    return {**figures_dict(goals), **{k: round(v, 4) for k, v in figures.items()}}


def _median_ratio(
    results: dict[tuple[str, int], list[np.ndarray]],
    clients: int,
    measure: Callable[[np.ndarray], float],
) -> float:
    """The median over rounds of measure(on) / measure(off) (rounds are equally long)."""
    pairs = zip(results[("on", clients)], results[("off", clients)], strict=True)
    return float(np.median([measure(on) / measure(off) for on, off in pairs]))


def _figures(
    results: dict[tuple[str, int], list[np.ndarray]], seconds: dict[tuple[str, int], float]
) -> tuple[str, dict[str, float]]:
    figures: dict[str, float] = {}
    lines = [
        f"  {'clients':>7}  {'batching':>8}  {'req/s':>9}  {'p50 ms':>8}  {'p95 ms':>8}  "
        f"{'p99 ms':>8}",
    ]
    for c in CONCURRENCY:
        for mode in MODES:
            samples = np.concatenate(results[(mode, c)])
            rps = samples.size / seconds[(mode, c)]
            p50, p95, p99 = (float(np.percentile(samples, q)) * 1e3 for q in (50, 95, 99))
            figures[f"rps_{mode}_c{c}"] = rps
            figures[f"p50_ms_{mode}_c{c}"] = p50
            figures[f"p95_ms_{mode}_c{c}"] = p95
            figures[f"p99_ms_{mode}_c{c}"] = p99
            lines.append(
                f"  {c:>7}  {mode:>8}  {rps:>9,.0f}  {p50:>8.2f}  {p95:>8.2f}  {p99:>8.2f}"
            )
    return "\n".join(lines) + "\n", figures


# -- the servers ------------------------------------------------------------------------------


def _prepare(root: Path, models: Path) -> str:
    """A hub data directory with the model registered; an operator token for it."""
    from cloud_hub.registry import Registry
    from cloud_hub.settings import load_settings

    with Registry.open(load_settings(data_dir=root / "hub")) as registry:
        registry.register_model(MODEL, "1", "onnx-fp32", models / CLOUD)
        return registry.create_operator_token("bench").token


class _Child:
    """``python -m bench.batching SERVE DATA_DIR MODE``: one offload server, port on stdout."""

    def __init__(self, root: Path, mode: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.batching", "serve", str(root / "hub"), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def port(self) -> int:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the child prints its port once it serves
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the offload server did not start (said {line!r})")
        return int(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the child stops when its stdin closes
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _serve(data_dir: str, mode: str) -> None:
    from cloud_hub.offload import OffloadServer
    from cloud_hub.registry import Registry
    from cloud_hub.settings import load_settings

    settings = load_settings(None, data_dir=data_dir, offload_http_port=0, **MODES[mode])
    with Registry.open(settings) as registry:
        server = OffloadServer(registry, settings)
        server.start()
        try:
            server.pool.get(MODEL, None)  # loaded before the clients come
            print(server.http.port, flush=True)
            sys.stdin.read()  # until the parent closes it
        finally:
            server.stop()


# -- the load ---------------------------------------------------------------------------------


def _request(port: int, token: str, image: np.ndarray) -> bytes:
    raw = np.ascontiguousarray(image[None], dtype="<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [1, *image.shape],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    lines = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(head)}\r\n"
        f"Content-Length: {len(head) + len(raw)}\r\n\r\n"
    )
    return lines.encode() + head + raw


def _client(
    port: int, requests: list[bytes], start: threading.Barrier, until: list[float]
) -> list[float]:
    """One closed-loop client: latencies (s) of the requests it finished before the end."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies: list[float] = []
    buffer = b""
    clock = time.perf_counter
    try:
        start.wait()
        i = 0
        while True:
            began = clock()
            if began >= until[1]:
                return latencies
            sock.sendall(requests[i % len(requests)])
            i += 1
            buffer = _read_response(sock, buffer)
            if began >= until[0]:  # after the warm-up
                latencies.append(clock() - began)
    finally:
        sock.close()


def _read_response(sock: socket.socket, buffer: bytes) -> bytes:
    """Read one response off ``sock``; what arrived after it."""
    while b"\r\n\r\n" not in buffer:
        buffer += _recv(sock)
    head, _, rest = buffer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"the offload server answered {head[:200]!r} {rest[:200]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += _recv(sock)
    return rest[length:]


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("the offload server closed the connection")
    return data


def _load(
    port: int, token: str, images: np.ndarray, clients: int, seconds: float
) -> tuple[np.ndarray, float]:
    """``clients`` closed-loop clients for ``seconds`` after a warm-up: latencies, span."""
    start = threading.Barrier(clients + 1)
    until = [0.0, 0.0]
    out: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        mine = [_request(port, token, images[(n * 7 + k) % len(images)]) for k in range(16)]
        try:
            out[n] = _client(port, mine, start, until)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    until[0], until[1] = now + WARMUP_S, now + WARMUP_S + seconds
    start.wait()
    for thread in threads:
        thread.join(seconds + 60)
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}") from errors[0]
    return np.asarray([x for part in out for x in part]), seconds


if __name__ == "__main__":  # the child: python -m bench.batching serve DATA_DIR MODE
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        sys.exit("usage: python -m bench.batching serve DATA_DIR on|off")
    _serve(sys.argv[2], sys.argv[3])
