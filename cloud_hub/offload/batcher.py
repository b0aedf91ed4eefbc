"""The dynamic batcher: one bounded queue and one worker thread per served model version.

A transport thread calls :meth:`DynamicBatcher.infer` and blocks until its answer. The
request joins the queue (full: :class:`QueueFull` at once, with a retry hint) and the
worker takes batches off it: it waits for about as many rows as there have recently been
requests in flight (:func:`.batching.target_rows`), never longer than ``max_delay_s``
after the oldest request arrived, and never past ``max_batch`` rows. Before running, each
request whose deadline has passed is answered :class:`DeadlineExceeded` and left out;
if the model fails, every request of the batch fails with :class:`BatchFailed` and the
model's reason. ``max_batch=1`` with ``max_delay_s=0`` turns batching off: one request at
a time, straight from the queue, on the same code.

The worker is the only thread that calls the runner, so a runner need not be
thread-safe. :meth:`stop` answers whatever is still queued with :class:`ModelUnloaded`
once the batch in hand is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from . import batching
from .errors import BatchFailed, DeadlineExceeded, ModelUnloaded, QueueFull
from .metrics import ModelMetrics
from .runtime import Runner

__all__ = ["DynamicBatcher"]

_LOG = logging.getLogger(__name__)

PEAK_WINDOW_S = 1.0  # how long a burst keeps the batch target up
_EWMA = 0.2  # weight of the newest batch in the run-time estimate behind retry hints

Clock = Callable[[], float]


class _Pending:
    """One request in the queue: its feeds, deadline and the slot its answer lands in."""

    __slots__ = ("deadline", "done", "enqueued", "error", "feeds", "outputs", "rows", "signature")

    def __init__(self, feeds: Mapping[str, np.ndarray], deadline: float | None, now: float):
        self.feeds = feeds
        self.rows = batching.rows_of(feeds)
        self.signature = batching.signature(feeds)
        self.deadline = deadline
        self.enqueued = now
        # A lock taken now and released by the answer: the caller blocks acquiring it.
        # Cheaper than an Event (no Condition and waiter list) on every request.
        self.done = threading.Lock()
        self.done.acquire()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None

    def answer(self, outputs: dict[str, np.ndarray] | None, error: BaseException | None) -> None:
        self.outputs, self.error = outputs, error
        self.done.release()

    def wait(self) -> None:
        self.done.acquire()


_Answer = tuple[_Pending, "dict[str, np.ndarray] | None", "BaseException | None"]


class DynamicBatcher:
    """Batches requests for ``runner``; ``start`` and ``stop`` own its worker thread."""

    def __init__(
        self,
        runner: Runner,
        *,
        name: str,
        max_batch: int,
        max_delay_s: float,
        queue_size: int,
        metrics: ModelMetrics,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_delay_s < 0:
            raise ValueError(
                f"max_batch and queue_size must be >= 1 and max_delay_s >= 0 (got "
                f"{max_batch}, {queue_size}, {max_delay_s})"
            )
        self.runner = runner
        self.name = name
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self.metrics = metrics
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._running = 0  # requests in the batch being computed
        # Rows the worker is waiting for (0: it is not waiting): submit() wakes it only
        # then, not on every arrival (a wake-up costs a GIL hand-off).
        self._want = 0
        self._peak = (0, 0)  # (peak in this window, peak in the last one)
        self._window_end = 0.0
        self._batch_s = 0.001  # running estimate of one batch's run time
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"batcher {self.name} was already started")
        self._thread = threading.Thread(
            target=self._work, name=f"offload-batcher-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, refuse what is queued, end the worker."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._cond.notify_all()
        for pending in left:
            pending.answer(None, ModelUnloaded(f"model {self.name} was unloaded; retry"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- the transports' side ------------------------------------------------------------

    def infer(
        self, feeds: Mapping[str, np.ndarray], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """The model's outputs for ``feeds`` (monotonic ``deadline``); raises the errors above."""
        pending = self.submit(feeds, deadline)
        pending.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.outputs is not None
        return pending.outputs

    def submit(self, feeds: Mapping[str, np.ndarray], deadline: float | None) -> _Pending:
        now = self._clock()
        pending = _Pending(feeds, deadline, now)
        with self._cond:
            if self._stopping:
                raise ModelUnloaded(f"model {self.name} was unloaded; retry")
            if len(self._queue) >= self.queue_size:
                hint = batching.retry_after_ms(
                    self._queued_rows, self.max_batch, self._batch_s, self.max_delay_s
                )
                raise QueueFull(
                    f"model {self.name}: queue full ({self.queue_size} requests waiting); "
                    f"retry in {hint} ms",
                    hint,
                )
            self._queue.append(pending)
            self._queued_rows += pending.rows
            self._note_load(len(self._queue) + self._running, now)
            if self._want and self._queued_rows >= self._want:
                self._cond.notify()  # only when the worker waits for this many rows
        return pending

    # -- the worker ----------------------------------------------------------------------

    def _note_load(self, load: int, now: float) -> None:
        self._peak, self._window_end = batching.track_peak(
            self._peak, self._window_end, load, now, PEAK_WINDOW_S
        )

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                answers = self._run(batch)
            except BaseException as exc:  # a bug here must not leave callers hanging
                _LOG.exception("batcher %s: batch handling failed", self.name)
                failed = BatchFailed(f"internal error: {exc}")
                answers = [(pending, None, failed) for pending in batch]
            with self._cond:
                self._running = 0  # before answering: a caller's next request is new load
            for pending, outputs, error in answers:
                pending.answer(outputs, error)

    def _next_batch(self) -> list[_Pending] | None:
        """Wait for a batch worth running (None once stopping with an empty queue)."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._want = 1
                self._cond.wait()
            target = batching.target_rows(max(self._peak), self.max_batch)
            if self.max_delay_s > 0:
                until = self._queue[0].enqueued + self.max_delay_s
                while self._queued_rows < target and not self._stopping:
                    left = until - self._clock()
                    if left <= 0:
                        break
                    self._want = target
                    self._cond.wait(left)
            self._want = 0
            if not self._queue:  # stop() took them
                return [] if not self._stopping else None
            chosen = batching.take(self._queue, self.max_batch)
            batch = [self._queue[i] for i in chosen]
            if len(chosen) == len(self._queue):
                self._queue.clear()
            else:
                for index in reversed(chosen):
                    del self._queue[index]
            self._queued_rows -= sum(p.rows for p in batch)
            self._running = len(batch)
            return batch

    def _run(self, batch: list[_Pending]) -> list[_Answer]:
        """Run the batch's live requests; what each request is to be answered."""
        now = self._clock()
        answers: list[_Answer] = []
        live: list[_Pending] = []
        for pending in batch:
            self.metrics.queue.observe(now - pending.enqueued)
            if pending.deadline is not None and now >= pending.deadline:
                self.metrics.reject("deadline")
                waited_ms = 1000 * (now - pending.enqueued)
                expired = DeadlineExceeded(
                    f"model {self.name}: the request's deadline passed after "
                    f"{waited_ms:.1f} ms in the queue; it was not run"
                )
                answers.append((pending, None, expired))
            else:
                live.append(pending)
        if not live:
            return answers
        rows = [p.rows for p in live]
        self.metrics.batch.observe(sum(rows))
        start = self._clock()
        try:
            outputs = self.runner.run(batching.concatenate([p.feeds for p in live]))
            parts = batching.split(outputs, rows)
        except Exception as exc:
            self.metrics.reject("failed", len(live))
            _LOG.warning("batcher %s: batch of %d failed: %s", self.name, len(live), exc)
            failed = BatchFailed(f"model {self.name} failed on a batch of {len(live)}: {exc}")
            return answers + [(pending, None, failed) for pending in live]
        took = self._clock() - start
        self._batch_s += _EWMA * (took - self._batch_s)
        return answers + [(p, part, None) for p, part in zip(live, parts, strict=True)]
