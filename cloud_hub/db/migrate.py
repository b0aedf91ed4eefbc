"""Schema migrations, driven in code: upgrade, inspect and check a database's revision.

The Alembic configuration is built here (no ``alembic.ini``), pointing at the
``cloud_hub/migrations`` folder that ships in the package, so ``cloud-hub db upgrade``
works from an installed wheel. An upgrade holds a lock (a PostgreSQL advisory lock; a
``<file>.migrate-lock`` beside a SQLite file), so hub processes starting together against
a fresh database migrate it once and the others find it done.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from ..errors import HubConfigError
from .models import Base
from .session import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_PG_LOCK_KEY = 0x6564676C6F6F70  # "edgloop": one advisory lock for schema changes


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # the database's revision, None when it has no schema
    head: str  # the newest revision this hub knows

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the hub, with ``connection`` for ``env.py`` to use."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # the package ships at least one migration
        raise HubConfigError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def schema_state(db: Database) -> SchemaState:
    with db.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return SchemaState(current=current, head=head_revision())


def upgrade(db: Database, revision: str = "head", *, _locked: bool = False) -> SchemaState:
    """Migrate the database to ``revision``; returns the state before the upgrade."""
    with db.engine.connect() as connection, _schema_lock(db, connection, held=_locked):
        before = SchemaState(
            current=MigrationContext.configure(connection).get_current_revision(),
            head=head_revision(),
        )
        connection.commit()
        command.upgrade(alembic_config(connection), revision)
        connection.commit()
    return before


@contextmanager
def _schema_lock(db: Database, connection: Connection, *, held: bool = False) -> Iterator[None]:
    """Hold the schema-change lock: a PostgreSQL advisory lock, or a lock file for SQLite
    (``held``: the caller already holds the SQLite file lock)."""
    if db.backend == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
        connection.commit()
        try:
            yield
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
            connection.commit()
        return
    if held:
        yield
        return
    with _sqlite_file_lock(db):
        yield


@contextmanager
def _sqlite_file_lock(db: Database) -> Iterator[None]:
    """An exclusive lock file beside a SQLite database (nothing for other databases)."""
    database = db.url.database
    if db.backend != "sqlite" or not database or database == ":memory:":
        yield
        return
    if database.startswith("file:"):
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def ensure_schema(db: Database, *, create: bool = True) -> SchemaState:
    """Make sure the database holds this hub's schema before anything uses it.

    An empty database is migrated to head when ``create`` is true (the first run needs no
    separate step). A database at an older revision, or at one this hub does not know
    (written by a newer hub), is refused with what to do; migrating a schema that other
    processes are using is an operator's decision (``cloud-hub db upgrade``).
    """
    # On SQLite the whole check runs under the schema lock file: hubs starting together on a
    # new file otherwise race each other's first connections (switching the file to WAL)
    # and read half-made schemas; the second one in finds the schema made.
    with _sqlite_file_lock(db):
        return _ensure_schema(db, create=create, locked=db.backend == "sqlite")


def _ensure_schema(db: Database, *, create: bool, locked: bool) -> SchemaState:
    db.check_connection()
    state = schema_state(db)
    if state.up_to_date:
        return state
    if state.current is None:
        leftovers = _our_tables(db)
        if leftovers:
            raise HubConfigError(
                f"database {db.describe()} has hub tables ({', '.join(leftovers)}) but no "
                "migration revision; it was not made by 'cloud-hub db upgrade'"
            )
        if not create:
            raise HubConfigError(
                f"database {db.describe()} has no hub schema: run 'cloud-hub db upgrade'"
            )
        upgrade(db, _locked=locked)
        return schema_state(db)
    script = ScriptDirectory.from_config(alembic_config())
    if state.current not in {rev.revision for rev in script.walk_revisions()}:
        raise HubConfigError(
            f"database {db.describe()} is at revision {state.current}, which this hub does "
            f"not know (it knows up to {state.head}); was it upgraded by a newer hub?"
        )
    raise HubConfigError(
        f"database {db.describe()} is at revision {state.current}, this hub needs "
        f"{state.head}: run 'cloud-hub db upgrade'"
    )


def make_revision(db: Database, message: str) -> Path:
    """Autogenerate a migration from the difference between ``db`` and the models.

    A development tool: ``db`` must be at head; the new file lands in the source tree's
    ``cloud_hub/migrations/versions``.
    """
    state = ensure_schema(db, create=False)
    number = int(state.head) + 1 if state.head.isdigit() else None
    with db.engine.connect() as connection:
        script = command.revision(
            alembic_config(connection),
            message=message,
            autogenerate=True,
            rev_id=f"{number:04d}" if number is not None else None,
        )
    if script is None or isinstance(script, list):
        raise HubConfigError("alembic made no single revision file")
    return Path(script.path)


def _our_tables(db: Database) -> list[str]:
    existing = set(inspect(db.engine).get_table_names())
    return sorted(existing & set(Base.metadata.tables))
