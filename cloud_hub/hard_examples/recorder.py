"""The :class:`HardExampleRecorder`: the offload server's sink, writing in the background.

``submit`` never blocks and never raises: it puts the example on a queue bounded by count
and by the bytes of its tensors, and counts (and logs, at most every few seconds) what a
full queue drops. One writer thread, owned by the recorder (``start``/``stop``), takes
batches off the queue and for each:

1. finds each device's fleet (cached: a device never changes fleet); a request without a
   device id or from a device the registry does not know is counted and not stored;
2. turns each request into rows (:mod:`.answers`), encoding the inputs as an .npz where
   the fleet kept inputs when last looked at (``fleet_cache_s``);
3. in one transaction, reads each fleet's ``keep_inputs`` afresh and takes the inputs out
   of the rows of a fleet that keeps none (so a change applies from the next batch on;
   the cached value only saves encoding), inserts the rows and evicts each touched
   fleet's oldest rows past its bounds (:mod:`.store`). A transient database error is
   retried with back-off; any other error is retried row by row and only the rows that
   still fail are dropped (counted as ``failed``).

``stop`` stores what is queued (within its timeout) and ends the thread.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from . import store
from .answers import encode_inputs, samples

if TYPE_CHECKING:  # no import cycle with the registry, no load of the offload server
    from ..offload.sink import OffloadedInput
    from ..registry import Registry
    from ..settings import HubSettings

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1
RETRY_MIN_S, RETRY_MAX_S = 0.1, 5.0
DROP_LOG_EVERY_S = 10.0
COUNTERS = (
    "submitted",  # handed to submit()
    "dropped",  # refused by submit(): queue full, or the recorder stopped
    "stored",  # rows written (a batched request is one row per sample)
    "inputs_withheld",  # of those, rows stored without inputs (the fleet keeps none)
    "no_device",  # requests without a device id: not stored
    "unknown_device",  # requests from a device the registry does not know: not stored
    "failed",  # requests or rows that could not be stored
    "evicted",  # rows deleted to keep fleets within their bounds
    "retries",  # transient database errors retried
)

T = TypeVar("T")


class _Aborted(Exception):
    """The owner gave up waiting for the writer (a stop past its timeout)."""


class HardExampleRecorder:
    """Records offloaded inputs and both answers as hard examples; see the module docstring.

    Implements :class:`cloud_hub.offload.sink.HardExampleSink`. The arrays of a submitted
    example must not be changed afterwards: they are encoded in the writer thread.
    """

    def __init__(
        self,
        registry: Registry,
        settings: HubSettings,
        *,
        queue_size: int = 1024,
        queue_max_bytes: int = 64 << 20,
        batch_max: int = 64,
        batch_wait_s: float = 0.05,
        fleet_cache_s: float = 30.0,
        fleet_cache_size: int = 10_000,
    ) -> None:
        if queue_size < 1 or queue_max_bytes < 1 or batch_max < 1 or fleet_cache_size < 1:
            raise ValueError("queue_size, queue_max_bytes, batch_max, fleet_cache_size >= 1")
        self._db = registry.db
        self._max_count = settings.hard_examples_max_count
        self._max_bytes = settings.hard_examples_max_bytes
        self._queue: queue.Queue[tuple[OffloadedInput, int]] = queue.Queue(queue_size)
        self._queue_max_bytes = queue_max_bytes
        self._batch_max = batch_max
        self._batch_wait_s = batch_wait_s
        self._fleet_cache_s = fleet_cache_s
        self._fleet_cache_size = fleet_cache_size
        self._fleets: dict[str, tuple[store.FleetOf, float]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._pending = 0  # submitted, not yet handled
        self._queued_bytes = 0
        self._closed = False
        self._drops_unlogged = 0
        self._drop_logged_at = -float("inf")
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the owner's side ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("HardExampleRecorder.start() was already called")
        self._thread = threading.Thread(target=self._run, name="hard-examples", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Refuse new examples, store what is queued, end the thread. False if that took
        over ``timeout``: what was still queued is then lost (counted as ``failed``)."""
        with self._lock:
            self._closed = True
        if self._thread is None:  # never started: what was queued is lost
            self._abandon_queue()
            return True
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(RETRY_MAX_S + 1.0)
            return False
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is handled; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stats(self) -> dict[str, int]:
        """The counters (see ``COUNTERS``), and ``queued``: submitted, not yet handled."""
        with self._lock:
            return {**self._counts, "queued": self._pending}

    def __enter__(self) -> HardExampleRecorder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the offload server's side -------------------------------------------------------

    def submit(self, example: OffloadedInput) -> None:
        """Queue ``example``; never blocks, never raises. Drops are counted and logged."""
        try:
            size = sum(getattr(a, "nbytes", 0) for a in example.inputs.values())
            with self._lock:
                self._counts["submitted"] += 1
                full = self._queued_bytes > 0 and self._queued_bytes + size > self._queue_max_bytes
                if self._closed or full:
                    self._dropped("stopped" if self._closed else "queue full")
                    return
                try:
                    self._queue.put_nowait((example, size))
                except queue.Full:
                    self._dropped("queue full")
                    return
                self._pending += 1
                self._queued_bytes += size
        except Exception:  # the sink must never raise into the offload server
            log.exception("hard examples: submit failed; example dropped")

    def _dropped(self, why: str) -> None:
        """Count a drop and log it, at most once per DROP_LOG_EVERY_S (lock held)."""
        self._counts["dropped"] += 1
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_EVERY_S:
            log.warning(
                "hard examples: dropped %d example(s) (%s; %d dropped in all)",
                self._drops_unlogged,
                why,
                self._counts["dropped"],
            )
            self._drops_unlogged = 0
            self._drop_logged_at = now

    def _count(self, **increments: int) -> None:
        with self._lock:
            for key, value in increments.items():
                self._counts[key] += value

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch:
                try:
                    self._handle([example for example, _ in batch])
                except _Aborted:
                    self._count(failed=len(batch))
                    self._done(batch)
                    self._abandon_queue()
                    return
                except Exception:  # a bug must not end the writer
                    log.exception("hard examples: a batch failed; dropped")
                    self._count(failed=len(batch))
                self._done(batch)
            elif self._stopping.is_set():
                return

    def _collect(self) -> list[tuple[OffloadedInput, int]]:
        try:
            first = self._queue.get(timeout=IDLE_POLL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._batch_wait_s
        while len(batch) < self._batch_max:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 or self._stopping.is_set():
                    batch.append(self._queue.get_nowait())
                else:
                    batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _done(self, batch: Sequence[tuple[OffloadedInput, int]]) -> None:
        with self._idle:
            self._pending -= len(batch)
            self._queued_bytes -= sum(size for _, size in batch)
            self._idle.notify_all()

    def _abandon_queue(self) -> None:
        lost = []
        while True:
            try:
                lost.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._count(failed=len(lost))
        self._done(lost)

    def _handle(self, batch: Sequence[OffloadedInput]) -> None:
        devices = {e.device_id for e in batch if e.device_id is not None}
        fleets = self._retrying(lambda: self._fleets_of(devices))
        rows = self._rows(batch, fleets)
        if not rows:
            return
        try:
            self._retrying(lambda: self._commit(rows))
        except _Aborted:
            raise
        except Exception as exc:
            log.warning("hard examples: a batch failed (%s); storing its rows one by one", exc)
            for row in rows:
                try:
                    self._retrying(functools.partial(self._commit, [row]))
                except _Aborted:
                    raise
                except Exception as one:
                    self._count(failed=1)
                    log.error("hard examples: dropped a row that cannot be stored: %s", one)

    def _rows(
        self, batch: Iterable[OffloadedInput], fleets: dict[str, store.FleetOf]
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for example in batch:
            if example.device_id is None:
                self._count(no_device=1)
                continue
            fleet = fleets.get(example.device_id)
            if fleet is None:
                self._count(unknown_device=1)
                continue
            try:
                rows.extend(_rows_of(example, fleet))
            except Exception as exc:
                self._count(failed=1)
                log.error("hard examples: cannot record a %s request: %s", example.model, exc)
        return rows

    def _fleets_of(self, devices: set[str]) -> dict[str, store.FleetOf]:
        now = time.monotonic()
        found = {d: hit[0] for d in devices if (hit := self._fleets.get(d)) and hit[1] > now}
        missing = devices - set(found)
        if missing:
            with self._db.transaction() as session:
                looked_up = store.fleets_of(session, missing)
            if len(self._fleets) + len(looked_up) > self._fleet_cache_size:
                self._fleets.clear()
            for device, fleet in looked_up.items():
                self._fleets[device] = (fleet, now + self._fleet_cache_s)
            found.update(looked_up)
        return found

    def _commit(self, given: Sequence[dict[str, Any]]) -> None:
        with self._db.transaction() as session:
            keep = store.keep_inputs(session, {row["fleet_id"] for row in given})
            rows = [row if keep.get(row["fleet_id"]) else _withheld(row) for row in given]
            store.insert_rows(session, rows)
            evicted = sum(
                store.evict(session, fleet, max_count=self._max_count, max_bytes=self._max_bytes)
                for fleet in sorted({row["fleet_id"] for row in rows})
            )
        withheld = sum(1 for row in rows if row["inputs"] is None)
        self._count(stored=len(rows), inputs_withheld=withheld, evicted=evicted)

    def _retrying(self, action: Callable[[], T]) -> T:
        """``action()``, retrying transient database errors with back-off until aborted."""
        delay = RETRY_MIN_S
        while True:
            try:
                return action()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._count(retries=1)
                log.warning("hard examples: database unavailable (%s); retrying", exc)
            if self._abort.wait(delay):
                raise _Aborted
            delay = min(delay * 2, RETRY_MAX_S)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying later may succeed: the database failed, not the data."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout)


def _withheld(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` without its inputs (its fleet keeps none)."""
    return {**row, "inputs": None, "input_bytes": 0}


def _rows_of(example: OffloadedInput, fleet: store.FleetOf) -> list[dict[str, Any]]:
    rows = []
    for sample in samples(example):
        data = encode_inputs(sample.inputs) if fleet.keep_inputs and sample.inputs else None
        rows.append(
            {
                "fleet_id": fleet.fleet_id,
                "device_id": example.device_id,
                "model": example.model,
                "model_version": example.version,
                "received_at": example.received_at,
                "inputs": data,
                "input_bytes": len(data) if data is not None else 0,
                "cloud_label": sample.cloud.label,
                "cloud_score": sample.cloud.score,
                "edge_label": sample.edge.label,
                "edge_score": sample.edge.score,
                "edge_version": sample.edge_version,
                "agreed": sample.agreed,
            }
        )
    return rows
