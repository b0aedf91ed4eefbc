"""Databases for the hub's tests: a SQLite file, or a PostgreSQL database made for the test.

PostgreSQL is the real server on 127.0.0.1:5432 (trust auth, user postgres; override with
``EDGELOOP_TEST_POSTGRES``, an admin URL). Each test module creates databases with unique
names and drops them when done; tests on PostgreSQL skip, with the reason, only when the
server cannot be reached.

Use :func:`database_url_fixture` to give a test module a ``database_url`` fixture over
both backends, and :func:`registry_fixture` for a ``registry`` on it that starts empty in
every test.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ("sqlite", "postgresql")
ADMIN_URL = os.environ.get(
    "EDGELOOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class FakeClock:
    """The registry's clock in tests: a fixed UTC instant that moves only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the PostgreSQL server cannot be used, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'edgeloop[hub]')"
    try:
        with psycopg.connect(_conninfo(ADMIN_URL), connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {ADMIN_URL} is unreachable: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def postgres_database(label: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for the block; dropped afterwards."""
    import psycopg
    from psycopg import sql

    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    name = f"edgeloop_test_{re.sub(r'[^a-z0-9_]', '_', label.lower())}_{secrets.token_hex(4)}"
    with psycopg.connect(_conninfo(ADMIN_URL), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(_conninfo(ADMIN_URL), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def database(backend: str, folder: Path, label: str) -> Iterator[str]:
    """An empty database of ``backend``: a SQLite file in ``folder`` or a PostgreSQL one."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / f'{label}.db'}"
    else:
        with postgres_database(label) as url:
            yield url


def database_url_fixture(label: str) -> Any:
    """A module-scoped ``database_url`` fixture: one empty database per backend."""

    @pytest.fixture(scope="module", params=BACKENDS)
    def database_url(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[str]:
        with database(request.param, tmp_path_factory.mktemp(label), label) as url:
            yield url

    return database_url


def registry_fixture() -> Any:
    """A ``registry`` fixture on ``database_url`` with a :class:`FakeClock` as ``clock``.

    The schema is created once per database; every table is emptied after each test.
    """

    @pytest.fixture
    def registry(database_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Any]:
        from cloud_hub.registry import Registry
        from cloud_hub.settings import load_settings

        settings = load_settings(data_dir=tmp_path / "hub", database_url=database_url)
        with Registry.open(settings, clock=clock) as opened:
            try:
                yield opened
            finally:
                empty_tables(opened.db)

    return registry


def clock_fixture() -> Callable[[], FakeClock]:
    @pytest.fixture
    def clock() -> FakeClock:
        return FakeClock()

    return clock


def empty_tables(db: Any) -> None:
    from sqlalchemy import delete

    from cloud_hub.db.models import Base

    with db.transaction() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))


def dump(db: Any) -> str:
    """Every row of every table, as text: what someone with a copy of the database sees."""
    from sqlalchemy import inspect, text

    lines = []
    with db.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                lines.append(f"{table}: {tuple(row)!r}")
    return "\n".join(lines)


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)
