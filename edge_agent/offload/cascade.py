"""The cascade at run time: the device answers what it is sure of, the cloud the rest.

After the local model answered, :meth:`Cascade.answer` scores each row of its class
probabilities with the :class:`~edge_agent.offload.scores.Policy`. When a row is hard and
the hub may be asked (no retry hint pending, the :class:`~.breaker.CircuitBreaker` allows
it, the :class:`~.budget.Budget` can pay), the hard rows go to the hub in one
``ModelInfer`` call with the deadline, and the hub's outputs replace the local ones for
those rows. Anything else (a failure, a timeout, an open breaker, a skip) keeps the local
answer. So a dead hub costs a request at most the deadline, and nothing once the breaker
is open; no lock is held while the call is out.

Telemetry, per request with a hard row: ``record_offload("succeeded", latency, agreed)``
(agreed: the hub's top-1 equals the local top-1 on every offloaded row), ``"failed"``, or
``"skipped"``; the breaker's state goes to ``set_breaker`` at each change.

The local answer travels with the call as request parameters (``send_edge_answer``):
for one offloaded row ``edgeloop_edge_label`` (int64) and ``edgeloop_edge_score`` (double,
the policy's confidence); for several, ``edgeloop_edge_labels`` and
``edgeloop_edge_scores``, one comma-separated string each, a value per row in order (OIP
parameters are scalars); and ``edgeloop_edge_version`` (string) -- names the hub's
hard-example store reads; any other OIP v2 server ignores them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

import numpy as np

from .breaker import BreakerState, CircuitBreaker
from .budget import Budget
from .client import OffloadError, ParameterValue, RetryLater
from .scores import Policy

__all__ = ["CLOUD", "EDGE", "Answer", "Cascade", "OffloadRecorder", "Offloader"]

_LOG = logging.getLogger(__name__)
EDGE, CLOUD = "edge", "cloud"
EDGE_LABEL = "edgeloop_edge_label"
EDGE_SCORE = "edgeloop_edge_score"
EDGE_VERSION = "edgeloop_edge_version"
EDGE_LABELS = "edgeloop_edge_labels"
EDGE_SCORES = "edgeloop_edge_scores"
Outcome = Literal["succeeded", "failed", "skipped"]


class Offloader(Protocol):
    """What the cascade needs of a client (:class:`~.client.OffloadClient` has it)."""

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        timeout_s: float,
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> dict[str, np.ndarray]: ...

    def reconnect(self) -> None: ...

    def close(self) -> None: ...


class OffloadRecorder(Protocol):
    """Telemetry (:class:`edge_agent.telemetry.aggregate.Recorder` has it)."""

    def record_offload(
        self, outcome: Outcome, latency_s: float | None = None, agreed: bool | None = None
    ) -> None: ...

    def set_breaker(self, state: str) -> None: ...


class Answer(NamedTuple):
    outputs: dict[str, np.ndarray]
    answered_by: str  # EDGE or CLOUD


class Cascade:
    """Decides per request whether the hub answers; see the module docstring."""

    def __init__(
        self,
        client: Offloader,
        policy: Policy,
        *,
        deadline_s: float,
        breaker: CircuitBreaker | None = None,
        budget: Budget | None = None,
        recorder: OffloadRecorder | None = None,
        send_edge_answer: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.client = client
        self.policy = policy
        self.deadline_s = deadline_s
        self.breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        self.budget = budget if budget is not None else Budget(clock=clock)
        self.recorder = recorder
        self.send_edge_answer = send_edge_answer
        self._clock = clock
        self._lock = threading.Lock()
        self._retry_at = 0.0  # no offload before this clock reading (the hub's hint)
        if recorder is not None:
            recorder.set_breaker(self.breaker.state.value)

    def answer(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        probabilities_output: str,
        probabilities: np.ndarray | None,
        edge_version: str,
    ) -> Answer:
        """The answer to give: ``outputs`` (the local one) or the hub's for the hard rows."""
        local = Answer(outputs, EDGE)
        if probabilities is None or probabilities.ndim != 2 or min(probabilities.shape) < 1:
            return local
        if probabilities.shape[1] < 2:  # one "class": no confidence to speak of
            return local
        confidence = self.policy.confidence(probabilities)
        hard = confidence < self.policy.threshold
        if not hard.any():
            return local
        rows, sent = _hard_rows(feeds, hard)
        if not self._may_offload(sum(int(a.nbytes) for a in sent.values())):
            self._record("skipped")
            return local
        parameters = (
            edge_parameters(probabilities[rows], confidence[rows], edge_version)
            if self.send_edge_answer
            else None
        )
        start = self._clock()
        try:
            remote = self.client.infer(
                sent, list(outputs), timeout_s=self.deadline_s, parameters=parameters
            )
            merged = _merge(outputs, remote, rows)
        except RetryLater as exc:
            self._retry_later(exc)
            self._record("failed", self._clock() - start)
            return local
        except Exception as exc:  # OffloadError, or anything else: the local answer stands
            self._failed(exc)
            self._record("failed", self._clock() - start)
            return local
        latency = self._clock() - start
        self.breaker.success()
        cloud_top = np.argmax(merged[probabilities_output][rows], axis=-1)
        agreed = bool(np.array_equal(cloud_top, np.argmax(probabilities[rows], axis=-1)))
        self._record("succeeded", latency, agreed)
        return Answer(merged, CLOUD)

    def close(self) -> None:
        self.client.close()

    # -- helpers -------------------------------------------------------------------------

    def _may_offload(self, nbytes: int) -> bool:
        with self._lock:
            if self._clock() < self._retry_at:
                return False
        if not self.breaker.allow():
            return False
        if not self.budget.take(nbytes):
            self.breaker.release()
            return False
        if self.breaker.state is BreakerState.HALF_OPEN:
            self.client.reconnect()  # the trial dials afresh, not after gRPC's backoff
        return True

    def _retry_later(self, exc: RetryLater) -> None:
        if exc.retry_after_s is None:
            self._failed(exc)  # overloaded without a hint: counts against the hub
            return
        with self._lock:
            self._retry_at = max(self._retry_at, self._clock() + exc.retry_after_s)
        self.breaker.release()
        _LOG.info("offload: the hub is busy; none for %.3fs", exc.retry_after_s)

    def _failed(self, exc: Exception) -> None:
        was_open = self.breaker.state is BreakerState.OPEN
        self.breaker.failure()
        if not isinstance(exc, OffloadError):  # not the hub's doing: a bug to see
            _LOG.warning("offload failed: %s: %s", type(exc).__name__, exc)
        elif not was_open and self.breaker.state is BreakerState.OPEN:
            _LOG.warning("offload: the breaker opens after: %s", exc)
        else:
            _LOG.debug("offload failed: %s", exc)

    def _record(
        self, outcome: Outcome, latency_s: float | None = None, agreed: bool | None = None
    ) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        try:
            recorder.record_offload(outcome, latency_s=latency_s, agreed=agreed)
        except Exception:  # telemetry must not fail an answered request
            _LOG.exception("telemetry recorder failed; the request was answered")


def edge_parameters(
    probabilities: np.ndarray, confidence: np.ndarray, version: str
) -> dict[str, ParameterValue]:
    """The request parameters that tell the hub what the device answered for these rows."""
    labels = np.argmax(probabilities, axis=-1)
    if len(labels) == 1:
        return {
            EDGE_LABEL: int(labels[0]),
            EDGE_SCORE: float(confidence[0]),
            EDGE_VERSION: version,
        }
    return {
        EDGE_LABELS: ",".join(str(int(label)) for label in labels),
        EDGE_SCORES: ",".join(f"{float(score):.6g}" for score in confidence),
        EDGE_VERSION: version,
    }


def _hard_rows(
    feeds: Mapping[str, np.ndarray], hard: np.ndarray
) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
    """The rows to send and the inputs that carry them (all rows when inputs are not
    batched along the first axis the way the probabilities are)."""
    n = hard.shape[0]
    every = np.arange(n)
    if hard.all():
        return every, feeds
    if all(a.ndim >= 1 and a.shape[0] == n for a in feeds.values()):
        rows = np.flatnonzero(hard)
        return rows, {name: np.ascontiguousarray(a[rows]) for name, a in feeds.items()}
    return every, feeds


def _merge(
    local: dict[str, np.ndarray], remote: Mapping[str, np.ndarray], rows: np.ndarray
) -> dict[str, np.ndarray]:
    """The local outputs with ``rows`` replaced by the hub's; OffloadError on a mismatch."""
    merged: dict[str, np.ndarray] = {}
    for name, mine in local.items():
        theirs = remote[name]
        expected = (len(rows), *mine.shape[1:])
        if mine.ndim == 0 or theirs.shape != expected or theirs.dtype.kind != mine.dtype.kind:
            raise OffloadError(
                f"output {name!r}: the hub answered {theirs.dtype} {list(theirs.shape)}, "
                f"expected {mine.dtype} {list(expected)}",
                "BAD_RESPONSE",
            )
        if len(rows) == mine.shape[0]:
            merged[name] = theirs.astype(mine.dtype, copy=False)
        else:
            out = np.array(mine, copy=True)
            out[rows] = theirs
            merged[name] = out
    return merged
