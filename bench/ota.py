"""OTA updates: download throughput over our gRPC service, and local latency during a swap.

- ``grpc_over_http_copy``: one random artifact (100 MB; ``--quick``: 20 MB) in a temp
  folder, downloaded with :meth:`OtaClient.download_to` from a real :class:`HubGrpcServer`
  with the ``Ota`` service (:class:`DirectorySource` over the folder; a real registry in a
  temp data dir, a device enrolled with a token) and copied over plain HTTP from
  ``http.server.ThreadingHTTPServer`` + ``SimpleHTTPRequestHandler`` serving the same folder
  (``urllib.request``, 1 MiB reads into a file), both on loopback. The two alternate for
  :data:`ROUNDS` rounds; the figure is the median gRPC throughput over the median HTTP one
  (goal >= 0.5). Each download lands in a fresh file that is fsynced by ``download_to``;
  the HTTP copy is fsynced too, so both pay the same for the disk.
- ``swap_p99_ratio``: two client threads send keep-alive binary requests to a
  :class:`LocalInferenceServer` serving ``digits-edge-fp32.onnx`` through a
  :class:`ModelService`, without pause. Meanwhile the main thread alternates a steady gap
  with a swap, :data:`SWAPS` times: load and warm a new :class:`Engine` beside the old one
  (fp32 <-> int8, back and forth), ``service.swap(new)``, ``wait_released(old)``, close the
  old one, which is what the installer does after its health check, with its pauses
  between the steps (:data:`~edge_agent.ota.installer.SWITCH_PAUSE_S`). Engines load as the
  agent's loader loads them: the device profile resolved once, only ONNX Runtime probed,
  and a cache directory, so the graph is optimized once per model in a child process
  (:mod:`edge_agent.backends.ort_optimized`); the first two swaps pay for that, the others
  reuse the optimized graphs, as a rollback does.
  A request whose span touches a swap window counts as *during a swap*, any other as
  *steady*; the figure is the p99 of the former over the p99 of the latter (goal <= 2.0),
  with zero failed requests.
"""

from __future__ import annotations

import http.client
import http.server
import multiprocessing
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

import numpy as np

from cloud_hub.grpc_server import HubGrpcServer
from cloud_hub.ota.service import DirectorySource, add_ota_service
from cloud_hub.registry import Registry
from cloud_hub.settings import load_settings
from edge_agent.engine import Engine
from edge_agent.enroll import enroll
from edge_agent.identity import Identity
from edge_agent.ota.client import OtaClient
from edge_agent.ota.installer import SWITCH_PAUSE_S
from edge_agent.probe import probe_runtimes
from edge_agent.profiles import load_profile
from edge_agent.server import LocalInferenceServer, ModelService

from ._harness import PROFILE, Figure, Goal, figures_dict, log, print_table, reference_dir
from ._local_api import binary_request

MiB = 1024 * 1024
MB = 1_000_000
# (quick, full) artifact sizes in bytes.
ARTIFACT_BYTES = (20 * MB, 100 * MB)
ROUNDS = 3
TARGET = "models/bench/1.0.0/artifact.bin"
FLEET = "bench"
COPY_GOAL = Goal(">=", 0.5)

MODELS = (
    Path("digits-edge", "digits-edge-fp32.onnx"),
    Path("digits-edge", "digits-edge-int8.onnx"),
)
HELDOUT = Path("data", "digits-heldout.npz")
CLIENTS = 2
# (quick, full) number of swaps, and the steady gap before each one, in seconds.
SWAPS = (10, 20)
GAP_S = (0.3, 1.0)
RELEASE_TIMEOUT_S = 30.0
SWAP_GOAL = Goal("<=", 2.0)
T = TypeVar("T")


def run(quick: bool) -> dict[str, object]:
    """Measure, print the table, return the figures."""
    size = _pick(ARTIFACT_BYTES, quick)
    grpc_mb_s, http_mb_s = _download_throughputs(size)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ota-") as cache:
        swaps = _swap_latencies(
            reference_dir(), Path(cache), _pick(SWAPS, quick), _pick(GAP_S, quick)
        )
    steady_p99 = _p99_ms(swaps.steady_ns)
    swap_p99 = _p99_ms(swaps.during_ns)
    figures = [
        Figure("grpc_mb_s", "gRPC Ota download, MB/s (median)", grpc_mb_s, "n"),
        Figure("http_mb_s", "plain HTTP copy, MB/s (median)", http_mb_s, "n"),
        Figure(
            "grpc_over_http_copy", "throughput gRPC / HTTP", grpc_mb_s / http_mb_s, "x", COPY_GOAL
        ),
        Figure("steady_p99_ms", "local request p99, steady", steady_p99, "ms"),
        Figure("swap_p99_ms", "local request p99, during swaps", swap_p99, "ms"),
        Figure("swap_requests", "requests during swaps", len(swaps.during_ns), "n"),
        Figure("failed_requests", "failed local requests", swaps.failed, "n", Goal("<=", 0)),
        Figure(
            "swap_p99_ratio", "p99 during swaps / steady", swap_p99 / steady_p99, "x", SWAP_GOAL
        ),
    ]
    title = (
        f"ota: {size / MB:g} MB artifact, {ROUNDS} interleaved rounds on loopback; "
        f"{swaps.count} swaps fp32 <-> int8 under {CLIENTS} keep-alive clients, {PROFILE}"
    )
    print_table(title, figures)
    return {
        **figures_dict(figures),
        "steady_requests": len(swaps.steady_ns),
        "swap_window_ms_median": round(median(swaps.windows_ms), 3),
    }


# -- download throughput ----------------------------------------------------------------


def _download_throughputs(size: int) -> tuple[float, float]:
    """Median MB/s over :data:`ROUNDS` of the gRPC download and of the HTTP copy, alternated."""
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        artifact = repo / "targets" / TARGET
        artifact.parent.mkdir(parents=True)
        _write_random(artifact, size)
        out = work / "out"
        out.mkdir()
        with _hub(work / "hub", repo) as identity, _http_server(repo) as http_url:
            url = f"{http_url}/targets/{TARGET}"
            with OtaClient(identity.hub, identity) as client:
                grpc_s: list[float] = []
                http_s: list[float] = []
                log(f"ota: {ROUNDS} rounds of a {size / MB:g} MB download, gRPC and HTTP")
                for n in range(ROUNDS):
                    calls = [
                        (grpc_s, lambda d: _grpc_download(client, d, size)),
                        (http_s, lambda d: _http_copy(url, d)),
                    ]
                    for times, call in calls if n % 2 == 0 else reversed(calls):
                        dest = out / f"copy-{n}-{len(times)}"
                        began = time.perf_counter()
                        call(dest)
                        times.append(time.perf_counter() - began)
                        _check_copy(dest, artifact)
                        dest.unlink()
    return size / MB / median(grpc_s), size / MB / median(http_s)


def _grpc_download(client: OtaClient, dest: Path, size: int) -> None:
    got = client.download_to(TARGET, dest, expected_length=size)
    if got != size:
        raise RuntimeError(f"the gRPC download gave {got} bytes, expected {size}")


def _http_copy(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
        while chunk := response.read(MiB):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _check_copy(copy: Path, original: Path) -> None:
    """Same size and same last MiB: cheap, and a wrong offset or a short copy shows."""
    size = original.stat().st_size
    if copy.stat().st_size != size:
        raise RuntimeError(f"{copy.name}: {copy.stat().st_size} bytes, expected {size}")
    with copy.open("rb") as a, original.open("rb") as b:
        a.seek(max(size - MiB, 0))
        b.seek(max(size - MiB, 0))
        if a.read() != b.read():
            raise RuntimeError(f"{copy.name}: the last MiB differs from the artifact")


def _write_random(path: Path, size: int) -> None:
    rng = np.random.default_rng(0)
    with path.open("wb") as out:
        for start in range(0, size, 8 * MiB):
            out.write(rng.bytes(min(8 * MiB, size - start)))


@contextmanager
def _hub(data_dir: Path, repo: Path) -> Iterator[Identity]:
    """A hub gRPC server with the Ota service over ``repo`` and one enrolled device."""
    settings = load_settings(
        data_dir=data_dir, database_url=f"sqlite:///{data_dir.parent / 'hub.db'}", grpc_port=0
    )
    with Registry.open(settings) as registry:
        registry.create_fleet(FLEET)
        server = HubGrpcServer(registry, settings, broker=None, max_workers=4)
        add_ota_service(server, DirectorySource(repo))
        server.start()
        try:
            yield _enroll(server, registry)
        finally:
            server.stop(grace=None)


def _enroll(server: HubGrpcServer, registry: Registry) -> Identity:
    """A device enrolled as ``edge-agent enroll`` does it (its state in a throwaway folder)."""
    token = registry.create_enrollment_token(FLEET, ttl=timedelta(hours=1), uses=1).token
    with tempfile.TemporaryDirectory(prefix="bench-device-") as state_dir:
        hub = f"127.0.0.1:{server.port}"
        return enroll(hub, token, Path(state_dir), profile=PROFILE, hostname="bench").identity


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _http_server(root: Path) -> Iterator[str]:
    handler = partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="bench-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- latency during a swap --------------------------------------------------------------


@dataclass
class _Swaps:
    steady_ns: np.ndarray
    during_ns: np.ndarray
    failed: int
    count: int
    windows_ms: list[float]


@dataclass
class _Client:
    """One keep-alive client thread's samples: (start, end) in monotonic ns, and failures."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _swap_latencies(models: Path, cache_dir: Path, swaps: int, gap_s: float) -> _Swaps:
    paths = [models / model for model in MODELS]
    feed = _feed(models)
    # As the agent's loader does: probe only the runtime that can load the format (probing
    # every runtime imports LiteRT and looks for delegates, ~25 ms of the GIL per load).
    load = partial(
        Engine.load,
        profile=load_profile(PROFILE),  # resolved once, as the agent does
        pause_s=SWITCH_PAUSE_S,
        backend="onnxruntime",
        runtimes=probe_runtimes(["onnxruntime"]),
        cache_dir=cache_dir,
    )
    engine = load(paths[0])
    service = ModelService(engine, "digits", "1")
    windows: list[tuple[int, int]] = []
    current = engine
    with LocalInferenceServer(service, port=0) as server:
        with _client_process(server.port, feed, engine.outputs[0].name) as collect:
            log(f"ota: {swaps} swaps, {gap_s:g} s steady before each, {CLIENTS} clients")
            for n in range(swaps):
                time.sleep(gap_s)
                began = time.monotonic_ns()
                current = _swap(service, current, load(paths[(n + 1) % 2]))
                windows.append((began, time.monotonic_ns()))
            time.sleep(gap_s)
        current.close()
    clients = collect()
    for client in clients:
        if client.errors:
            log(f"ota: {client.failed} failed requests, first: {client.errors[0]}")
    starts = np.concatenate([np.asarray(c.starts, dtype=np.int64) for c in clients])
    ends = np.concatenate([np.asarray(c.ends, dtype=np.int64) for c in clients])
    during = np.zeros(len(starts), dtype=bool)
    for began, ended in windows:
        during |= (starts <= ended) & (ends >= began)
    latency = ends - starts
    return _Swaps(
        steady_ns=latency[~during],
        during_ns=latency[during],
        failed=sum(c.failed for c in clients),
        count=swaps,
        windows_ms=[(ended - began) / 1e6 for began, ended in windows],
    )


@contextmanager
def _client_process(
    port: int, feed: dict[str, np.ndarray], output: str
) -> Iterator[Callable[[], list[_Client]]]:
    """:data:`CLIENTS` client threads in a child process, as an application would be.

    Yields once the clients have sent their first requests; on exit stops them. The
    yielded call returns their samples (valid after the block).
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    started = context.Event()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_clients_main, args=(port, feed, output, stop, started, send), name="bench-clients"
    )
    child.start()
    send.close()
    result: list[_Client] = []
    try:
        if not started.wait(timeout=120):
            raise RuntimeError("the client process did not start sending requests in 120 s")
        yield lambda: result
    finally:
        stop.set()
        try:
            if receive.poll(timeout=120):
                result.extend(receive.recv())
        except EOFError:
            pass  # the child died before sending: said below, with its exit code
        finally:
            receive.close()
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    if not result:
        raise RuntimeError(f"the client process sent no samples (exit code {child.exitcode})")


def _clients_main(
    port: int,
    feed: dict[str, np.ndarray],
    output: str,
    stop: Any,
    started: Any,
    send: Any,
) -> None:
    """The child process: client threads until ``stop``, then their samples down ``send``."""
    clients = [_Client() for _ in range(CLIENTS)]
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(port, feed, output, stop, c),
            name=f"bench-client-{i}",
        )
        for i, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    while not all(c.ends or c.failed for c in clients) and not stop.is_set():
        time.sleep(0.01)
    started.set()
    for thread in threads:
        thread.join()
    send.send(clients)
    send.close()


def _swap(service: ModelService, old: Engine, new: Engine) -> Engine:
    """What the installer does once the new model is healthy: swap, wait, retire, with
    its pause before the swap and before the close."""
    time.sleep(SWITCH_PAUSE_S)
    service.swap(new)
    if not service.wait_released(old, RELEASE_TIMEOUT_S):
        raise RuntimeError(f"the old engine was still busy {RELEASE_TIMEOUT_S:g} s after a swap")
    time.sleep(SWITCH_PAUSE_S)
    old.close()
    return new


def _client_loop(
    port: int, feed: dict[str, np.ndarray], output: str, stop: Any, out: _Client
) -> None:
    """Requests back to back on one keep-alive connection until ``stop``; reconnect on error.

    Times are ``time.monotonic_ns``: one clock for this process and the swapping one.
    """
    clock = time.monotonic_ns
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            try:
                call: Callable[[], np.ndarray] = binary_request(conn, feed, output)
            except OSError as exc:
                out.failed += 1
                out.errors.append(f"connecting: {exc}")
                continue
            while not stop.is_set():
                began = clock()
                try:
                    result = call()
                except (OSError, http.client.HTTPException, RuntimeError) as exc:
                    out.failed += 1
                    out.errors.append(f"{type(exc).__name__}: {exc}")
                    break
                out.starts.append(began)
                out.ends.append(clock())
                if result.shape != (1, 10):
                    out.failed += 1
                    out.errors.append(f"unexpected output shape {result.shape}")
        finally:
            conn.close()


def _feed(models: Path) -> dict[str, np.ndarray]:
    image = np.load(models / HELDOUT)["x"][:1].astype(np.float32)
    return {"image": image}


def _p99_ms(samples_ns: np.ndarray) -> float:
    if len(samples_ns) == 0:
        raise RuntimeError("no requests were timed in this window")
    return float(np.percentile(samples_ns, 99)) / 1e6


def _pick(counts: tuple[T, T], quick: bool) -> T:
    return counts[0] if quick else counts[1]


__all__ = ["run"]
