"""What ingest has done so far: counters shared by the network and writer threads."""

from __future__ import annotations

import threading

#: Every counter, in the order :meth:`Counters.snapshot` lists them.
NAMES = (
    "stored",  # telemetry rows inserted
    "duplicates",  # telemetry already stored (same device, boot id, seq): dropped
    "malformed",  # not JSON, wrong schema or types, topic/payload mismatch: dropped
    "unknown_device",  # from a device that does not exist, is revoked or in another fleet
    "failed",  # valid, but the database refused it (logged): dropped
    "events",  # event rows appended
    "statuses",  # status messages applied
    "batches",  # transactions committed
    "acked",  # PUBACKs sent, each after its message was committed
    "retries",  # transactions retried after a transient database error
    "retention_deleted",  # expired raw rows deleted
)


class Counters:
    """Thread-safe counters; :meth:`snapshot` reads them all at one instant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(NAMES, 0)

    def add(self, **increments: int) -> None:
        unknown = increments.keys() - self._values.keys()
        if unknown:
            raise KeyError(f"unknown ingest counter(s): {sorted(unknown)}")
        with self._lock:
            for name, amount in increments.items():
                self._values[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
