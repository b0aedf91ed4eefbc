"""One MQTT message in, one :class:`Message` out, or :class:`~cloud_hub.errors.InvalidRequest`.

Pure: no database, no clock. On top of :func:`edge_agent.telemetry.schema.decode` (the
envelope, and the body of a telemetry message), a message is refused when

- its payload is over :data:`MAX_PAYLOAD_BYTES`, is not UTF-8, or holds ``NaN`` or
  ``Infinity`` (which JSON does not have, the agent never sends and PostgreSQL refuses);
- its topic is not ``<prefix>/<fleet>/<device>/<kind>``, or the payload's ``kind``,
  ``fleet`` or ``device`` differ from the topic's (a device may only speak as itself);
- a value would not fit its column: ``boot_id`` over 64 characters, ``seq`` or a count
  over 2**63 - 1, a ``ts`` no datetime can hold, an event name over 64 characters, a NUL
  character in either (PostgreSQL text cannot hold one);
- counts that can only be positive (``requests``, ``errors``) are negative.

Whether the device exists, belongs to that fleet and is not revoked is for the writer,
which asks the database.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edge_agent.telemetry.schema import SchemaError, parse_topic, validate

from ..errors import InvalidRequest

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_BOOT_ID_CHARS = 64  # telemetry_raw.boot_id and devices.boot_id
MAX_EVENT_CHARS = 64  # device_events.kind
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Message:
    """A validated message: the envelope's fields, typed; the object and its JSON text."""

    kind: str  # "telemetry", "events" or "status"
    fleet: str
    device: str
    boot_id: str
    seq: int
    ts: datetime  # the device's clock, UTC
    historical: bool
    body: dict[str, Any]
    text: str  # the payload as received, stored as it is

    @property
    def key(self) -> tuple[str, str, int]:
        """What makes a message unique: (device, boot id, seq)."""
        return (self.device, self.boot_id, self.seq)


def parse(topic: str, payload: bytes, prefix: str) -> Message:
    """Validate one message received on ``topic``; InvalidRequest says what is wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidRequest(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        address = parse_topic(topic, prefix)
    except SchemaError as exc:
        raise InvalidRequest(str(exc)) from exc
    text, body = _decode(payload)
    for field, expected in (
        ("kind", address.kind),
        ("fleet", address.fleet),
        ("device", address.device),
    ):
        if body[field] != expected:
            raise InvalidRequest(
                f"payload {field} {body[field]!r} does not match the topic's {expected!r}"
            )
    boot_id, seq = body["boot_id"], body["seq"]
    if not 1 <= len(boot_id) <= MAX_BOOT_ID_CHARS or "\x00" in boot_id:
        raise InvalidRequest(f"boot_id must be 1 to {MAX_BOOT_ID_CHARS} characters, no NUL")
    if seq > INT64_MAX:
        raise InvalidRequest(f"seq {seq} is over {INT64_MAX}")
    if body["kind"] == "telemetry":
        _check_counts(body)
    elif body["kind"] == "events":
        _check_event(body)
    return Message(
        kind=body["kind"],
        fleet=address.fleet,
        device=address.device,
        boot_id=boot_id,
        seq=seq,
        ts=_datetime(body["ts"]),
        historical=body["historical"],
        body=body,
        text=text,
    )


def number(container: Any, key: str) -> float | None:
    """``container[key]`` when it is a finite number (not a bool), else None."""
    if not isinstance(container, dict):
        return None
    value = container.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def count(container: Any, key: str) -> int:
    """``container[key]`` when it is an integer from 0 to 2**63 - 1, else 0."""
    if not isinstance(container, dict):
        return 0
    value = container.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        return 0
    return value


def _decode(payload: bytes) -> tuple[str, dict[str, Any]]:
    """What :func:`edge_agent.telemetry.schema.decode` does, but strict: UTF-8 only, and
    no ``NaN``/``Infinity`` anywhere (schema validation looks at top-level fields only)."""
    try:
        text = payload.decode("utf-8")
        body = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"payload is not UTF-8 ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"payload is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("payload is not a JSON object")
    try:
        validate(body)
    except SchemaError as exc:
        raise InvalidRequest(str(exc)) from exc
    return text, body


def _refuse_constant(name: str) -> Any:
    raise InvalidRequest(f"payload holds {name}, which is not JSON")


def _check_counts(body: dict[str, Any]) -> None:
    for field in ("requests", "errors"):
        value = body[field]
        if not 0 <= value <= INT64_MAX:
            raise InvalidRequest(f"field {field!r} = {value} is not from 0 to {INT64_MAX}")


def _check_event(body: dict[str, Any]) -> None:
    name = body.get("event")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_EVENT_CHARS or "\x00" in name:
        raise InvalidRequest(f"event name {name!r} is not a string of 1 to {MAX_EVENT_CHARS}")
    if not isinstance(body.get("data", {}), dict):
        raise InvalidRequest("event data is not a JSON object")


def _datetime(ts: float) -> datetime:
    try:
        return datetime.fromtimestamp(ts, timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidRequest(f"ts {ts!r} is not a usable time ({exc})") from exc
