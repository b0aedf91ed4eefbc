"""The device's identity after enrollment, kept in the state directory.

``edge-agent enroll`` writes it; ``edge-agent run`` reads it for the device id, the
fleet, the hub's address and the MQTT credentials. Secrets live in files readable
by the agent's user only (0600), written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError

IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class MqttIdentity:
    host: str
    port: int
    username: str
    password: str
    topic_prefix: str = "edgeloop/v1"
    tls: bool = False


@dataclass(frozen=True)
class Identity:
    device_id: str
    fleet: str
    hub: str  # host:port of the hub's gRPC endpoint
    credential: str  # the device's secret, sent as "authorization: Bearer <secret>"
    mqtt: MqttIdentity | None = None
    extra: dict[str, str] = field(default_factory=dict)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_identity(state_dir: Path, identity: Identity) -> Path:
    path = state_dir / IDENTITY_FILE
    write_private(path, (json.dumps(asdict(identity), indent=2) + "\n").encode())
    return path


def load_identity(state_dir: Path) -> Identity | None:
    """The saved identity, None when the device has not enrolled."""
    path = state_dir / IDENTITY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the device identity ({exc})") from exc
    try:
        mqtt = MqttIdentity(**data.pop("mqtt")) if data.get("mqtt") else None
        data.pop("mqtt", None)
        return Identity(mqtt=mqtt, **data)
    except TypeError as exc:
        raise ConfigError(f"{path}: not a valid device identity ({exc})") from exc
