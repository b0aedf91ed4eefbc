"""The on-disk spool: every outgoing MQTT message, kept until the broker acknowledges it.

One SQLite file in WAL mode in the agent's state directory. The publisher *puts* each
telemetry and event message here before it publishes it, and *acks* (deletes) it when
the broker's PUBACK arrives, so a crash or ``kill -9`` at any moment loses nothing that
was put: the next process finds it and sends it. Row ids come from ``AUTOINCREMENT``,
so they never go back, and id order is the order messages were put (seq order).

Bounds, checked inside the transaction of every ``put`` (and by :meth:`Spool.prune`):

- **bytes**: the sum of topic and payload sizes of the stored messages never exceeds
  ``max_bytes`` (the file is that plus SQLite's pages and WAL, which are reused);
- **age**: a message older than ``max_age_s`` (wall clock, ``created``) is dropped.

When a bound is hit the *oldest* messages are dropped; a message bigger than
``max_bytes`` on its own is dropped rather than stored. Drops are counted in
``dropped``, which is **cumulative over the life of the spool file** and kept in it
(it survives restarts): a count "since the last report" would be lost with the very
report that carried it, if that report were itself dropped. The hub takes the
difference between consecutive values; a smaller value means the spool was reset.

Writes use ``synchronous=NORMAL``: a committed message survives the process dying (the
WAL is in the OS page cache); power loss may lose the last commits, which spares the
SD card of a Raspberry Pi an fsync per message. ``synchronous="FULL"`` is there for
deployments that want the other trade.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.errors import ConfigError, EdgeAgentError

__all__ = ["SPOOL_FILE", "Spool", "SpoolError", "SpoolStats", "SpooledMessage"]

SPOOL_FILE = "telemetry-spool.sqlite3"
_DROP_BATCH = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0);
"""


class SpoolError(EdgeAgentError):
    """The spool file cannot be opened or written (disk full, corrupt, wrong permissions)."""


@dataclass(frozen=True)
class SpooledMessage:
    """One stored message; ``id`` increases in the order messages were put."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


@dataclass(frozen=True)
class SpoolStats:
    messages: int
    bytes: int
    dropped: int  # cumulative over the life of the spool file
    max_bytes: int


class Spool:
    """A bounded, durable FIFO of MQTT messages; safe to share between threads."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 16 * 1024 * 1024,
        max_age_s: float = 7 * 24 * 3600.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"spool max_bytes = {max_bytes!r}: expected an integer >= 1")
        if not max_age_s > 0:
            raise ConfigError(f"spool max_age_s = {max_age_s!r}: expected a number > 0")
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"spool synchronous = {synchronous!r}: expected NORMAL or FULL")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = self._open(synchronous)
        self._count = self._bytes = self._last_id = self._dropped = 0
        self._reload()

    @classmethod
    def in_dir(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        max_bytes: int = 16 * 1024 * 1024,
        max_age_s: float = 7 * 24 * 3600.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> Spool:
        """The spool file :data:`SPOOL_FILE` in ``state_dir`` (created when missing)."""
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(
            directory / SPOOL_FILE,
            max_bytes=max_bytes,
            max_age_s=max_age_s,
            synchronous=synchronous,
        )

    # -- writing -------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int | None:
        """Store one message durably; its id, or None when it alone exceeds ``max_bytes``.

        Drops the oldest messages, in the same transaction, until the bound holds.
        """
        size = len(payload) + len(topic.encode())
        now = self._clock()
        with self._lock, self._transaction():
            self._prune_locked(now)
            if size > self.max_bytes:
                self._add_dropped(1)
                return None
            cursor = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, retain, created, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (topic, payload, qos, int(retain), now, size),
            )
            row_id = int(cursor.lastrowid or 0)
            self._count += 1
            self._bytes += size
            self._last_id = row_id
            self._drop_oldest_until(self.max_bytes)
            return row_id

    def ack(self, ids: int | Iterable[int]) -> int:
        """Delete acknowledged messages; how many were still there (a dropped one is not)."""
        wanted = [ids] if isinstance(ids, int) else list(ids)
        if not wanted:
            return 0
        with self._lock, self._transaction():
            found = self._select_in("SELECT id, size FROM messages WHERE id IN ({})", wanted)
            self._delete([int(row_id) for row_id, _ in found])
            self._bytes -= sum(int(size) for _, size in found)
        return len(found)

    def prune(self) -> int:
        """Drop the messages older than ``max_age_s``; how many were dropped."""
        with self._lock, self._transaction():
            return self._prune_locked(self._clock())

    # -- reading -------------------------------------------------------------------------

    def after(self, after_id: int, limit: int, up_to: int | None = None) -> list[SpooledMessage]:
        """Up to ``limit`` messages with ``after_id < id <= up_to``, oldest first."""
        if limit <= 0:
            return []
        with self._lock:
            ceiling = self._last_id if up_to is None else up_to
            try:
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, retain, created FROM messages "
                    "WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                    (after_id, ceiling, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"{self.path}: cannot read the telemetry spool ({exc})") from exc
        return [
            SpooledMessage(int(i), str(t), bytes(p), int(q), bool(r), float(c))
            for i, t, p, q, r, c in rows
        ]

    @property
    def last_id(self) -> int:
        """The id of the newest message ever put (0 for a new spool); never goes back."""
        return self._last_id

    @property
    def count(self) -> int:
        """Messages stored now. (No ``__len__``: an empty spool must not be falsy.)"""
        return self._count

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(self._count, self._bytes, self._dropped, self.max_bytes)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers (called with the lock held) ---------------------------------------------

    def _open(self, synchronous: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot open the telemetry spool ({exc})") from exc
        return db

    def _reload(self) -> None:
        """Read the in-memory totals back from the file (at open, and after a rollback)."""
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages"
        ).fetchone()
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'")
        last = row.fetchone()
        dropped = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'")
        self._count, self._bytes = int(count), int(size)
        self._last_id = int(last[0]) if last else 0
        self._dropped = int(dropped.fetchone()[0])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any failure roll back and resync totals."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._reload()
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot write the telemetry spool ({exc})") from exc

    def _prune_locked(self, now: float) -> int:
        """Drop from the oldest end while messages are older than ``max_age_s``."""
        cutoff = now - self.max_age_s
        dropped = 0
        while True:
            oldest = self._db.execute(
                "SELECT id, size FROM messages WHERE created < ? ORDER BY id LIMIT ?",
                (cutoff, _DROP_BATCH),
            ).fetchall()
            if not oldest:
                break
            self._delete([int(row_id) for row_id, _ in oldest])
            self._bytes -= sum(int(size) for _, size in oldest)
            dropped += len(oldest)
        if dropped:
            self._add_dropped(dropped)
        return dropped

    def _drop_oldest_until(self, limit: int) -> None:
        while self._bytes > limit:
            oldest = self._db.execute(
                "SELECT id, size FROM messages ORDER BY id LIMIT ?", (_DROP_BATCH,)
            ).fetchall()
            doomed: list[int] = []
            for row_id, size in oldest:
                doomed.append(int(row_id))
                self._bytes -= int(size)
                if self._bytes <= limit:
                    break
            self._delete(doomed)
            self._add_dropped(len(doomed))

    def _delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), _DROP_BATCH):
            chunk = ids[start : start + _DROP_BATCH]
            self._db.execute(
                f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )
        self._count -= len(ids)

    def _select_in(self, query: str, ids: list[int]) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        for start in range(0, len(ids), _DROP_BATCH):
            chunk = ids[start : start + _DROP_BATCH]
            found += self._db.execute(query.format(",".join("?" * len(chunk))), chunk).fetchall()
        return found

    def _add_dropped(self, n: int) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (n,))
        self._dropped += n
