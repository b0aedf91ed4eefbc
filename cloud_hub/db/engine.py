"""Engines from a URL: SQLite tuned for a busy single file, PostgreSQL through psycopg 3.

SQLite gets WAL (readers never block the writer), enforced foreign keys, ``synchronous
= NORMAL`` (with WAL: a committed transaction survives the process crashing; a power cut
may lose the last few commits but never corrupts the file) and a 30 s busy timeout, so
writers from several threads or processes queue instead of failing with "database is
locked".
Transactions keep the sqlite3 module's default: a write transaction begins at the first
INSERT/UPDATE/DELETE, so a read followed by a write never holds a stale snapshot.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as _sa_create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import DependencyMissing, HubConfigError

SQLITE_BUSY_TIMEOUT_S = 30.0


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; a bare ``postgresql://`` means psycopg 3, the driver the hub ships."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise HubConfigError(f"database URL {url!r} is not valid ({exc})") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def describe_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return normalize_url(url).render_as_string(hide_password=True)


def create_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """An engine for a SQLite file or a PostgreSQL database; makes a SQLite file's folder."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, echo)
    if backend == "postgresql":
        try:
            return _sa_create_engine(parsed, echo=echo, pool_pre_ping=True)
        except ImportError as exc:
            raise DependencyMissing(
                f"database URL {describe_url(parsed)} needs the {exc.name} driver: "
                "pip install 'edgeloop[hub]'"
            ) from exc
    raise HubConfigError(
        f"database URL {describe_url(parsed)}: backend {backend!r} is not supported "
        "(expected sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB)"
    )


def _sqlite_engine(url: URL, echo: bool) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        folder = Path(url.database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HubConfigError(
                f"cannot create {folder} for the database {describe_url(url)}: {exc.strerror}"
            ) from exc
    engine = _sa_create_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()
