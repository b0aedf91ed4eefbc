"""The MQTT contract between agents and the hub: topics and message envelopes.

Topics (``<prefix>`` is ``edgeloop/v1`` unless configured)::

    <prefix>/<fleet>/<device>/telemetry   QoS 1   one aggregate per interval
    <prefix>/<fleet>/<device>/events      QoS 1   things that happened (model switch, errors)
    <prefix>/<fleet>/<device>/status      QoS 1, retained   "online" at connect, last will "offline"
    <prefix>/<fleet>/<device>/cmd         hub -> device     "check in now" and the like

Every payload is a JSON object with the same envelope, so the hub can drop duplicates
(same device, boot id and sequence number) and see gaps::

    {"schema": 1, "kind": "telemetry", "device": "pi-17", "fleet": "lab",
     "boot_id": "9f0c...", "seq": 42, "ts": 1795460000.25, "historical": false, ...body}

``seq`` counts up from 1 for each boot id (a restart starts a new boot id). ``historical``
is true for a message replayed from the spool after an outage. The body of a telemetry
message is described by :data:`TELEMETRY_FIELDS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "edgeloop/v1"
KINDS = ("telemetry", "events", "status")

ENVELOPE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int,
    "kind": str,
    "device": str,
    "fleet": str,
    "boot_id": str,
    "seq": int,
    "ts": (int, float),
    "historical": bool,
}

# The body of a telemetry message: field -> type. Nested objects are documented here:
#   latency_ms:  {"p50", "p95", "p99", "max", "mean": float, "buckets": [upper edges ms],
#                 "counts": [int per bucket, one more than buckets for the overflow]}
#   confidence:  {"buckets": [upper edges 0..1], "counts": [...], "mean": float}
#   inputs:      {name: {"count", "mean", "std", "min", "max": float}}
#   offload:     {"attempted", "succeeded", "failed", "skipped": int, "rate": float,
#                 "latency_ms_p50": float, "breaker": str, "agreement": float | null}
#   system:      {"cpu_pct", "mem_pct": float, "rss_bytes", "disk_free_bytes": int,
#                 "temps_c": {zone: float}, "throttled": bool}
#   model:       {"name", "version", "backend", "format": str}
#   spool:       {"dropped": int, "backlog": int}
TELEMETRY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "interval_s": (int, float),
    "window_start": (int, float),
    "window_end": (int, float),
    "requests": int,
    "errors": int,
    "throughput_rps": (int, float),
    "latency_ms": dict,
    "confidence": dict,
    "inputs": dict,
    "offload": dict,
    "system": dict,
    "model": dict,
    "spool": dict,
}


class SchemaError(ValueError):
    """A payload that does not follow the contract; the message says which field."""


@dataclass(frozen=True)
class TopicAddress:
    prefix: str
    fleet: str
    device: str
    kind: str


def topic(prefix: str, fleet: str, device: str, kind: str) -> str:
    for label, part in (("fleet", fleet), ("device", device)):
        if not part or any(c in part for c in "/+#\0"):
            raise SchemaError(f"{label} {part!r} cannot be used in an MQTT topic")
    return f"{prefix}/{fleet}/{device}/{kind}"


def parse_topic(name: str, prefix: str = DEFAULT_PREFIX) -> TopicAddress:
    """Split ``<prefix>/<fleet>/<device>/<kind>``; raises :class:`SchemaError` otherwise."""
    if not name.startswith(prefix + "/"):
        raise SchemaError(f"topic {name!r} is not under {prefix!r}")
    parts = name[len(prefix) + 1 :].split("/")
    if len(parts) != 3 or not all(parts):
        raise SchemaError(f"topic {name!r} is not <prefix>/<fleet>/<device>/<kind>")
    return TopicAddress(prefix, parts[0], parts[1], parts[2])


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def decode(payload: bytes) -> dict[str, Any]:
    """Parse and validate one payload (envelope always, body for telemetry)."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"payload is not JSON ({exc})") from exc
    if not isinstance(message, dict):
        raise SchemaError("payload is not a JSON object")
    validate(message)
    return message


def validate(message: Mapping[str, Any]) -> None:
    _check_fields(message, ENVELOPE_FIELDS)
    if message["schema"] != SCHEMA_VERSION:
        raise SchemaError(f"schema {message['schema']!r} is not supported (expected 1)")
    if message["kind"] not in KINDS:
        raise SchemaError(f"kind {message['kind']!r} is not one of {', '.join(KINDS)}")
    if message["seq"] < 1:
        raise SchemaError(f"seq {message['seq']} must be >= 1")
    if message["kind"] == "telemetry":
        _check_fields(message, TELEMETRY_FIELDS)
    if message["kind"] == "status" and message.get("state") not in ("online", "offline"):
        raise SchemaError(f"status state {message.get('state')!r} is not online or offline")


def _check_fields(
    message: Mapping[str, Any], fields: Mapping[str, type | tuple[type, ...]]
) -> None:
    for name, expected in fields.items():
        if name not in message:
            raise SchemaError(f"field {name!r} is missing")
        value = message[name]
        # bool is an int in Python; only a field declared bool may hold one
        wrong_bool = isinstance(value, bool) and expected is not bool
        if wrong_bool or not isinstance(value, expected):
            raise SchemaError(f"field {name!r} = {value!r} has the wrong type")
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemaError(f"field {name!r} = {value!r} is not finite")
