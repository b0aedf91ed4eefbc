"""The hub's settings: defaults, a TOML file, ``EDGELOOP_HUB_*`` variables and flags.

Precedence, highest first: explicit overrides (command-line flags), the environment
(``EDGELOOP_HUB_HTTP_PORT=9000``), the TOML file given with ``--config`` (top-level keys
named like the fields below), the defaults. A bad value fails in :func:`load_settings` with
:class:`~cloud_hub.errors.HubConfigError` naming the key, where it came from, the value
and what was expected.

The data directory defaults to ``$XDG_DATA_HOME/edgeloop-hub`` (``~/.local/share/
edgeloop-hub``): a per-user location that does not depend on the working directory, so
``cloud-hub`` commands run from anywhere see the same hub. It holds the SQLite database
(``hub.db``, unless ``database_url`` points elsewhere) and the artifact store
(``artifacts/``). Relative paths in a TOML file are relative to that file; elsewhere to the
working directory. Every path is made absolute at load time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .durations import parse_duration
from .errors import HubConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ENV_PREFIX = "EDGELOOP_HUB_"
DATABASE_FILE = "hub.db"
_PATH_KEYS = ("data_dir", "broker_password_file", "broker_acl_file", "broker_pid_file")

# The values read from --config for the load in progress (see settings_customise_sources).
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("_FILE_VALUES", default=None)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(base).expanduser() / "edgeloop-hub"


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            raise ValueError("a duration such as 90s, 30m, 1h, 7d or 1h30m") from None
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("a duration longer than 0s")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
Port = Annotated[int, Field(ge=1, le=65535)]
# A port the hub listens on; 0 asks the OS for a free one (the chosen port is logged).
ListenPort = Annotated[int, Field(ge=0, le=65535)]


class HubSettings(BaseSettings):
    """Everything a hub process needs to know at start-up. Immutable once loaded."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    # Empty means sqlite:///<data_dir>/hub.db. PostgreSQL: postgresql+psycopg://user@host/db
    database_url: str = ""

    mqtt_host: str = "127.0.0.1"
    mqtt_port: Port = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_topic_prefix: str = "edgeloop/v1"

    http_host: str = "127.0.0.1"
    http_port: ListenPort = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: ListenPort = 50051

    # The offload server (cloud_hub.offload): Open Inference Protocol v2 over HTTP on this
    # address (gRPC goes through the hub's gRPC server), one dynamic batcher per model.
    offload_http_host: str = "127.0.0.1"
    offload_http_port: ListenPort = 8000
    offload_max_batch: int = Field(default=32, ge=1, le=4096)  # 1 (and delay 0): no batching
    offload_max_queue_delay_ms: float = Field(default=2.0, ge=0, le=10_000)
    offload_queue_size: int = Field(default=256, ge=1, le=1_000_000)  # per model; full: 503
    offload_max_request_bytes: int = Field(default=16 << 20, ge=1)
    # Require a device credential or an operator token on offload calls (not on health).
    # Off only on a private network. A credential found good is trusted for
    # offload_auth_cache_s seconds: revocation takes effect within that time.
    offload_auth: bool = True
    offload_auth_cache_s: float = Field(default=30.0, ge=0, le=3600)
    # auto: CUDA when onnxruntime has CUDAExecutionProvider, else the CPU; cuda: or fail.
    offload_device: Literal["auto", "cpu", "cuda"] = "auto"
    offload_threads: int = Field(default=0, ge=0, le=1024)  # ONNX Runtime intra-op; 0: its own
    offload_max_loaded_models: int = Field(default=8, ge=1, le=1024)  # least recently used go
    offload_max_connections: int = Field(default=256, ge=1, le=100_000)  # HTTP; over it: 503

    # What devices are told at enrollment: where THEY reach the broker (None: mqtt_host and
    # mqtt_port) and the hub's gRPC endpoint "host:port" (None: the address they enrolled
    # through).
    mqtt_public_host: str | None = None
    mqtt_public_port: Port | None = None
    mqtt_public_tls: bool = False
    grpc_public_endpoint: str | None = None

    # Raw telemetry older than this is deleted; per-minute rollups are kept.
    raw_retention: Duration = timedelta(days=7)

    # Hard examples (offloaded inputs with the cloud's and the edge's answers) kept per
    # fleet; the oldest go first when either bound is passed (cloud_hub.hard_examples).
    hard_examples_max_count: int = Field(default=100_000, ge=1)
    hard_examples_max_bytes: int = Field(default=1 << 30, ge=1)  # stored input bytes

    # Broker authentication the hub maintains for devices (Mosquitto password and ACL
    # files, and the command that makes the broker reload them). None: not managed.
    broker_password_file: Path | None = None
    broker_acl_file: Path | None = None
    broker_reload_command: str | None = None
    # Mosquitto's pid_file: the hub sends that process SIGHUP to reload (when no command).
    broker_pid_file: Path | None = None

    @model_validator(mode="after")
    def _fill_in(self) -> HubSettings:
        # frozen: object.__setattr__ is how a validator completes its own instance
        object.__setattr__(self, "data_dir", self.data_dir.expanduser().absolute())
        for key in ("broker_password_file", "broker_acl_file", "broker_pid_file"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, value.expanduser().absolute())
        if not self.database_url:
            url = f"sqlite:///{self.data_dir / DATABASE_FILE}"
            object.__setattr__(self, "database_url", url)
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: str) -> str:
        if url:
            check_database_url(url)
        return url

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_settings = InitSettingsSource(settings_cls, init_kwargs=_FILE_VALUES.get() or {})
        return init_settings, env_settings, file_settings


def check_database_url(url: str) -> None:
    """Raise ValueError unless ``url`` is a SQLite or PostgreSQL SQLAlchemy URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    expected = "sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ValueError(f"a database URL ({expected})") from None
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"a SQLite or PostgreSQL URL ({expected}), not {backend}")


def load_settings(
    config_file: str | os.PathLike[str] | None = None, **overrides: Any
) -> HubSettings:
    """Settings from ``overrides`` > environment > ``config_file`` > defaults.

    ``overrides`` whose value is None are ignored, so flags that were not given can be
    passed straight through.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - set(HubSettings.model_fields))
    if unknown:
        raise HubConfigError(f"unknown hub setting(s): {', '.join(unknown)}")
    file_values = _read_file(Path(config_file)) if config_file is not None else {}
    token = _FILE_VALUES.set(file_values)
    try:
        return HubSettings(**given)
    except ValidationError as exc:
        raise HubConfigError(_describe(exc, given, config_file)) from None
    finally:
        _FILE_VALUES.reset(token)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HubConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HubConfigError(f"config file {path} cannot be read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise HubConfigError(f"config file {path} is not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - set(HubSettings.model_fields))
    if unknown:
        expected = ", ".join(HubSettings.model_fields)
        raise HubConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)} (expected some of {expected})"
        )
    for key in _PATH_KEYS:
        if isinstance(data.get(key), str):
            data[key] = str((path.parent / Path(data[key]).expanduser()).absolute())
    return data


def _describe(exc: ValidationError, given: Mapping[str, Any], config_file: object | None) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        expected = str(error["msg"]).removeprefix("Value error, ")
        expected = expected.removeprefix("Input should be ")
        problems.append(
            f"{key} = {_shown(key, error['input'])} ({_where(key, given, config_file)}): "
            f"expected {expected}"
        )
    return "bad hub setting: " + "; ".join(problems)


def _shown(key: str, value: Any) -> str:
    """The value for an error message, with passwords hidden."""
    if "password" in key:
        return "'***'"
    if key == "database_url" and isinstance(value, str):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            return repr(make_url(value).render_as_string(hide_password=True))
        except ArgumentError:
            pass
    return repr(value)


def _where(key: str, given: Mapping[str, Any], config_file: object | None) -> str:
    if key in given:
        return "from the command line"
    if ENV_PREFIX + key.upper() in {name.upper() for name in os.environ}:
        return f"from {ENV_PREFIX}{key.upper()}"
    if key in (_FILE_VALUES.get() or {}):
        return f"from {config_file}"
    return "default"
