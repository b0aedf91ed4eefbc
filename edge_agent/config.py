"""The agent's configuration: one TOML file read into frozen dataclasses.

``edge-agent run --config agent.toml`` reads it once at start-up. Loading is strict: an
unknown section or key, a value of the wrong type (a bool is not an integer) or out of
range, or a missing file raises :class:`~edge_agent.errors.ConfigError` with one line
naming the file, the dotted key, the value found and what was expected::

    /etc/edgeloop/agent.toml: http.port = 70000: expected an integer from 0 to 65535

Relative paths resolve against the config file's folder. The state directory is taken, in
this order, from the caller (``--state-dir``), the environment (``EDGELOOP_STATE_DIR``),
``[agent] state_dir``, and finally ``/var/lib/edgeloop``. Values that come from elsewhere
when left out (the device id and fleet from the enrolled identity, MQTT credentials from
the identity, the telemetry interval from the device profile) stay ``None`` here; the
daemon fills them in. The example file ``edge_agent/service/agent.example.toml`` shows
every key.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .errors import ConfigError
from .offload.address import parse_address
from .offload.scores import SCORES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_STATE_DIR",
    "STATE_DIR_ENV",
    "AgentConfig",
    "AgentSection",
    "HttpSection",
    "ModelSection",
    "MqttSection",
    "OffloadSection",
    "OtaSection",
    "ShutdownSection",
    "SpoolSection",
    "TelemetrySection",
    "load_config",
    "parse_config",
]

DEFAULT_STATE_DIR = Path("/var/lib/edgeloop")
STATE_DIR_ENV = "EDGELOOP_STATE_DIR"
BACKENDS = ("auto", "onnxruntime", "litert", "tensorrt")
_MIB = 1024 * 1024
_MAX_BYTES = 1 << 40  # no single limit in this file may exceed 1 TiB
_DAY_S = 86400.0

_SECTIONS: dict[str, set[str]] = {
    "agent": {"device_id", "fleet", "state_dir", "profile"},
    "model": {"path", "name", "version", "backend"},
    "http": {"enabled", "host", "port", "max_request_bytes"},
    "mqtt": {
        "enabled",
        "host",
        "port",
        "username",
        "password",
        "password_file",
        "tls",
        "ca_file",
        "cert_file",
        "key_file",
        "keepalive",
        "topic_prefix",
        "client_id",
    },
    "telemetry": {"interval_s"},
    "spool": {"max_bytes", "max_age_s"},
    "shutdown": {"drain_timeout_s"},
    "ota": {"enabled", "check_in_interval_s"},
    "offload": {
        "url",
        "model",
        "version",
        "score",
        "threshold",
        "deadline_ms",
        "breaker_failures",
        "breaker_cooldown_s",
        "max_per_second",
        "max_bytes_per_minute",
        "send_credentials",
        "send_edge_answer",
    },
}


@dataclass(frozen=True)
class AgentSection:
    device_id: str | None  # None: the enrolled identity's, else the hostname
    fleet: str | None  # None: the enrolled identity's, else "default"
    state_dir: Path
    profile: str  # "auto" (detect the hardware), a bundled profile's name, or a path


@dataclass(frozen=True)
class ModelSection:
    path: Path
    name: str | None  # None: the model card's name, else the file's stem
    version: str | None  # None: the model card's version, else "0"
    backend: str  # "auto" or one of onnxruntime, litert, tensorrt


@dataclass(frozen=True)
class HttpSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port (the daemon logs which)
    max_request_bytes: int = 16 * _MIB


@dataclass(frozen=True)
class MqttSection:
    """The broker; a ``None`` credential or address comes from the enrolled identity."""

    enabled: bool = True
    host: str | None = None
    port: int | None = None  # None: the identity's, else 8883 with TLS and 1883 without
    username: str | None = None
    password: str | None = None  # given inline or read from password_file at load
    tls: bool | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 30
    topic_prefix: str | None = None
    client_id: str | None = None  # None: derived from the device id

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        shown = "***" if self.password is not None else None
        return (
            f"MqttSection(enabled={self.enabled}, host={self.host!r}, port={self.port}, "
            f"username={self.username!r}, password={shown!r}, tls={self.tls})"
        )


@dataclass(frozen=True)
class TelemetrySection:
    interval_s: float | None = None  # None: the device profile's telemetry.interval_s


@dataclass(frozen=True)
class SpoolSection:
    max_bytes: int = 16 * _MIB
    max_age_s: float = 7 * _DAY_S


@dataclass(frozen=True)
class ShutdownSection:
    # How long SIGTERM waits for in-flight requests; systemd's stop timeout is larger.
    drain_timeout_s: float = 5.0


@dataclass(frozen=True)
class OtaSection:
    """Model updates from the hub; they run only on an enrolled device with a pinned root."""

    enabled: bool = True
    check_in_interval_s: float = 300.0  # until the hub names its own; +-20% jitter


@dataclass(frozen=True)
class OffloadSection:
    """The cascade: hard inputs go to an Open Inference Protocol v2 server (docs/cascade.md),
    over gRPC (``grpc://`` or bare ``host:port``) or HTTP (``http://``).

    ``url`` None (absent or empty) turns offloading off.
    """

    url: str | None = None  # "grpc://host:port" or "host:port"; "http://host:port[/path]"
    model: str | None = None  # the cloud model's name; None: the local model's name
    version: str | None = None  # None: the server's choice
    score: str = "max_probability"  # max_probability | margin | entropy
    threshold: float = 0.9  # a confidence below it is hard
    deadline_ms: int = 250  # the most an offload adds to a request
    breaker_failures: int = 5  # failures in a row that open the breaker
    breaker_cooldown_s: float = 10.0  # open this long before one trial call
    max_per_second: float | None = None  # None: no limit
    max_bytes_per_minute: int | None = None  # None: no limit
    send_credentials: bool = True  # the enrolled device's credential, when there is one
    send_edge_answer: bool = True  # the local label, score and version as parameters

    @property
    def enabled(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection
    model: ModelSection
    http: HttpSection
    mqtt: MqttSection
    telemetry: TelemetrySection
    spool: SpoolSection
    shutdown: ShutdownSection
    ota: OtaSection
    source: str  # the file it was read from
    offload: OffloadSection = OffloadSection()


def load_config(
    path: str | os.PathLike[str],
    *,
    state_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Read and validate the config file at ``path``.

    ``state_dir`` (from ``--state-dir``) wins over ``EDGELOOP_STATE_DIR`` in ``environ``
    (default: ``os.environ``), which wins over the file's ``[agent] state_dir``.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file: expected a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 ({exc.reason}): expected a TOML file") from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{file}: cannot read ({reason}): expected a readable file") from exc
    env = os.environ if environ is None else environ
    override = state_dir if state_dir is not None else env.get(STATE_DIR_ENV) or None
    return parse_config(
        text, str(file), base_dir=file.resolve().parent, state_dir_override=override
    )


def parse_config(
    text: str,
    source: str,
    *,
    base_dir: Path,
    state_dir_override: str | os.PathLike[str] | None = None,
) -> AgentConfig:
    """Parse and validate config text; ``source`` names it in errors, paths resolve
    against ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{source}: invalid TOML ({detail}): expected TOML 1.0 syntax") from exc
    reader = _Reader(source, base_dir)
    for name, value in data.items():
        if name not in _SECTIONS:
            reader.fail(name, value, f"one of the sections [{'], ['.join(_SECTIONS)}]")
        if not isinstance(value, dict):
            reader.fail(name, value, f"a table [{name}]")
        reader.only(name, value)
    return AgentConfig(
        agent=_agent(reader, data.get("agent", {}), state_dir_override),
        model=_model(reader, data),
        http=_http(reader, data.get("http", {})),
        mqtt=_mqtt(reader, data.get("mqtt", {})),
        telemetry=TelemetrySection(
            interval_s=reader.number(data.get("telemetry", {}), "telemetry.interval_s", _DAY_S)
        ),
        spool=SpoolSection(
            max_bytes=reader.integer(
                data.get("spool", {}), "spool.max_bytes", SpoolSection.max_bytes, 4096, _MAX_BYTES
            ),
            max_age_s=reader.number(
                data.get("spool", {}), "spool.max_age_s", 365 * _DAY_S, SpoolSection.max_age_s
            ),
        ),
        shutdown=ShutdownSection(
            drain_timeout_s=reader.number(
                data.get("shutdown", {}),
                "shutdown.drain_timeout_s",
                60.0,
                ShutdownSection.drain_timeout_s,
            )
        ),
        ota=OtaSection(
            enabled=reader.flag(data.get("ota", {}), "ota.enabled", OtaSection.enabled),
            check_in_interval_s=reader.number(
                data.get("ota", {}),
                "ota.check_in_interval_s",
                _DAY_S,
                OtaSection.check_in_interval_s,
            ),
        ),
        source=source,
        offload=_offload(reader, data.get("offload", {})),
    )


# -- sections -----------------------------------------------------------------------------


def _agent(
    reader: _Reader, table: dict[str, Any], override: str | os.PathLike[str] | None
) -> AgentSection:
    state_dir = reader.path(table, "agent.state_dir") or DEFAULT_STATE_DIR
    if override is not None:
        state_dir = Path(override).absolute()
    profile = reader.text(table, "agent.profile") or "auto"
    if "/" in profile or profile.endswith(".toml"):
        profile = str(reader.base_dir / profile)
    return AgentSection(
        device_id=reader.name(table, "agent.device_id"),
        fleet=reader.name(table, "agent.fleet"),
        state_dir=state_dir,
        profile=profile,
    )


def _model(reader: _Reader, data: dict[str, Any]) -> ModelSection:
    if "model" not in data:
        raise ConfigError(
            f"{reader.source}: [model] is missing: expected a [model] table with path = ..."
        )
    table = data["model"]
    path = reader.path(table, "model.path")
    if path is None:
        raise ConfigError(
            f"{reader.source}: model.path is missing: expected the path to a model file"
        )
    backend = reader.text(table, "model.backend") or "auto"
    if backend not in BACKENDS:
        reader.fail("model.backend", backend, f"one of {', '.join(BACKENDS)}")
    return ModelSection(
        path=path,
        name=reader.name(table, "model.name"),
        version=reader.text(table, "model.version"),
        backend=backend,
    )


def _http(reader: _Reader, table: dict[str, Any]) -> HttpSection:
    default = HttpSection()
    return HttpSection(
        enabled=reader.flag(table, "http.enabled", default.enabled),
        host=reader.text(table, "http.host") or default.host,
        port=reader.integer(table, "http.port", default.port, 0, 65535),
        max_request_bytes=reader.integer(
            table, "http.max_request_bytes", default.max_request_bytes, 1024, _MAX_BYTES
        ),
    )


def _mqtt(reader: _Reader, table: dict[str, Any]) -> MqttSection:
    password = reader.text(table, "mqtt.password")
    password_file = reader.path(table, "mqtt.password_file")
    if password is not None and password_file is not None:
        reader.fail("mqtt.password_file", str(password_file), "either password or password_file")
    if password_file is not None:
        password = _read_secret(reader.source, "mqtt.password_file", password_file)
    port = reader.integer(table, "mqtt.port", None, 1, 65535) if "port" in table else None
    tls = reader.flag(table, "mqtt.tls", False) if "tls" in table else None
    return MqttSection(
        enabled=reader.flag(table, "mqtt.enabled", True),
        host=reader.text(table, "mqtt.host"),
        port=port,
        username=reader.text(table, "mqtt.username"),
        password=password,
        tls=tls,
        ca_file=reader.existing(table, "mqtt.ca_file"),
        cert_file=reader.existing(table, "mqtt.cert_file"),
        key_file=reader.existing(table, "mqtt.key_file"),
        keepalive=reader.integer(table, "mqtt.keepalive", MqttSection.keepalive, 5, 3600),
        topic_prefix=reader.text(table, "mqtt.topic_prefix"),
        client_id=reader.text(table, "mqtt.client_id"),
    )


def _offload(reader: _Reader, table: dict[str, Any]) -> OffloadSection:
    default = OffloadSection()
    url = table.get("url")
    if url == "":
        url = None  # empty: off, like leaving it out
    if url is not None:
        url = reader.text(table, "offload.url")
        assert url is not None
        try:
            parse_address(url)
        except ValueError:
            reader.fail(
                "offload.url", url, "grpc://host:port, host:port or http://host:port[/path]"
            )
    score = reader.text(table, "offload.score") or default.score
    if score not in SCORES:
        reader.fail("offload.score", score, f"one of {', '.join(SCORES)}")
    threshold = table.get("threshold", default.threshold)
    ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if not ok or not 0.0 <= threshold <= 1.0:
        reader.fail("offload.threshold", threshold, "a number from 0 to 1")
    per_second = reader.number(table, "offload.max_per_second", 1e6)
    per_minute = (
        reader.integer(table, "offload.max_bytes_per_minute", None, 1, _MAX_BYTES)
        if "max_bytes_per_minute" in table
        else None
    )
    return OffloadSection(
        url=url,
        model=reader.name(table, "offload.model"),
        version=reader.text(table, "offload.version"),
        score=score,
        threshold=float(threshold),
        deadline_ms=reader.integer(table, "offload.deadline_ms", default.deadline_ms, 1, 60_000),
        breaker_failures=reader.integer(
            table, "offload.breaker_failures", default.breaker_failures, 1, 1000
        ),
        breaker_cooldown_s=reader.number(
            table, "offload.breaker_cooldown_s", 3600.0, default.breaker_cooldown_s
        ),
        max_per_second=per_second,
        max_bytes_per_minute=per_minute,
        send_credentials=reader.flag(table, "offload.send_credentials", default.send_credentials),
        send_edge_answer=reader.flag(table, "offload.send_edge_answer", default.send_edge_answer),
    )


def _read_secret(source: str, key: str, path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(
            f"{source}: {key} = {str(path)!r}: expected a readable file ({reason})"
        ) from exc
    if not secret:
        raise ConfigError(f"{source}: {key} = {str(path)!r}: expected a non-empty secret")
    return secret


# -- checking values ----------------------------------------------------------------------


def _show(value: object) -> str:
    """The value as the message shows it: Python's repr, but TOML's true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Reader:
    """Typed getters over one section; every failure names the file and the dotted key."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, key: str, value: object, expected: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {key} = {_show(value)}: expected {expected}")

    def only(self, section: str, table: dict[str, Any]) -> None:
        allowed = _SECTIONS[section]
        for key, value in table.items():
            if key not in allowed:
                self.fail(f"{section}.{key}", value, f"one of {', '.join(sorted(allowed))}")

    @staticmethod
    def _leaf(key: str) -> str:
        return key.rsplit(".", 1)[1]

    def text(self, table: dict[str, Any], key: str) -> str | None:
        value = table.get(self._leaf(key))
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            self.fail(key, value, "a non-empty string")
        return value

    def name(self, table: dict[str, Any], key: str) -> str | None:
        """A name used in MQTT topics and file names: no slashes, wildcards or spaces."""
        value = self.text(table, key)
        if value is not None and (
            any(c in value for c in "/+#") or value != value.strip() or " " in value
        ):
            self.fail(key, value, "a name without spaces, '/', '+' or '#'")
        return value

    def flag(self, table: dict[str, Any], key: str, default: bool) -> bool:
        value = table.get(self._leaf(key), default)
        if not isinstance(value, bool):
            self.fail(key, value, "true or false")
        return value

    def integer(
        self, table: dict[str, Any], key: str, default: Any, minimum: int, maximum: int
    ) -> Any:
        value = table.get(self._leaf(key), default)
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or not minimum <= value <= maximum:
            self.fail(key, value, f"an integer from {minimum} to {maximum}")
        return value

    def number(self, table: dict[str, Any], key: str, maximum: float, default: Any = None) -> Any:
        value = table.get(self._leaf(key), default)
        if value is None:
            return None
        expected = f"a number > 0 and <= {maximum:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, value, expected)
        if not (math.isfinite(value) and 0 < value <= maximum):
            self.fail(key, value, expected)
        return float(value)

    def path(self, table: dict[str, Any], key: str) -> Path | None:
        value = self.text(table, key)
        if value is None:
            return None
        return self.base_dir / Path(value).expanduser()

    def existing(self, table: dict[str, Any], key: str) -> Path | None:
        path = self.path(table, key)
        if path is not None and not path.is_file():
            self.fail(key, table[self._leaf(key)], f"an existing file ({path} is not one)")
        return path
