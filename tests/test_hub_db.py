"""The hub's database: migrations agree with the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import hub_db
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from cloud_hub.db import Database, ensure_schema, head_revision, schema_state, upgrade
from cloud_hub.db.migrate import alembic_config
from cloud_hub.db.models import Base, Device, Fleet, TelemetryRaw
from cloud_hub.errors import HubConfigError, Unavailable


@pytest.fixture(params=hub_db.BACKENDS)
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with nothing in it, new for each test."""
    with hub_db.database(request.param, tmp_path, "schema") as url, Database(url) as db:
        yield db


def _differences(db: Database) -> list[object]:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_upgrade_builds_the_schema_the_models_describe(empty_db: Database) -> None:
    assert schema_state(empty_db).current is None
    before = upgrade(empty_db)
    assert before.current is None
    assert schema_state(empty_db).up_to_date
    assert _differences(empty_db) == []
    tables = set(inspect(empty_db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    # Upgrading again changes nothing.
    assert upgrade(empty_db).current == head_revision()
    assert _differences(empty_db) == []


def test_downgrade_to_nothing_and_back(empty_db: Database) -> None:
    upgrade(empty_db)
    with empty_db.engine.connect() as connection:
        command.downgrade(alembic_config(connection), "base")
        connection.commit()
    assert set(inspect(empty_db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(empty_db)
    assert _differences(empty_db) == []


def test_ensure_schema_creates_an_empty_database_or_says_what_to_run(
    empty_db: Database,
) -> None:
    with pytest.raises(HubConfigError, match=r"no hub schema: run 'cloud-hub db upgrade'"):
        ensure_schema(empty_db, create=False)
    assert ensure_schema(empty_db).up_to_date
    with empty_db.transaction() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(HubConfigError, match=r"revision 9999, which this hub does not know"):
        ensure_schema(empty_db)


def test_tables_without_a_revision_are_refused(empty_db: Database) -> None:
    Base.metadata.create_all(empty_db.engine)
    with pytest.raises(HubConfigError, match="no migration revision"):
        ensure_schema(empty_db)


def test_concurrent_upgrades_of_one_database_both_succeed(empty_db: Database) -> None:
    """Hub processes starting together against a fresh database migrate it once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        try:
            with Database(empty_db.url) as db:
                barrier.wait(timeout=60)
                ensure_schema(db)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "an upgrade is stuck"
    assert errors == []
    assert schema_state(empty_db).up_to_date
    assert _differences(empty_db) == []


def test_datetimes_come_back_as_utc_and_naive_ones_are_refused(empty_db: Database) -> None:
    ensure_schema(empty_db)
    plus_two = timezone(timedelta(hours=2))
    created = datetime(2030, 5, 1, 14, 30, 15, 123456, tzinfo=plus_two)
    with empty_db.transaction() as session:
        session.add(Fleet(name="lab", created_at=created))
    with empty_db.transaction() as session:
        stored = session.scalars(select(Fleet.created_at)).one()
    assert stored == created
    assert stored.utcoffset() == timedelta(0)
    assert stored.hour == 12
    with pytest.raises(StatementError, match="naive datetime"), empty_db.transaction() as session:
        session.add(Fleet(name="naive", created_at=datetime(2030, 1, 1)))
        session.flush()


def test_foreign_keys_are_enforced(empty_db: Database) -> None:
    ensure_schema(empty_db)
    with pytest.raises(IntegrityError), empty_db.transaction() as session:
        session.add(Device(id="dev-000000000000", fleet_id=12345, hostname="orphan"))
        session.flush()


def test_the_unique_device_boot_seq_constraint_rejects_a_duplicate(empty_db: Database) -> None:
    """The telemetry dedupe the ingest relies on is the database's own constraint."""
    ensure_schema(empty_db)
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with empty_db.transaction() as session:
        fleet = Fleet(name="lab", created_at=now)
        session.add(Device(id="dev-aaaaaaaaaaaa", fleet=fleet, hostname="pi", created_at=now))

    def message(seq: int, boot: str = "boot-1") -> TelemetryRaw:
        return TelemetryRaw(
            device_id="dev-aaaaaaaaaaaa",
            boot_id=boot,
            seq=seq,
            ts=now,
            received_at=now,
            payload={"seq": seq},
        )

    with empty_db.transaction() as session:
        session.add_all([message(1), message(2), message(1, boot="boot-2")])
    with pytest.raises(IntegrityError), empty_db.transaction() as session:
        session.add(message(2))
        session.flush()
    with empty_db.transaction() as session:
        assert len(session.scalars(select(TelemetryRaw)).all()) == 3


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    with Database(f"sqlite:///{tmp_path / 'nested' / 'hub.db'}") as db:
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (tmp_path / "nested" / "hub.db").exists()


def test_an_unreachable_database_is_one_clear_error_without_the_password() -> None:
    db = Database("postgresql://hub:s3cret-pw@127.0.0.1:1/hub")
    with db, pytest.raises(Unavailable, match=r"cannot reach the database") as caught:
        ensure_schema(db)
    assert "s3cret-pw" not in str(caught.value)
    assert "postgresql+psycopg://hub:***@127.0.0.1:1/hub" in str(caught.value)
