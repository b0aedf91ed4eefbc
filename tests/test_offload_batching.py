"""The dynamic batcher through the real HTTP server, with a fake model at the runner seam.

The fake model blocks on a gate the test opens, so what is queued, what batches together
and what expires is decided by the test, not by timing: nothing here depends on how
fast a loaded machine is. Plus the batcher's pure decisions, as tables.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.offload import OffloadServer, batching
from cloud_hub.offload.batching import (
    concatenate,
    retry_after_ms,
    split,
    take,
    target_rows,
    track_peak,
)
from cloud_hub.registry import ModelVersion, Registry
from cloud_hub.settings import load_settings
from edge_agent.tensors import TensorSpec

MODEL = "fake"
WAIT_S = 30.0  # generous: only reached when something is broken
F32 = np.dtype(np.float32)


class GatedModel:
    """Doubles its input; blocks each run until the test opens the gate; fails on -1."""

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)
        self.calls: list[np.ndarray] = []
        self.entered = threading.Semaphore(0)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("x", (-1, -1), F32, F32),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("y", (-1, -1), F32, F32),)

    @property
    def accelerator(self) -> str:
        return "cpu"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        self.calls.append(x.copy())
        self.entered.release()
        assert self.gate.acquire(timeout=WAIT_S), "the test never opened the gate"
        if (x == -1).any():
            raise RuntimeError("poisoned row")
        return {"y": x * 2}

    def close(self) -> None:
        pass


class Server:
    def __init__(self, offload: OffloadServer, model: GatedModel) -> None:
        self.offload = offload
        self.model = model
        self.host, port = offload.address.rsplit(":", 1)
        self.port = int(port)

    def post(self, x: np.ndarray, **parameters: Any) -> tuple[int, dict[str, Any], Any]:
        body: dict[str, Any] = {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
        if parameters:
            body["parameters"] = parameters
        connection = http.client.HTTPConnection(self.host, self.port, timeout=WAIT_S)
        try:
            connection.request("POST", f"/v2/models/{MODEL}/infer", json.dumps(body))
            response = connection.getresponse()
            return response.status, json.loads(response.read()), response.headers
        finally:
            connection.close()

    def queued(self) -> int:
        return sum(m.batcher.queued for m in self.offload.pool.loaded())

    def wait_queued(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while self.queued() < count:
            assert time.monotonic() < deadline, f"never {count} queued (have {self.queued()})"
            time.sleep(0.005)

    def metrics(self) -> str:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=WAIT_S)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    started: list[tuple[OffloadServer, Registry, GatedModel]] = []

    def start(**settings: Any) -> Server:
        options = {"offload_http_port": 0, "offload_auth": False, **settings}
        hub_settings = load_settings(data_dir=tmp_path / f"hub{len(started)}", **options)
        registry = Registry.open(hub_settings)
        artifact = tmp_path / "fake.onnx"
        artifact.write_bytes(b"not really onnx: the fake model ignores it")
        registry.register_model(MODEL, "1", "onnx-fp32", artifact)
        model = GatedModel()

        def factory(path: Path, version: ModelVersion) -> GatedModel:
            return model

        offload = OffloadServer(registry, hub_settings, runner_factory=factory)
        offload.start()
        started.append((offload, registry, model))
        return Server(offload, model)

    yield start
    for offload, registry, model in started:
        for _ in range(64):  # let anything still blocked finish
            model.gate.release()
        offload.stop()
        registry.close()


def _submit(pool: ThreadPoolExecutor, server: Server, x: np.ndarray, **kw: Any) -> Future[Any]:
    return pool.submit(server.post, x, **kw)


def _first_running(pool: ThreadPoolExecutor, server: Server) -> Future[Any]:
    """A request that is inside the model (holding the worker) when this returns."""
    future = _submit(pool, server, np.full((1, 2), 100, np.float32))
    assert server.model.entered.acquire(timeout=WAIT_S)
    return future


def test_a_full_queue_is_503_with_a_retry_hint(start_server: StartServer) -> None:
    server = start_server(offload_queue_size=2, offload_max_batch=1, offload_max_queue_delay_ms=0)
    with ThreadPoolExecutor(4) as pool:
        running = _first_running(pool, server)
        queued = [_submit(pool, server, np.ones((1, 2), np.float32)) for _ in range(2)]
        server.wait_queued(2)
        status, body, headers = server.post(np.ones((1, 2), np.float32))
        assert status == 503 and "queue full" in body["error"]
        assert int(headers["Retry-After"]) >= 1
        assert int(headers["X-Retry-After-Ms"]) >= 1
        for _ in range(3):
            server.model.gate.release()
        assert [f.result(WAIT_S)[0] for f in (running, *queued)] == [200, 200, 200]
    assert 'reason="queue_full"' in server.metrics()


def test_a_request_whose_deadline_passed_in_the_queue_is_never_run(
    start_server: StartServer,
) -> None:
    server = start_server(offload_max_batch=1, offload_max_queue_delay_ms=0)
    with ThreadPoolExecutor(4) as pool:
        running = _first_running(pool, server)
        late = _submit(pool, server, np.full((1, 2), 7, np.float32), timeout=1000)  # 1 ms
        server.wait_queued(1)
        time.sleep(0.01)  # well past its 1 ms; the worker is still held by the first request
        server.model.gate.release()
        status, body, _ = late.result(WAIT_S)
        assert running.result(WAIT_S)[0] == 200
    assert status == 504 and "deadline passed" in body["error"] and "not run" in body["error"]
    assert not any((call == 7).any() for call in server.model.calls)
    assert 'reason="deadline"' in server.metrics()


def test_concurrent_requests_run_as_one_batch(start_server: StartServer) -> None:
    server = start_server(offload_max_batch=8, offload_max_queue_delay_ms=50)
    with ThreadPoolExecutor(8) as pool:
        running = _first_running(pool, server)
        rows = [np.full((1, 2), i, np.float32) for i in range(4)]
        futures = [_submit(pool, server, row) for row in rows]
        server.wait_queued(4)
        server.model.gate.release()  # the first request ends; the four run together
        assert server.model.entered.acquire(timeout=WAIT_S)
        server.model.gate.release()
        answers = [f.result(WAIT_S) for f in futures]
        assert running.result(WAIT_S)[0] == 200
    assert [status for status, _, _ in answers] == [200] * 4
    for row, (_, body, _) in zip(rows, answers, strict=True):
        assert body["outputs"][0]["data"] == (row * 2).ravel().tolist()
    assert [call.shape[0] for call in server.model.calls] == [1, 4]
    text = server.metrics()
    assert _sample(text, "edgeloop_offload_batch_size_count") == 2
    assert _sample(text, "edgeloop_offload_batch_size_sum") == 5
    assert _sample(text, 'edgeloop_offload_batch_size_bucket{le="2.0"') == 1  # the lone one


def test_a_failed_batch_fails_each_of_its_requests_with_the_reason(
    start_server: StartServer,
) -> None:
    server = start_server(offload_max_batch=8, offload_max_queue_delay_ms=50)
    with ThreadPoolExecutor(8) as pool:
        running = _first_running(pool, server)
        values = (1.0, -1.0, 2.0)
        futures = [_submit(pool, server, np.full((1, 2), v, np.float32)) for v in values]
        server.wait_queued(3)
        for _ in range(2):
            server.model.gate.release()
        answers = [f.result(WAIT_S) for f in futures]
        assert running.result(WAIT_S)[0] == 200
    for status, body, _ in answers:
        assert status == 500 and "failed on a batch of 3: poisoned row" in body["error"]
    assert 'reason="failed"' in server.metrics()


def test_requests_of_other_shapes_go_in_separate_batches(start_server: StartServer) -> None:
    server = start_server(offload_max_batch=8, offload_max_queue_delay_ms=50)
    with ThreadPoolExecutor(8) as pool:
        running = _first_running(pool, server)
        shapes = [(1, 3), (1, 5), (1, 3)]
        futures = []
        for n, shape in enumerate(shapes):  # one at a time: the queue's order is known
            futures.append(_submit(pool, server, np.full(shape, n, np.float32)))
            server.wait_queued(n + 1)
        for _ in range(3):
            server.model.gate.release()
        answers = [f.result(WAIT_S) for f in futures]
        assert running.result(WAIT_S)[0] == 200
    assert [status for status, _, _ in answers] == [200] * 3
    assert [call.shape for call in server.model.calls[1:]] == [(2, 3), (1, 5)]


def test_batching_off_runs_one_request_at_a_time(start_server: StartServer) -> None:
    server = start_server(offload_max_batch=1, offload_max_queue_delay_ms=0)
    with ThreadPoolExecutor(8) as pool:
        running = _first_running(pool, server)
        futures = [_submit(pool, server, np.ones((1, 2), np.float32)) for _ in range(3)]
        server.wait_queued(3)
        for _ in range(4):
            server.model.gate.release()
        assert [f.result(WAIT_S)[0] for f in futures] == [200] * 3
        assert running.result(WAIT_S)[0] == 200
    assert [call.shape[0] for call in server.model.calls] == [1, 1, 1, 1]


def _sample(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix) and f'model="{MODEL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {prefix} sample in:\n{text}")


# -- the pure decisions ---------------------------------------------------------------------


class _Item:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.feeds = {"x": np.zeros(shape, np.float32)}
        self.signature = batching.signature(self.feeds)
        self.rows = batching.rows_of(self.feeds)


@pytest.mark.parametrize(
    ("shapes", "max_batch", "expected"),
    [
        ([], 4, []),
        ([(1, 2)], 4, [0]),
        ([(1, 2), (1, 2), (1, 2)], 2, [0, 1]),
        ([(1, 2), (1, 3), (1, 2)], 4, [0, 2]),
        ([(5, 2), (1, 2)], 4, [0]),  # the oldest always goes, even alone over the limit
        ([(2, 2), (3, 2), (2, 2)], 4, [0, 2]),  # what fits, in order
    ],
)
def test_take(shapes: list[tuple[int, ...]], max_batch: int, expected: list[int]) -> None:
    assert take([_Item(s) for s in shapes], max_batch) == expected


@pytest.mark.parametrize(
    ("peak", "max_batch", "expected"), [(0, 32, 1), (1, 32, 1), (16, 32, 16), (40, 32, 32)]
)
def test_target_rows(peak: int, max_batch: int, expected: int) -> None:
    assert target_rows(peak, max_batch) == expected


@pytest.mark.parametrize(
    ("peak", "window_end", "load", "now", "expected"),
    [
        ((3, 0), 10.0, 5, 9.0, ((5, 0), 10.0)),  # same window: the peak grows
        ((3, 0), 10.0, 1, 9.0, ((3, 0), 10.0)),  # ... and does not shrink
        ((16, 2), 10.0, 1, 10.5, ((1, 16), 11.5)),  # next window: the burst still counts
        ((16, 2), 10.0, 1, 11.5, ((1, 0), 12.5)),  # a window later: forgotten
    ],
)
def test_track_peak(
    peak: tuple[int, int],
    window_end: float,
    load: int,
    now: float,
    expected: tuple[tuple[int, int], float],
) -> None:
    assert track_peak(peak, window_end, load, now, 1.0) == expected


def test_concatenate_and_split_round_trip() -> None:
    parts = [{"x": np.full((n, 2), n, np.float32)} for n in (1, 3, 2)]
    joined = concatenate(parts)
    assert joined["x"].shape == (6, 2)
    back = split({"y": joined["x"] * 2}, [1, 3, 2])
    for part, out in zip(parts, back, strict=True):
        np.testing.assert_array_equal(out["y"], part["x"] * 2)
    with pytest.raises(ValueError, match="not 6 rows"):
        split({"y": np.zeros((1, 2))}, [1, 3, 2])


def test_retry_hint_grows_with_the_queue() -> None:
    assert retry_after_ms(0, 32, 0.0, 0.0) == 1
    short = retry_after_ms(32, 32, 0.01, 0.002)
    assert short == 22 and retry_after_ms(256, 32, 0.01, 0.002) > short
    assert re.fullmatch(r"\d+", str(short))
