"""The user name and password the hub's own MQTT clients (ingest, commands) log in with.

With the broker managed by the hub (``broker_password_file`` set) the hub user is
``mqtt_username`` (default ``edgeloop-hub``) with ``mqtt_password``, or, when no password
is configured, one generated on first start and kept in ``<data_dir>/mqtt-hub-password``
(0600). Hub processes sharing a data directory share it; the first one to start creates
it, atomically, and the others read it. Without a managed broker the login is whatever
the settings say, or None for an anonymous broker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import HubConfigError
from ..settings import HubSettings

DEFAULT_HUB_USER = "edgeloop-hub"
HUB_PASSWORD_FILE = "mqtt-hub-password"


@dataclass(frozen=True)
class MqttLogin:
    username: str
    password: str | None

    def __repr__(self) -> str:  # keep the password out of logs
        return f"MqttLogin(username={self.username!r}, password={'***' if self.password else None})"


def broker_managed(settings: HubSettings) -> bool:
    return settings.broker_password_file is not None


def hub_mqtt_login(settings: HubSettings) -> MqttLogin | None:
    """How the hub logs in to the broker; None for an anonymous broker."""
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    if not broker_managed(settings):
        if settings.mqtt_username is None:
            return None
        return MqttLogin(settings.mqtt_username, password)
    username = settings.mqtt_username or DEFAULT_HUB_USER
    if password is None:
        password = stored_hub_password(settings.data_dir)
    return MqttLogin(username, password)


def stored_hub_password(data_dir: Path) -> str:
    """The generated hub password in ``data_dir``, made (0600) if it is not there yet."""
    path = data_dir / HUB_PASSWORD_FILE
    existing = _read(path)
    if existing is not None:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{HUB_PASSWORD_FILE}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # Fails if another hub process created it first; theirs is then the password.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    stored = _read(path)
    if stored is None:
        raise HubConfigError(f"{path} vanished while the hub was creating it")
    return stored


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HubConfigError(f"cannot read the hub's MQTT password {path} ({exc})") from exc
    if not text:
        raise HubConfigError(f"{path} is empty: delete it to have a new password generated")
    return text
