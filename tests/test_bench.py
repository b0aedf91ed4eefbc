"""The benchmark entry point: each benchmark's --quick run ends in one complete JSON line.

Speed figures are only checked for presence here (they are read from the benchmark
output, not gated in tests); the int8 accuracy figures are asserted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
HOST_KEYS = {"cpu_count", "machine", "python", "onnxruntime"}
KEYS = {
    "engine_overhead": {
        "ratio_p50_digits",
        "ratio_p50_mobilenet",
        "raw_p50_us_digits",
        "engine_p50_us_digits",
        "raw_p50_us_mobilenet",
        "engine_p50_us_mobilenet",
        "http_over_inprocess_p50_us",
    },
    "quantization": {
        "int8_speedup_onnx",
        "int8_speedup_tflite",
        "int8_top1_agreement",
        "int8_accuracy_drop_pt",
        "accuracy_onnx_fp32",
        "accuracy_onnx_int8",
        "accuracy_tflite_int8",
    },
    "telemetry": {"throughput_ratio", "inprocess_ratio", "record_p50_us", "publisher_cpu_frac"},
    "footprint": {"rss_ratio", "idle_cpu_pct"},
    "ingest": {"msgs_per_s_sqlite", "msgs_per_s_postgres", "lost"},
    "ota": {
        "grpc_over_http_copy",
        "swap_p99_ratio",
        "failed_requests",
        "steady_p99_ms",
        "swap_p99_ms",
    },
    "cascade": {"edge_acc", "cloud_acc", "cascade_acc", "offload_fraction"},
    "batching": {
        "throughput_gain_c16",
        "p95_ratio_c16",
        "p50_ratio_c1",
        "rps_on_c16",
        "rps_off_c16",
        "p95_ms_on_c16",
        "p95_ms_off_c16",
    },
}


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # EDGELOOP_CACHE, when set, is shared
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # the first run may build the reference models
        check=False,
    )


def _last_json(stdout: str) -> dict[str, object]:
    lines = stdout.rstrip("\n").splitlines()
    assert lines, "no output on stdout"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


def _number(result: dict[str, object], key: str) -> float:
    value = result[key]
    assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
    assert math.isfinite(value), (key, value)
    return float(value)


@pytest.mark.parametrize("name", sorted(KEYS))
def test_quick_run_ends_in_complete_json(name: str) -> None:
    done = _bench(name, "--quick")
    assert done.returncode == 0, done.stderr[-3000:]
    result = _last_json(done.stdout)
    assert result["bench"] == name
    assert result["quick"] is True
    missing = KEYS[name] - result.keys()
    assert not missing, f"missing figures {sorted(missing)}"
    figures = {key: _number(result, key) for key in KEYS[name]}
    host = result["host"]
    assert isinstance(host, dict) and host.keys() >= HOST_KEYS
    if name == "quantization":
        assert figures["int8_top1_agreement"] >= 0.99
        assert figures["int8_accuracy_drop_pt"] <= 1.0
    if name == "ingest":
        assert figures["lost"] == 0  # loss is correctness, not speed
    if name == "ota":
        assert figures["failed_requests"] == 0  # a failed request is a defect, not slowness
    if name == "cascade":  # accuracy on fixed, seeded models: deterministic, so asserted
        assert figures["offload_fraction"] <= 0.25
        assert figures["cloud_acc"] - figures["cascade_acc"] <= 0.005 + 1e-9


def test_unknown_benchmark_is_a_one_line_error() -> None:
    done = _bench("nope")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0]


def test_list_and_help_name_every_benchmark() -> None:
    listing = _bench("--list")
    helped = _bench("--help")
    assert listing.returncode == 0 and helped.returncode == 0
    for name in KEYS:
        assert name in listing.stdout
        assert name in helped.stdout
