"""The hub's database: models, engines, sessions and migrations.

``Database(url)`` opens it; ``ensure_schema(db)`` makes sure it holds this hub's schema
(creating it in an empty database); ``upgrade(db)`` migrates it. Both SQLite files and
PostgreSQL (``postgresql+psycopg://``) are supported and tested.
"""

from __future__ import annotations

from .engine import create_engine, describe_url, normalize_url
from .migrate import SchemaState, ensure_schema, head_revision, schema_state, upgrade
from .session import Database
from .types import UTCDateTime, utcnow

__all__ = [
    "Database",
    "SchemaState",
    "UTCDateTime",
    "create_engine",
    "describe_url",
    "ensure_schema",
    "head_revision",
    "normalize_url",
    "schema_state",
    "upgrade",
    "utcnow",
]
