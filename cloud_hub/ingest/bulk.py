"""The bulk statements of a batch, one implementation per database.

Each batch needs four statements whatever its size: look up its devices, insert its raw
telemetry (``ON CONFLICT DO NOTHING RETURNING`` the rows that were new), upsert its
rollups, update its devices. How to make those fast differs:

- **SQLite** runs in-process, so statement count is cheap and SQLAlchemy Core with
  ``executemany`` (and multi-row ``VALUES ... RETURNING`` for the insert) is enough.
- **PostgreSQL** pays per statement and psycopg pays to parse long query texts, so every
  statement here is one fixed text over arrays (``unnest``): the same few hundred bytes
  whatever the batch size, one round trip each. The arrays go in psycopg's *binary*
  format (``%(name)b``): in text format, escaping 500 JSON payloads took 25 times longer
  than sending them. Device rows are locked in id order before the update (rollup rows
  are already upserted in key order), so two hubs writing overlapping devices cannot
  deadlock.

Raw payloads go in as the JSON text that arrived, never re-serialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    String,
    Text,
    bindparam,
    case,
    column,
    select,
    table,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from ..db import UTCDateTime
from ..db import models as orm
from ..errors import HubConfigError
from .rollup import MAXIMA, SUMS

RawKey = tuple[str, str, int]
#: device id -> (its fleet's name, when it was revoked or None)
DeviceInfo = dict[str, tuple[str, datetime | None]]
RAW_COLUMNS = ("device_id", "boot_id", "seq", "ts", "received_at", "payload")
ROLLUP_COLUMNS = ("device_id", "minute", *SUMS, *MAXIMA)
DEVICE_CHANGE = ("id", "status", "live", "seen", "boot_id", "model_name", "model_version")


class Bulk:
    """The bulk statements; rows are dicts keyed by the column tuples above."""

    def devices(self, session: Session, ids: Sequence[str]) -> DeviceInfo:
        raise NotImplementedError

    def insert_raw(self, session: Session, rows: Sequence[dict[str, Any]]) -> set[RawKey]:
        """Insert the rows that are new; the keys of those inserted."""
        raise NotImplementedError

    def upsert_rollups(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError

    def update_devices(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        """Apply each change: ``status`` when given, else "unknown" -> "online" when
        ``live``; ``last_seen_at`` only forward to ``seen``; the rest when not None."""
        raise NotImplementedError


def bulk_for(session: Session) -> Bulk:
    name = session.get_bind().dialect.name
    if name == "sqlite":
        return _SQLITE
    if name == "postgresql":
        return _POSTGRES
    raise HubConfigError(f"ingest needs SQLite or PostgreSQL, not {name}")


# -- SQLite ------------------------------------------------------------------------------

_DEVICES = orm.Base.metadata.tables["devices"]
_FLEETS = orm.Base.metadata.tables["fleets"]
_ROLLUPS = orm.Base.metadata.tables["telemetry_rollups"]
# telemetry_raw with the payload as text: the JSON arrives serialised and stays so.
_RAW_AS_TEXT = table(
    "telemetry_raw",
    column("device_id", String),
    column("boot_id", String),
    column("seq", BigInteger),
    column("ts", UTCDateTime()),
    column("received_at", UTCDateTime()),
    column("payload", Text),
)


class _SqliteBulk(Bulk):
    def __init__(self) -> None:
        self._lookup = (
            select(_DEVICES.c.id, _FLEETS.c.name, _DEVICES.c.revoked_at)
            .join(_FLEETS, _FLEETS.c.id == _DEVICES.c.fleet_id)
            .where(_DEVICES.c.id.in_(bindparam("ids", expanding=True)))
        )
        self._insert_raw = (
            sqlite.insert(_RAW_AS_TEXT)
            .on_conflict_do_nothing(index_elements=["device_id", "boot_id", "seq"])
            .returning(_RAW_AS_TEXT.c.device_id, _RAW_AS_TEXT.c.boot_id, _RAW_AS_TEXT.c.seq)
        )
        upsert = sqlite.insert(_ROLLUPS)
        merged: dict[str, Any] = {c: _ROLLUPS.c[c] + upsert.excluded[c] for c in SUMS}
        merged |= {c: _greater(_ROLLUPS.c[c], upsert.excluded[c]) for c in MAXIMA}
        self._upsert = upsert.on_conflict_do_update(
            index_elements=["device_id", "minute"], set_=merged
        )
        self._update = _device_update()

    def devices(self, session: Session, ids: Sequence[str]) -> DeviceInfo:
        rows = session.execute(self._lookup, {"ids": list(ids)})
        return {row.id: (row.name, row.revoked_at) for row in rows}

    def insert_raw(self, session: Session, rows: Sequence[dict[str, Any]]) -> set[RawKey]:
        result = session.execute(self._insert_raw, list(rows))
        return {(row[0], row[1], row[2]) for row in result}

    def upsert_rollups(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        session.execute(self._upsert, list(rows))

    def update_devices(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        params = [{f"d_{key}": value for key, value in row.items()} for row in rows]
        session.execute(self._update, params)


def _greater(stored: Any, new: Any) -> Any:
    """The larger of two nullable values, NULL only when both are."""
    return case((new.is_(None), stored), (stored.is_(None), new), (new > stored, new), else_=stored)


def _device_update() -> Any:
    status = bindparam("d_status", type_=String)
    live = bindparam("d_live", type_=Boolean)
    seen = bindparam("d_seen", type_=UTCDateTime())
    d = _DEVICES.c

    def given_or_kept(name: str, col: Any) -> Any:
        value = bindparam(f"d_{name}", type_=col.type)
        return case((value.is_not(None), value), else_=col)

    return (
        update(_DEVICES)
        .where(d.id == bindparam("d_id"))
        .values(
            status=case(
                (status.is_not(None), status),
                (live & (d.status == "unknown"), "online"),
                else_=d.status,
            ),
            last_seen_at=case(
                (seen.is_(None), d.last_seen_at),
                (d.last_seen_at.is_(None), seen),
                (seen > d.last_seen_at, seen),
                else_=d.last_seen_at,
            ),
            boot_id=given_or_kept("boot_id", d.boot_id),
            model_name=given_or_kept("model_name", d.model_name),
            model_version=given_or_kept("model_version", d.model_version),
        )
    )


# -- PostgreSQL --------------------------------------------------------------------------

_PG_TYPES = {
    "device_id": "VARCHAR",
    "id": "VARCHAR",
    "boot_id": "VARCHAR",
    "seq": "BIGINT",
    "ts": "TIMESTAMPTZ",
    "received_at": "TIMESTAMPTZ",
    "payload": "JSON",
    "minute": "TIMESTAMPTZ",
    "count": "INTEGER",
    "requests": "BIGINT",
    "errors": "BIGINT",
    "offloads": "BIGINT",
    "confidence_sum": "DOUBLE PRECISION",
    "status": "VARCHAR",
    "live": "BOOLEAN",
    "seen": "TIMESTAMPTZ",
    "model_name": "VARCHAR",
    "model_version": "VARCHAR",
} | dict.fromkeys(MAXIMA, "DOUBLE PRECISION")


def _unnest(columns: Sequence[str]) -> str:
    arrays = ", ".join(f"CAST(%({c})b AS {_PG_TYPES[c]}[])" for c in columns)
    return f"unnest({arrays})"


def _arrays(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Column arrays; binary arrays must hold one Python type, so numbers are made so."""
    arrays = {c: [row[c] for row in rows] for c in columns}
    for c in columns:
        if _PG_TYPES[c] == "DOUBLE PRECISION":
            arrays[c] = [None if v is None else float(v) for v in arrays[c]]
    return arrays


def _run(session: Session, sql: str, params: dict[str, Any]) -> Any:
    """Run psycopg-format ``sql`` (``%(name)b`` placeholders) in the session's transaction."""
    return session.connection().exec_driver_sql(sql, params)


class _PostgresBulk(Bulk):
    def __init__(self) -> None:
        self._lookup = (
            "SELECT d.id, f.name, d.revoked_at FROM devices AS d"
            " JOIN fleets AS f ON f.id = d.fleet_id WHERE d.id = ANY(CAST(%(ids)b AS VARCHAR[]))"
        )
        self._insert_raw = (
            f"INSERT INTO telemetry_raw ({', '.join(RAW_COLUMNS)})"
            f" SELECT * FROM {_unnest(RAW_COLUMNS)}"
            " ON CONFLICT (device_id, boot_id, seq) DO NOTHING"
            " RETURNING device_id, boot_id, seq"
        )
        merged = [f"{c} = telemetry_rollups.{c} + excluded.{c}" for c in SUMS]
        merged += [f"{c} = GREATEST(telemetry_rollups.{c}, excluded.{c})" for c in MAXIMA]
        self._upsert = (
            f"INSERT INTO telemetry_rollups ({', '.join(ROLLUP_COLUMNS)})"
            f" SELECT * FROM {_unnest(ROLLUP_COLUMNS)}"
            f" ON CONFLICT (device_id, minute) DO UPDATE SET {', '.join(merged)}"
        )
        self._lock = (
            "SELECT id FROM devices WHERE id = ANY(CAST(%(ids)b AS VARCHAR[]))"
            " ORDER BY id FOR UPDATE"
        )
        self._update = (
            "UPDATE devices AS d SET"
            " status = CASE WHEN u.status IS NOT NULL THEN u.status"
            "  WHEN u.live AND d.status = 'unknown' THEN 'online' ELSE d.status END,"
            " last_seen_at = CASE WHEN u.seen IS NULL THEN d.last_seen_at"
            "  WHEN d.last_seen_at IS NULL OR u.seen > d.last_seen_at THEN u.seen"
            "  ELSE d.last_seen_at END,"
            " boot_id = COALESCE(u.boot_id, d.boot_id),"
            " model_name = COALESCE(u.model_name, d.model_name),"
            " model_version = COALESCE(u.model_version, d.model_version)"
            f" FROM {_unnest(DEVICE_CHANGE)} AS u({', '.join(DEVICE_CHANGE)})"
            " WHERE d.id = u.id"
        )

    def devices(self, session: Session, ids: Sequence[str]) -> DeviceInfo:
        rows = _run(session, self._lookup, {"ids": list(ids)})
        return {row[0]: (row[1], row[2]) for row in rows}

    def insert_raw(self, session: Session, rows: Sequence[dict[str, Any]]) -> set[RawKey]:
        result = _run(session, self._insert_raw, _arrays(rows, RAW_COLUMNS))
        return {(row[0], row[1], row[2]) for row in result}

    def upsert_rollups(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        _run(session, self._upsert, _arrays(rows, ROLLUP_COLUMNS))

    def update_devices(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        _run(session, self._lock, {"ids": [row["id"] for row in rows]})
        _run(session, self._update, _arrays(rows, DEVICE_CHANGE))


_SQLITE = _SqliteBulk()
_POSTGRES = _PostgresBulk()
