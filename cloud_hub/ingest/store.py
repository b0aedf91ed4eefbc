"""One batch of validated messages into the database, inside the caller's transaction.

What :func:`write_batch` does, in this order, with a handful of statements whatever the
batch's size:

1. looks up every device the batch names (one SELECT) and drops messages from devices
   that do not exist, are revoked or belong to another fleet than the topic says
   (the statements that take a whole batch at once are in :mod:`.bulk`);
2. inserts the telemetry with ``INSERT ... ON CONFLICT (device_id, boot_id, seq) DO
   NOTHING RETURNING``: what comes back was stored, the rest were duplicates;
3. folds only the stored telemetry into the per-minute rollups (:mod:`.rollup`), so a
   redelivered message is never counted twice;
4. appends new events (an event already stored with the same device, ``ts`` and name is a
   redelivery and is skipped);
5. updates each device once (one bulk UPDATE for the batch): ``status`` from its last status
   message; ``last_seen_at`` (the hub's clock; it only moves forward) from any stored
   message except an "offline" status; ``boot_id`` from its last live (not historical)
   message; ``model_name``/``model_version`` from its last live telemetry. Telemetry from
   a device whose status is still "unknown" marks it "online": its retained status may
   predate this hub's session (MQTT 5 does not promise retained messages to shared
   subscriptions, though Mosquitto 2.0 sends them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import models as orm
from . import rollup
from .bulk import Bulk, RawKey, bulk_for
from .messages import Message

_EVENTS = orm.Base.metadata.tables["device_events"]
_MODEL_NAME_CHARS = 128
_MODEL_VERSION_CHARS = 64
# Envelope fields an event row does not repeat in its body (its columns hold them).
_EVENT_COLUMNS = frozenset({"schema", "kind", "device", "fleet", "ts", "event"})


@dataclass
class BatchResult:
    """What one batch did; ``refused`` says why each dropped message was (for the log)."""

    stored: int = 0
    duplicates: int = 0
    unknown_device: int = 0
    events: int = 0
    statuses: int = 0
    refused: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _DeviceChange:
    status: str | None = None
    seen: bool = False
    live: bool = False  # a stored telemetry message arrived: "unknown" becomes "online"
    boot_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None


def write_batch(session: Session, messages: Sequence[Message], *, now: datetime) -> BatchResult:
    """Store ``messages`` (in arrival order) in ``session``'s transaction; see the module doc."""
    bulk = bulk_for(session)
    result = BatchResult()
    accepted = _known(session, bulk, messages, result)
    sent = [m for m in accepted if m.kind == "telemetry"]
    telemetry = _unique(sent)
    stored_keys = _insert_raw(session, bulk, telemetry, now)
    stored = [m for m in telemetry if m.key in stored_keys]
    result.stored = len(stored)
    result.duplicates = len(sent) - len(stored)
    deltas = rollup.fold(stored)
    if deltas:
        bulk.upsert_rollups(session, rollup.rows(deltas))
    events = _insert_events(session, [m for m in accepted if m.kind == "events"])
    result.events = len(events)
    result.statuses = sum(1 for m in accepted if m.kind == "status")
    changes = _device_changes(accepted, {*stored_keys, *(m.key for m in events)})
    if changes:
        bulk.update_devices(session, [_change_row(d, c, now) for d, c in sorted(changes.items())])
    return result


def _known(
    session: Session, bulk: Bulk, messages: Sequence[Message], result: BatchResult
) -> list[Message]:
    """The messages whose device exists, is not revoked and is in the topic's fleet."""
    ids = sorted({m.device for m in messages})
    devices = bulk.devices(session, ids) if ids else {}
    accepted = []
    for message in messages:
        found = devices.get(message.device)
        if found is None:
            reason = "does not exist"
        elif found[1] is not None:
            reason = "is revoked"
        elif found[0] != message.fleet:
            reason = f"is not in fleet {message.fleet!r}"
        else:
            accepted.append(message)
            continue
        result.unknown_device += 1
        result.refused.append(f"{message.kind} from device {message.device!r} dropped: it {reason}")
    return accepted


def _unique(messages: Iterable[Message]) -> list[Message]:
    """The first of each (device, boot id, seq) in ``messages``."""
    seen: dict[RawKey, Message] = {}
    for message in messages:
        seen.setdefault(message.key, message)
    return list(seen.values())


def _insert_raw(
    session: Session, bulk: Bulk, messages: Sequence[Message], now: datetime
) -> set[RawKey]:
    if not messages:
        return set()
    rows = [
        {
            "device_id": m.device,
            "boot_id": m.boot_id,
            "seq": m.seq,
            "ts": m.ts,
            "received_at": now,
            "payload": m.text,
        }
        for m in messages
    ]
    return bulk.insert_raw(session, rows)


def _insert_events(session: Session, messages: Sequence[Message]) -> list[Message]:
    """Append the events not stored before; those appended."""
    candidates: dict[tuple[str, datetime, str], Message] = {}
    for message in messages:  # arrival order, first of each
        candidates.setdefault((message.device, message.ts, message.body["event"]), message)
    if not candidates:
        return []
    query = select(_EVENTS.c.device_id, _EVENTS.c.ts, _EVENTS.c.kind).where(
        _EVENTS.c.device_id.in_(sorted({m.device for m in messages})),
        _EVENTS.c.ts.in_(sorted({m.ts for m in messages})),
    )
    for row in session.execute(query):
        candidates.pop((row.device_id, row.ts, row.kind), None)
    new = list(candidates.values())
    if new:
        session.execute(
            _EVENTS.insert(),
            [
                {
                    "device_id": m.device,
                    "ts": m.ts,
                    "kind": m.body["event"],
                    "body": {k: v for k, v in m.body.items() if k not in _EVENT_COLUMNS},
                }
                for m in new
            ],
        )
    return new


def _device_changes(messages: Iterable[Message], stored: set[RawKey]) -> dict[str, _DeviceChange]:
    """What each device's row should say after this batch (pure; arrival order matters)."""
    changes: dict[str, _DeviceChange] = {}
    for message in messages:
        is_status = message.kind == "status"
        if not is_status and message.key not in stored:
            continue  # a duplicate tells nothing new
        change = changes.setdefault(message.device, _DeviceChange())
        state = message.body.get("state") if is_status else None
        if is_status:
            change.status = state
        change.seen = change.seen or state != "offline"
        if message.historical:
            continue
        change.boot_id = message.boot_id
        if message.kind == "telemetry":
            change.live = True
            change.model_name, change.model_version = _model(message.body, change)
    return changes


def _model(body: dict[str, Any], change: _DeviceChange) -> tuple[str | None, str | None]:
    model = body.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    version = model.get("version") if isinstance(model, dict) else None
    ok_name = isinstance(name, str) and 0 < len(name) <= _MODEL_NAME_CHARS
    ok_version = isinstance(version, str) and 0 < len(version) <= _MODEL_VERSION_CHARS
    return (
        name if ok_name else change.model_name,
        version if ok_version else change.model_version,
    )


def _change_row(device: str, change: _DeviceChange, now: datetime) -> dict[str, Any]:
    return {
        "id": device,
        "status": change.status,
        "live": change.live,
        "seen": now if change.seen else None,
        "boot_id": change.boot_id,
        "model_name": change.model_name,
        "model_version": change.model_version,
    }
