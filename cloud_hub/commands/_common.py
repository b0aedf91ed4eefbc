"""What every hub command shares: settings from flags, opening the registry, output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from edge_agent.cli import EXIT_USAGE

from ..errors import DependencyMissing

if TYPE_CHECKING:  # the hub's dependencies load only when a hub command runs
    from ..registry import Registry
    from ..settings import HubSettings


def add_hub_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--data-dir``, ``--database-url``: accepted before or after a command."""
    group = parser.add_argument_group("hub options (also EDGELOOP_HUB_* variables)")
    group.add_argument(
        "--config", metavar="FILE.toml", default=argparse.SUPPRESS, help="hub settings file"
    )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where the hub keeps its database and artifacts "
        "(default $XDG_DATA_HOME/edgeloop-hub, i.e. ~/.local/share/edgeloop-hub)",
    )
    group.add_argument(
        "--database-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB "
        "(default: hub.db in the data directory)",
    )


def settings_from(args: argparse.Namespace, **overrides: Any) -> HubSettings:
    """Settings from the hub options in ``args`` (and ``overrides``), env and --config."""
    require_hub_extra()
    from ..settings import load_settings

    return load_settings(
        getattr(args, "config", None),
        data_dir=getattr(args, "data_dir", None),
        database_url=getattr(args, "database_url", None),
        **overrides,
    )


def require_hub_extra() -> None:
    """Raise DependencyMissing, with the install command, unless the hub extra is here."""
    try:
        import alembic  # noqa: F401
        import pydantic_settings  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise DependencyMissing(
            f"this command needs the hub's dependencies ({exc.name} is missing): "
            "pip install 'edgeloop[hub]'"
        ) from exc


@contextmanager
def open_registry(args: argparse.Namespace) -> Iterator[Registry]:
    """The registry for these options; an empty database gets the schema on first use."""
    settings = settings_from(args)
    from ..registry import Registry

    with Registry.open(settings) as registry:
        yield registry


def show_usage(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` (a command group) print its help when run without a subcommand."""

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USAGE

    parser.set_defaults(handler=_usage)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    """Columns padded to their widest cell; ``empty`` is printed when there are no rows."""
    if not rows:
        print(empty)
        return
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    for line in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def when(moment: datetime | None) -> str:
    """A UTC time for people: ``2026-01-31 14:05:09Z``; ``-`` for none."""
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def note(message: str) -> None:
    """A message for people, on stderr, so stdout stays clean for scripts."""
    print(message, file=sys.stderr)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
