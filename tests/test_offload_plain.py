"""The agent's cascade against the hub's offload server used as a plain OIP v2 endpoint.

The agent may offload to any Open Inference Protocol v2 server (Triton, say), so nothing
of ours may be needed: here the hub's server runs with authentication off and the agent
sends no credentials and no ``edgeloop_edge_*`` parameters. Over gRPC and over HTTP, the
hard digits of a batch come back with the cloud model's answer (what ONNX Runtime gives
for them directly) and the sure ones keep the device's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cloud_hub.grpc_server import HubGrpcServer
from cloud_hub.offload import OffloadServer
from cloud_hub.registry import Registry
from cloud_hub.settings import load_settings
from edge_agent.offload.cascade import CLOUD, Cascade, Offloader
from edge_agent.offload.client import OffloadClient
from edge_agent.offload.http_client import HttpOffloadClient
from edge_agent.offload.scores import Policy

CLOUD_NAME = "digits-cloud"
CLOUD_MODEL = Path("digits-cloud", "digits-cloud-fp32.onnx")
EDGE_MODEL = Path("digits-edge", "digits-edge-fp32.onnx")
THRESHOLD = 0.9


@dataclass
class PlainHub:
    grpc_url: str
    http_url: str


@pytest.fixture(scope="module")
def plain_hub(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainHub]:
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("plain-hub"),
        grpc_port=0,
        offload_http_port=0,
        offload_auth=False,
        offload_device="cpu",
    )
    registry = Registry.open(settings)
    registry.register_model(CLOUD_NAME, "1", "onnx-fp32", reference_dir / CLOUD_MODEL)
    offload = OffloadServer(registry, settings)
    grpc_server = HubGrpcServer(registry, settings, broker=None)
    offload.add_to(grpc_server)
    port = grpc_server.start()
    offload.start()
    try:
        yield PlainHub(f"grpc://127.0.0.1:{port}", f"http://{offload.address}")
    finally:
        offload.stop()
        grpc_server.stop(1.0)
        registry.close()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_hard_rows_are_answered_by_the_hub_with_nothing_of_ours_sent(
    plain_hub: PlainHub, reference_dir: Path, transport: str
) -> None:
    images = np.load(reference_dir / "data" / "digits-heldout.npz")["x"].astype(np.float32)
    edge = ort.InferenceSession(str(reference_dir / EDGE_MODEL), providers=["CPUExecutionProvider"])
    cloud = ort.InferenceSession(
        str(reference_dir / CLOUD_MODEL), providers=["CPUExecutionProvider"]
    )
    (local,) = edge.run(None, {"image": images})
    hard = np.flatnonzero(local.max(axis=1) < THRESHOLD)[:3]
    sure = np.flatnonzero(local.max(axis=1) > 0.999)[:3]
    assert len(hard) == 3 and len(sure) == 3  # the reference data has both
    batch = images[np.concatenate([sure, hard])]
    (probabilities,) = edge.run(None, {"image": batch})
    output = edge.get_outputs()[0].name

    client: Offloader = (
        OffloadClient(plain_hub.grpc_url, CLOUD_NAME)  # no metadata: no credentials
        if transport == "grpc"
        else HttpOffloadClient(plain_hub.http_url, CLOUD_NAME)
    )
    cascade = Cascade(
        client, Policy("max_probability", THRESHOLD), deadline_s=30.0, send_edge_answer=False
    )
    try:
        answer = cascade.answer(
            {"image": batch}, {output: probabilities}, output, probabilities, "1"
        )
    finally:
        cascade.close()
    assert answer.answered_by == CLOUD
    got = answer.outputs[output]
    np.testing.assert_allclose(got[:3], probabilities[:3])  # the device's own answers
    (expected,) = cloud.run(None, {"image": batch[3:]})
    np.testing.assert_allclose(got[3:], expected, rtol=1e-4, atol=1e-6)
