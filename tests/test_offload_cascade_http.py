"""The cascade over OIP v2 HTTP (REST, binary tensors): ``http://`` offload URLs.

The well-behaved server is a real OIP v2 HTTP server: the agent's own local API
(:class:`LocalInferenceServer`) serving the reference cloud model, an implementation of
the protocol apart from the client. Retry hints, errors and slow answers come from a
small stdlib HTTP server in this file (a seam we own) that answers as told.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.config import parse_config
from edge_agent.engine import Engine
from edge_agent.offload.address import Address, parse_address
from edge_agent.offload.breaker import CircuitBreaker
from edge_agent.offload.cascade import Cascade
from edge_agent.offload.client import OffloadError, ParameterValue, RetryLater
from edge_agent.offload.http_client import HttpOffloadClient, decode_response
from edge_agent.offload.scores import Policy
from edge_agent.server import LocalInferenceServer, ModelService
from edge_agent.service.offload import new_cascade
from edge_agent.telemetry.aggregate import Recorder

EDGE = "digits-edge/digits-edge-fp32.onnx"
CLOUD = "digits-cloud/digits-cloud-fp32.onnx"
CLOUD_NAME = "digits-cloud"
MARGIN_S = 1.5  # what a loaded machine may add on top of a deadline


@pytest.fixture(scope="module")
def images(reference_dir: Path) -> np.ndarray:
    x = np.load(reference_dir / "data" / "digits-heldout.npz")["x"].astype(np.float32)
    return np.ascontiguousarray(x[:4])


@pytest.fixture(scope="module")
def cloud(reference_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(reference_dir / CLOUD), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def cloud_server(reference_dir: Path) -> Iterator[LocalInferenceServer]:
    with (
        Engine.load(reference_dir / CLOUD, profile="x86-64-cpu") as engine,
        LocalInferenceServer(ModelService(engine, CLOUD_NAME, "3"), port=0) as server,
    ):
        yield server


@dataclass
class Stub:
    """What the stub server answers, and what it saw."""

    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"error": "queue full"}'
    delay_s: float = 0.0
    drip_s: float = 0.0  # send the body one byte at a time, this far apart
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0


@pytest.fixture()
def stub() -> Iterator[Stub]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.seen.append((self.path, dict(self.headers.items()), self.rfile.read(length)))
            time.sleep(state.delay_s)
            self.send_response(state.status)
            for key, value in state.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            try:
                if state.drip_s:
                    for byte in state.body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(state.drip_s)
                else:
                    self.wfile.write(state.body)
            except OSError:
                pass  # the client gave up

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- the client against a real OIP v2 HTTP server ------------------------------------------


def test_the_http_client_gets_the_cloud_answer(
    cloud_server: LocalInferenceServer, images: np.ndarray, cloud: ort.InferenceSession
) -> None:
    for version in (None, "3"):
        client = HttpOffloadClient(f"http://127.0.0.1:{cloud_server.port}/", CLOUD_NAME, version)
        out = client.infer({"image": images}, ["probabilities"], timeout_s=30)
        expected = cloud.run(None, {"image": images})[0]
        np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    missing = HttpOffloadClient(f"http://127.0.0.1:{cloud_server.port}", "nope")
    with pytest.raises(OffloadError) as failed:
        missing.infer({"image": images}, ["probabilities"], timeout_s=30)
    assert failed.value.code == "HTTP_404"


def test_the_cascade_offloads_over_http(
    reference_dir: Path,
    cloud_server: LocalInferenceServer,
    images: np.ndarray,
    cloud: ort.InferenceSession,
) -> None:
    recorder = Recorder(time.time())
    url = f"http://127.0.0.1:{cloud_server.port}"
    cascade = Cascade(
        HttpOffloadClient(url, CLOUD_NAME),
        Policy("max_probability", 1.0),  # everything below certainty is hard
        deadline_s=10.0,
        recorder=recorder,
    )
    with Engine.load(reference_dir / EDGE, profile="x86-64-cpu") as edge:
        service = ModelService(edge, "digits", "7", recorder=recorder, cascade=cascade)
        result = service.infer("digits", None, {"image": images})
    local = ort.InferenceSession(str(reference_dir / EDGE), providers=["CPUExecutionProvider"])
    hard = local.run(None, {"image": images})[0].max(axis=1) < 1.0
    assert hard.any() and result.answered_by == "cloud"
    expected = cloud.run(None, {"image": images[hard]})[0]
    np.testing.assert_allclose(result.outputs["probabilities"][hard], expected, atol=1e-5)
    assert recorder.snapshot(time.time())["offload"]["succeeded"] == 1


# -- failures, hints, deadlines (the stub) ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "hint"),
    [
        (503, {"X-Retry-After-Ms": "1500", "Retry-After": "2"}, 1.5),
        (503, {"Retry-After": "2"}, 2.0),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        (503, {}, None),
    ],
)
def test_503_and_429_are_retry_later_with_the_hint(
    stub: Stub, images: np.ndarray, status: int, headers: dict[str, str], hint: float | None
) -> None:
    stub.status, stub.headers = status, headers
    client = HttpOffloadClient(f"http://127.0.0.1:{stub.port}", CLOUD_NAME)
    with pytest.raises(RetryLater) as later:
        client.infer({"image": images[:1]}, ["probabilities"], timeout_s=10)
    assert later.value.retry_after_s == hint
    assert "queue full" in str(later.value)


def test_the_request_carries_credentials_parameters_and_binary_inputs(
    stub: Stub, images: np.ndarray
) -> None:
    stub.status, stub.body = 500, b'{"error": "boom"}'
    metadata = (("authorization", "Bearer s3cret"), ("x-edgeloop-device", "pi-17"))
    client = HttpOffloadClient(f"http://127.0.0.1:{stub.port}/base", "m/x", "2", metadata=metadata)
    parameters: dict[str, ParameterValue] = {
        "edgeloop_edge_label": 3,
        "edgeloop_edge_score": 0.5,
        "edgeloop_edge_version": "7",
    }
    with pytest.raises(OffloadError) as failed:
        client.infer({"image": images[:1]}, ["probabilities"], timeout_s=10, parameters=parameters)
    assert failed.value.code == "HTTP_500" and "boom" in str(failed.value)
    ((path, headers, body),) = stub.seen
    assert path == "/base/v2/models/m%2Fx/versions/2/infer"
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["authorization"] == "Bearer s3cret" and lowered["x-edgeloop-device"] == "pi-17"
    split = int(lowered["inference-header-content-length"])
    header = json.loads(body[:split])
    assert header["parameters"] == parameters
    assert header["inputs"][0]["parameters"]["binary_data_size"] == images[:1].nbytes
    assert header["outputs"] == [{"name": "probabilities", "parameters": {"binary_data": True}}]
    np.testing.assert_array_equal(
        np.frombuffer(body[split:], np.float32).reshape(images[:1].shape), images[:1]
    )


@pytest.mark.parametrize("how", ["late headers", "dripping body"])
def test_the_deadline_covers_the_whole_call(stub: Stub, images: np.ndarray, how: str) -> None:
    deadline = 0.5
    if how == "late headers":
        stub.delay_s = 5.0
    else:
        stub.status, stub.drip_s, stub.body = 200, 0.05, b" " * 200  # 10 s in all
    client = HttpOffloadClient(f"http://127.0.0.1:{stub.port}", CLOUD_NAME)
    start = time.monotonic()
    with pytest.raises(OffloadError) as failed:
        client.infer({"image": images[:1]}, ["probabilities"], timeout_s=deadline)
    assert failed.value.code == "DEADLINE_EXCEEDED"
    assert time.monotonic() - start < deadline + MARGIN_S


def test_a_dead_server_is_unavailable_and_opens_the_breaker(images: np.ndarray) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = HttpOffloadClient(f"http://127.0.0.1:{port}", CLOUD_NAME)
    with pytest.raises(OffloadError) as failed:
        client.infer({"image": images[:1]}, ["probabilities"], timeout_s=5)
    assert failed.value.code == "UNAVAILABLE"
    breaker = CircuitBreaker(1, 60.0)
    cascade = Cascade(client, Policy("max_probability", 1.0), deadline_s=5, breaker=breaker)
    probabilities = np.full((1, 10), 0.1)
    outputs = {"probabilities": probabilities}
    answer = cascade.answer({"image": images[:1]}, outputs, "probabilities", probabilities, "1")
    assert answer.answered_by == "edge" and answer.outputs is outputs
    assert breaker.state.value == "open"


# -- decoding and addresses (pure) -------------------------------------------------------------


def test_decode_reads_json_data_and_binary_outputs_alike() -> None:
    as_json = json.dumps(
        {"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]}
    ).encode()
    raw = np.array([[0.25, 0.75]], np.float32).tobytes()
    header = json.dumps(
        {
            "outputs": [
                {"name": "skip", "datatype": "INT64", "shape": [1], "data": [4]},
                {
                    "name": "p",
                    "datatype": "FP32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": len(raw)},
                },
            ]
        }
    ).encode()
    for body, length in ((as_json, None), (header + raw, str(len(header)))):
        got = decode_response(body, length, ["p"])
        np.testing.assert_array_equal(got["p"], [[0.25, 0.75]])
    for body, length in ((b"{}", None), (as_json, "9999"), (b"<html>", None)):
        with pytest.raises(OffloadError, match="bad response"):
            decode_response(body, length, ["p"])


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("hub:8001", Address("grpc", "hub:8001")),
        ("grpc://hub:8001", Address("grpc", "hub:8001")),
        ("http://hub:8000", Address("http", "hub:8000")),
        ("http://hub:8000/", Address("http", "hub:8000")),
        ("http://[::1]:8000/triton/", Address("http", "[::1]:8000", "/triton")),
    ],
)
def test_addresses(url: str, address: Address) -> None:
    assert parse_address(url) == address


@pytest.mark.parametrize(
    "url", ["https://hub:8000", "http://hub", "http://hub:8000/a?b", "ftp://x:1"]
)
def test_addresses_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_address(url)


def test_an_http_url_in_config_builds_the_http_client(tmp_path: Path) -> None:
    config = parse_config(
        '[model]\npath = "m.onnx"\n[offload]\nurl = "http://hub:8000/triton"\nmodel = "big"',
        "agent.toml",
        base_dir=tmp_path,
    )
    cascade = new_cascade(config.offload, local_model="m", identity=None, recorder=None)
    assert cascade is not None and isinstance(cascade.client, HttpOffloadClient)
    assert cascade.client.path == "/triton/v2/models/big/infer"
    cascade.close()
