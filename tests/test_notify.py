"""sd_notify over a real unix datagram socket: paths, abstract names, the watchdog interval."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.service.notify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def _fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


def test_messages_arrive_as_key_value_lines(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready("serving digits")
        assert _fields(sock) == {
            "READY": "1",
            "STATUS": "serving digits",
            "MAINPID": str(os.getpid()),
        }
        assert notifier.watchdog()
        assert _fields(sock) == {"WATCHDOG": "1"}
        assert notifier.status("line one\nline two")
        assert _fields(sock) == {"STATUS": "line one line two"}
        assert notifier.stopping("bye")
        assert _fields(sock) == {"STOPPING": "1", "STATUS": "bye"}


def test_abstract_socket_names_start_with_at() -> None:
    name = f"edgeloop-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(10)
    try:
        with Notifier(f"@{name}") as notifier:
            assert notifier.watchdog()
        assert _fields(sock) == {"WATCHDOG": "1"}
    finally:
        sock.close()


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    with Notifier(str(tmp_path / "gone.sock")) as notifier:
        assert not notifier.watchdog()
        assert not notifier.watchdog()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),  # someone else's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env) == expected
