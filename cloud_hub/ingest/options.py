"""How one ingest process runs: its shared-subscription group, its session, its bounds.

The broker, credentials, topic prefix and ``raw_retention`` come from
:class:`~cloud_hub.settings.HubSettings`; these are the knobs of the ingest itself.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ..errors import HubConfigError

MAX_RECEIVE_MAXIMUM = 65_535  # MQTT 5's Receive Maximum is a two-byte integer


@dataclass(frozen=True)
class IngestOptions:
    """Knobs of one ingest process; a bad value fails at construction.

    ``client_id`` must be stable across restarts (the broker keeps the session, and so the
    messages not yet acknowledged, under it) and unique among the processes sharing a
    group: two processes with one id keep knocking each other off the broker. None means
    ``edgeloop-hub-<hostname>``, right for one ingest process per host.
    """

    group: str = "edgeloop-hub"  # $share/<group>/...: processes in one group split the load
    client_id: str | None = None
    session_expiry_s: int = 86_400  # how long the broker keeps queueing for a stopped hub
    keepalive_s: int = 30
    queue_max: int = 8_192  # messages between the network thread and the writer
    batch_max: int = 500  # rows committed in one transaction, at most
    batch_wait_s: float = 0.1  # how long a partial batch waits to fill
    retention_every_s: float = 300.0  # how often expired raw telemetry is deleted
    retention_batch: int = 5_000  # rows deleted per statement
    leave_quiet_s: float = 1.0  # stop(leave=True): no message for this long means drained

    def __post_init__(self) -> None:
        if not self.group or any(c in self.group for c in "/+#"):
            _bad("group", self.group, "a name without '/', '+' or '#'")
        if self.client_id is not None and not self.client_id:
            _bad("client_id", self.client_id, "a non-empty string or None")
        for name in ("session_expiry_s", "keepalive_s", "queue_max", "batch_max"):
            if getattr(self, name) < 1:
                _bad(name, getattr(self, name), "an integer of at least 1")
        if self.retention_batch < 1:
            _bad("retention_batch", self.retention_batch, "an integer of at least 1")
        for name in ("batch_wait_s", "retention_every_s", "leave_quiet_s"):
            if not getattr(self, name) > 0:
                _bad(name, getattr(self, name), "a number of seconds above 0")
        if self.batch_max > self.queue_max:
            _bad("batch_max", self.batch_max, f"at most queue_max ({self.queue_max})")

    @property
    def resolved_client_id(self) -> str:
        return self.client_id or f"edgeloop-hub-{socket.gethostname()}"

    @property
    def receive_maximum(self) -> int:
        """What the broker may send unacknowledged: no more than the queue holds."""
        return min(self.queue_max, MAX_RECEIVE_MAXIMUM)


def _bad(name: str, value: object, expected: str) -> None:
    raise HubConfigError(f"ingest option {name} = {value!r}: expected {expected}")
