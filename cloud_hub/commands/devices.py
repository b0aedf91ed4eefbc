"""``cloud-hub devices`` and ``cloud-hub device show|revoke``: the fleet's devices."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import (
    add_json_flag,
    note,
    open_registry,
    print_json,
    print_table,
    settings_from,
    show_usage,
    when,
)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    listing = commands.add_parser(
        "devices",
        parents=[common],
        help="list devices (filter by fleet, profile, status, model version)",
    )
    listing.add_argument("--fleet", help="only devices in this fleet")
    listing.add_argument("--profile", help="only devices with this device profile")
    listing.add_argument(
        "--status",
        help="only devices in this state: online, offline, unknown or revoked",
    )
    listing.add_argument("--model-version", help="only devices running this model version")
    add_json_flag(listing)
    listing.set_defaults(handler=_list)

    device = commands.add_parser("device", parents=[common], help="show or revoke one device")
    sub = device.add_subparsers(title="device commands", metavar="COMMAND")
    show = sub.add_parser("show", parents=[common], help="everything the hub knows of a device")
    show.add_argument("device_id", metavar="ID")
    add_json_flag(show)
    show.set_defaults(handler=_show)
    revoke = sub.add_parser(
        "revoke",
        parents=[common],
        help="cut a device off: its credentials stop working",
        description="Revoke a device and every credential it holds. It keeps its history "
        "and cannot be un-revoked; enroll it again to bring it back.",
    )
    revoke.add_argument("device_id", metavar="ID")
    add_json_flag(revoke)
    revoke.set_defaults(handler=_revoke)
    show_usage(device)


def _list(args: argparse.Namespace) -> int:
    revoked = True if args.status == "revoked" else None
    status = None if args.status == "revoked" else args.status
    with open_registry(args) as registry:
        devices = registry.list_devices(
            fleet=args.fleet,
            profile=args.profile,
            status=status,
            model_version=args.model_version,
            revoked=revoked,
        )
    if args.json:
        print_json([d.to_dict() for d in devices])
        return 0
    rows = [
        (
            d.id,
            d.fleet,
            d.hostname,
            d.profile,
            "revoked" if d.revoked else d.status,
            _model(d.model_name, d.model_version),
            d.last_seen_at,
            d.agent_version,
        )
        for d in devices
    ]
    print_table(
        ("ID", "FLEET", "HOSTNAME", "PROFILE", "STATUS", "MODEL", "LAST SEEN", "AGENT"),
        rows,
        empty="no devices match" if _filtered(args) else "no devices enrolled yet",
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        device = registry.device(args.device_id)
    if args.json:
        print_json(device.to_dict())
        return 0
    fields = [
        ("id", device.id),
        ("fleet", device.fleet),
        ("hostname", device.hostname),
        ("profile", device.profile or "-"),
        ("status", device.status),
        ("last seen", when(device.last_seen_at)),
        ("boot id", device.boot_id or "-"),
        ("model", _model(device.model_name, device.model_version)),
        ("agent version", device.agent_version or "-"),
        ("enrolled", when(device.created_at)),
        ("revoked", when(device.revoked_at)),
        ("public key", "yes" if device.public_key_pem else "no"),
        ("hardware", json.dumps(device.hardware, sort_keys=True) if device.hardware else "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {value}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from ..broker import revoke_on_broker

    with open_registry(args) as registry:
        device = registry.revoke_device(args.device_id)
        if args.json:
            print_json(device.to_dict())
        else:
            print(f"revoked device {device.id} ({device.hostname}) at {when(device.revoked_at)}")
        note(revoke_on_broker(registry.db, settings_from(args), device.id))
    return 0


def _model(name: str | None, version: str | None) -> str:
    if name is None and version is None:
        return "-"
    return f"{name or '?'}@{version or '?'}"


def _filtered(args: argparse.Namespace) -> bool:
    return any(getattr(args, key) for key in ("fleet", "profile", "status", "model_version"))
