"""What the broker allows, as the text of Mosquitto's ``password_file`` and ``acl_file``.

Pure functions of the hub user and the devices that may connect. Each device may only
publish as itself and read its own commands::

    user <device>
    topic write <prefix>/<fleet>/<device>/telemetry
    topic write <prefix>/<fleet>/<device>/events
    topic write <prefix>/<fleet>/<device>/status
    topic read <prefix>/<fleet>/<device>/cmd

and the hub user reads everything under the prefix and writes every device's ``cmd``.
A device that is not in the password file cannot connect at all; Mosquitto (2.0) also
drops a connected client whose user disappeared from the file when it reloads.

Mosquitto's ``acl_file`` grants every SUBSCRIBE and filters messages on delivery: a device
subscribing to another device's ``cmd`` gets a SUBACK but never a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import HubConfigError, InvalidRequest

DEVICE_WRITES = ("telemetry", "events", "status")
DEVICE_READS = ("cmd",)
HEADER = "# Written by the edgeloop hub (cloud_hub.broker) from its database; edits are lost.\n"

# Names that go into topics and into these files: no wildcards, separators or spaces.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


@dataclass(frozen=True)
class BrokerDevice:
    """A device allowed on the broker: its user name is its id."""

    device_id: str
    fleet: str
    password_hash: str  # "$7$..." (see passwords.py)


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise HubConfigError(
            f"mqtt_topic_prefix {prefix!r}: expected topic levels of letters, digits, '.', "
            "'_' or '-' separated by '/', without wildcards or a trailing '/'"
        )
    return prefix


def check_user(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"{what} {name!r} cannot be a broker user: expected 1-128 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit"
        )
    return name


def device_topics(prefix: str, fleet: str, device_id: str) -> tuple[list[str], list[str]]:
    """(topics the device may write, topics it may read)."""
    base = f"{prefix}/{fleet}/{device_id}"
    return [f"{base}/{kind}" for kind in DEVICE_WRITES], [f"{base}/{kind}" for kind in DEVICE_READS]


def render_password_file(users: Mapping[str, str]) -> str:
    """``user:hash`` lines, sorted by user, for ``users`` (name -> ``$7$`` hash)."""
    lines = []
    for user in sorted(users):
        check_user(user, "user")
        encoded = users[user]
        if not encoded.startswith("$7$") or any(c in encoded for c in ":\n\r "):
            raise InvalidRequest(f"the password hash for {user!r} is not a '$7$' hash")
        lines.append(f"{user}:{encoded}\n")
    return "".join(lines)


def parse_password_file(text: str) -> dict[str, str]:
    """``{user: hash}`` from a password file's text; other lines are skipped."""
    users: dict[str, str] = {}
    for line in text.splitlines():
        user, sep, encoded = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            users[user] = encoded
    return users


def render_acl(prefix: str, hub_user: str, devices: Iterable[BrokerDevice]) -> str:
    """The ACL file: the hub user's block, then one block per device, sorted by id."""
    check_prefix(prefix)
    blocks = [
        _block(hub_user, writes=[f"{prefix}/+/+/cmd"], reads=[f"{prefix}/#"]),
    ]
    for device in sorted(devices, key=lambda d: d.device_id):
        check_user(device.device_id, "device id")
        check_user(device.fleet, "fleet")
        writes, reads = device_topics(prefix, device.fleet, device.device_id)
        blocks.append(_block(device.device_id, writes=writes, reads=reads))
    return HEADER + "\n" + "\n".join(blocks)


def _block(user: str, *, writes: Iterable[str], reads: Iterable[str]) -> str:
    check_user(user, "user")
    lines = [f"user {user}"]
    lines += [f"topic write {topic}" for topic in writes]
    lines += [f"topic read {topic}" for topic in reads]
    return "\n".join(lines) + "\n"
