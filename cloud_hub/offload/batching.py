"""The batcher's decisions, as pure functions: what goes together, when to stop waiting.

* Requests go in one batch only when their inputs agree on everything but dim 0
  (:func:`signature`); they are concatenated along dim 0 (:func:`concatenate`) and the
  outputs are cut back at the same row offsets (:func:`split`).
* :func:`take` picks, oldest first, the requests of the oldest request's signature that
  fit in ``max_batch`` rows; the oldest is always taken, even alone over the limit.
* :func:`target_rows` is how many rows are worth waiting for: the recent peak of
  requests in the system (queued plus running; :func:`track_peak`), at most
  ``max_batch``. One client at a time gives a target of 1, so it never waits for company
  that is not coming; sixteen clients give sixteen. The wait is still capped by the
  queue delay.
* :func:`retry_after_ms` is the hint a rejected client gets: about how long the queue
  ahead of it takes to drain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

__all__ = [
    "Signature",
    "concatenate",
    "retry_after_ms",
    "rows_of",
    "signature",
    "split",
    "take",
    "target_rows",
    "track_peak",
]

#: (input name, shape without dim 0, dtype) for every input, in name order.
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


class Queued(Protocol):
    @property
    def signature(self) -> Signature: ...

    @property
    def rows(self) -> int: ...


def signature(feeds: Mapping[str, np.ndarray]) -> Signature:
    return tuple(
        (name, tuple(feeds[name].shape[1:]), feeds[name].dtype.str) for name in sorted(feeds)
    )


def rows_of(feeds: Mapping[str, np.ndarray]) -> int:
    """The rows (dim 0) of a request; its guards made every input agree."""
    for value in feeds.values():
        return int(value.shape[0]) if value.ndim else 1
    return 0


def take(queue: Sequence[Queued], max_batch: int) -> list[int]:
    """Indices into ``queue`` (oldest first) of the next batch."""
    if not queue:
        return []
    first = queue[0]
    chosen, total = [0], first.rows
    for index in range(1, len(queue)):
        if total >= max_batch:
            break
        item = queue[index]
        if item.signature == first.signature and total + item.rows <= max_batch:
            chosen.append(index)
            total += item.rows
    return chosen


def target_rows(recent_peak: int, max_batch: int) -> int:
    return max(1, min(max_batch, recent_peak))


Peak = tuple[int, int]  # (the peak in the current window, the peak in the one before)


def track_peak(
    peak: Peak, window_end: float, load: int, now: float, window_s: float
) -> tuple[Peak, float]:
    """The peaks and window end after seeing ``load`` requests in the system at ``now``.

    ``max(peak)`` is the recent peak: this window's and the last one's, so a burst counts
    for one to two windows; a window that ended over a window ago counts for nothing.
    """
    current, last = peak
    if now >= window_end:
        last = current if now < window_end + window_s else 0
        current = 0
        window_end = now + window_s
    return (max(current, load), last), window_end


def concatenate(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feed per input: the requests' arrays along dim 0 (no copy for one request)."""
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output; ValueError when an output is not per row."""
    if len(rows) == 1:
        return [dict(outputs)]
    total = sum(rows)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise ValueError(
                f"output {name!r} has shape {list(value.shape)}, not {total} rows, so it "
                f"cannot be split between the batch's {len(rows)} requests"
            )
    parts, start = [], 0
    for count in rows:
        end = start + count
        parts.append({name: value[start:end] for name, value in outputs.items()})
        start = end
    return parts


def retry_after_ms(queued_rows: int, max_batch: int, batch_s: float, delay_s: float) -> int:
    """About how long the queue takes to drain, in ms (at least 1)."""
    batches = math.ceil(queued_rows / max_batch) + 1
    return max(1, math.ceil(1000 * (batches * batch_s + delay_s)))
