"""What step 2 found, in figures and in the words the demo prints (pure functions)."""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def requests_seen(records: Iterable[Mapping[str, Any]]) -> int:
    """Inference requests counted in telemetry records, as ``/devices/{id}/telemetry`` lists."""
    return sum(int(record["payload"].get("requests", 0)) for record in records)


def worst_p95_ms(records: Iterable[Mapping[str, Any]]) -> float | None:
    """The highest p95 latency of the telemetry windows that saw requests, or None.

    The maximum, as the hub's per-minute rollups keep it: percentiles of separate windows
    do not combine, and the worst window is the honest figure.
    """
    found = [_p95(record["payload"]) for record in records if record["payload"].get("requests")]
    finite = [value for value in found if value is not None]
    return max(finite) if finite else None


def _p95(payload: Mapping[str, Any]) -> float | None:
    value = payload.get("latency_ms", {}).get("p95")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def accuracy(predicted: Sequence[int], labels: Sequence[int]) -> tuple[int, float]:
    """(how many right, the fraction right) of ``predicted`` against ``labels``."""
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    right = sum(int(p) == int(y) for p, y in zip(predicted, labels, strict=True))
    return right, right / len(labels) if labels else 0.0


@dataclass(frozen=True)
class FleetReport:
    rest: str  # HOST:PORT
    grpc: str
    mqtt: str
    data_dir: Path
    fleet: str
    device_id: str
    status: str
    sent: int
    seen: int
    p95_ms: float | None
    right: int
    operator_token: str
    offloaded: int  # answered by the hub
    threshold: float  # the cascade's, from edge-agent calibrate
    hard_examples: int  # offloaded inputs the hub keeps

    @property
    def accuracy(self) -> float:
        return self.right / self.sent if self.sent else 0.0


def summary_lines(report: FleetReport, *, hub_running: bool) -> list[str]:
    """The summary the demo prints after step 2, one line per figure."""
    p95 = "no requests in telemetry" if report.p95_ms is None else f"{report.p95_ms:.2f} ms"
    lines = [
        "summary",
        f"  hub REST API:              http://{report.rest}/api/v1 (docs at /docs)",
        f"  hub gRPC:                  {report.grpc}",
        f"  MQTT broker:               {report.mqtt}",
        f"  device:                    {report.device_id} in fleet {report.fleet}",
        f"  device status:             {report.status}",
        f"  requests seen by the hub:  {report.seen} (sent {report.sent})",
        f"  p95 latency (telemetry):   {p95} (worst 1 s window)",
        f"  accuracy:                  {report.accuracy:.3f} ({report.right}/{report.sent}"
        " held-out digits)",
        f"  answered by the hub:       {report.offloaded} of {report.sent} (confidence under "
        f"{report.threshold:.4g})",
        f"  hard examples on the hub:  {report.hard_examples}",
        "",
        "explore further:",
        f"  cloud-hub --data-dir {shlex.quote(str(report.data_dir))} devices",
        f"  cloud-hub --data-dir {shlex.quote(str(report.data_dir))} device show "
        f"{report.device_id}",
        f"  cloud-hub --data-dir {shlex.quote(str(report.data_dir))} hard-examples list "
        f"--fleet {report.fleet}",
        f"  curl -H 'Authorization: Bearer {report.operator_token}' "
        f"http://{report.rest}/api/v1/devices",
    ]
    if not hub_running:
        lines.append("  (curl needs the hub running: run the demo with --keep-running)")
    return lines
