"""Raw telemetry retention: delete ``telemetry_raw`` rows older than ``raw_retention``.

Rows are deleted by the hub's clock (``received_at``, which is indexed), in bounded
batches of their own short transactions, so a large backlog never holds one long lock
that would stall ingest. Rollups are kept. Several hub processes may run it at once:
deleting what another already deleted is a no-op.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from ..db import Database
from ..db import models as orm

DEFAULT_BATCH = 5_000

_RAW = orm.Base.metadata.tables["telemetry_raw"]


def delete_expired_batch(db: Database, cutoff: datetime, *, batch: int = DEFAULT_BATCH) -> int:
    """Delete at most ``batch`` raw rows received before ``cutoff``; how many went."""
    if batch < 1:
        raise ValueError(f"batch {batch} must be at least 1")
    expired = select(_RAW.c.id).where(_RAW.c.received_at < cutoff).limit(batch)
    with db.transaction() as session:
        result = session.execute(delete(_RAW).where(_RAW.c.id.in_(expired.scalar_subquery())))
        return int(getattr(result, "rowcount", 0) or 0)


def delete_expired(
    db: Database, cutoff: datetime, *, batch: int = DEFAULT_BATCH, max_batches: int | None = None
) -> int:
    """Delete raw rows received before ``cutoff`` batch by batch; how many went in all."""
    total, batches = 0, 0
    while max_batches is None or batches < max_batches:
        deleted = delete_expired_batch(db, cutoff, batch=batch)
        total += deleted
        batches += 1
        if deleted < batch:
            break
    return total
