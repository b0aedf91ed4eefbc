"""The :class:`IngestService`: MQTT telemetry, events and status into the hub's database.

::

    service = IngestService(registry, settings)  # or a Database
    service.start()                              # background threads; returns at once
    service.wait_ready(30)                       # subscribed (optional)
    ...
    service.stats()   # received, stored, duplicates, malformed, unknown_device, queue_depth...
    service.stop()    # store and acknowledge what is queued, then disconnect

Two threads, both started and stopped here: paho's network thread
(:mod:`.subscriber`) and the writer (:mod:`.writer`), with a bounded queue between them.
A message is acknowledged to the broker only after its row is committed, and the broker
keeps this process's session while it is down, so stopping, crashing or losing the
database loses nothing: unacknowledged messages come again and duplicates are dropped.

``stop(leave=True)`` is for a process leaving its group for good (scaling down): it
unsubscribes, stores what the broker still had queued for it, and ends its session, so
no share of the messages waits for a process that will not come back.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

from ..db import Database, utcnow
from ..registry import Registry
from ..settings import HubSettings
from .counters import Counters
from .options import IngestOptions
from .subscriber import Delivery, Subscriber
from .writer import Writer

log = logging.getLogger(__name__)

_STARTED, _STOPPED = "started", "stopped"


class IngestService:
    """One ingest process's worth of work; see the module docstring."""

    def __init__(
        self,
        target: Registry | Database,
        settings: HubSettings,
        *,
        options: IngestOptions | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if isinstance(target, Registry):
            db, default_clock = target.db, target.now
        else:
            db, default_clock = target, utcnow
        self.settings = settings
        self.options = options or IngestOptions()
        self._counters = Counters()
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=self.options.queue_max)
        self._subscriber = Subscriber(settings, self.options, self._queue)
        self._writer = Writer(
            db,
            self._queue,
            prefix=settings.mqtt_topic_prefix,
            options=self.options,
            ack=self._subscriber.ack,
            counters=self._counters,
            clock=clock or default_clock,
            raw_retention=settings.raw_retention,
        )
        self._state: str | None = None

    def start(self) -> None:
        """Start the writer, then connect; returns at once (paho retries the broker)."""
        if self._state is not None:
            raise RuntimeError(f"IngestService was already {self._state}")
        self._state = _STARTED
        self._writer.start()
        self._subscriber.start()
        log.info(
            "ingest: subscribing to %s on %s:%s",
            ", ".join(self._subscriber.topics),
            self.settings.mqtt_host,
            self.settings.mqtt_port,
        )

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Whether the broker confirmed the subscriptions within ``timeout`` seconds."""
        return self._subscriber.wait_subscribed(timeout)

    def stop(self, timeout: float = 10.0, *, leave: bool = False) -> None:
        """Store and acknowledge what is queued, then disconnect (once; later calls do
        nothing). What is not stored within ``timeout`` stays unacknowledged."""
        if self._state != _STARTED:
            self._state = _STOPPED
            return
        self._state = _STOPPED
        deadline = time.monotonic() + timeout
        if leave:
            self._drain_for_leaving(deadline)
        self._subscriber.pause()
        if not self._writer.stop(max(deadline - time.monotonic(), 0.1)):
            log.warning("ingest: stopped with %d messages not stored", self._queue.qsize())
        self._subscriber.close(end_session=leave)
        log.info("ingest: stopped; %s", self.stats())

    def stats(self) -> dict[str, int]:
        """Counters since start (see :mod:`.counters`), plus ``received`` (messages taken
        off the wire), ``queue_depth``, and ``connected`` and ``subscribed`` (1 or 0)."""
        return {
            "received": self._subscriber.received,
            **self._counters.snapshot(),
            "queue_depth": self._queue.qsize(),
            "connected": int(self._subscriber.connected),
            "subscribed": int(self._subscriber.subscribed),
        }

    def run_retention(self) -> int:
        """Delete expired raw telemetry now, whatever the schedule; how many rows went."""
        return self._writer.retention_now()

    def __enter__(self) -> IngestService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _drain_for_leaving(self, deadline: float) -> None:
        if not self._subscriber.unsubscribe(max(deadline - time.monotonic(), 0.1)):
            log.warning("ingest: the broker did not confirm the unsubscribe in time")
        quiet = self.options.leave_quiet_s
        while time.monotonic() < deadline and (
            self._queue.qsize() or self._subscriber.idle_for() < quiet
        ):
            time.sleep(0.05)
