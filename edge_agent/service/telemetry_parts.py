"""Start-up helpers for the daemon's telemetry: the spool, the system probe, the publisher.

Each imports its part when called, so an agent without MQTT never loads paho.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import AgentConfig
from ..profiles import DeviceProfile
from .resolve import Broker

if TYPE_CHECKING:
    from ..telemetry.aggregate import Recorder
    from ..telemetry.publisher import TelemetryPublisher
    from ..telemetry.spool import Spool
    from ..telemetry.system import SystemProbe

__all__ = ["new_system_probe", "open_spool", "start_publisher"]


def open_spool(state_dir: Path, config: AgentConfig) -> Spool:
    from ..telemetry.spool import Spool

    return Spool.in_dir(
        state_dir, max_bytes=config.spool.max_bytes, max_age_s=config.spool.max_age_s
    )


def new_system_probe(state_dir: Path, profile: DeviceProfile) -> SystemProbe:
    from ..telemetry.system import SystemProbe

    return SystemProbe(state_dir, profile)


def start_publisher(
    broker: Broker,
    *,
    device: str,
    fleet: str,
    boot_id: str,
    spool: Spool,
    recorder: Recorder,
    system: SystemProbe,
    model_info: Callable[[], dict[str, str]],
    interval_s: float,
    on_command: Callable[[bytes], None] | None,
) -> TelemetryPublisher:
    from ..telemetry.publisher import TelemetryPublisher
    from ..telemetry.settings import MqttSettings

    settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        username=broker.username,
        password=broker.password,
        tls=broker.tls,
        ca_file=_text(broker.ca_file),
        cert_file=_text(broker.cert_file),
        key_file=_text(broker.key_file),
        keepalive=broker.keepalive,
        topic_prefix=broker.topic_prefix,
        client_id=broker.client_id,
    )
    publisher = TelemetryPublisher(
        settings,
        device=device,
        fleet=fleet,
        boot_id=boot_id,
        spool=spool,
        recorder=recorder,
        system=system,
        model_info=model_info,
        interval_s=interval_s,
        on_command=on_command,
    )
    publisher.start()
    return publisher


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
