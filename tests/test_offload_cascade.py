"""The cascade at run time, against a real OIP v2 gRPC server and the agent's local API.

The hub is :mod:`tests.oip_grpc_server`: a plain Open Inference Protocol v2 gRPC server
running the reference cloud model with ONNX Runtime and no edgeloop extras, so what works
here works against any such server (Triton included). The agent side is real too: the
reference edge model in an :class:`Engine`, a :class:`ModelService` with the cascade, the
local HTTP API on a free loopback port, and telemetry's :class:`Recorder`. Timing limits
are generous (a loaded 2-core machine); only the budget test freezes its clock.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc
from oip_grpc_server import OipGrpcServer

from edge_agent.config import AgentConfig, parse_config
from edge_agent.engine import Engine
from edge_agent.errors import ConfigError
from edge_agent.identity import Identity
from edge_agent.offload.breaker import CircuitBreaker
from edge_agent.offload.budget import Budget
from edge_agent.offload.cascade import Cascade
from edge_agent.offload.client import OffloadClient, OffloadError, RetryLater
from edge_agent.offload.scores import Policy
from edge_agent.server import LocalInferenceServer, ModelService
from edge_agent.service.daemon import Agent
from edge_agent.service.offload import new_cascade
from edge_agent.telemetry.aggregate import Recorder

EDGE = "digits-edge/digits-edge-fp32.onnx"
CLOUD = "digits-cloud/digits-cloud-fp32.onnx"
LOCAL_NAME, CLOUD_NAME = "digits", "digits-cloud"
THRESHOLD = 0.9
MARGIN_S = 1.5  # what a loaded machine may add on top of a deadline
HTTP_TIMEOUT_S = 60.0


# -- fixtures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Digits:
    easy: np.ndarray  # the edge model is sure of these (confidence > 0.999)
    hard: np.ndarray  # below THRESHOLD, and the cloud model answers otherwise
    unsure: np.ndarray  # confidence in [THRESHOLD, 0.999), and the cloud model agrees
    edge: ort.InferenceSession
    cloud: ort.InferenceSession


@pytest.fixture(scope="module")
def digits(reference_dir: Path) -> Digits:
    x = np.load(reference_dir / "data" / "digits-heldout.npz")["x"].astype(np.float32)
    edge = ort.InferenceSession(str(reference_dir / EDGE), providers=["CPUExecutionProvider"])
    cloud = ort.InferenceSession(str(reference_dir / CLOUD), providers=["CPUExecutionProvider"])
    e, c = edge.run(None, {"image": x})[0], cloud.run(None, {"image": x})[0]
    easy = x[e.max(axis=1) > 0.999]
    hard = x[(e.max(axis=1) < THRESHOLD) & (e.argmax(axis=1) != c.argmax(axis=1))]
    top = e.max(axis=1)
    unsure = x[(top >= THRESHOLD) & (top < 0.999) & (e.argmax(axis=1) == c.argmax(axis=1))]
    assert len(easy) >= 8 and len(hard) >= 3 and len(unsure) >= 3, "the models changed"
    return Digits(easy[:8], hard, unsure[:3], edge, cloud)


@pytest.fixture(scope="module")
def engine(reference_dir: Path) -> Iterator[Engine]:
    with Engine.load(reference_dir / EDGE, profile="x86-64-cpu") as loaded:
        yield loaded


@pytest.fixture()
def hub(reference_dir: Path) -> Iterator[OipGrpcServer]:
    with OipGrpcServer(reference_dir / CLOUD, CLOUD_NAME) as server:
        yield server


class Served:
    """The agent's serving path: service + cascade + local HTTP API + recorder."""

    def __init__(self, server: LocalInferenceServer, cascade: Cascade, recorder: Recorder):
        self.server = server
        self.cascade = cascade
        self.recorder = recorder

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, str, float]:
        """POST one request; (probabilities, who answered, seconds it took)."""
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": list(images.shape),
                    "data": images.ravel().tolist(),
                }
            ]
        }
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        try:
            start = time.monotonic()
            connection.request("POST", f"/v2/models/{LOCAL_NAME}/infer", json.dumps(body))
            response = connection.getresponse()
            payload = json.loads(response.read())
            elapsed = time.monotonic() - start
        finally:
            connection.close()
        assert response.status == 200, payload
        (output,) = payload["outputs"]
        probabilities = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        return probabilities, payload["parameters"]["edgeloop_answered_by"], elapsed

    def offload(self) -> dict[str, Any]:
        report: dict[str, Any] = self.recorder.snapshot(time.time())["offload"]
        return report


@contextmanager
def agent(
    engine: Engine,
    url: str,
    *,
    deadline_s: float = 5.0,
    failures: int = 5,
    cooldown_s: float = 10.0,
    budget: Budget | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    model: str = CLOUD_NAME,
) -> Iterator[Served]:
    recorder = Recorder(time.time())
    breaker = CircuitBreaker(failures, cooldown_s, on_change=recorder.set_breaker)
    cascade = Cascade(
        OffloadClient(url, model, metadata=metadata),
        Policy("max_probability", THRESHOLD),
        deadline_s=deadline_s,
        breaker=breaker,
        budget=budget,
        recorder=recorder,
    )
    service = ModelService(engine, LOCAL_NAME, "7", recorder=recorder, cascade=cascade)
    with LocalInferenceServer(service, port=0) as server:
        try:
            yield Served(server, cascade, recorder)
        finally:
            cascade.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- who answers ---------------------------------------------------------------------------


def test_easy_inputs_are_answered_locally_and_hard_ones_by_the_cloud(
    engine: Engine, hub: OipGrpcServer, digits: Digits
) -> None:
    identity = Identity("pi-17", "lab", "hub:1", "s3cret")
    from edge_agent.enroll import device_metadata

    with agent(engine, hub.url, metadata=device_metadata(identity)) as a:
        for image in digits.easy[:4]:
            got, who, _ = a.infer(image[None])
            assert who == "edge"
            np.testing.assert_allclose(
                got, digits.edge.run(None, {"image": image[None]})[0], atol=1e-5
            )
        assert hub.calls == []
        hard = digits.hard[0][None]
        got, who, _ = a.infer(hard)
        assert who == "cloud"
        np.testing.assert_allclose(got, digits.cloud.run(None, {"image": hard})[0], atol=1e-5)
        local = digits.edge.run(None, {"image": hard})[0]
        assert got.argmax() != local.argmax()  # the cloud's answer, not the device's
        offload = a.offload()
    (call,) = hub.calls
    assert call.model == CLOUD_NAME and call.version == "" and call.rows == 1
    assert call.metadata["authorization"] == "Bearer s3cret"
    assert call.metadata["x-edgeloop-device"] == "pi-17"
    assert call.parameters["edgeloop_edge_label"] == int(local.argmax())
    assert call.parameters["edgeloop_edge_score"] == pytest.approx(float(local.max()), abs=1e-6)
    assert call.parameters["edgeloop_edge_version"] == "7"
    assert offload["attempted"] == offload["succeeded"] == 1
    assert offload["failed"] == offload["skipped"] == 0
    assert offload["agreement"] == 0.0 and offload["breaker"] == "closed"
    assert offload["rate"] == pytest.approx(1 / 5)


def test_a_batch_sends_only_its_hard_rows_and_merges_the_answers(
    engine: Engine, hub: OipGrpcServer, digits: Digits
) -> None:
    batch = np.concatenate([digits.easy[:2], digits.hard[:2], digits.easy[2:3]])
    with agent(engine, hub.url) as a:
        got, who, _ = a.infer(batch)
    assert who == "cloud"
    (call,) = hub.calls
    assert call.rows == 2 and "edgeloop_edge_label" not in call.parameters
    local = digits.edge.run(None, {"image": batch[2:4]})[0]
    # One value per offloaded row, in order, as comma-separated strings (OIP has no lists).
    assert call.parameters["edgeloop_edge_labels"] == ",".join(map(str, local.argmax(axis=1)))
    scores = [float(s) for s in call.parameters["edgeloop_edge_scores"].split(",")]
    np.testing.assert_allclose(scores, local.max(axis=1), rtol=1e-5)
    assert call.parameters["edgeloop_edge_version"] == "7"
    expected = digits.edge.run(None, {"image": batch})[0]
    expected[2:4] = digits.cloud.run(None, {"image": batch[2:4]})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_typed_contents_answers_are_read_too(
    engine: Engine, hub: OipGrpcServer, digits: Digits
) -> None:
    hub.typed_outputs = True
    with agent(engine, hub.url) as a:
        got, who, _ = a.infer(digits.hard[:1])
    assert who == "cloud"
    np.testing.assert_allclose(
        got, digits.cloud.run(None, {"image": digits.hard[:1]})[0], atol=1e-5
    )


def test_agreement_compares_top_1(engine: Engine, hub: OipGrpcServer, digits: Digits) -> None:
    with agent(engine, hub.url) as a:
        a.cascade.policy = Policy("max_probability", 0.999)
        for image in digits.unsure:
            assert a.infer(image[None])[1] == "cloud"
        a.cascade.policy = Policy("max_probability", THRESHOLD)
        a.infer(digits.hard[:1])
        offload = a.offload()
    assert offload["succeeded"] == 4 and offload["agreement"] == pytest.approx(3 / 4)


def test_an_unknown_cloud_model_fails_the_offload_not_the_request(
    engine: Engine, hub: OipGrpcServer, digits: Digits
) -> None:
    with agent(engine, hub.url, model="no-such-model") as a:
        got, who, _ = a.infer(digits.hard[:1])
        assert a.offload()["failed"] == 1
    assert who == "edge"
    np.testing.assert_allclose(got, digits.edge.run(None, {"image": digits.hard[:1]})[0], atol=1e-5)


# -- a dead or slow hub --------------------------------------------------------------------


def test_with_the_server_down_the_device_answers(engine: Engine, digits: Digits) -> None:
    deadline = 0.5
    with agent(engine, f"127.0.0.1:{_free_port()}", deadline_s=deadline) as a:
        for image in digits.hard[:3]:
            got, who, elapsed = a.infer(image[None])
            assert who == "edge" and elapsed < deadline + MARGIN_S
            np.testing.assert_allclose(
                got, digits.edge.run(None, {"image": image[None]})[0], atol=1e-5
            )
        offload = a.offload()
    assert offload["failed"] == 3 and offload["succeeded"] == 0


def test_a_slow_server_costs_at_most_the_deadline(
    engine: Engine, hub: OipGrpcServer, digits: Digits
) -> None:
    deadline = 0.3
    hub.delay_s = 10.0
    with agent(engine, hub.url, deadline_s=deadline) as a:
        _, who, elapsed = a.infer(digits.hard[:1])
        assert a.offload()["failed"] == 1
    assert who == "edge"
    assert deadline * 0.9 <= elapsed < deadline + MARGIN_S


def test_the_breaker_opens_then_half_opens_and_closes_when_the_server_returns(
    engine: Engine, reference_dir: Path, digits: Digits
) -> None:
    deadline, cooldown = 0.5, 3.0
    hub = OipGrpcServer(reference_dir / CLOUD, CLOUD_NAME).start()
    hub.delay_s = 10.0  # slow: every call runs into the deadline
    port = hub.port
    try:
        with agent(engine, hub.url, deadline_s=deadline, failures=2, cooldown_s=cooldown) as a:
            for _ in range(2):
                assert a.infer(digits.hard[:1])[1] == "edge"
            assert a.offload()["failed"] == 2
            assert a.offload()["breaker"] == "open"
            calls = len(hub.calls)
            _, who, elapsed = a.infer(digits.hard[:1])  # open: the hub is not asked at all
            assert who == "edge" and len(hub.calls) == calls
            assert elapsed < deadline  # nothing added (a local answer takes milliseconds)
            assert a.offload()["skipped"] == 1

            hub.stop()  # down for good, then back on the same port
            hub = OipGrpcServer(reference_dir / CLOUD, CLOUD_NAME, port=port).start()
            time.sleep(cooldown + 0.2)
            got, who, _ = a.infer(digits.hard[:1])  # the half-open trial
            assert who == "cloud"
            np.testing.assert_allclose(
                got, digits.cloud.run(None, {"image": digits.hard[:1]})[0], atol=1e-5
            )
            assert a.offload()["breaker"] == "closed"
            assert a.infer(digits.hard[1:2])[1] == "cloud"
    finally:
        hub.stop()


def test_a_failed_trial_opens_the_breaker_again(
    engine: Engine, hub: OipGrpcServer, digits: Digits
) -> None:
    cooldown = 1.0
    hub.fail_with = grpc.StatusCode.UNAVAILABLE
    with agent(engine, hub.url, failures=1, cooldown_s=cooldown) as a:
        assert a.infer(digits.hard[:1])[1] == "edge"
        assert a.offload()["breaker"] == "open"
        time.sleep(cooldown + 0.2)
        assert a.infer(digits.hard[:1])[1] == "edge"  # the trial fails
        assert len(hub.calls) == 2
        assert a.infer(digits.hard[:1])[1] == "edge"  # open again: not asked
        assert len(hub.calls) == 2
        offload = a.offload()
        assert offload["breaker"] == "open" and offload["failed"] == 1
        assert offload["skipped"] == 1


def test_concurrent_offloads_do_not_wait_on_each_other(
    engine: Engine, hub: OipGrpcServer, digits: Digits
) -> None:
    delay, n = 1.0, 4
    hub.delay_s = delay
    with agent(engine, hub.url, deadline_s=10.0) as a:
        answers: list[str] = []
        start = time.monotonic()
        threads = [
            threading.Thread(target=lambda: answers.append(a.infer(digits.hard[:1])[1]))
            for _ in range(n)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - start
    assert answers == ["cloud"] * n
    assert elapsed < delay * n - 0.5  # in parallel, not one after another


def test_a_retry_hint_stops_offloads_until_it_passes(
    engine: Engine, hub: OipGrpcServer, digits: Digits
) -> None:
    hint_s = 3.0
    hub.exhausted_retry_after_ms = int(hint_s * 1000)
    hub.exhausted_count = 1
    with agent(engine, hub.url, failures=1) as a:
        assert a.infer(digits.hard[:1])[1] == "edge"  # RESOURCE_EXHAUSTED, retry-after-ms
        hinted = time.monotonic()
        answered = [a.infer(digits.hard[:1])[1]]
        while time.monotonic() - hinted < hint_s / 3:
            answered.append(a.infer(digits.hard[:1])[1])
        assert set(answered) == {"edge"}
        assert len(hub.calls) == 1  # nothing reached the hub during the hint
        offload = a.offload()
        assert offload["failed"] == 1 and offload["skipped"] == len(answered)
        assert offload["breaker"] == "closed"  # a busy hub is not a dead one
        time.sleep(max(0.0, hinted + hint_s + 0.1 - time.monotonic()))
        assert a.infer(digits.hard[:1])[1] == "cloud"


def test_the_budget_caps_offloads(engine: Engine, hub: OipGrpcServer, digits: Digits) -> None:
    budget = Budget(max_per_second=5.0, max_bytes_per_minute=3 * 256, clock=lambda: 1000.0)
    with agent(engine, hub.url, budget=budget) as a:
        answered = [a.infer(digits.hard[i % len(digits.hard)][None])[1] for i in range(6)]
        offload = a.offload()
    # the clock stands still: three 256-byte images fit the minute's bytes, then none
    assert answered == ["cloud"] * 3 + ["edge"] * 3
    assert len(hub.calls) == 3
    assert offload["succeeded"] == 3 and offload["skipped"] == 3


def test_an_ota_swap_keeps_the_cascade(
    engine: Engine, hub: OipGrpcServer, digits: Digits, reference_dir: Path
) -> None:
    with (
        agent(engine, hub.url) as a,
        Engine.load(reference_dir / EDGE, profile="x86-64-cpu") as new,
    ):
        service = a.server.service
        old = service.swap(new, "8")
        assert old is engine
        assert a.infer(digits.hard[:1])[1] == "cloud"
        assert hub.calls[-1].parameters["edgeloop_edge_version"] == "8"
        service.swap(engine, "7")
        assert service.wait_released(new, 10.0)


# -- the client against any OIP v2 server -----------------------------------------------------


def test_the_client_translates_failures(hub: OipGrpcServer, digits: Digits) -> None:
    with OffloadClient(hub.url, CLOUD_NAME) as client:
        out = client.infer({"image": digits.hard[:2]}, ["probabilities"], timeout_s=30)
        assert out["probabilities"].shape == (2, 10)
        hub.fail_with = grpc.StatusCode.INTERNAL
        with pytest.raises(OffloadError) as failed:
            client.infer({"image": digits.hard[:1]}, ["probabilities"], timeout_s=30)
        assert failed.value.code == "INTERNAL"
        hub.fail_with = None
        hub.exhausted_retry_after_ms = 250
        with pytest.raises(RetryLater) as later:
            client.infer({"image": digits.hard[:1]}, ["probabilities"], timeout_s=30)
        assert later.value.retry_after_s == 0.25


def test_the_test_server_is_a_plain_oip_v2_server_to_tritonclient(
    hub: OipGrpcServer, digits: Digits
) -> None:
    """Triton's own client talks to it, so it stands for any OIP v2 server (Triton too)."""
    client = tritonclient.grpc.InferenceServerClient(f"127.0.0.1:{hub.port}")
    try:
        image = tritonclient.grpc.InferInput("image", list(digits.hard[:2].shape), "FP32")
        image.set_data_from_numpy(digits.hard[:2])
        result = client.infer(CLOUD_NAME, [image], client_timeout=30)
    finally:
        client.close()
    np.testing.assert_allclose(
        result.as_numpy("probabilities"),
        digits.cloud.run(None, {"image": digits.hard[:2]})[0],
        atol=1e-5,
    )


# -- config and the daemon -----------------------------------------------------------------


def _config(text: str, base: Path) -> AgentConfig:
    return parse_config(f'[model]\npath = "m.onnx"\n{text}', "agent.toml", base_dir=base)


def test_offload_config_defaults_and_values(tmp_path: Path) -> None:
    off = _config("", tmp_path).offload
    assert not off.enabled and off.deadline_ms == 250 and off.breaker_failures == 5
    assert off.breaker_cooldown_s == 10.0 and off.score == "max_probability"
    assert off.send_credentials and off.send_edge_answer
    assert not _config('[offload]\nurl = ""', tmp_path).offload.enabled
    on = _config(
        '[offload]\nurl = "grpc://hub:8001"\nmodel = "big"\nthreshold = 0.75\n'
        'score = "margin"\nmax_per_second = 3\nmax_bytes_per_minute = 1000',
        tmp_path,
    ).offload
    assert on.url == "grpc://hub:8001" and on.model == "big" and on.threshold == 0.75
    assert on.score == "margin" and on.max_per_second == 3.0 and on.max_bytes_per_minute == 1000


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('url = "https://hub:8001"', "offload.url = 'https://hub:8001': expected grpc://host:port"),
        ('url = "hub"', "offload.url = 'hub'"),
        ('score = "vibes"', "offload.score = 'vibes': expected one of max_probability"),
        ("threshold = 1.5", "offload.threshold = 1.5: expected a number from 0 to 1"),
        ("threshold = true", "offload.threshold = true"),
        ("deadline_ms = 0", "offload.deadline_ms = 0: expected an integer from 1 to 60000"),
        ("deadline_ms = 2.5", "offload.deadline_ms = 2.5"),
        ("breaker_failures = 0", "offload.breaker_failures = 0"),
        ("breaker_cooldown_s = -1", "offload.breaker_cooldown_s = -1"),
        ("max_per_second = 0", "offload.max_per_second = 0"),
        ("max_bytes_per_minute = -5", "offload.max_bytes_per_minute = -5"),
        ('send_credentials = "yes"', "offload.send_credentials = 'yes': expected true or false"),
        ("timeout = 3", "offload.timeout = 3: expected one of"),
    ],
)
def test_offload_config_errors_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^agent.toml: " + _escape(message)):
        _config(f"[offload]\n{line}", tmp_path)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_no_url_builds_no_cascade(tmp_path: Path) -> None:
    section = _config("", tmp_path).offload
    assert new_cascade(section, local_model="m", identity=None, recorder=None) is None


def test_the_daemon_serves_the_cascaded_answer(
    tmp_path: Path, reference_dir: Path, hub: OipGrpcServer, digits: Digits
) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    config = parse_config(
        f"""
[agent]
state_dir = "{tmp_path / "state"}"
profile = "x86-64-cpu"
[model]
path = "{reference_dir / EDGE}"
name = "{LOCAL_NAME}"
[http]
port = 0
[mqtt]
enabled = false
[ota]
enabled = false
[offload]
url = "{hub.url}"
model = "{CLOUD_NAME}"
threshold = {THRESHOLD}
deadline_ms = 5000
""",
        "agent.toml",
        base_dir=tmp_path,
    )
    daemon = Agent(config, environ={})
    daemon.start()
    try:
        assert daemon.server is not None and daemon.cascade is not None
        recorder = Recorder(time.time())
        a = Served(daemon.server, daemon.cascade, recorder)
        assert a.infer(digits.easy[:1])[1] == "edge"
        assert a.infer(digits.hard[:1])[1] == "cloud"
    finally:
        assert daemon.stop()
    (call,) = hub.calls
    assert call.model == CLOUD_NAME and "authorization" not in call.metadata  # not enrolled
