"""Store-and-forward on one connection: which spooled message to publish next, and acks.

A :class:`Forwarder` lives for one MQTT connection. When it is created (on CONNACK) it
takes the spool's newest id as the *floor*: everything at or below it is **backlog**
(put while the broker was unreachable, or left by an earlier process) and is replayed
flagged ``"historical": true``; everything put after it is **live**. Each call to
:meth:`Forwarder.next_batch` offers live messages first (up to ``max_inflight`` awaiting
PUBACK), then backlog messages (up to ``backlog_inflight`` awaiting PUBACK and
``backlog_rate`` per second), each lane in id order, so a backlog of hours drains beside
live telemetry without delaying it. A message leaves the spool only when its PUBACK
arrives (:meth:`Forwarder.acked`, then :meth:`Forwarder.flush_acks` deletes the batch).

No MQTT library here: the publisher hands in message ids and reason codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .settings import ForwardPolicy
from .spool import Spool, SpooledMessage

__all__ = ["Forwarder", "Outgoing"]


@dataclass(frozen=True)
class Outgoing:
    """A spooled message to publish now; ``historical`` when it comes from the backlog."""

    message: SpooledMessage
    historical: bool


class Forwarder:
    """The in-flight window and the two lanes (live, backlog) of one connection."""

    def __init__(self, spool: Spool, policy: ForwardPolicy, clock: Callable[[], float]) -> None:
        self._spool = spool
        self._policy = policy
        self._clock = clock
        self.floor = spool.last_id
        self._live_cursor = self.floor
        self._backlog_cursor = 0
        self._inflight: dict[int, tuple[int, bool]] = {}  # mid -> (row id, historical)
        self._backlog_inflight = 0
        self._tokens = float(policy.backlog_inflight)
        self._refilled = clock()
        self._acked: list[int] = []
        self.acked_count = 0
        self.rejected_count = 0
        self.historical_count = 0

    # -- what to send --------------------------------------------------------------------

    def next_batch(self, backlog: bool = True) -> list[Outgoing]:
        """Messages to publish now: live ones first, then (``backlog``) a few replayed."""
        batch: list[Outgoing] = []
        live_slots = self._policy.max_inflight - (len(self._inflight) - self._backlog_inflight)
        if live_slots > 0 and self._spool.last_id > self._live_cursor:
            for message in self._spool.after(self._live_cursor, live_slots):
                batch.append(Outgoing(message, historical=False))
        if backlog and self._backlog_cursor < self.floor:
            self._refill()
            slots = min(self._policy.backlog_inflight - self._backlog_inflight, int(self._tokens))
            if slots > 0:
                replay = self._spool.after(self._backlog_cursor, slots, up_to=self.floor)
                if not replay:
                    self._backlog_cursor = self.floor  # the rest was acked or dropped
                batch += [Outgoing(message, historical=True) for message in replay]
        return batch

    def sent(self, mid: int, outgoing: Outgoing) -> None:
        """``outgoing`` was handed to the MQTT client as message id ``mid``."""
        row_id = outgoing.message.id
        self._inflight[mid] = (row_id, outgoing.historical)
        if outgoing.historical:
            self._backlog_cursor = max(self._backlog_cursor, row_id)
            self._backlog_inflight += 1
            self._tokens -= 1.0
            self.historical_count += 1
        else:
            self._live_cursor = max(self._live_cursor, row_id)

    # -- what came back ------------------------------------------------------------------

    def acked(self, mid: int, accepted: bool) -> bool:
        """The broker's PUBACK for ``mid``; False when the mid is not one of ours.

        A message the broker refused (a reason code >= 0x80, e.g. 0x87 not authorized)
        leaves the spool too and is counted in ``rejected_count``: sending it again would
        be refused again, and would hold up everything behind it.
        """
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return False
        row_id, historical = entry
        if historical:
            self._backlog_inflight -= 1
        self._acked.append(row_id)
        if accepted:
            self.acked_count += 1
        else:
            self.rejected_count += 1
        return True

    def flush_acks(self) -> int:
        """Delete the acknowledged messages from the spool in one transaction."""
        if not self._acked:
            return 0
        done, self._acked = self._acked, []
        return self._spool.ack(done)

    # -- state ---------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def backlog_left(self) -> bool:
        """Whether backlog messages may still be waiting to be replayed."""
        return self._backlog_cursor < self.floor

    def live_pending(self) -> bool:
        """Whether a live message is unsent or awaiting its PUBACK."""
        live_inflight = len(self._inflight) - self._backlog_inflight
        return live_inflight > 0 or self._spool.last_id > self._live_cursor

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(now - self._refilled, 0.0)
        self._refilled = now
        burst = float(self._policy.backlog_inflight)
        self._tokens = min(burst, self._tokens + elapsed * self._policy.backlog_rate)
