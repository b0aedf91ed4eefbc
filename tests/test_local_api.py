"""The agent's local inference API against real clients on a free loopback port.

``tritonclient.http`` is the independent client for everything it can say; malformed
requests go through ``http.client`` or a raw socket. Answers are compared with the same
engine run in process. Slow or failing engines are fakes at our own seam (an object
with the engine's interface); everything else is real.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from edge_agent.engine import Engine
from edge_agent.errors import BackendError, BackendUnavailable, EdgeAgentError, InputError
from edge_agent.formats import ModelFormat
from edge_agent.server import (
    LocalInferenceServer,
    ModelNotFound,
    ModelNotReady,
    ModelService,
    status_for,
)
from edge_agent.tensors import TensorSpec

MODELS = {
    "onnx-int8": ("digits-edge/digits-edge-int8.onnx", "onnxruntime_onnx"),
    "tflite-int8": ("digits-edge/digits-edge-int8.tflite", "tensorflow_lite"),
}
NAME = "digits"
TIMEOUT_S = 60.0  # generous: a loaded 2-core machine


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest, reference_dir: Path) -> Iterator[tuple[Engine, str]]:
    path, platform = MODELS[request.param]
    with Engine.load(reference_dir / path, profile="x86-64-cpu") as engine:
        yield engine, platform


@pytest.fixture()
def served(model: tuple[Engine, str]) -> Iterator[tuple[LocalInferenceServer, Engine, str]]:
    engine, platform = model
    with LocalInferenceServer(ModelService(engine, NAME, "1"), port=0) as server:
        yield server, engine, platform


@pytest.fixture()
def client(served: tuple[LocalInferenceServer, Engine, str]) -> Iterator[Any]:
    yield from _triton(served[0])


def _triton(server: LocalInferenceServer) -> Iterator[Any]:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=TIMEOUT_S)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def images(reference_dir: Path) -> np.ndarray:
    x = np.load(reference_dir / "data" / "digits-heldout.npz")["x"]
    return np.ascontiguousarray(x[:64], dtype=np.float32)


def _serve(engine: Any, **options: Any) -> LocalInferenceServer:
    server = LocalInferenceServer(ModelService(engine, NAME, "1"), port=0, **options)
    server.start()
    return server


# -- a fake engine at our seam -------------------------------------------------------------

IMAGE = TensorSpec("image", (-1, 8, 8, 1), np.dtype(np.float32), np.dtype(np.float32))
PROBS = TensorSpec("probabilities", (-1, 10), np.dtype(np.float32), np.dtype(np.float32))


@dataclass
class FakeEngine:
    """Answers one-hot rows of ``answer``; can hold each run until released, or fail."""

    answer: int = 3
    hold: bool = False
    fail: str | None = None
    backend_name: str = "onnxruntime"
    model_format: ModelFormat = ModelFormat.ONNX
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (IMAGE,)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (PROBS,)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        if self.hold and not self.release.wait(TIMEOUT_S):
            raise AssertionError("the test never released the engine")
        if self.fail is not None:
            raise BackendError(self.fail)
        rows = feeds["image"].shape[0]
        out = np.zeros((rows, 10), dtype=np.float32)
        out[:, self.answer] = 1.0
        return {"probabilities": out}


@dataclass
class ListRecorder:
    calls: list[tuple[float, bool, np.ndarray | None, Mapping[str, np.ndarray] | None]] = field(
        default_factory=list
    )

    def record(
        self,
        latency_s: float,
        ok: bool,
        probabilities: np.ndarray | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.calls.append((latency_s, ok, probabilities, inputs))


# -- raw HTTP helpers ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def error(self) -> str:
        message = json.loads(self.body)["error"]
        assert isinstance(message, str)
        return message


def _call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> Reply:
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        if connection is None:
            conn.close()


def _infer_body(x: np.ndarray, **extra: Any) -> bytes:
    tensor = {"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def _binary_body(
    x: np.ndarray, declared: int | None = None, sent: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """``x`` as a binary input; ``declared`` and ``sent`` bytes can be made to disagree."""
    raw = x.tobytes()
    tensor = {
        "name": "image",
        "shape": list(x.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw) if declared is None else declared},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    body = header + (raw + bytes(8))[: len(raw) if sent is None else sent]
    return body, {"Inference-Header-Content-Length": str(len(header))}


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # caught in the backlog of a listener that is closing: look again
    return False


# -- health and metadata -------------------------------------------------------------------


def test_health_and_metadata(client: Any, served: tuple[LocalInferenceServer, Engine, str]) -> None:
    _, _, platform = served
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgeloop-agent" and meta["version"]
    assert "binary_tensor_data" in meta["extensions"]
    for version in ("", "1"):
        assert client.is_model_ready(NAME, version)
        model = client.get_model_metadata(NAME, version)
        assert model["name"] == NAME and model["versions"] == ["1"]
        assert model["platform"] == platform
        assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
        assert model["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
        ]


# -- inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
def test_infer_matches_the_engine_in_process(
    client: Any,
    served: tuple[LocalInferenceServer, Engine, str],
    images: np.ndarray,
    binary_in: bool,
    binary_out: bool,
) -> None:
    _, engine, _ = served
    batch = images[:5]
    given = triton.InferInput("image", list(batch.shape), "FP32")
    given.set_data_from_numpy(batch, binary_data=binary_in)
    wanted = triton.InferRequestedOutput("probabilities", binary_data=binary_out)
    result = client.infer(NAME, [given], outputs=[wanted], request_id="req-1")
    expected = engine.run({"image": batch})["probabilities"]
    assert np.array_equal(result.as_numpy("probabilities"), expected)
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_version"] == "1"
    (output,) = response["outputs"]
    assert ("binary_data_size" in output.get("parameters", {})) is binary_out


def test_infer_without_outputs_returns_every_output_binary(
    client: Any, served: tuple[LocalInferenceServer, Engine, str], images: np.ndarray
) -> None:
    _, engine, _ = served
    given = triton.InferInput("image", [1, 8, 8, 1], "FP32").set_data_from_numpy(images[:1])
    result = client.infer(NAME, [given], model_version="1")
    (output,) = result.get_response()["outputs"]
    assert output["parameters"]["binary_data_size"] == 40
    assert np.array_equal(
        result.as_numpy("probabilities"), engine.run({"image": images[:1]})["probabilities"]
    )


def test_concurrent_requests_each_get_their_own_answer(
    served: tuple[LocalInferenceServer, Engine, str], images: np.ndarray
) -> None:
    server, engine, _ = served
    expected = [engine.run({"image": images[i : i + 1]})["probabilities"] for i in range(64)]
    wrong: list[str] = []

    def worker(first: int) -> None:
        for client in _triton(server):
            for n in range(24):
                i = (first * 7 + n) % 64
                given = triton.InferInput("image", [1, 8, 8, 1], "FP32")
                given.set_data_from_numpy(images[i : i + 1], binary_data=n % 2 == 0)
                got = client.infer(NAME, [given]).as_numpy("probabilities")
                if not np.array_equal(got, expected[i]):
                    wrong.append(f"image {i}: {got} != {expected[i]}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert not wrong, wrong[:3]


def test_keep_alive_connection_serves_many_requests_and_survives_errors(
    served: tuple[LocalInferenceServer, Engine, str], images: np.ndarray
) -> None:
    server = served[0]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    try:
        for i in range(3):
            body, headers = _binary_body(images[i : i + 1])
            ok = _call(server.port, "POST", f"/v2/models/{NAME}/infer", body, headers, conn)
            assert ok.status == 200, ok.body
            bad = _call(server.port, "POST", f"/v2/models/{NAME}/infer", b"{", None, conn)
            assert bad.status == 400
        meta = _call(server.port, "GET", f"/v2/models/{NAME}", connection=conn)
        assert meta.status == 200 and json.loads(meta.body)["name"] == NAME
    finally:
        conn.close()


def test_expect_100_continue_is_honoured(
    served: tuple[LocalInferenceServer, Engine, str], images: np.ndarray
) -> None:
    server, engine, _ = served
    body = _infer_body(images[:1])
    head = (
        f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: application/json\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(head.encode())
        interim = sock.recv(25)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    data = json.loads(reply.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"]
    expected = engine.run({"image": images[:1]})["probabilities"]
    assert np.array_equal(np.asarray(data, dtype=np.float32).reshape(1, 10), expected)


# -- errors --------------------------------------------------------------------------------


def _x(batch: int = 1) -> np.ndarray:
    return np.zeros((batch, 8, 8, 1), dtype=np.float32)


INFER = f"/v2/models/{NAME}/infer"
BAD: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    ("malformed json", "POST", INFER, b'{"inputs": [', {}, 400, r"not valid JSON"),
    (
        "wrong tensor name",
        "POST",
        INFER,
        _infer_body(_x()).replace(b'"image"', b'"img"'),
        {},
        400,
        r"missing input\(s\) 'image'; unknown input\(s\) 'img'",
    ),
    (
        "wrong shape",
        "POST",
        INFER,
        _infer_body(np.zeros((1, 8, 7, 1), dtype=np.float32)),
        {},
        400,
        r"input 'image': shape \[1, 8, 7, 1\] does not match the model's \[\?, 8, 8, 1\]",
    ),
    (
        "wrong datatype",
        "POST",
        INFER,
        _infer_body(_x()).replace(b'"FP32"', b'"FP64"'),
        {},
        400,
        r"input 'image': datatype FP64 does not match the model's FP32",
    ),
    (
        "element count",
        "POST",
        INFER,
        _infer_body(_x()).replace(b"[1, 8, 8, 1]", b"[2, 8, 8, 1]"),
        {},
        400,
        r"input 'image': shape \[2, 8, 8, 1\] holds 128 elements but 'data' has 64",
    ),
    (
        "binary size vs shape",
        "POST",
        INFER,
        *_binary_body(_x(), declared=252, sent=252),
        400,
        r"input 'image': binary_data_size is 252 bytes but shape \[1, 8, 8, 1\] of FP32 needs 256",
    ),
    (
        "binary size past body",
        "POST",
        INFER,
        *_binary_body(_x(), sent=252),
        400,
        r"input 'image': binary_data_size 256 runs past the end of the binary data \(252 bytes",
    ),
    (
        "binary bytes left over",
        "POST",
        INFER,
        *_binary_body(_x(), sent=260),
        400,
        r"260 bytes of binary tensor data follow the JSON, but .* add up to 256",
    ),
    (
        "header length past body",
        "POST",
        INFER,
        b"{}",
        {"Inference-Header-Content-Length": "3"},
        400,
        r"Inference-Header-Content-Length '3' must be .* no larger than the body \(2\)",
    ),
    (
        "unknown output",
        "POST",
        INFER,
        _infer_body(_x(), outputs=[{"name": "logits"}]),
        {},
        400,
        r"output 'logits': the model has no such output",
    ),
    ("unknown model", "POST", "/v2/models/cats/infer", _infer_body(_x()), {}, 404, r"'cats'"),
    (
        "unknown version",
        "POST",
        f"/v2/models/{NAME}/versions/7/infer",
        _infer_body(_x()),
        {},
        404,
        r"no version '7' \(serving version '1'\)",
    ),
    ("unknown model metadata", "GET", "/v2/models/cats", b"", {}, 404, r"unknown model 'cats'"),
    ("unknown path", "GET", "/v2/repository/index", b"", {}, 404, r"no such path"),
    ("trailing slash", "GET", f"/v2/models/{NAME}/", b"", {}, 404, r"no such path"),
    ("GET infer", "GET", INFER, b"", {}, 405, r"method GET is not allowed .* \(use POST\)"),
    ("POST live", "POST", "/v2/health/live", b"{}", {}, 405, r"\(use GET\)"),
    (
        "chunked",
        "POST",
        INFER,
        b"",
        {"Transfer-Encoding": "chunked"},
        501,
        r"Transfer-Encoding is not supported",
    ),
    ("gzip", "POST", INFER, b"x", {"Content-Encoding": "gzip"}, 415, r"'gzip' is not supported"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_requests_get_the_right_status_and_say_why(
    served: tuple[LocalInferenceServer, Engine, str],
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    server, _, _ = served
    reply = _call(server.port, method, path, body, headers)
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert re.search(message, reply.error), reply.error
    if status == 405:
        assert reply.headers["Allow"] in ("GET", "POST")
    _until(lambda: server.in_flight == 0, "the request to be counted out")


def test_tritonclient_sees_the_error_status_and_message(client: Any) -> None:
    given = triton.InferInput("image", [1, 8, 8, 2], "FP32")
    given.set_data_from_numpy(np.zeros((1, 8, 8, 2), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(NAME, [given])
    assert caught.value.status() == "400"
    assert "input 'image': shape [1, 8, 8, 2]" in caught.value.message()
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("cats")
    assert missing.value.status() == "404" and "'cats'" in missing.value.message()


def test_too_large_body_is_refused_from_content_length_before_it_is_sent() -> None:
    server = _serve(FakeEngine(), max_request_bytes=4096)
    try:
        head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(head.encode())  # and not one byte of the body
            reply = b""
            while chunk := sock.recv(65536):  # the server answers and closes
                reply += chunk
        status, _, rest = reply.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in rest
        message = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
        assert "1000000 bytes is over this server's limit of 4096" in message
        small = _call(server.port, "POST", INFER, _infer_body(_x()))
        assert small.status == 200
    finally:
        server.stop()


def test_not_ready_until_a_model_is_swapped_in() -> None:
    service = ModelService(None, NAME, "1")
    server = LocalInferenceServer(service, port=0)
    server.start()
    try:
        port = server.port
        assert _call(port, "GET", "/v2/health/live").status == 200
        for path in ("/v2/health/ready", f"/v2/models/{NAME}/ready", f"/v2/models/{NAME}"):
            reply = _call(port, "GET", path)
            assert reply.status == 503 and "not loaded yet" in reply.error, path
        reply = _call(port, "POST", INFER, _infer_body(_x()))
        assert reply.status == 503 and "model 'digits' is not loaded yet" in reply.error
        assert _call(port, "GET", "/v2/models/cats/ready").status == 404
        assert service.swap(FakeEngine()) is None
        assert _call(port, "GET", "/v2/health/ready").status == 200
        assert _call(port, "GET", f"/v2/models/{NAME}/versions/1/ready").status == 200
        assert _call(port, "POST", INFER, _infer_body(_x())).status == 200
    finally:
        server.stop()


def test_backend_failure_is_500_and_is_recorded() -> None:
    recorder = ListRecorder()
    server = LocalInferenceServer(
        ModelService(
            FakeEngine(fail="onnxruntime: inference failed (CUDA gone)"),
            NAME,
            "1",
            recorder=recorder,
        ),
        port=0,
    )
    server.start()
    try:
        reply = _call(server.port, "POST", INFER, _infer_body(_x()))
    finally:
        server.stop()
    assert reply.status == 500 and "CUDA gone" in reply.error
    ((latency, ok, probabilities, inputs),) = recorder.calls
    assert ok is False and probabilities is None and latency >= 0
    assert inputs is not None and inputs["image"].shape == (1, 8, 8, 1)


def test_recorder_gets_latency_probabilities_and_inputs(
    model: tuple[Engine, str], images: np.ndarray
) -> None:
    engine, _ = model
    recorder = ListRecorder()
    server = LocalInferenceServer(ModelService(engine, NAME, "1", recorder=recorder), port=0)
    server.start()
    try:
        body, headers = _binary_body(images[:4])
        assert _call(server.port, "POST", INFER, body, headers).status == 200
        assert _call(server.port, "POST", INFER, b"{").status == 400  # never reached the model
        unknown_output = _infer_body(images[:1], outputs=[{"name": "logits"}])
        assert _call(server.port, "POST", INFER, unknown_output).status == 400  # nor this one
    finally:
        server.stop()
    ((latency, ok, probabilities, inputs),) = recorder.calls
    assert ok is True and latency > 0
    assert probabilities is not None
    assert np.array_equal(probabilities, engine.run({"image": images[:4]})["probabilities"])
    assert inputs is not None and np.array_equal(inputs["image"], images[:4])


def test_connections_over_the_limit_get_503() -> None:
    server = _serve(FakeEngine(), max_connections=1)
    first = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    try:
        assert _call(server.port, "GET", "/v2/health/live", connection=first).status == 200
        reply = _call(server.port, "GET", "/v2/health/live")
        assert reply.status == 503 and "too many connections" in reply.error
        assert _call(server.port, "GET", "/v2/health/live", connection=first).status == 200
    finally:
        first.close()
        server.stop()


# -- drain and swap ------------------------------------------------------------------------


def _infer_in_thread(port: int, results: list[Reply]) -> threading.Thread:
    def post() -> None:
        results.append(_call(port, "POST", INFER, _infer_body(_x())))

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_stop_drains_a_slow_request_and_refuses_new_connections() -> None:
    engine = FakeEngine(hold=True)
    server = _serve(engine)
    port = server.port
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as idle:
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):
            answer += idle.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'{"live":true}')
        results: list[Reply] = []
        request = _infer_in_thread(port, results)
        assert engine.started.wait(TIMEOUT_S)
        left: list[int] = []
        stopper = threading.Thread(target=lambda: left.append(server.stop(TIMEOUT_S)))
        stopper.start()
        try:
            _until(lambda: _refused(port), "the listener to close")
            assert server.in_flight == 1 and stopper.is_alive()  # still draining
        finally:
            engine.release.set()
        request.join(TIMEOUT_S)
        stopper.join(TIMEOUT_S)
        assert not stopper.is_alive() and left == [0]
        (reply,) = results
        assert reply.status == 200 and reply.headers["Connection"] == "close"
        assert json.loads(reply.body)["outputs"][0]["data"][3] == 1.0
        try:  # the keep-alive connection left idle was closed (an orderly close, or a reset)
            closed = idle.recv(1) == b""
        except ConnectionResetError:
            closed = True
        assert closed


def test_stop_returns_the_requests_cut_off_at_the_drain_timeout() -> None:
    engine = FakeEngine(hold=True)
    server = _serve(engine)
    results: list[Reply] = []
    errors: list[str] = []

    def post() -> None:
        try:
            results.append(_call(server.port, "POST", INFER, _infer_body(_x())))
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            errors.append(type(exc).__name__)  # not the exception: it holds the socket

    thread = threading.Thread(target=post)
    thread.start()
    try:
        assert engine.started.wait(TIMEOUT_S)
        assert server.stop(drain_timeout=0.2) == 1
    finally:
        engine.release.set()
    thread.join(TIMEOUT_S)
    assert not results and len(errors) == 1  # the client saw the connection cut


def test_swap_keeps_requests_in_flight_on_the_old_engine() -> None:
    old = FakeEngine(answer=3, hold=True)
    service = ModelService(old, NAME, "1")
    server = LocalInferenceServer(service, port=0)
    server.start()
    try:
        results: list[Reply] = []
        request = _infer_in_thread(server.port, results)
        assert old.started.wait(TIMEOUT_S)
        new = FakeEngine(answer=5, backend_name="litert", model_format=ModelFormat.TFLITE)
        assert service.swap(new, version="2") is old
        assert not service.wait_released(old, 0.05)  # the slow request still holds it
        after = _call(server.port, "POST", INFER, _infer_body(_x()))
        assert after.status == 200
        answer = json.loads(after.body)
        assert answer["model_version"] == "2" and answer["outputs"][0]["data"][5] == 1.0
        meta = json.loads(_call(server.port, "GET", f"/v2/models/{NAME}").body)
        assert meta["versions"] == ["2"] and meta["platform"] == "tensorflow_lite"
        assert _call(server.port, "GET", f"/v2/models/{NAME}/versions/1").status == 404
        old.release.set()
        request.join(TIMEOUT_S)
        assert service.wait_released(old, TIMEOUT_S)
        (reply,) = results
        assert reply.status == 200
        before = json.loads(reply.body)
        assert before["model_version"] == "1" and before["outputs"][0]["data"][3] == 1.0
    finally:
        old.release.set()
        server.stop()


@pytest.mark.parametrize(
    ("error", "http_status", "grpc_code"),
    [
        (ModelNotFound("m"), 404, "NOT_FOUND"),
        (InputError("x"), 400, "INVALID_ARGUMENT"),
        (ModelNotReady("m"), 503, "UNAVAILABLE"),
        (BackendUnavailable("tpu"), 503, "UNAVAILABLE"),
        (BackendError("boom"), 500, "INTERNAL"),
        (EdgeAgentError("?"), 500, "INTERNAL"),
        (RuntimeError("bug"), 500, "INTERNAL"),
    ],
)
def test_one_table_maps_errors_to_statuses(
    error: Exception, http_status: int, grpc_code: str
) -> None:
    assert status_for(error) == (http_status, grpc_code)
