"""The writer thread: deliveries from the queue, in batches, into the database, then acks.

One loop, one thread, owned by :class:`Writer` (``start``/``stop``):

1. collect a batch: up to ``batch_max`` deliveries, or whatever came within
   ``batch_wait_s`` of the first;
2. parse each (:mod:`.messages`); a malformed one is counted, logged (rate-limited) and
   acknowledged, so the broker does not send it again;
3. store the rest in **one transaction** (:func:`.store.write_batch`). A transient
   database error (connection lost, "database is locked", deadlock) is retried with
   back-off, without end: the queue fills, the subscriber stops reading, the broker
   queues. Any other error means one message in the batch cannot be stored: the batch is
   retried one message at a time, and only the message that still fails is dropped
   (counted as ``failed`` and logged), so no message can stop ingest;
4. acknowledge the whole batch, in arrival order, only after the commit;
5. between batches, delete expired raw telemetry in bounded steps (:mod:`.retention`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..db import Database
from ..errors import InvalidRequest
from . import retention
from ._ratelog import RateLimitedLog
from .counters import Counters
from .messages import Message, parse
from .options import IngestOptions
from .store import write_batch
from .subscriber import Delivery

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.25
RETRY_MIN_S, RETRY_MAX_S = 0.1, 5.0
_MAX_TOPIC_SHOWN = 200

Clock = Callable[[], datetime]


class _Aborted(Exception):
    """The owner gave up waiting for the writer (a stop past its timeout)."""


class Writer:
    """Owns the writer thread; see the module docstring."""

    def __init__(
        self,
        db: Database,
        deliveries: queue.Queue[Delivery],
        *,
        prefix: str,
        options: IngestOptions,
        ack: Callable[[Sequence[Delivery]], int],
        counters: Counters,
        clock: Clock,
        raw_retention: timedelta | None,
    ) -> None:
        self._db = db
        self._deliveries = deliveries
        self._prefix = prefix
        self._options = options
        self._ack = ack
        self._counters = counters
        self._clock = clock
        self._raw_retention = raw_retention
        self._retention_due = time.monotonic()
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._bad_messages = RateLimitedLog(log)
        self._db_problems = RateLimitedLog(log)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Writer.start() was already called")
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Store what is queued, then end the thread. False if that took over ``timeout``:
        then the rest is abandoned unacknowledged (the broker will redeliver it)."""
        if self._thread is None:
            return True
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(RETRY_MAX_S + 1.0)
            return False
        return True

    def retention_now(self) -> int:
        """Delete every expired raw row now (from the caller's thread); how many went."""
        if self._raw_retention is None:
            return 0
        deleted = retention.delete_expired(
            self._db, self._clock() - self._raw_retention, batch=self._options.retention_batch
        )
        self._counters.add(retention_deleted=deleted)
        return deleted

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        # One retention pass before the first message: then every later pass happens
        # strictly after a batch, never racing a clock that moved while a batch was handled.
        self._retention_step()
        while True:
            try:
                batch = self._collect()
                if batch:
                    self._handle(batch)
                elif self._stopping.is_set():
                    return
                self._retention_step()
            except _Aborted:
                return
            except Exception:  # a bug must not end ingest; the batch stays unacknowledged
                log.exception("ingest: the writer failed on a batch; continuing")

    def _collect(self) -> list[Delivery]:
        try:
            first = self._deliveries.get(timeout=IDLE_POLL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._options.batch_wait_s
        while len(batch) < self._options.batch_max:
            try:
                batch.append(self._deliveries.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._deliveries.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _handle(self, batch: list[Delivery]) -> None:
        messages = self._parse(batch)
        if messages:
            try:
                self._commit_retrying(messages)
            except _Aborted:
                raise
            except Exception as exc:
                self._one_by_one(messages, exc)
        self._counters.add(batches=1, acked=self._ack(batch))

    def _parse(self, batch: Sequence[Delivery]) -> list[Message]:
        messages = []
        for delivery in batch:
            try:
                messages.append(parse(delivery.topic, delivery.payload, self._prefix))
            except InvalidRequest as exc:
                self._counters.add(malformed=1)
                topic = delivery.topic[:_MAX_TOPIC_SHOWN]
                self._bad_messages.warning(f"ingest: malformed message on {topic!r}: {exc}")
        return messages

    def _one_by_one(self, messages: Sequence[Message], error: Exception) -> None:
        """A batch failed for a reason retrying will not fix: find the message(s) to blame."""
        if len(messages) == 1:
            self._drop(messages[0], error)
            return
        self._db_problems.warning(
            f"ingest: a batch of {len(messages)} failed ({_short(error)}); "
            "storing its messages one at a time"
        )
        for message in messages:
            try:
                self._commit_retrying([message])
            except _Aborted:
                raise
            except Exception as exc:
                self._drop(message, exc)

    def _drop(self, message: Message, error: Exception) -> None:
        self._counters.add(failed=1)
        self._bad_messages.error(
            f"ingest: dropped {message.kind} {message.key} that cannot be stored: {_short(error)}"
        )

    def _commit_retrying(self, messages: Sequence[Message]) -> None:
        """Commit ``messages``, retrying transient database errors until stopped."""
        delay = RETRY_MIN_S
        while True:
            try:
                self._commit(messages)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._counters.add(retries=1)
                self._db_problems.warning(
                    f"ingest: database unavailable ({_short(exc)}); retrying in {delay:.1f} s"
                )
            if self._abort.wait(delay):
                raise _Aborted
            delay = min(delay * 2, RETRY_MAX_S)

    def _commit(self, messages: Sequence[Message]) -> None:
        with self._db.transaction() as session:
            result = write_batch(session, messages, now=self._clock())
        self._counters.add(
            stored=result.stored,
            duplicates=result.duplicates,
            unknown_device=result.unknown_device,
            events=result.events,
            statuses=result.statuses,
        )
        for reason in result.refused:
            self._bad_messages.warning(f"ingest: {reason}")

    def _retention_step(self) -> None:
        """Delete one bounded batch of expired raw rows when due; due again at once while
        batches come back full, else after ``retention_every_s``."""
        if self._raw_retention is None or time.monotonic() < self._retention_due:
            return
        batch = self._options.retention_batch
        try:
            cutoff = self._clock() - self._raw_retention
            deleted = retention.delete_expired_batch(self._db, cutoff, batch=batch)
        except Exception as exc:
            self._db_problems.warning(f"ingest: retention failed ({_short(exc)}); will retry")
            deleted = 0
        self._counters.add(retention_deleted=deleted)
        if deleted < batch:
            self._retention_due = time.monotonic() + self._options.retention_every_s


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same transaction later may succeed (the database, not the data)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout)


def _short(exc: BaseException) -> str:
    text = str(exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]
