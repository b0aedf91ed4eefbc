"""``cloud-hub telemetry tail``: a device's latest telemetry messages."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_json_flag, open_registry, print_json, print_table, show_usage


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("telemetry", parents=[common], help="read device telemetry")
    sub = group.add_subparsers(title="telemetry commands", metavar="COMMAND")
    tail = sub.add_parser(
        "tail",
        parents=[common],
        help="a device's latest telemetry messages, oldest first",
    )
    tail.add_argument("device_id", metavar="ID")
    tail.add_argument("--limit", type=int, default=20, help="how many messages (default 20)")
    add_json_flag(tail)
    tail.set_defaults(handler=_tail)
    show_usage(group)


def _tail(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        records = registry.telemetry_tail(args.device_id, limit=args.limit)
    if args.json:
        print_json([r.to_dict() for r in records])
        return 0
    rows = []
    for record in records:
        body = record.payload
        latency = _dict(body.get("latency_ms"))
        system = _dict(body.get("system"))
        model = _dict(body.get("model"))
        rows.append(
            (
                record.ts,
                record.boot_id[:8],
                record.seq,
                body.get("requests"),
                body.get("errors"),
                _number(latency.get("p50")),
                _number(latency.get("p95")),
                _number(latency.get("p99")),
                _number(system.get("cpu_pct")),
                f"{model.get('name', '?')}@{model.get('version', '?')}" if model else None,
                "yes" if body.get("historical") else "",
            )
        )
    print_table(
        (
            "TIME",
            "BOOT",
            "SEQ",
            "REQS",
            "ERRS",
            "P50 MS",
            "P95 MS",
            "P99 MS",
            "CPU %",
            "MODEL",
            "REPLAYED",
        ),
        rows,
        empty=f"no telemetry from {args.device_id} yet",
    )
    return 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
