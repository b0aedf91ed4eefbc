"""Alembic's environment: run migrations on the connection :mod:`cloud_hub.db.migrate` gives."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from cloud_hub.db.models import Base
from cloud_hub.db.types import UTCDateTime


def _render_item(kind: str, item: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations stay free of the hub's own types: UTCDateTime is timestamptz underneath.
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise RuntimeError(
        "the hub's migrations run through cloud_hub.db.migrate (cloud-hub db upgrade), "
        "which passes a connection; there is no alembic.ini"
    )
_run(_connection)
