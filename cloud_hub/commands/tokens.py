"""``cloud-hub enroll-token`` and ``cloud-hub operator-token``: make, list, revoke tokens.

A new token is printed once, alone on stdout (``TOKEN=$(cloud-hub enroll-token create
...)``); what it allows goes to stderr. The hub keeps only its hash.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from ..durations import format_duration, parse_duration
from ..errors import InvalidRequest
from ._common import (
    add_json_flag,
    note,
    open_registry,
    print_json,
    print_table,
    show_usage,
    when,
)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    _add_enroll_token(commands, common)
    _add_operator_token(commands, common)


# -- enrollment tokens ---------------------------------------------------------------------


def _add_enroll_token(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "enroll-token", parents=[common], help="make, list and revoke enrollment tokens"
    )
    sub = group.add_subparsers(title="enroll-token commands", metavar="COMMAND")
    create = sub.add_parser(
        "create",
        parents=[common],
        help="make a token that enrolls devices in a fleet",
        description="Make an enrollment token for a fleet and print it once. A device "
        "trades it for its own identity and credential with 'edge-agent enroll --hub "
        "HOST:PORT --token TOKEN'. The token stops working when it expires, when it has "
        "been used --uses times, or when it is revoked.",
    )
    create.add_argument("--fleet", required=True, help="the fleet devices join")
    create.add_argument("--ttl", default="1h", help="valid for how long: 30m, 1h, 7d (default 1h)")
    create.add_argument(
        "--uses", default=1, type=int, help="how many devices may enroll with it (default 1)"
    )
    add_json_flag(create)
    create.set_defaults(handler=_create_enroll)
    listing = sub.add_parser("list", parents=[common], help="list enrollment tokens")
    listing.add_argument("--fleet", help="only this fleet's tokens")
    add_json_flag(listing)
    listing.set_defaults(handler=_list_enroll)
    revoke = sub.add_parser("revoke", parents=[common], help="revoke an enrollment token")
    revoke.add_argument("token_id", metavar="ID", help="the token's id (or the whole token)")
    revoke.set_defaults(handler=_revoke_enroll)
    show_usage(group)


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidRequest(f"--ttl {exc}") from None


def _create_enroll(args: argparse.Namespace) -> int:
    ttl = _duration(args.ttl)
    with open_registry(args) as registry:
        issued = registry.create_enrollment_token(args.fleet, ttl=ttl, uses=args.uses)
    info = issued.info
    if args.json:
        print_json({"token": issued.token, **info.to_dict()})
        return 0
    print(issued.token)
    note(
        f"enrollment token {info.id} for fleet {info.fleet}: {info.uses_allowed} use(s), "
        f"expires {when(info.expires_at)} (in {format_duration(ttl)}). It is shown "
        "only now; the hub keeps its hash."
    )
    return 0


def _list_enroll(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        tokens = registry.list_enrollment_tokens(fleet=args.fleet)
        now = registry.now()
    if args.json:
        print_json([{**t.to_dict(), "state": t.state(now)} for t in tokens])
        return 0
    rows = [
        (
            t.id,
            t.fleet,
            t.state(now),
            f"{t.uses_count}/{t.uses_allowed}",
            t.expires_at,
            t.created_at,
        )
        for t in tokens
    ]
    print_table(
        ("ID", "FLEET", "STATE", "USES", "EXPIRES", "CREATED"),
        rows,
        empty="no enrollment tokens: cloud-hub enroll-token create --fleet NAME",
    )
    return 0


def _revoke_enroll(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        token = registry.revoke_enrollment_token(args.token_id)
    print(f"revoked enrollment token {token.id} (fleet {token.fleet}) at {when(token.revoked_at)}")
    return 0


# -- operator tokens -----------------------------------------------------------------------


def _add_operator_token(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "operator-token", parents=[common], help="make, list and revoke REST API tokens"
    )
    sub = group.add_subparsers(title="operator-token commands", metavar="COMMAND")
    create = sub.add_parser(
        "create",
        parents=[common],
        help="make a bearer token for the REST API",
        description="Make an operator token and print it once. Send it to the REST API "
        "as 'Authorization: Bearer TOKEN'.",
    )
    create.add_argument("name", metavar="NAME", help="who or what uses it, e.g. ci or alice")
    add_json_flag(create)
    create.set_defaults(handler=_create_operator)
    listing = sub.add_parser("list", parents=[common], help="list operator tokens")
    add_json_flag(listing)
    listing.set_defaults(handler=_list_operator)
    revoke = sub.add_parser("revoke", parents=[common], help="revoke an operator token")
    revoke.add_argument("token_id", metavar="ID", help="the token's id (or the whole token)")
    revoke.set_defaults(handler=_revoke_operator)
    show_usage(group)


def _create_operator(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        issued = registry.create_operator_token(args.name)
    if args.json:
        print_json({"token": issued.token, **issued.info.to_dict()})
        return 0
    print(issued.token)
    note(
        f"operator token {issued.info.id} ({issued.info.name}). It is shown only now; "
        "the hub keeps its hash."
    )
    return 0


def _list_operator(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        tokens = registry.list_operator_tokens()
    if args.json:
        print_json([t.to_dict() for t in tokens])
        return 0
    rows = [
        (t.id, t.name, "revoked" if t.revoked_at else "active", t.created_at, t.revoked_at)
        for t in tokens
    ]
    print_table(
        ("ID", "NAME", "STATE", "CREATED", "REVOKED"),
        rows,
        empty="no operator tokens: cloud-hub operator-token create NAME",
    )
    return 0


def _revoke_operator(args: argparse.Namespace) -> int:
    with open_registry(args) as registry:
        token = registry.revoke_operator_token(args.token_id)
    print(f"revoked operator token {token.id} ({token.name}) at {when(token.revoked_at)}")
    return 0
