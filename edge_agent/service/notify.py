"""systemd's notify protocol (``sd_notify``) without a library.

Under ``Type=notify`` systemd passes the address of a unix datagram socket in
``NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``). The service
sends newline-separated ``KEY=VALUE`` lines to it: ``READY=1`` when it serves,
``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds, ``STATUS=...`` for
``systemctl status``, and ``STOPPING=1`` when it shuts down. Outside systemd (no
``NOTIFY_SOCKET``) every call is a no-op, so the agent runs the same in a terminal.

The watchdog interval is half of ``WATCHDOG_USEC`` (what ``sd_watchdog_enabled`` advises),
and only when ``WATCHDOG_PID`` is unset or names this process.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

_LOG = logging.getLogger(__name__)
_MAX_STATUS = 1024  # systemd shows one line; keep datagrams small


class Notifier:
    """Sends notify messages to one socket; a Notifier without an address does nothing."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False when it could not be sent."""
        if self.address is None:
            return False
        lines = "".join(f"{key}={_one_line(value)}\n" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(lines.encode(), _sockaddr(self.address))
        except OSError as exc:
            if not self._warned:  # once: a dead socket must not flood the log
                _LOG.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``; None when off."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by a wrapper)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


def _sockaddr(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()  # Linux abstract namespace
    return address


def _one_line(value: str) -> str:
    text = " ".join(value.split("\n"))
    return text if len(text) <= _MAX_STATUS else text[: _MAX_STATUS - 3] + "..."
