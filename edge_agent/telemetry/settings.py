"""Settings of the telemetry link: where the broker is, and how messages are forwarded.

Both are frozen dataclasses with plain fields, built by the agent's config loader from
its TOML file; a bad value fails at construction with the field, the value and what was
expected. :func:`reconnect_delay` is the reconnect back-off as a pure function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_agent.errors import ConfigError

from .schema import DEFAULT_PREFIX

__all__ = ["ForwardPolicy", "MqttSettings", "reconnect_delay"]


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the MQTT broker (MQTT 5).

    ``tls`` turns on TLS with the system's CAs, or ``ca_file`` when given; ``cert_file``
    and ``key_file`` (both or neither) add a client certificate. ``client_id`` defaults
    to ``edgeloop-<device>``.
    """

    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    topic_prefix: str = DEFAULT_PREFIX
    client_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            _fail("host", self.host, "a host name or address")
        _integer("port", self.port, 1, 65535)
        _integer("keepalive", self.keepalive, 5, 65535)
        if self.password is not None and self.username is None:
            _fail("password", "***", "a username to go with it")
        if (self.cert_file is None) != (self.key_file is None):
            _fail("cert_file/key_file", (self.cert_file, self.key_file), "both or neither")
        if not self.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name) is not None:
                    _fail(name, getattr(self, name), "tls = true when a TLS file is given")
        prefix = self.topic_prefix
        if not prefix or prefix.endswith("/") or any(c in prefix for c in "+#\0"):
            _fail("topic_prefix", prefix, "a topic without wildcards or a trailing '/'")
        if self.client_id is not None and not self.client_id:
            _fail("client_id", self.client_id, "a non-empty string, or leave it out")


@dataclass(frozen=True)
class ForwardPolicy:
    """How the publisher drains the spool and reconnects.

    Live messages (put while connected) go first, up to ``max_inflight`` awaiting their
    PUBACK; the backlog (what the spool held when the connection came up) is replayed
    beside them with at most ``backlog_inflight`` awaiting PUBACK and at most
    ``backlog_rate`` messages per second. Reconnects back off from ``reconnect_min_s``,
    doubling up to ``reconnect_max_s``, with jitter (see :func:`reconnect_delay`).
    """

    max_inflight: int = 16
    backlog_inflight: int = 4
    backlog_rate: float = 50.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _integer("max_inflight", self.max_inflight, 1, 1000)
        _integer("backlog_inflight", self.backlog_inflight, 1, 1000)
        for name in ("backlog_rate", "reconnect_min_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                _fail(name, value, "a number > 0")
        if not self.reconnect_max_s >= self.reconnect_min_s:
            _fail("reconnect_max_s", self.reconnect_max_s, "a number >= reconnect_min_s")


def reconnect_delay(attempt: int, policy: ForwardPolicy, jitter: float) -> float:
    """Seconds to wait before reconnect number ``attempt`` (0 after a good connection).

    Exponential from ``reconnect_min_s``, capped at ``reconnect_max_s``, with "equal
    jitter": half the step is fixed, the other half scaled by ``jitter`` in [0, 1), so
    a fleet that lost its broker together does not come back in lockstep.
    """
    step = min(policy.reconnect_max_s, policy.reconnect_min_s * 2.0 ** min(attempt, 32))
    return step / 2.0 + step / 2.0 * min(max(jitter, 0.0), 1.0)


def _integer(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(name, value, f"an integer from {low} to {high}")


def _fail(name: str, value: object, expected: str) -> None:
    raise ConfigError(f"mqtt {name} = {value!r}: expected {expected}")
