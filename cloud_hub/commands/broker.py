"""``cloud-hub broker sync``: rewrite the broker's password and ACL files and reload it."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import open_registry, settings_from, show_usage


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    broker = commands.add_parser(
        "broker", parents=[common], help="the broker's device users and ACL (Mosquitto)"
    )
    sub = broker.add_subparsers(title="broker commands", metavar="COMMAND")
    sync = sub.add_parser(
        "sync",
        parents=[common],
        help="rewrite the broker's password and ACL files from the registry and reload it",
        description="Render Mosquitto's password_file and acl_file from the devices that "
        "are enrolled and not revoked, replace them if they changed, and reload the broker "
        "(always, with this command). Needs broker_password_file and broker_acl_file, and "
        "broker_pid_file or broker_reload_command to reload.",
    )
    sync.set_defaults(handler=_sync)
    show_usage(broker)


def _sync(args: argparse.Namespace) -> int:
    from ..broker import sync_broker

    settings = settings_from(args)
    with open_registry(args) as registry:
        print(sync_broker(registry.db, settings, force_reload=True))
    return 0
