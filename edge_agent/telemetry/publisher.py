"""The telemetry publisher: aggregates per interval and forwards over MQTT 5 (paho-mqtt 2).

Two threads, both owned here and stopped by :meth:`TelemetryPublisher.stop`:

- the **ticker** closes the :class:`~edge_agent.telemetry.aggregate.Recorder`'s window
  every ``interval_s``, adds system, model and spool figures, and *puts* the telemetry
  message in the :class:`~edge_agent.telemetry.spool.Spool`;
- the **network** thread (:class:`~edge_agent.telemetry.link.MqttLink`) owns the paho
  client: it publishes from the spool, deletes what the broker acknowledged, and
  reconnects with back-off, jitter and a cap when the broker is unreachable.

Every telemetry and event message is written to the spool *before* it is published and
deleted only on its PUBACK, so nothing within the spool's bounds is lost to a broker
outage or a ``kill -9``. Messages are JSON with the envelope of
:mod:`edge_agent.telemetry.schema`; one ``seq`` counter per boot id covers every kind,
and spool order is seq order.

Status messages (retained) carry ``"state"`` and an optional ``"reason"``: "connected",
"connection lost" (the last will), "stopped". Events carry ``"event": name`` and
``"data": {...}`` beside the envelope.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError

from .aggregate import Recorder
from .link import MqttLink
from .schema import ENVELOPE_FIELDS, SCHEMA_VERSION, SchemaError, encode, topic, validate
from .settings import ForwardPolicy, MqttSettings
from .spool import Spool
from .system import SystemProbe

__all__ = ["TelemetryPublisher"]

log = logging.getLogger(__name__)


class TelemetryPublisher:
    """Publishes a device's telemetry, events and status; see the module docstring.

    ``model_info`` returns the ``model`` object of each telemetry message
    (``name``, ``version``, ``backend``, ``format``). ``on_command``, when given, is
    called on the network thread with the raw payload of each message on the device's
    ``cmd`` topic (keep it quick). ``clock`` is the wall clock of envelopes and windows.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        device: str,
        fleet: str,
        boot_id: str,
        spool: Spool,
        recorder: Recorder,
        system: SystemProbe,
        model_info: Callable[[], Mapping[str, Any]],
        interval_s: float,
        policy: ForwardPolicy | None = None,
        on_command: Callable[[bytes], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_s > 0:
            raise ConfigError(f"telemetry interval_s = {interval_s!r}: expected a number > 0")
        try:
            self._topics = {
                kind: topic(settings.topic_prefix, fleet, device, kind)
                for kind in ("telemetry", "events", "status", "cmd")
            }
        except SchemaError as exc:
            raise ConfigError(str(exc)) from exc
        self.settings = settings
        self.device, self.fleet, self.boot_id = device, fleet, boot_id
        self.interval_s = float(interval_s)
        self.spool = spool
        self.recorder = recorder
        self._system = system
        self._model_info = model_info
        self._clock = clock
        self._seq_lock = threading.Lock()  # seq order == spool order
        self._seq = 0
        self._stop_ticker = threading.Event()
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self._counts = {"telemetry": 0, "events": 0, "tick_errors": 0}
        self._last_error: str | None = None
        self._link = MqttLink(
            settings,
            policy or ForwardPolicy(),
            spool,
            client_id=settings.client_id or f"edgeloop-{device}",
            status_topic=self._topics["status"],
            cmd_topic=self._topics["cmd"],
            status=self._status,
            new_seq=self._new_seq,
            tls=_ssl_context(settings) if settings.tls else None,
            note=self._note,
            on_command=on_command,
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the network and ticker threads (once)."""
        if self._threads:
            raise RuntimeError("TelemetryPublisher.start() was already called")
        ticker = threading.Thread(target=self._run_ticker, name="telemetry-ticker", daemon=True)
        self._threads = [self._link.start(), ticker]
        ticker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Spool a final telemetry message, send what is live, go "offline", disconnect.

        Whatever the broker has not acknowledged within ``timeout`` stays in the spool for
        the next start. The spool itself stays open (its owner closes it).
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self._threads or self._stopped:
            return
        self._stopped = True
        self._stop_ticker.set()
        self._threads[1].join(max(deadline - time.monotonic(), 0.0))
        self._emit_telemetry()
        self._link.stop(deadline)

    def __enter__(self) -> TelemetryPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what callers use ----------------------------------------------------------------

    def publish_event(self, name: str, body: Mapping[str, Any]) -> int:
        """Spool an event (published as soon as the link allows); its ``seq``."""
        return self._spool_message("events", {"event": name, "data": dict(body)})

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The threads this publisher owns (the MQTT loop, the ticker), for observation."""
        return tuple(self._threads)

    def stats(self) -> dict[str, Any]:
        """Counters for ``edge-agent status`` and tests: the link's, the spool's, ours."""
        spool = self.spool.stats()
        inflight, backlog_left = self._link.inflight()
        return {
            "connected": self._link.connected,
            **self._link.counts,
            **self._counts,
            "inflight": inflight,
            "backlog_left": backlog_left,
            "spool_messages": spool.messages,
            "spool_bytes": spool.bytes,
            "spool_dropped": spool.dropped,
            "seq": self._seq,
            "last_error": self._last_error,
        }

    # -- messages ------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _new_seq(self) -> int:
        with self._seq_lock:
            return self._next_seq()

    def _envelope(self, kind: str, seq: int) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "kind": kind,
            "device": self.device,
            "fleet": self.fleet,
            "boot_id": self.boot_id,
            "seq": seq,
            "ts": self._clock(),
            "historical": False,
        }

    def _spool_message(self, kind: str, body: Mapping[str, Any]) -> int:
        clash = ENVELOPE_FIELDS.keys() & body.keys()
        if clash:
            raise SchemaError(f"{kind} body may not set envelope field(s) {sorted(clash)}")
        with self._seq_lock:
            seq = self._next_seq()
            message = {**self._envelope(kind, seq), **body}
            validate(message)
            self.spool.put(self._topics[kind], encode(message), qos=1)
            self._counts[kind] += 1
        self._link.wake()
        return seq

    def _status(self, state: str, reason: str, seq: int | None) -> bytes:
        """A status message; ``seq`` None takes the next one."""
        with self._seq_lock:
            message = self._envelope("status", self._next_seq() if seq is None else seq)
        return encode({**message, "state": state, "reason": reason})

    def _run_ticker(self) -> None:
        next_at = time.monotonic() + self.interval_s
        while not self._stop_ticker.wait(max(next_at - time.monotonic(), 0.0)):
            next_at = max(next_at + self.interval_s, time.monotonic())
            self._emit_telemetry()

    def _emit_telemetry(self) -> None:
        """One telemetry message into the spool; a failure is logged, never raised."""
        try:
            body = self.recorder.snapshot(self._clock())
            spool = self.spool.stats()
            body["system"] = self._system.sample()
            body["model"] = dict(self._model_info())
            body["spool"] = {
                "dropped": spool.dropped,
                "backlog": spool.messages,
                "bytes": spool.bytes,
            }
            self._spool_message("telemetry", body)
        except Exception as exc:  # the ticker must outlive one bad interval
            self._counts["tick_errors"] += 1
            self._note(f"telemetry interval failed: {exc!r}", logging.ERROR)

    def _note(self, text: str | None, level: int = logging.WARNING) -> None:
        """Remember the latest problem for ``stats()`` (None: all is well again); log it
        when it is news."""
        if text is not None and text != self._last_error:
            log.log(level, "telemetry: %s", text)
        self._last_error = text


def _ssl_context(settings: MqttSettings) -> ssl.SSLContext:
    """The TLS context, built once so a missing or bad file fails at start-up."""
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(settings, name)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"mqtt {name} = {value!r}: the file does not exist")
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
        if settings.cert_file is not None:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt TLS files cannot be used: {exc}") from exc
    return context
