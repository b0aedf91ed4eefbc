"""The service's subcommands: ``edge-agent run`` and ``edge-agent systemd-unit``.

:func:`add_parsers` registers both on the ``edge-agent`` command line.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from typing import Any

from .logs import LEVELS

__all__ = ["EXAMPLE_CONFIG", "add_parsers", "example_config"]

EXAMPLE_CONFIG = "agent.example.toml"


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    _add_run(commands, common)
    _add_systemd_unit(commands, common)


def example_config() -> str:
    """The example config shipped with the package, every key explained."""
    files = importlib.resources.files(__package__)
    return files.joinpath(EXAMPLE_CONFIG).read_text(encoding="utf-8")


# -- run ----------------------------------------------------------------------------------


def _add_run(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser(
        "run",
        parents=[common],
        help="run the agent until stopped (local inference server, telemetry)",
        description="Load the model, serve it on the local HTTP API and report telemetry "
        "over MQTT until SIGTERM or SIGINT, which finish in-flight requests and exit 0. "
        "Under systemd (Type=notify) it reports READY=1, WATCHDOG=1 and STATUS=.",
    )
    cmd.add_argument("--config", metavar="PATH", help="the agent's TOML config file")
    cmd.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (wins over $EDGELOOP_STATE_DIR and [agent] state_dir; "
        "default /var/lib/edgeloop)",
    )
    cmd.add_argument(
        "--log-level", choices=LEVELS, default="info", help="least severe level logged"
    )
    cmd.add_argument(
        "--check", action="store_true", help="validate the config, print a summary and exit"
    )
    cmd.add_argument(
        "--print-example-config",
        action="store_true",
        help="print an example config with every key explained, and exit",
    )
    cmd.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.print_example_config:
        sys.stdout.write(example_config())
        return 0
    if not args.config:
        print("edge-agent run: error: --config PATH is required", file=sys.stderr)
        return 2
    from ..config import load_config
    from .logs import configure_logging

    configure_logging(args.log_level)
    config = load_config(args.config, state_dir=args.state_dir)
    if args.check:
        print(f"{config.source}: ok")
        print(f"  model      {config.model.path} (backend {config.model.backend})")
        print(f"  state_dir  {config.agent.state_dir}")
        http = f"{config.http.host}:{config.http.port}" if config.http.enabled else "off"
        print(f"  http       {http}")
        print(f"  mqtt       {'on' if config.mqtt.enabled else 'off'}")
        return 0
    from .daemon import serve

    return serve(config)


# -- systemd-unit -------------------------------------------------------------------------


def _add_systemd_unit(commands: Any, common: argparse.ArgumentParser) -> None:
    from .systemd import DEFAULT_CONFIG, DEFAULT_USER

    cmd = commands.add_parser(
        "systemd-unit",
        parents=[common],
        help="print the systemd unit for this install",
        description="Print a systemd unit (Type=notify, watchdog, hardening) that runs "
        "'edge-agent run --config PATH' as USER. Save it as "
        "/etc/systemd/system/edge-agent.service.",
    )
    cmd.add_argument(
        "--user", default=DEFAULT_USER, help=f"the service's user (default {DEFAULT_USER})"
    )
    cmd.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"the config file (default {DEFAULT_CONFIG})"
    )
    cmd.add_argument(
        "--executable",
        metavar="PATH",
        help="the edge-agent executable (default: the one beside this Python, or on PATH)",
    )
    cmd.set_defaults(handler=_systemd_unit)


def _systemd_unit(args: argparse.Namespace) -> int:
    from .systemd import render_unit

    sys.stdout.write(render_unit(user=args.user, config=args.config, executable=args.executable))
    return 0
