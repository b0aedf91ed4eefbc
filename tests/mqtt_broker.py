"""A private Mosquitto for tests, and a subscriber that collects what it receives.

::

    from mqtt_broker import MosquittoBroker, Collector

    with MosquittoBroker(tmp_path) as broker:            # anonymous, on a free port
        with Collector(broker.port, "edgeloop/v1/#") as hub:
            ...
            hub.wait_for(lambda ms: len(ms) >= 3)
        broker.restart()                                  # same port, same config

Auth and ACL: ``MosquittoBroker(tmp_path, password_file=write_password_file(...),
acl_file=...)``. TLS: ``MosquittoBroker(tmp_path, tls=make_tls_files(tmp_path))`` serves
TLS on ``broker.port`` (add ``extra_config=["require_certificate true"]`` to demand
client certificates). ``extra_config`` lines are appended (a plugin, say; pass
``allow_anonymous=False`` with an auth plugin). ``persistence=True`` keeps sessions and
retained messages across ``restart()`` (a Collector with ``session=True`` then misses
nothing while it is down).
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
START_TIMEOUT_S = 30.0

__all__ = [
    "Collector",
    "MosquittoBroker",
    "TlsFiles",
    "free_port",
    "make_tls_files",
    "release",
    "wait_until",
    "write_password_file",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def release(client: mqtt.Client) -> None:
    """Drop a stopped paho client's callbacks, which point back at their owner.

    That reference cycle would leave the client to the garbage collector, which may
    finalise its internal socket pair before the client can close it: a ResourceWarning.
    """
    client.on_connect = client.on_disconnect = None
    client.on_publish = client.on_subscribe = client.on_message = None


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` until it is truthy; AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(0.02)


@dataclass(frozen=True)
class TlsFiles:
    """A CA, the broker's certificate and key, and a client certificate and key it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path


def make_tls_files(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A throwaway CA, a server certificate for ``host`` (and localhost) and a client
    certificate (CN ``client``), via the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, ext = directory / "ca.key", directory / "ca.crt", directory / "san.ext"
    ext.write_text(f"subjectAltName=IP:{host},DNS:localhost\n")
    _openssl("req", "-x509", *_NEW_KEY, "-subj", "/CN=test-ca", "-keyout", ca_key, "-out", ca)
    server = _signed(directory / "server", host, ca, ca_key, ext)
    client = _signed(directory / "client", "client", ca, ca_key, None)
    return TlsFiles(ca, *server, *client)


_NEW_KEY = ("-newkey", "rsa:2048", "-nodes", "-days", "2")


def _signed(stem: Path, name: str, ca: Path, ca_key: Path, ext: Path | None) -> tuple[Path, Path]:
    key, csr, cert = stem.with_suffix(".key"), stem.with_suffix(".csr"), stem.with_suffix(".crt")
    _openssl("req", *_NEW_KEY, "-subj", f"/CN={name}", "-keyout", key, "-out", csr)
    extensions = ("-extfile", ext) if ext else ()
    sign = ("-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", *extensions)
    _openssl("x509", "-req", "-in", csr, *sign, "-out", cert)
    return cert, key


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file for ``users`` (name -> password), via mosquitto_passwd."""
    for n, (user, password) in enumerate(users.items()):
        create = ["-c"] if n == 0 else []
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", *create, str(path), user, password],
            check=True,
            capture_output=True,
            timeout=60,
        )
    path.chmod(0o600)
    return path


class MosquittoBroker:
    """A mosquitto process on 127.0.0.1 with a config written into ``workdir``.

    ``start()`` returns once the port accepts connections; ``stop()`` ends it (SIGTERM,
    then SIGKILL); ``kill()`` ends it with SIGKILL; ``restart()`` starts it again on the
    same port. Usable as a context manager, which stops it on exit.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        tls: TlsFiles | None = None,
        persistence: bool = False,
        allow_anonymous: bool | None = None,
        extra_config: Iterable[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.persistence = persistence
        self.allow_anonymous = password_file is None if allow_anonymous is None else allow_anonymous
        self.extra_config = tuple(extra_config)
        self.config_file = self.workdir / f"mosquitto-{self.port}.conf"
        self.log_file = self.workdir / f"mosquitto-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"persistence {'true' if self.persistence else 'false'}",
            "max_queued_messages 0",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}/")
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        if self.tls:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
            ]
        return "\n".join([*lines, *self.extra_config]) + "\n"

    def start(self) -> MosquittoBroker:
        if self.running:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")
        self.config_file.write_text(self.config())
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepts():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)

    def kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=15)

    def restart(self) -> MosquittoBroker:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False


class Collector:
    """An MQTT 5 subscriber (paho, its own loop thread) that keeps what it receives.

    ``messages`` holds ``(topic, payload dict or None, retained)`` in arrival order.
    With ``session=True`` it keeps a broker session (clean start off, an hour's expiry),
    so messages published while it is disconnected are queued for it.
    """

    def __init__(
        self,
        port: int,
        topics: str | Iterable[str] = "edgeloop/v1/#",
        *,
        host: str = "127.0.0.1",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        session: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.messages: list[tuple[str, dict[str, Any] | None, bool]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._session = session
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{os.getpid()}-{id(self)}",
            protocol=mqtt.MQTTv5,
        )
        self.client.reconnect_delay_set(1, 2)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(
                ca_certs=str(ca_file),
                certfile=str(cert_file) if cert_file else None,
                keyfile=str(key_file) if key_file else None,
            )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> Collector:
        properties = Properties(PacketTypes.CONNECT)
        if self._session:
            properties.SessionExpiryInterval = 3600
        self.client.connect(
            self.host, self.port, clean_start=not self._session, properties=properties
        )
        self.client.loop_start()
        wait_until(self.subscribed.is_set, what=f"a SUBACK from port {self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        release(self.client)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[tuple[str, dict[str, Any] | None, bool]]:
        with self._lock:
            return list(self.messages)

    def payloads(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Decoded payloads (of envelope ``kind`` when given), in arrival order."""
        return [
            p
            for _, p, _ in self.snapshot()
            if p is not None and (kind is None or p["kind"] == kind)
        ]

    def wait_for(
        self,
        predicate: Callable[[list[dict[str, Any]]], object],
        timeout: float = 60.0,
        what: str = "",
    ) -> list[dict[str, Any]]:
        """Poll until ``predicate(payloads)`` holds; the payloads then."""
        wait_until(lambda: predicate(self.payloads()), timeout, what or "messages")
        return self.payloads()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = None
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
