"""The MQTT link: one thread that owns the paho client and forwards the spool through it.

:class:`MqttLink` connects with a fresh paho-mqtt 2 client (MQTT 5) per connection, so
no paho state outlives one; publishes what the :class:`~edge_agent.telemetry.forward.
Forwarder` offers; deletes what the broker acknowledged; and reconnects with back-off,
jitter and a cap when the connection drops or is refused.

It drives paho through its external-loop API (``loop_read``, ``loop_write``,
``loop_misc``, ``want_write``) around its own ``select``, which also watches a wake-up
socket: a message put in the spool is published at once (:meth:`MqttLink.wake`), and an
idle link wakes once a second for keep-alive, not many times a second to poll.

Status (retained, QoS 1, not spooled: only the latest state matters): ``"online"`` after
each CONNACK, ``"offline"`` as the last will and on a clean stop. The will's payload is
fixed at CONNECT; it takes a new ``seq`` only once a connection could have used the old
one, so refused attempts leave no gaps in the sequence.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .forward import Forwarder
from .schema import encode
from .settings import ForwardPolicy, MqttSettings, reconnect_delay
from .spool import Spool

__all__ = ["MqttLink"]

log = logging.getLogger(__name__)
_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_MISC_S = 1.0  # paho wants loop_misc (keep-alive) at least once a second

#: ``status(state, reason, seq)``: an encoded status message; a new seq when None.
StatusFactory = Callable[[str, str, "int | None"], bytes]
#: ``note(problem, log level)``: remember (and log) the latest problem; None clears it.
Note = Callable[["str | None", int], None]


class _Session:
    """What one connection knows; paho's callbacks receive it as ``userdata``."""

    def __init__(self) -> None:
        self.forwarder: Forwarder | None = None
        self.refused: str | None = None
        self.status_mid: int | None = None
        self.status_acked = False


class MqttLink:
    """The network thread of a :class:`~edge_agent.telemetry.publisher.TelemetryPublisher`."""

    def __init__(
        self,
        settings: MqttSettings,
        policy: ForwardPolicy,
        spool: Spool,
        *,
        client_id: str,
        status_topic: str,
        cmd_topic: str,
        status: StatusFactory,
        new_seq: Callable[[], int],
        tls: ssl.SSLContext | None,
        note: Note,
        on_command: Callable[[bytes], None] | None = None,
    ) -> None:
        self.settings = settings
        self._policy = policy
        self._spool = spool
        self._client_id = client_id
        self._status_topic = status_topic
        self._cmd_topic = cmd_topic
        self._status = status
        self._new_seq = new_seq
        self._tls = tls
        self._note = note
        self._on_command = on_command
        self._will_seq = 0
        self._will_armed = True  # a new will seq is due
        self._stopping = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._session: _Session | None = None
        self.connected = False
        self.counts = {"connects": 0, "published": 0, "historical": 0, "acked": 0, "rejected": 0}

    # -- the owner's side ----------------------------------------------------------------

    def start(self) -> threading.Thread:
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="telemetry-mqtt", daemon=True)
        self._thread.start()
        return self._thread

    def wake(self) -> None:
        """Something was put in the spool: publish it now rather than at the next wake-up."""
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                self._wake_w.send(b"\0")

    def stop(self, deadline: float) -> None:
        """Send live messages and go "offline" by ``deadline`` (monotonic), then end."""
        self._deadline = deadline
        self._stopping.set()
        self.wake()
        if self._thread is None:
            return
        self._thread.join(max(deadline - time.monotonic(), 0.0) + 2.0)
        if self._thread.is_alive():
            log.warning("telemetry: the MQTT thread did not stop in time")
            return
        for end in (self._wake_r, self._wake_w):
            if end is not None:
                end.close()

    def inflight(self) -> tuple[int, bool]:
        """(messages awaiting PUBACK, whether backlog may be left) on this connection."""
        session = self._session
        forwarder = session.forwarder if session else None
        return (forwarder.inflight, forwarder.backlog_left) if forwarder else (0, False)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                was_connected = self._connect_once()
            except Exception as exc:  # a bug here must not end store-and-forward for good
                self._note(f"MQTT session failed: {exc!r}", logging.ERROR)
                was_connected = False
            self.connected = False
            if self._stopping.is_set():
                break
            attempt = 0 if was_connected else attempt + 1
            self._stopping.wait(reconnect_delay(attempt, self._policy, random.random()))

    def _connect_once(self) -> bool:
        """One connection from CONNECT to its end; whether the broker accepted it."""
        session = _Session()
        client = self._new_client(session)
        s = self.settings
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive, clean_start=True)
        except (OSError, ValueError) as exc:
            self._note(f"cannot connect to {s.host}:{s.port}: {exc}", logging.WARNING)
            _close(client)
            return False
        self._session = session
        try:
            self._serve(client, session)
        finally:
            self._session = None
            _close(client)
        return session.forwarder is not None

    def _serve(self, client: mqtt.Client, session: _Session) -> None:
        connack_by = time.monotonic() + self._policy.connect_timeout_s
        while session.refused is None:
            forwarder = session.forwarder
            if forwarder is None:
                if self._stopping.is_set():
                    return
                if time.monotonic() > connack_by:
                    self._note(f"no CONNACK from {self.settings.host} in time", logging.WARNING)
                    return
            elif self._stopping.is_set():
                self._finish(client, session, forwarder)
                return
            else:
                self._pump(client, forwarder)
            if not self._service(client, self._wait_s(forwarder)):
                return

    def _wait_s(self, forwarder: Forwarder | None) -> float:
        if forwarder is not None and forwarder.backlog_left:
            return min(_MISC_S, 1.0 / self._policy.backlog_rate)  # the next backlog token
        return _MISC_S

    def _service(self, client: mqtt.Client, timeout: float) -> bool:
        """Wait up to ``timeout`` for the socket or a wake-up, then let paho read, write and
        keep alive; False once the connection is gone."""
        sock = client.socket()
        if sock is None or self._wake_r is None:
            return False
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        writing = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select(
                [sock, self._wake_r], writing, [], 0.0 if pending else timeout
            )
        except (OSError, ValueError, TypeError):
            return False
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        if (pending or sock in readable) and client.loop_read() != _OK:
            return False
        if writable and client.socket() is not None and client.loop_write() != _OK:
            return False
        return client.loop_misc() == _OK

    def _pump(self, client: mqtt.Client, forwarder: Forwarder, backlog: bool = True) -> None:
        forwarder.flush_acks()
        for outgoing in forwarder.next_batch(backlog):
            message = outgoing.message
            payload = _as_historical(message.payload) if outgoing.historical else message.payload
            info = client.publish(message.topic, payload, qos=message.qos, retain=message.retain)
            if info.rc != _OK:
                return  # the link is gone; the rest waits for the next connection
            forwarder.sent(info.mid, outgoing)
            self.counts["published"] += 1
            self.counts["historical"] += int(outgoing.historical)

    def _finish(self, client: mqtt.Client, session: _Session, forwarder: Forwarder) -> None:
        """Send live messages, then the retained "offline", then DISCONNECT (by the deadline)."""

        def wait(done: Callable[[], bool]) -> bool:
            while not done():
                left = self._deadline - time.monotonic()
                if left <= 0 or not self._service(client, min(left, _MISC_S)):
                    return False
                self._pump(client, forwarder, backlog=False)
            return True

        self._pump(client, forwarder, backlog=False)
        if not wait(lambda: not forwarder.live_pending()):
            return
        offline = self._status("offline", "stopped", self._will_seq)
        session.status_acked = False
        session.status_mid = client.publish(self._status_topic, offline, qos=1, retain=True).mid
        if not wait(lambda: session.status_acked):
            return
        forwarder.flush_acks()
        client.disconnect()
        while client.socket() is not None and self._service(client, 0.1):
            pass

    def _new_client(self, session: _Session) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5,
            userdata=session,
        )
        client.connect_timeout = self._policy.connect_timeout_s
        client.max_inflight_messages_set(
            self._policy.max_inflight + self._policy.backlog_inflight + 1
        )
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self.settings.password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self._will_armed:
            self._will_seq = self._new_seq()
            self._will_armed = False
        will = self._status("offline", "connection lost", self._will_seq)
        client.will_set(self._status_topic, will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # -- paho callbacks (on this thread) -------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        session: _Session,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        where = f"{self.settings.host}:{self.settings.port}"
        if reason.is_failure:
            session.refused = str(reason)
            self._note(f"broker {where} refused: {reason}", logging.WARNING)
            return
        self._will_armed = True  # the broker may now publish this will
        session.forwarder = Forwarder(self._spool, self._policy, time.monotonic)
        self.connected = True
        self.counts["connects"] += 1
        self._note(None, logging.INFO)
        log.info("telemetry: connected to %s, %d messages to replay", where, self._spool.count)
        online = self._status("online", "connected", None)
        session.status_mid = client.publish(self._status_topic, online, qos=1, retain=True).mid
        if self._on_command is not None:
            client.subscribe(self._cmd_topic, qos=1)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        session: _Session,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False
        if session.refused is None and not self._stopping.is_set():
            where = f"{self.settings.host}:{self.settings.port}"
            self._note(f"disconnected from {where}: {reason}", logging.WARNING)

    def _on_publish(
        self,
        client: mqtt.Client,
        session: _Session,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        if mid == session.status_mid:
            session.status_acked = True
            return
        if session.forwarder is None or not session.forwarder.acked(mid, not reason.is_failure):
            return
        if reason.is_failure:
            self.counts["rejected"] += 1
            self._note(f"broker refused a message (mid {mid}): {reason}", logging.WARNING)
        else:
            self.counts["acked"] += 1

    def _on_message(self, client: mqtt.Client, session: _Session, msg: mqtt.MQTTMessage) -> None:
        if self._on_command is None or msg.topic != self._cmd_topic:
            return
        try:
            self._on_command(bytes(msg.payload))
        except Exception as exc:  # a bad handler must not take the link down
            self._note(f"command handler failed: {exc!r}", logging.ERROR)


def _as_historical(payload: bytes) -> bytes:
    """The same message flagged ``"historical": true`` (it is replayed after an outage)."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return payload
    if not isinstance(message, dict):
        return payload
    message["historical"] = True
    return encode(message)


def _close(client: mqtt.Client) -> None:
    """Close the client's socket if paho left it open (a timed-out or refused connect)."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
