"""Telemetry aggregation: the Recorder's windows, the system probe, the link settings."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import ConfigError
from edge_agent.profiles import load_profile
from edge_agent.telemetry.aggregate import CONFIDENCE_EDGES, LATENCY_EDGES_MS, Recorder
from edge_agent.telemetry.schema import decode, encode
from edge_agent.telemetry.settings import ForwardPolicy, MqttSettings, reconnect_delay
from edge_agent.telemetry.system import SystemProbe

T0 = 1_795_460_000.0


def _message(body: dict[str, Any]) -> dict[str, Any]:
    envelope = {
        "schema": 1,
        "kind": "telemetry",
        "device": "pi-1",
        "fleet": "lab",
        "boot_id": "b",
        "seq": 1,
        "ts": T0,
        "historical": False,
    }
    extra = {"system": {}, "model": {}, "spool": {"dropped": 0, "backlog": 0}}
    return {**envelope, **body, **extra}


# -- requests, errors, latency ---------------------------------------------------------------


def test_counts_throughput_and_window_times() -> None:
    recorder = Recorder(T0)
    for _ in range(30):
        recorder.record(0.002, ok=True)
    for _ in range(10):
        recorder.record(0.001, ok=False)
    body = recorder.snapshot(T0 + 4.0)
    assert (body["requests"], body["errors"]) == (40, 10)
    assert body["throughput_rps"] == pytest.approx(10.0)
    assert (body["window_start"], body["window_end"], body["interval_s"]) == (T0, T0 + 4, 4.0)
    assert sum(body["latency_ms"]["counts"]) == 30  # errors are counted, not timed


def test_snapshot_starts_a_new_window() -> None:
    recorder = Recorder(T0)
    recorder.record(0.001, ok=True)
    recorder.snapshot(T0 + 1)
    body = recorder.snapshot(T0 + 3)
    assert body["requests"] == 0 and body["window_start"] == T0 + 1
    assert body["throughput_rps"] == 0.0
    assert body["latency_ms"]["p50"] == 0.0 and sum(body["latency_ms"]["counts"]) == 0
    decode(encode(_message(body)))  # an empty window is still a valid message


def test_latency_percentiles_are_exact_below_the_sample_size() -> None:
    latencies_ms = np.random.default_rng(1).gamma(2.0, 3.0, size=800)
    recorder = Recorder(T0, latency_sample=1024)
    for ms in latencies_ms:
        recorder.record(float(ms) / 1000, ok=True)
    report = recorder.snapshot(T0 + 1)["latency_ms"]
    expected = np.percentile(latencies_ms, [50, 95, 99])
    assert [report["p50"], report["p95"], report["p99"]] == pytest.approx(expected)
    assert report["max"] == pytest.approx(latencies_ms.max())
    assert report["mean"] == pytest.approx(latencies_ms.mean())


def test_latency_percentiles_from_the_reservoir_when_the_window_is_large() -> None:
    latencies_ms = np.random.default_rng(2).uniform(0, 100, size=50_000)
    recorder = Recorder(T0, latency_sample=2048, seed=3)
    for ms in latencies_ms:
        recorder.record(float(ms) / 1000, ok=True)
    report = recorder.snapshot(T0 + 1)["latency_ms"]
    assert report["p50"] == pytest.approx(50, abs=5)
    assert report["p95"] == pytest.approx(95, abs=3)
    assert report["max"] == pytest.approx(latencies_ms.max())  # max and mean are exact
    assert sum(report["counts"]) == 50_000


@pytest.mark.parametrize(
    ("ms", "bucket"),
    [(0.0, 0), (0.25, 0), (0.26, 1), (1.0, 2), (1.5, 3), (10_000.0, 22), (10_000.1, 23)],
)
def test_latency_bucket_edges_are_inclusive_upper_bounds(ms: float, bucket: int) -> None:
    recorder = Recorder(T0)
    recorder.record(ms / 1000, ok=True)
    report = recorder.snapshot(T0 + 1)["latency_ms"]
    assert report["buckets"] == list(LATENCY_EDGES_MS)
    assert len(report["counts"]) == len(LATENCY_EDGES_MS) + 1
    assert report["counts"].index(1) == bucket


# -- confidence ------------------------------------------------------------------------------


def test_confidence_histogram_takes_the_top_probability_of_each_row() -> None:
    recorder = Recorder(T0)
    recorder.record(0.001, True, np.array([[0.05, 0.95], [0.5, 0.5], [0.7, 0.3]]))
    recorder.record(0.001, True, np.array([0.25, 0.75], dtype=np.float32))
    recorder.record(0.001, True, np.array([np.nan, np.nan]))  # not a confidence
    recorder.record(0.001, True, np.zeros((0, 10)))
    report = recorder.snapshot(T0 + 1)["confidence"]
    assert report["buckets"] == list(CONFIDENCE_EDGES)
    counts = dict(zip([*CONFIDENCE_EDGES, "over"], report["counts"], strict=True))
    assert counts[0.95] == 1 and counts[0.5] == 1 and counts[0.7] == 1 and counts[0.8] == 1
    assert sum(report["counts"]) == 4
    assert report["mean"] == pytest.approx((0.95 + 0.5 + 0.7 + 0.75) / 4, abs=1e-6)


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        (np.array([0.3, 0.7]), [0.7]),  # one row, 1-d
        (np.array([[0.3, 0.7]]), [0.7]),  # batch of one
        (np.array([[0.3, 0.7], [0.9, 0.1]]), [0.7, 0.9]),  # a batch
        (np.full((1, 1000), 0.001), [0.001]),  # a large classifier: numpy's max
        (np.full((2, 1, 3), 0.25), [0.25, 0.25]),  # more dimensions: rows of the last axis
        (np.array([1, 0], dtype=np.uint8), [1.0]),  # integers are numbers too
        (np.zeros((1, 0)), []),  # no classes, no confidence
    ],
)
def test_top_probability_of_every_shape(probabilities: np.ndarray, expected: list[float]) -> None:
    recorder = Recorder(T0)
    recorder.record(0.001, True, probabilities)
    report = recorder.snapshot(T0 + 1)["confidence"]
    assert sum(report["counts"]) == len(expected)
    assert report["mean"] == pytest.approx(sum(expected) / len(expected) if expected else 0.0)


# -- input statistics ------------------------------------------------------------------------


def test_input_statistics_over_sampled_requests() -> None:
    rng = np.random.default_rng(4)
    batches = [rng.normal(3.0, 2.0, size=(1, 8, 8, 1)).astype(np.float32) for _ in range(40)]
    recorder = Recorder(T0, input_sample_first=0, input_sample_every=4)
    for batch in batches:
        recorder.record(0.001, True, inputs={"image": batch})
    stats = recorder.snapshot(T0 + 1)["inputs"]["image"]
    sampled = np.concatenate([b.ravel() for b in batches[3::4]]).astype(np.float64)
    assert stats["count"] == 10 and stats["nonfinite"] == 0
    assert stats["mean"] == pytest.approx(sampled.mean())
    assert stats["std"] == pytest.approx(sampled.std())
    assert (stats["min"], stats["max"]) == pytest.approx((sampled.min(), sampled.max()))


def test_inputs_are_sampled_first_in_each_window_then_one_in_n() -> None:
    recorder = Recorder(T0, input_sample_first=5, input_sample_every=10)
    for _ in range(100):
        recorder.record(0.001, True, inputs={"x": np.ones(3)})
    assert recorder.snapshot(T0 + 1)["inputs"]["x"]["count"] == 5 + 10  # 1-5, then 10..100
    for _ in range(3):
        recorder.record(0.001, True, inputs={"x": np.ones(3)})
    assert recorder.snapshot(T0 + 2)["inputs"]["x"]["count"] == 3  # a quiet window: all


def test_input_statistics_on_a_large_tensor_use_evenly_spaced_values() -> None:
    image = np.linspace(0.0, 1.0, 224 * 224 * 3, dtype=np.float32).reshape(1, 224, 224, 3)
    recorder = Recorder(T0, input_sample_every=1, input_max_elements=1000)
    recorder.record(0.001, True, inputs={"image": image})
    stats = recorder.snapshot(T0 + 1)["inputs"]["image"]
    assert stats["mean"] == pytest.approx(0.5, abs=0.01)
    assert stats["std"] == pytest.approx(1 / math.sqrt(12), abs=0.01)


def test_nonfinite_and_non_numeric_inputs_do_not_poison_the_statistics() -> None:
    recorder = Recorder(T0, input_sample_every=1)
    recorder.record(0.001, True, inputs={"x": np.array([1.0, np.nan]), "s": np.array(["a"])})
    recorder.record(0.001, True, inputs={"x": np.array([2.0, 4.0])})
    body = recorder.snapshot(T0 + 1)
    assert body["inputs"] == {
        "x": {"count": 2, "mean": 3.0, "std": 1.0, "min": 2.0, "max": 4.0, "nonfinite": 1}
    }
    decode(encode(_message(body)))  # NaN never reaches the JSON


# -- offload ---------------------------------------------------------------------------------


def test_offload_counters_are_zero_until_the_agent_offloads() -> None:
    recorder = Recorder(T0)
    recorder.record(0.001, True)
    offload = recorder.snapshot(T0 + 1)["offload"]
    assert offload == {
        "attempted": 0,
        "succeeded": 0,
        "failed": 0,
        "skipped": 0,
        "rate": 0.0,
        "latency_ms_p50": 0.0,
        "breaker": "closed",
        "agreement": None,
    }


def test_offload_counters_rate_and_agreement() -> None:
    recorder = Recorder(T0)
    for _ in range(10):
        recorder.record(0.001, True)
    recorder.record_offload("succeeded", latency_s=0.020, agreed=True)
    recorder.record_offload("succeeded", latency_s=0.040, agreed=False)
    recorder.record_offload("failed", latency_s=0.100)
    recorder.record_offload("skipped")
    recorder.set_breaker("open")
    offload = recorder.snapshot(T0 + 1)["offload"]
    assert (offload["attempted"], offload["succeeded"], offload["failed"]) == (3, 2, 1)
    assert offload["skipped"] == 1 and offload["rate"] == pytest.approx(0.3)
    assert offload["latency_ms_p50"] == pytest.approx(40.0)
    assert offload["agreement"] == 0.5 and offload["breaker"] == "open"
    assert recorder.snapshot(T0 + 2)["offload"]["breaker"] == "open"  # state, not a count
    with pytest.raises(ValueError, match="'lost'"):
        recorder.record_offload("lost")  # type: ignore[arg-type]


# -- threads and the message -----------------------------------------------------------------


def test_recording_from_many_threads_loses_nothing() -> None:
    recorder = Recorder(T0, input_sample_every=7)
    probabilities = np.array([0.1, 0.9])
    inputs = {"image": np.ones((1, 8, 8, 1), np.float32)}

    def serve() -> None:
        for i in range(5000):
            recorder.record(0.001, ok=i % 10 != 0, probabilities=probabilities, inputs=inputs)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    body = recorder.snapshot(T0 + 1)
    assert (body["requests"], body["errors"]) == (20_000, 2_000)
    assert sum(body["latency_ms"]["counts"]) == 18_000
    assert sum(body["confidence"]["counts"]) == 20_000
    assert body["inputs"]["image"]["count"] == 16 + 20_000 // 7 - 16 // 7


def test_snapshot_is_a_valid_telemetry_body() -> None:
    recorder = Recorder(T0)
    recorder.record(0.003, True, np.array([0.3, 0.7]), {"image": np.zeros((1, 8, 8, 1))})
    decode(encode(_message(recorder.snapshot(T0 + 10))))


# -- the system probe ------------------------------------------------------------------------


@pytest.mark.parametrize(("millidegrees", "throttled"), [("50000", False), ("96500\n", True)])
def test_system_probe_reads_the_profiles_thermal_zones(
    tmp_path: Path, millidegrees: str, throttled: bool
) -> None:
    profile = load_profile("x86-64-cpu")  # zone sys/class/thermal/thermal_zone0/temp, 95 C
    zone = tmp_path / "root" / profile.thermal_zones[0]
    zone.parent.mkdir(parents=True)
    zone.write_text(millidegrees)
    sample = SystemProbe(tmp_path / "state", profile, root=tmp_path / "root").sample()
    assert sample["temps_c"] == {profile.thermal_zones[0]: int(millidegrees) / 1000}
    assert sample["throttled"] is throttled


def test_system_probe_without_a_profile_or_state_dir(tmp_path: Path) -> None:
    sample = SystemProbe(tmp_path / "not" / "made" / "yet").sample()
    assert sample["temps_c"] == {} and sample["throttled"] is False
    assert sample["disk_free_bytes"] > 0 and sample["rss_bytes"] > 0
    assert 0.0 <= sample["cpu_pct"] <= 100.0 and 0.0 < sample["mem_pct"] <= 100.0


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"port": 0}, "port = 0"),
        ({"port": True}, "port = True"),
        ({"keepalive": 1}, "keepalive = 1"),
        ({"host": ""}, "host"),
        ({"password": "x"}, "a username to go with it"),
        ({"tls": True, "cert_file": "c.pem"}, "both or neither"),
        ({"ca_file": "ca.pem"}, "tls = true"),
        ({"topic_prefix": "edgeloop/#"}, "topic_prefix"),
        ({"topic_prefix": "edgeloop/"}, "topic_prefix"),
        ({"client_id": ""}, "client_id"),
    ],
)
def test_bad_mqtt_settings_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MqttSettings(**fields)


def test_bad_forward_policy_names_the_field() -> None:
    with pytest.raises(ConfigError, match="backlog_rate"):
        ForwardPolicy(backlog_rate=0)
    with pytest.raises(ConfigError, match="reconnect_max_s"):
        ForwardPolicy(reconnect_min_s=5, reconnect_max_s=1)


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [(0, 0.0, 0.5), (0, 1.0, 1.0), (1, 0.0, 1.0), (3, 0.5, 6.0), (10, 1.0, 30.0), (99, 0.0, 15)],
)
def test_reconnect_delay_doubles_with_jitter_up_to_the_cap(
    attempt: int, jitter: float, expected: float
) -> None:
    policy = ForwardPolicy(reconnect_min_s=1.0, reconnect_max_s=30.0)
    assert reconnect_delay(attempt, policy, jitter) == pytest.approx(expected)
