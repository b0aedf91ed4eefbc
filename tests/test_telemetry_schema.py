"""The MQTT contract: topics and envelopes both sides of the wire rely on."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import ConfigError
from edge_agent.identity import Identity, MqttIdentity, load_identity, save_identity
from edge_agent.telemetry.schema import (
    SchemaError,
    decode,
    encode,
    parse_topic,
    topic,
)


def telemetry(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "schema": 1,
        "kind": "telemetry",
        "device": "pi-1",
        "fleet": "lab",
        "boot_id": "b1",
        "seq": 3,
        "ts": 1795460000.5,
        "historical": False,
        "interval_s": 10.0,
        "window_start": 1795459990.5,
        "window_end": 1795460000.5,
        "requests": 12,
        "errors": 0,
        "throughput_rps": 1.2,
        "latency_ms": {},
        "confidence": {},
        "inputs": {},
        "offload": {},
        "system": {},
        "model": {},
        "spool": {},
    }
    message.update(overrides)
    return message


def test_round_trip() -> None:
    assert decode(encode(telemetry())) == telemetry()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seq": 0}, "seq 0 must be >= 1"),
        ({"seq": True}, "field 'seq' = True has the wrong type"),
        ({"schema": 2}, "schema 2 is not supported"),
        ({"kind": "logs"}, "kind 'logs' is not one of"),
        ({"requests": "12"}, "field 'requests'"),
        ({"historical": 0}, "field 'historical'"),
    ],
)
def test_bad_fields_are_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        decode(json.dumps(telemetry(**overrides)).encode())


def test_missing_and_non_json() -> None:
    broken = telemetry()
    del broken["boot_id"]
    with pytest.raises(SchemaError, match="field 'boot_id' is missing"):
        decode(json.dumps(broken).encode())
    with pytest.raises(SchemaError, match="not JSON"):
        decode(b"\xff{")
    with pytest.raises(SchemaError, match="not a JSON object"):
        decode(b"[1]")
    status = telemetry(kind="status")
    with pytest.raises(SchemaError, match="status state None"):
        decode(json.dumps(status).encode())


def test_topics() -> None:
    name = topic("edgeloop/v1", "lab", "pi-1", "telemetry")
    assert name == "edgeloop/v1/lab/pi-1/telemetry"
    address = parse_topic(name)
    assert (address.fleet, address.device, address.kind) == ("lab", "pi-1", "telemetry")
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(SchemaError):
            topic("edgeloop/v1", "lab", bad, "telemetry")
    with pytest.raises(SchemaError):
        parse_topic("other/v1/lab/pi-1/telemetry")
    with pytest.raises(SchemaError):
        parse_topic("edgeloop/v1/lab/telemetry")


def test_identity_is_private_and_round_trips(tmp_path: Path) -> None:
    identity = Identity(
        device_id="dev-1",
        fleet="lab",
        hub="127.0.0.1:50051",
        credential="s3cret",
        mqtt=MqttIdentity("127.0.0.1", 1883, "dev-1", "pw"),
    )
    path = save_identity(tmp_path / "state", identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(tmp_path / "state") == identity
    assert load_identity(tmp_path / "nowhere") is None
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the device identity"):
        load_identity(tmp_path / "state")
