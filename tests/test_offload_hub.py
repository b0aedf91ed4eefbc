"""The offload server as a part of :class:`cloud_hub.serve.Hub`: started, announced, stopped.

A whole hub in this process (REST API, gRPC server, ingest from a private Mosquitto, the
offload server) on free ports; tritonclient reaches the model over both transports at the
addresses the ``listening`` line gives, and a device's request lands in the hard-example
recorder when this build has one.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from mqtt_broker import MosquittoBroker

from cloud_hub.serve import Hub
from cloud_hub.settings import load_settings

MODEL = "digits-cloud"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    with MosquittoBroker(tmp_path / "broker") as broker:
        settings = load_settings(
            data_dir=tmp_path / "hub",
            http_port=0,
            grpc_port=0,
            offload_http_port=0,
            mqtt_port=broker.port,
        )
        running = Hub(settings)
        running.start()
        try:
            yield running
        finally:
            assert running.stop()


def test_the_hub_serves_offload_over_http_and_grpc(hub: Hub, reference_dir: Path) -> None:
    where = dict(part.split("=", 1) for part in hub.listening().split())
    assert list(where) == ["http", "grpc", "mqtt", "offload"]
    assert where["offload"].startswith("127.0.0.1:") and where["offload"] != "127.0.0.1:0"
    registry = hub.registry
    assert registry is not None
    registry.register_model(MODEL, "1", "onnx-fp32", reference_dir / MODEL / f"{MODEL}-fp32.onnx")
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=1)
    device = registry.redeem_enrollment_token(issued.token, public_key_pem=None, hostname="pi")
    headers = {"authorization": f"Bearer {device.secret}", "x-edgeloop-device": device.device.id}
    batch = np.load(reference_dir / "data" / "digits-heldout.npz")["x"][:4]

    client = thttp.InferenceServerClient(where["offload"])
    tensor = thttp.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    over_http = client.infer(MODEL, [tensor], headers=dict(headers)).as_numpy("probabilities")
    remote = tgrpc.InferenceServerClient(where["grpc"])
    typed = tgrpc.InferInput("image", list(batch.shape), "FP32")
    typed.set_data_from_numpy(batch)
    over_grpc = remote.infer(MODEL, [typed], headers=dict(headers)).as_numpy("probabilities")
    np.testing.assert_array_equal(over_http, over_grpc)

    if importlib.util.find_spec("cloud_hub.hard_examples") is not None:
        from cloud_hub.hard_examples import count_hard_examples

        deadline = time.monotonic() + 30
        while count_hard_examples(registry, fleet="lab") < 2:  # the recorder writes behind
            assert time.monotonic() < deadline, "the device's requests were not recorded"
            time.sleep(0.05)
