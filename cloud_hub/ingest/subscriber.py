"""The MQTT side of ingest: a paho-mqtt 2 client (MQTT 5) on shared subscriptions.

It subscribes (QoS 1) to ``$share/<group>/<prefix>/+/+/telemetry``, ``.../events`` and
``.../status``, so the hub processes of one group split the messages between them. Its
session outlives it (clean start off, a session expiry): while it is away the broker
keeps its subscriptions and queues its share of the messages. It subscribes only when
the broker has no session for it: Mosquitto 2.0 sends every retained status to each
shared subscriber as it subscribes, which is how a new hub learns who is online, but not
something to repeat on every reconnect.

**Nothing is acknowledged on arrival** (``manual_ack``): each message goes into a bounded
queue with the connection it came on, and :meth:`Subscriber.ack` sends its PUBACK only
once the writer has committed it. A crash therefore means redelivery, never loss. An ack
for a message of an earlier connection is not sent (its packet id may name another
message now); the broker redelivers it and the database drops the duplicate.

Backpressure: the CONNECT's Receive Maximum asks the broker for at most ``queue_max``
unacknowledged messages, and when the queue is full anyway (Mosquitto 2.0 does not
always hold to Receive Maximum) paho's thread waits in ``on_message``: it stops reading
the socket, TCP pushes back and the broker queues. Nothing is dropped.

It logs in as the hub (:func:`cloud_hub.broker.hub_mqtt_login`: the configured user, or
the generated hub password when the hub manages the broker's files). paho owns its network
thread (``loop_start``) and reconnects by itself; this class starts and stops it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..broker.hub_login import hub_mqtt_login
from ..settings import HubSettings
from .options import IngestOptions

log = logging.getLogger(__name__)

KINDS = ("telemetry", "events", "status")
_PUT_POLL_S = 0.2
_RECONNECT_MIN_S, _RECONNECT_MAX_S = 1, 30


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as it came off the wire, with what acknowledging it takes."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int  # which connection it arrived on; acks go only to that one


def subscriptions(group: str, prefix: str) -> list[str]:
    """The shared-subscription filters of one ingest group."""
    return [f"$share/{group}/{prefix}/+/+/{kind}" for kind in KINDS]


class Subscriber:
    """The paho client; see the module docstring. Thread-safe where it says so."""

    def __init__(
        self,
        settings: HubSettings,
        options: IngestOptions,
        deliveries: queue.Queue[Delivery],
    ) -> None:
        self.settings = settings
        self.options = options
        self.topics = subscriptions(options.group, settings.mqtt_topic_prefix)
        self._deliveries = deliveries
        self._lock = threading.Lock()  # connection number vs. acks
        self._connection = 0
        self._connected = False
        self._paused = threading.Event()
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self._received = 0
        self._last_received = time.monotonic()
        self._last_problem: str | None = None
        self._client = self._new_client()

    # -- lifecycle (the owner's thread) ------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.options.session_expiry_s
        properties.ReceiveMaximum = self.options.receive_maximum
        self._client.connect_async(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            keepalive=self.options.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def unsubscribe(self, timeout: float) -> bool:
        """Leave the group: the broker stops routing new messages here (what is already
        queued for this session still comes). Whether the broker confirmed in time."""
        self._unsubscribed.clear()
        self._client.unsubscribe(self.topics)
        return self._unsubscribed.wait(timeout)

    def pause(self) -> None:
        """Stop queueing: what arrives from now on stays unacknowledged (redelivered later)."""
        self._paused.set()

    def close(self, *, end_session: bool = False) -> None:
        """Disconnect and stop paho's thread. ``end_session``: ask the broker to drop the
        session (and whatever it still queues for it) instead of keeping it."""
        self._paused.set()
        properties = None
        if end_session:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
        self._client.disconnect(properties=properties)
        self._client.loop_stop()

    # -- what the writer and the owner use (any thread) --------------------------------------

    def ack(self, deliveries: Sequence[Delivery]) -> int:
        """PUBACK each delivery that came on the current connection; how many were sent."""
        sent = 0
        with self._lock:
            for delivery in deliveries:
                if delivery.qos == 0 or delivery.connection != self._connection:
                    continue
                if self._client.ack(delivery.mid, delivery.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    sent += 1
        return sent

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    @property
    def received(self) -> int:
        return self._received

    def idle_for(self) -> float:
        """Seconds since the last message was queued."""
        return time.monotonic() - self._last_received

    # -- paho callbacks (paho's thread) ------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.options.resolved_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.reconnect_delay_set(_RECONNECT_MIN_S, _RECONNECT_MAX_S)
        # With a hub-managed broker the hub user (and its generated password) logs in.
        login = hub_mqtt_login(self.settings)
        if login is not None:
            client.username_pw_set(login.username, login.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._problem(f"broker {self._where()} refused the connection: {reason}")
            return
        with self._lock:
            self._connection += 1
            self._connected = True
        self._last_problem = None
        log.info(
            "ingest: connected to %s as %s (%s session)",
            self._where(),
            self.options.resolved_client_id,
            "resumed" if flags.session_present else "new",
        )
        if flags.session_present:
            self._subscribed.set()  # the broker kept the subscriptions with the session
        else:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._connection += 1  # acks for what came on the old connection are void
            was_connected, self._connected = self._connected, False
        self._subscribed.clear()
        if was_connected and not self._paused.is_set():
            self._problem(f"disconnected from {self._where()}: {reason}")

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [
            f"{topic} ({reason})"
            for topic, reason in zip(self.topics, reasons, strict=False)
            if reason.is_failure
        ]
        if refused:
            self._problem(f"broker {self._where()} refused subscription(s): {', '.join(refused)}")
            return
        self._subscribed.set()

    def _on_unsubscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._unsubscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # the broker should refuse such topics; the writer will
            topic = "<topic that is not UTF-8>"
        delivery = Delivery(topic, bytes(msg.payload), msg.mid, msg.qos, self._connection)
        while not self._paused.is_set():
            try:
                self._deliveries.put(delivery, timeout=_PUT_POLL_S)
            except queue.Full:
                continue  # backpressure: paho stops reading until the writer catches up
            self._received += 1
            self._last_received = time.monotonic()
            return

    def _problem(self, text: str) -> None:
        """Log a connection problem once, not on every retry."""
        if text != self._last_problem:
            log.warning("ingest: %s", text)
        self._last_problem = text

    def _where(self) -> str:
        return f"{self.settings.mqtt_host}:{self.settings.mqtt_port}"
