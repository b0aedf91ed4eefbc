"""``cloud-hub fleet``: create, list and change fleets."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_json_flag, open_registry, print_json, print_table, show_usage


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    fleet = commands.add_parser("fleet", parents=[common], help="create, list and change fleets")
    sub = fleet.add_subparsers(title="fleet commands", metavar="COMMAND")
    create = sub.add_parser(
        "create",
        parents=[common],
        help="create a fleet",
        description="Create a fleet: a named group of devices that share MQTT topics, "
        "enrollment tokens and rollouts. Names are letters, digits, '.', '_' and '-'.",
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "--no-keep-inputs",
        dest="keep_inputs",
        action="store_false",
        help="devices in this fleet must not send offloaded inputs for retraining",
    )
    add_json_flag(create)
    create.set_defaults(handler=_create)
    change = sub.add_parser(
        "set",
        parents=[common],
        help="change a fleet's settings",
        description="Change a fleet's settings. --no-keep-inputs stops the hub keeping the "
        "inputs this fleet's devices offload (it keeps the answers only), from a running "
        "hub's next write on; inputs already kept stay until evicted.",
    )
    change.add_argument("name", metavar="NAME")
    keep = change.add_mutually_exclusive_group(required=True)
    keep.add_argument(
        "--keep-inputs",
        dest="keep_inputs",
        action="store_true",
        default=None,
        help="keep offloaded inputs for retraining",
    )
    keep.add_argument(
        "--no-keep-inputs",
        dest="keep_inputs",
        action="store_false",
        help="keep no offloaded inputs, only the answers",
    )
    add_json_flag(change)
    change.set_defaults(handler=_set)
    listing = sub.add_parser("list", parents=[common], help="list fleets")
    add_json_flag(listing)
    listing.set_defaults(handler=_list)
    show_usage(fleet)


def _create(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        fleet = registry.create_fleet(args.name, keep_inputs=args.keep_inputs)
    if args.json:
        print_json(fleet.to_dict())
    else:
        print(f"created fleet {fleet.name}")
    return 0


def _set(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        fleet = registry.update_fleet(args.name, keep_inputs=args.keep_inputs)
    if args.json:
        print_json(fleet.to_dict())
    else:
        print(f"fleet {fleet.name}: keep inputs {'yes' if fleet.keep_inputs else 'no'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        fleets = registry.list_fleets()
    if args.json:
        print_json([f.to_dict() for f in fleets])
        return 0
    rows = [(f.name, f.devices, "yes" if f.keep_inputs else "no", f.created_at) for f in fleets]
    print_table(
        ("FLEET", "DEVICES", "KEEP INPUTS", "CREATED"),
        rows,
        empty="no fleets yet: cloud-hub fleet create NAME",
    )
    return 0
