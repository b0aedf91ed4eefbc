"""Telling devices to check in now: ``{"command": "check-in"}`` on their MQTT ``cmd`` topic.

Only a nudge: devices check in on their own interval anyway, so a command that is lost
(broker down, device offline) delays an update and nothing else. The controller marks
what it still has to send in the database and clears a mark only once paho has queued
the message on a connected client.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from ..broker import hub_mqtt_login
from ..settings import HubSettings

COMMAND = json.dumps({"command": "check-in"}).encode("utf-8")
_RECONNECT_MIN_S = 1
_RECONNECT_MAX_S = 30


class CheckInNotifier(Protocol):
    """Where the controller sends "check in now"; a seam tests may fill with their own."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def send(self, fleet: str, device_id: str) -> bool:
        """Queue the command for one device; False when it cannot be sent now."""
        ...


def command_topic(prefix: str, fleet: str, device_id: str) -> str:
    return f"{prefix}/{fleet}/{device_id}/cmd"


class MqttCheckInNotifier:
    """A paho-mqtt 2 client (MQTT 5) logged in as the hub; reconnects on its own."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgeloop-hub-rollouts-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        self._client.reconnect_delay_set(_RECONNECT_MIN_S, _RECONNECT_MAX_S)
        login = hub_mqtt_login(settings)
        if login is not None:
            self._client.username_pw_set(login.username, login.password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        self._client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def send(self, fleet: str, device_id: str) -> bool:
        if not self._connected.is_set():
            return False
        topic = command_topic(self.settings.mqtt_topic_prefix, fleet, device_id)
        info = self._client.publish(topic, COMMAND, qos=1)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        if reason.is_failure:
            logging.getLogger(__name__).warning("broker refused the rollout notifier: %s", reason)
            return
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        self._connected.clear()
