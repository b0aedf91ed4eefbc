"""The hub's offload server against real clients: tritonclient over HTTP and gRPC.

One hub-side stack per module (SQLite registry, the hub's gRPC server, the offload HTTP
server on free loopback ports) serves the reference ``digits-cloud`` model; answers are
compared with ONNX Runtime run directly on the same file. Batching behaviour with a fake
model is in ``test_offload_batching.py``.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from cloud_hub.errors import HubConfigError
from cloud_hub.grpc_server import HubGrpcServer
from cloud_hub.offload import OffloadedInput, OffloadServer
from cloud_hub.registry import Registry
from cloud_hub.settings import load_settings
from edge_agent.wire import inference_pb2, inference_pb2_grpc

MODEL = "digits-cloud"
CLOUD = Path("digits-cloud", "digits-cloud-fp32.onnx")
LIMIT = 64 * 1024  # the tensor byte limit of this module's server: 256 digits


class RecordingSink:
    """The hard-example hook, as a list (a seam the offload server owns)."""

    def __init__(self) -> None:
        self.examples: list[OffloadedInput] = []
        self._lock = threading.Lock()

    def submit(self, example: OffloadedInput) -> None:
        with self._lock:
            self.examples.append(example)

    def clear(self) -> None:
        with self._lock:
            self.examples.clear()


@dataclass
class Stack:
    registry: Registry
    offload: OffloadServer
    grpc_port: int
    sink: RecordingSink
    operator: str
    device_id: str
    device_secret: str
    heldout: np.ndarray
    model_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return self.offload.address

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def as_operator(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.operator}"}

    def as_device(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.device_secret}",
            "x-edgeloop-device": self.device_id,
        }


def enroll(registry: Registry, hostname: str) -> tuple[str, str]:
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=1)
    enrolled = registry.redeem_enrollment_token(
        issued.token, public_key_pem=None, hostname=hostname
    )
    return enrolled.device.id, enrolled.secret


@pytest.fixture(scope="module")
def stack(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("offload-hub")
    settings = load_settings(
        data_dir=data,
        grpc_port=0,
        offload_http_port=0,
        offload_max_request_bytes=LIMIT,
        offload_device="cpu",
    )
    registry = Registry.open(settings)
    registry.register_model(MODEL, "1", "onnx-fp32", reference_dir / CLOUD)
    registry.register_model(MODEL, "2", "onnx-fp32", reference_dir / CLOUD)
    registry.create_fleet("lab")
    device_id, secret = enroll(registry, "pi-1")
    operator = registry.create_operator_token("ci").token
    sink = RecordingSink()
    offload = OffloadServer(registry, settings, sink=sink)
    hub_grpc = HubGrpcServer(registry, settings, broker=None)
    offload.add_to(hub_grpc)
    port = hub_grpc.start()
    offload.start()
    heldout = np.load(reference_dir / "data" / "digits-heldout.npz")["x"]
    try:
        yield Stack(
            registry,
            offload,
            port,
            sink,
            operator,
            device_id,
            secret,
            heldout,
            reference_dir / CLOUD,
        )
    finally:
        offload.stop()
        hub_grpc.stop(1.0)
        registry.close()


def direct(stack: Stack, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(stack.model_path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"image": batch})[0])


def http_infer(
    stack: Stack, batch: np.ndarray, headers: dict[str, str], *, binary: bool = True, **kw: Any
) -> np.ndarray:
    client = thttp.InferenceServerClient(stack.http_url)
    tensor = thttp.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    wanted = thttp.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=[wanted], headers=dict(headers), **kw)
    return np.asarray(result.as_numpy("probabilities"))


def grpc_infer(stack: Stack, batch: np.ndarray, headers: dict[str, str], **kw: Any) -> np.ndarray:
    client = tgrpc.InferenceServerClient(stack.grpc_url)
    tensor = tgrpc.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer(MODEL, [tensor], headers=dict(headers), **kw)
    return np.asarray(result.as_numpy("probabilities"))


def raw_post(stack: Stack, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    """POST JSON; (status, parsed body, headers) whatever the status."""
    request = urllib.request.Request(
        f"http://{stack.http_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


# -- health and metadata ------------------------------------------------------------------


def test_health_and_metadata_over_both_transports(stack: Stack) -> None:
    client = thttp.InferenceServerClient(stack.http_url)
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "edgeloop-hub" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata(MODEL, headers=stack.as_operator())
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    assert client.is_model_ready(MODEL, "1", headers=stack.as_operator())

    remote = tgrpc.InferenceServerClient(stack.grpc_url)
    assert remote.is_server_live() and remote.is_server_ready()
    assert remote.is_model_ready(MODEL, headers=stack.as_device())
    found = remote.get_model_metadata(MODEL, "2", headers=stack.as_device(), as_json=True)
    assert found["name"] == MODEL and found["outputs"][0]["name"] == "probabilities"


def test_unknown_model_and_version_are_not_found(stack: Stack) -> None:
    client = thttp.InferenceServerClient(stack.http_url)
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope", headers=stack.as_operator())
    assert caught.value.status() == "404" and "nope" in caught.value.message()
    remote = tgrpc.InferenceServerClient(stack.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(stack, stack.heldout[:1], stack.as_operator(), model_version="9")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    del remote


# -- inference ------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_infer_matches_onnx_runtime(stack: Stack, binary: bool) -> None:
    batch = stack.heldout[:7]
    got = http_infer(stack, batch, stack.as_operator(), binary=binary)
    np.testing.assert_allclose(got, direct(stack, batch), rtol=1e-5, atol=1e-6)


def test_grpc_infer_with_raw_contents_matches_onnx_runtime(stack: Stack) -> None:
    batch = stack.heldout[10:15]
    got = grpc_infer(stack, batch, stack.as_device())
    np.testing.assert_allclose(got, direct(stack, batch), rtol=1e-5, atol=1e-6)


def test_grpc_infer_with_typed_contents(stack: Stack) -> None:
    batch = stack.heldout[:2]
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="FP32", shape=list(batch.shape)
    )
    tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    request = inference_pb2.ModelInferRequest(model_name=MODEL, model_version="1", id="r-1")
    request.inputs.append(tensor)
    with grpc.insecure_channel(stack.grpc_url) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=tuple(stack.as_operator().items()))
    assert response.id == "r-1" and response.model_version == "1"
    out = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(out, direct(stack, batch), rtol=1e-5, atol=1e-6)


def test_unversioned_request_gets_the_newest_version(stack: Stack) -> None:
    status, body, _ = raw_post(
        stack,
        f"/v2/models/{MODEL}/infer",
        {"inputs": [_json_input(stack.heldout[:1])]},
        stack.as_operator(),
    )
    assert status == 200 and body["model_version"] == "2"


# -- auth -----------------------------------------------------------------------------------


def test_device_requests_reach_the_hard_example_sink_with_the_edge_answer(stack: Stack) -> None:
    stack.sink.clear()
    batch = stack.heldout[:3]
    edge = {"edgeloop_edge_label": 4, "edgeloop_edge_score": 0.31, "edgeloop_edge_version": "7"}
    http_infer(stack, batch, stack.as_device(), parameters=edge)
    grpc_infer(stack, batch[:1], stack.as_device())
    http_infer(stack, batch, stack.as_operator())  # operators are not recorded
    assert len(stack.sink.examples) == 2
    first, second = stack.sink.examples
    assert first.device_id == stack.device_id and first.model == MODEL and first.version == "2"
    assert first.edge_answer == {"label": 4, "score": 0.31, "version": "7"}
    np.testing.assert_array_equal(first.inputs["image"], batch)
    np.testing.assert_allclose(first.outputs["probabilities"], direct(stack, batch), rtol=1e-5)
    assert second.edge_answer is None and second.inputs["image"].shape == (1, 8, 8, 1)
    stack.sink.clear()
    lists = {"edgeloop_edge_labels": "4,1,9", "edgeloop_edge_scores": "0.3, 0.2,0.1"}
    http_infer(stack, batch, stack.as_device(), parameters=lists)
    (third,) = stack.sink.examples
    assert third.edge_answer == {"labels": [4, 1, 9], "scores": [0.3, 0.2, 0.1]}


def test_a_bad_edge_parameter_is_invalid(stack: Stack) -> None:
    with pytest.raises(InferenceServerException) as caught:
        http_infer(
            stack, stack.heldout[:1], stack.as_device(), parameters={"edgeloop_edge_label": "four"}
        )
    assert caught.value.status() == "400" and "edgeloop_edge_label" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        http_infer(
            stack,
            stack.heldout[:2],
            stack.as_device(),
            parameters={"edgeloop_edge_labels": "4,x"},
        )
    message = caught.value.message()
    assert caught.value.status() == "400" and "edgeloop_edge_labels" in message, message
    assert "item 1 ('x')" in message, message


def test_missing_or_wrong_credentials_are_refused(stack: Stack) -> None:
    batch = stack.heldout[:1]
    for headers in ({}, {"authorization": "Bearer eop_nope.nope"}):
        with pytest.raises(InferenceServerException) as caught:
            http_infer(stack, batch, headers)
        assert caught.value.status() == "401"
        with pytest.raises(InferenceServerException) as caught:
            grpc_infer(stack, batch, headers)
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    wrong = {**stack.as_device(), "authorization": "Bearer not-the-secret"}
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(stack, batch, wrong)
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"


def test_revoked_device_and_operator_are_forbidden(stack: Stack) -> None:
    device_id, secret = enroll(stack.registry, "pi-revoked")
    headers = {"authorization": f"Bearer {secret}", "x-edgeloop-device": device_id}
    stack.registry.revoke_device(device_id)
    with pytest.raises(InferenceServerException) as caught:
        http_infer(stack, stack.heldout[:1], headers)
    assert caught.value.status() == "403"
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(stack, stack.heldout[:1], headers)
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    issued = stack.registry.create_operator_token("gone")
    stack.registry.revoke_operator_token(issued.info.id)
    with pytest.raises(InferenceServerException) as caught:
        http_infer(stack, stack.heldout[:1], {"authorization": f"Bearer {issued.token}"})
    assert caught.value.status() == "403"


# -- guards ---------------------------------------------------------------------------------


def _json_input(batch: np.ndarray, **changes: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": "image",
        "datatype": "FP32",
        "shape": list(batch.shape),
        "data": batch.ravel().tolist(),
    }
    tensor.update(changes)
    return tensor


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": "picture"}, "input 'picture': the model has no such input"),
        ({"datatype": "FP64"}, "input 'image': datatype 'FP64' does not match the model's FP32"),
        ({"shape": [1, 8, 8]}, "input 'image': shape [1, 8, 8] does not match"),
        ({"shape": [1, 8, 9, 1]}, "input 'image': shape [1, 8, 9, 1] does not match"),
    ],
    ids=["name", "datatype", "rank", "dimension"],
)
def test_guards_name_the_tensor_and_what_is_wrong(
    stack: Stack, changes: dict[str, Any], expected: str
) -> None:
    body = {"inputs": [_json_input(stack.heldout[:1], **changes)]}
    status, answer, _ = raw_post(stack, f"/v2/models/{MODEL}/infer", body, stack.as_operator())
    assert status == 400 and expected in answer["error"], answer
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(
        name=changes.get("name", "image"),
        datatype=changes.get("datatype", "FP32"),
        shape=changes.get("shape", [1, 8, 8, 1]),
    )
    request = inference_pb2.ModelInferRequest(model_name=MODEL, inputs=[tensor])
    request.raw_input_contents.append(stack.heldout[:1].tobytes())
    with grpc.insecure_channel(stack.grpc_url) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=tuple(stack.as_operator().items()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in str(caught.value.details())


def test_over_the_byte_limit_is_refused_before_decoding(stack: Stack) -> None:
    rows = LIMIT // (8 * 8 * 4) + 1
    big = np.zeros((rows, 8, 8, 1), dtype=np.float32)
    with pytest.raises(InferenceServerException) as caught:
        http_infer(stack, big, stack.as_operator())
    assert caught.value.status() == "400"
    assert f"input 'image': {big.nbytes} bytes" in caught.value.message()
    assert f"limit of {LIMIT}" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(stack, big, stack.as_operator())
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'image'" in caught.value.message()


def test_raw_bytes_that_do_not_fit_the_shape_are_refused(stack: Stack) -> None:
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="FP32", shape=[2, 8, 8, 1]
    )
    request = inference_pb2.ModelInferRequest(model_name=MODEL, inputs=[tensor])
    request.raw_input_contents.append(stack.heldout[:1].tobytes())
    with grpc.insecure_channel(stack.grpc_url) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=tuple(stack.as_operator().items()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'image': 256 bytes sent" in str(caught.value.details())


# -- metrics --------------------------------------------------------------------------------


def test_metrics_expose_every_family(stack: Stack) -> None:
    http_infer(stack, stack.heldout[:2], stack.as_operator())
    with pytest.raises(InferenceServerException):
        http_infer(stack, stack.heldout[:1], {})
    with urllib.request.urlopen(f"http://{stack.http_url}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    for family in (
        "edgeloop_offload_queue_seconds_bucket",
        "edgeloop_offload_batch_size_bucket",
        "edgeloop_offload_request_seconds_bucket",
        "edgeloop_offload_rejections_total",
        "edgeloop_offload_inferences_total",
    ):
        assert family in text, family
    assert f'model="{MODEL}",version="2"' in text
    assert 'reason="unauthenticated"' in text


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("offload_max_batch", 0, "offload_max_batch = 0"),
        ("offload_queue_size", -1, "offload_queue_size = -1"),
        ("offload_max_queue_delay_ms", -2, "offload_max_queue_delay_ms = -2"),
        ("offload_http_port", 70000, "offload_http_port = 70000"),
        ("offload_device", "tpu", "offload_device = 'tpu'"),
    ],
)
def test_bad_offload_settings_name_the_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(HubConfigError, match="bad hub setting") as caught:
        load_settings(None, **{key: value})
    assert expected in str(caught.value)


def test_offload_defaults() -> None:
    settings = load_settings()
    assert (settings.offload_http_host, settings.offload_http_port) == ("127.0.0.1", 8000)
    assert settings.offload_max_batch == 32 and settings.offload_max_queue_delay_ms == 2
    assert settings.offload_queue_size == 256 and settings.offload_auth is True


# -- CUDA -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_serves_the_same_answers(reference_dir: Path, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, offload_http_port=0, offload_device="cuda")
    with Registry.open(settings) as registry:
        registry.register_model(MODEL, "1", "onnx-fp32", reference_dir / CLOUD)
        token = registry.create_operator_token("gpu").token
        offload = OffloadServer(registry, settings)
        offload.start()
        try:
            batch = np.load(reference_dir / "data" / "digits-heldout.npz")["x"][:32]
            client = thttp.InferenceServerClient(offload.address)
            tensor = thttp.InferInput("image", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch, binary_data=True)
            result = client.infer(MODEL, [tensor], headers={"authorization": f"Bearer {token}"})
            assert [m.runner.accelerator for m in offload.pool.loaded()] == ["cuda"]
        finally:
            offload.stop()
    session = ort.InferenceSession(str(reference_dir / CLOUD), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"image": batch})[0]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-3)
