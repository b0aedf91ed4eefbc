"""``cloud-hub db``: create and migrate the hub's database schema."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import note, print_json, settings_from, show_usage


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    db = commands.add_parser(
        "db", parents=[common], help="create or migrate the hub's database schema"
    )
    sub = db.add_subparsers(title="db commands", metavar="COMMAND")
    upgrade = sub.add_parser(
        "upgrade",
        parents=[common],
        help="migrate the database to this hub's schema (creates it when empty)",
        description="Apply the hub's migrations to the database (SQLite file or PostgreSQL). "
        "Safe to run again; on PostgreSQL concurrent upgrades wait for each other.",
    )
    upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    upgrade.set_defaults(handler=_upgrade)
    current = sub.add_parser(
        "current", parents=[common], help="show the database's schema revision"
    )
    current.add_argument("--json", action="store_true", help="print JSON for scripts")
    current.set_defaults(handler=_current)
    revision = sub.add_parser(
        "revision",
        parents=[common],
        help="(development) write a migration for what changed in the models",
        description="Compare the models with a database at head and write a new migration "
        "into cloud_hub/migrations/versions in this source tree.",
    )
    revision.add_argument("--message", "-m", required=True, help="what the migration does")
    revision.set_defaults(handler=_revision)
    show_usage(db)


def _upgrade(args: argparse.Namespace) -> int:
    from ..db import Database, schema_state, upgrade

    with Database(settings_from(args).database_url) as db:
        db.check_connection()
        before = upgrade(db, args.revision)
        after = schema_state(db)
        if before.current == after.current:
            print(f"{db.describe()}: already at revision {after.current}")
        else:
            print(f"{db.describe()}: upgraded from {before.current or 'empty'} to {after.current}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from ..db import Database, schema_state

    with Database(settings_from(args).database_url) as db:
        db.check_connection()
        state = schema_state(db)
        if args.json:
            print_json({"database": db.describe(), "current": state.current, "head": state.head})
        else:
            status = "up to date" if state.up_to_date else "needs 'cloud-hub db upgrade'"
            print(
                f"{db.describe()}: revision {state.current or 'none'} (head {state.head}, {status})"
            )
    return 0


def _revision(args: argparse.Namespace) -> int:
    from ..db import Database
    from ..db.migrate import make_revision

    with Database(settings_from(args).database_url) as db:
        path = make_revision(db, args.message)
    note(f"wrote {path}: read it, tidy it, and run the schema tests")
    print(path)
    return 0
