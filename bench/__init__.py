"""Benchmarks for edgeloop, run as ``python -m bench NAME [--quick]``.

Each benchmark is a module exposing ``run(quick: bool) -> dict[str, object]``: it prints
its own table to stdout, logs progress to stderr and returns its figures, which the entry
point prints as the last line of stdout in one JSON object. Registering a benchmark is one
line in :data:`BENCHMARKS`.
"""

from __future__ import annotations

from typing import NamedTuple


class Benchmark(NamedTuple):
    """Where a benchmark lives and what it measures, in one line."""

    module: str
    summary: str


#: name -> (module exposing ``run(quick)``, one-line description).
BENCHMARKS: dict[str, Benchmark] = {
    "engine_overhead": Benchmark(
        "bench.engine_overhead", "p50 of Engine.run against raw InferenceSession.run"
    ),
    "quantization": Benchmark(
        "bench.quantization", "int8 against fp32: speed-up (ONNX, TFLite) and accuracy drop"
    ),
    "footprint": Benchmark("bench.footprint", "edge-agent run RSS over bare onnxruntime, idle CPU"),
    "telemetry": Benchmark(
        "bench.telemetry", "inference throughput with live MQTT telemetry against without"
    ),
    "ingest": Benchmark(
        "bench.ingest", "telemetry msg/s one hub process sustains with zero loss, SQLite and PG"
    ),
    "ota": Benchmark("bench.ota", "OTA: gRPC download vs HTTP copy, local p99 during a swap"),
    "batching": Benchmark(
        "bench.batching", "offload server: throughput and p50/p95/p99 with dynamic batching vs off"
    ),
    "cascade": Benchmark(
        "bench.cascade", "edge/cloud/cascade accuracy and offload at a validation-set threshold"
    ),
}

__all__ = ["BENCHMARKS", "Benchmark"]
