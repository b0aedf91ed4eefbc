"""What a request through the agent's local HTTP API costs over ``Engine.run`` in process.

One engine serves both paths: the local server (:mod:`edge_agent.server`) on a free
loopback port, called through one keep-alive ``http.client`` connection with binary
tensors both ways (the fast path an application would use), and ``engine.run`` called
directly on the same array. The two alternate call by call (see
:func:`bench._harness.interleaved_ns`); the difference of the medians is the price of
HTTP: two socket round trips between threads, parsing, the codec and the model service.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.engine import Engine
from edge_agent.server import LocalInferenceServer, ModelService
from edge_agent.server.codec import datatype_of

from ._harness import PROFILE, Figure, interleaved_ns, log, p50_us

MODEL = Path("digits-edge", "digits-edge-fp32.onnx")
# (quick, full) iteration counts: each iteration times one HTTP request and one Engine.run.
ITERATIONS = (2_000, 20_000)
WARMUP = 200


def measure_http_over_inprocess(models: Path, quick: bool) -> list[Figure]:
    """p50 of an HTTP request minus p50 of ``Engine.run``, on the small digits model."""
    iterations = ITERATIONS[0] if quick else ITERATIONS[1]
    log(f"engine_overhead: local HTTP API: {MODEL.name}, {iterations} interleaved pairs")
    with Engine.load(models / MODEL, profile=PROFILE, backend="onnxruntime") as engine:
        server = LocalInferenceServer(ModelService(engine, "digits", "1"), port=0)
        server.start()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            feeds = {spec.name: _example(spec.shape, spec.dtype) for spec in engine.inputs}
            http_call = binary_request(conn, feeds, engine.outputs[0].name)
            if not np.array_equal(http_call(), engine.run(feeds)[engine.outputs[0].name]):
                raise RuntimeError("the HTTP API and Engine.run disagree")
            http_ns, engine_ns = interleaved_ns(
                [http_call, lambda: engine.run(feeds)], iterations, WARMUP
            )
        finally:
            conn.close()
            server.stop(drain_timeout=5.0)
    over_http, in_process = p50_us(http_ns), p50_us(engine_ns)
    return [
        Figure("inprocess_p50_us_digits", "digits: Engine.run in process p50", in_process, "us"),
        Figure("http_p50_us_digits", "digits: local HTTP request p50", over_http, "us"),
        Figure(
            "http_over_inprocess_p50_us",
            "digits: HTTP p50 - in-process p50",
            over_http - in_process,
            "us",
        ),
    ]


def _example(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random([1 if d < 0 else d for d in shape]).astype(dtype)


def binary_request(
    conn: http.client.HTTPConnection, feeds: dict[str, np.ndarray], output: str
) -> Callable[[], np.ndarray]:
    """A call that posts ``feeds`` as binary tensors and returns ``output`` read as binary."""
    inputs = [
        {
            "name": name,
            "shape": list(value.shape),
            "datatype": datatype_of(value),
            "parameters": {"binary_data_size": value.nbytes},
        }
        for name, value in feeds.items()
    ]
    wanted = [{"name": output, "parameters": {"binary_data": True}}]
    header = json.dumps({"inputs": inputs, "outputs": wanted}).encode()
    body = header + b"".join(value.tobytes() for value in feeds.values())
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call() -> np.ndarray:
        conn.request("POST", "/v2/models/digits/infer", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        size = int(response.headers["Inference-Header-Content-Length"])
        shape = json.loads(data[:size])["outputs"][0]["shape"]
        return np.frombuffer(data, dtype=np.float32, offset=size).reshape(shape)

    return call
