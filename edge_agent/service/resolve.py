"""What the config leaves open, filled in: pure functions of config, identity and profile.

The config may leave out the device id, the fleet, the broker and its credentials, the
model's name and version and the telemetry interval. Each is taken from the enrolled
identity, the model card or the device profile, in that order, and failing those from a
fixed default. Reading the files happens in the daemon; the decisions happen here, so a
table of cases can pin them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import AgentConfig, MqttSection
from ..errors import ConfigError
from ..identity import Identity
from ..model_card import ModelCard
from ..profiles import DeviceProfile

__all__ = ["Broker", "resolve_broker", "resolve_device", "resolve_interval", "resolve_model"]

DEFAULT_FLEET = "default"
DEFAULT_TOPIC_PREFIX = "edgeloop/v1"


@dataclass(frozen=True)
class Broker:
    """The MQTT broker and credentials the agent uses, every field decided."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    keepalive: int
    topic_prefix: str
    client_id: str

    def __repr__(self) -> str:  # keep the password out of logs
        return f"Broker({self.host}:{self.port}, user={self.username!r}, tls={self.tls})"


def resolve_device(
    config: AgentConfig, identity: Identity | None, hostname: str
) -> tuple[str, str]:
    """(device id, fleet): the config's, else the identity's, else the hostname / "default"."""
    device = config.agent.device_id or (identity.device_id if identity else None)
    fleet = config.agent.fleet or (identity.fleet if identity else None)
    if device is None:
        device = hostname.split(".", 1)[0] or "localhost"
    return device, fleet or DEFAULT_FLEET


def resolve_model(config: AgentConfig, card: ModelCard | None) -> tuple[str, str]:
    """(name, version): the config's, else the model card's, else the file stem and "0"."""
    name = config.model.name or (card.name if card else None) or config.model.path.stem
    version = config.model.version or (card.version if card else None) or "0"
    return name, version


def resolve_interval(config: AgentConfig, profile: DeviceProfile) -> float:
    return config.telemetry.interval_s or profile.telemetry_interval_s


def resolve_broker(
    section: MqttSection, identity: Identity | None, device_id: str, source: str
) -> Broker:
    """The broker: each field from ``[mqtt]``, else the identity's MQTT settings."""
    enrolled = identity.mqtt if identity else None
    host = section.host or (enrolled.host if enrolled else None)
    if host is None:
        raise ConfigError(
            f"{source}: mqtt.host is not set and the device has not enrolled: "
            "expected [mqtt] host = ..., or [mqtt] enabled = false"
        )
    tls = section.tls if section.tls is not None else bool(enrolled and enrolled.tls)
    port = section.port or (enrolled.port if enrolled else None) or (8883 if tls else 1883)
    username = section.username or (enrolled.username if enrolled else None)
    password = section.password or (enrolled.password if enrolled else None)
    if password is not None and username is None:
        raise ConfigError(
            f"{source}: mqtt.password is set without a user name: expected mqtt.username too"
        )
    if (section.cert_file is None) != (section.key_file is None):
        raise ConfigError(
            f"{source}: mqtt.cert_file and mqtt.key_file: expected both or neither "
            "(a client certificate needs its key)"
        )
    if not tls and (section.ca_file or section.cert_file):
        raise ConfigError(
            f"{source}: mqtt.ca_file / cert_file are set with tls = false: expected tls = true"
        )
    prefix = section.topic_prefix or (enrolled.topic_prefix if enrolled else None)
    return Broker(
        host=host,
        port=port,
        username=username,
        password=password,
        tls=tls,
        ca_file=section.ca_file,
        cert_file=section.cert_file,
        key_file=section.key_file,
        keepalive=section.keepalive,
        topic_prefix=prefix or DEFAULT_TOPIC_PREFIX,
        client_id=section.client_id or f"edgeloop-{device_id}",
    )
