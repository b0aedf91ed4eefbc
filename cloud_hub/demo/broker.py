"""Step 2's MQTT broker: one already on 127.0.0.1:1883 that lets anyone in, else our own.

The demo runs the broker unmanaged (anonymous, no password or ACL file: see
``cloud_hub/broker/README.md`` for the managed set-up). ``--broker`` picks:

- ``auto``: the broker on 127.0.0.1:1883 when it accepts an anonymous MQTT connection,
  else a private Mosquitto;
- ``private``: always a private Mosquitto, on a free loopback port, with a config written
  into the demo's folder (no other hub on the same broker can take our telemetry);
- ``HOST:PORT``: that broker, which must accept anonymous connections.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import DemoFailed, DemoSkipped
from .processes import Child, Children

LOCAL_BROKER = ("127.0.0.1", 1883)
START_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3  # a free port can be taken between our look and mosquitto's bind
_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")  # often not on PATH

# An MQTT 3.1.1 CONNECT with no credentials: fixed header (type 1, 12 bytes follow),
# protocol name "MQTT", level 4, flags "clean session", keep-alive 60 s, empty client id.
_CONNECT = bytes([0x10, 12, 0, 4, *b"MQTT", 4, 0x02, 0, 60, 0, 0])
_CONNACK_ACCEPTED = bytes([0x20, 2, 0, 0])
_DISCONNECT = bytes([0xE0, 0])


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    origin: str  # how the demo came by it, for the progress line

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def provide_broker(choice: str, folder: Path, children: Children) -> Broker:
    """The broker for ``--broker choice``; DemoSkipped when there is none to be had."""
    if choice == "private":
        return start_private(folder, children)
    if choice == "auto":
        host, port = LOCAL_BROKER
        if accepts_anonymous(host, port):
            return Broker(host, port, "already running here, anonymous")
        return start_private(folder, children)
    host, port = parse_address(choice)
    if not accepts_anonymous(host, port):
        raise DemoFailed(
            f"--broker {choice}: no MQTT broker there accepts anonymous connections "
            "(use --broker auto or --broker private)"
        )
    return Broker(host, port, "given with --broker")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair; DemoFailed naming the text when it is not one."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DemoFailed(f"--broker {text!r}: expected auto, private or HOST:PORT")
    return host.strip("[]"), int(port)


def accepts_anonymous(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an MQTT CONNECT without credentials gets CONNACK "accepted"."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_CONNECT)
            answer = _read(sock, len(_CONNACK_ACCEPTED))
            if answer == _CONNACK_ACCEPTED:
                sock.sendall(_DISCONNECT)
                return True
            return False
    except OSError:
        return False


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in _FALLBACK_PATHS if shutil.which(path)), None)


def start_private(folder: Path, children: Children) -> Broker:
    """Mosquitto on a free loopback port, anonymous, with its config in ``folder``."""
    binary = find_mosquitto()
    if binary is None:
        raise DemoSkipped(
            "step 2 needs an MQTT broker: nothing accepts anonymous connections on "
            f"{LOCAL_BROKER[0]}:{LOCAL_BROKER[1]} and mosquitto is not on PATH "
            "(install mosquitto, e.g. apt install mosquitto, or pass --broker HOST:PORT)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mosquitto.conf"
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        config.write_text(mosquitto_config(port))
        child = children.start("mosquitto", [binary, "-c", str(config)])
        if _accepting_soon(child, port):
            return Broker("127.0.0.1", port, f"a private mosquitto, config {config}")
        if child.alive():
            break  # running but not answering: trying another port will not help
        children.started.remove(child)  # it exited, most likely because the port was taken
    raise child.failure(f"mosquitto did not start on 127.0.0.1:{port}")


def _accepting_soon(child: Child, port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while child.alive() and time.monotonic() < deadline:
        if accepts_anonymous("127.0.0.1", port):
            return True
        time.sleep(0.1)
    return False


def mosquitto_config(port: int) -> str:
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        # run as ourselves: started as root, mosquitto would otherwise switch users
        f"user {getpass.getuser()}\n"
        "persistence false\n"
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
