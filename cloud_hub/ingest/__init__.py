"""Telemetry ingest: MQTT (shared subscriptions) into the hub's database, losing nothing.

::

    from cloud_hub.ingest import IngestOptions, IngestService

    with IngestService(registry, settings, options=IngestOptions(group="hubs")) as ingest:
        ...
        ingest.stats()

The pieces, one module each: :mod:`.subscriber` (paho, shared subscription, manual acks),
:mod:`.writer` (the writer thread: batches, retries, acks after commit), :mod:`.messages`
(validation), :mod:`.store` (one batch's SQL), :mod:`.rollup` (per-minute rollups),
:mod:`.retention` (expiring raw telemetry). ``python -m cloud_hub.ingest`` runs ingest
alone, for scaling it apart from the rest of the hub.
"""

from __future__ import annotations

from .options import IngestOptions
from .retention import delete_expired
from .service import IngestService

__all__ = ["IngestOptions", "IngestService", "delete_expired"]
