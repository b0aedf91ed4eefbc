"""The agent daemon: owns the engine, the local HTTP server and telemetry, and the main loop.

Process model: the main thread starts the parts in order — engine (loaded and warmed),
HTTP server, telemetry publisher — then tells systemd ``READY=1`` and loops, waiting on a
stop event with a short timeout and sending ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2``.
The ping comes from this loop and not from a helper thread, so a hung main thread stops
the pings and systemd restarts the service. The server and the publisher run their own
threads, owned and stopped by their objects. SIGTERM and SIGINT only set the stop event;
the main thread then stops the parts in reverse: ``STOPPING=1``, stop the update thread,
drain in-flight requests and close the listener, close the offload client, stop telemetry
(spool flushed, ``offline`` published), close the engine the service runs.

With ``[offload] url`` set, the model service gets the offload cascade (built in
:mod:`.offload`; docs/cascade.md): hard inputs are answered by the hub, within a deadline.

Model updates (docs/ota.md): at start :func:`~edge_agent.ota.slots.recover` finishes or
undoes an install a crash interrupted; the model it names wins over ``[model] path``. On a
device enrolled with a hub whose update root is pinned, an :class:`~.updater.Updater`
thread (built in :mod:`.updater`) checks in, installs and judges probation.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ..config import AgentConfig
from ..detect import detect_profile
from ..engine import Engine
from ..errors import EdgeAgentError
from ..formats import ModelFormat, detect_format
from ..identity import Identity, load_identity
from ..probe import RuntimeInfo
from ..profiles import DeviceProfile
from .notify import Notifier, watchdog_interval
from .offload import new_cascade
from .resolve import Broker, resolve_broker, resolve_device, resolve_interval, resolve_model
from .state import prepare_state_dir
from .telemetry_parts import new_system_probe, open_spool, start_publisher

if TYPE_CHECKING:  # imported when used: without MQTT the daemon never loads paho
    from ..offload.cascade import Cascade
    from ..ota.slots import CurrentModel
    from ..server import LocalInferenceServer, ModelService
    from ..telemetry.aggregate import Recorder
    from ..telemetry.publisher import TelemetryPublisher
    from ..telemetry.spool import Spool
    from .updater import TeeRecorder, Updater

__all__ = ["Agent", "EngineLoader", "serve"]

_LOG = logging.getLogger(__name__)
#: Loads a model the way :meth:`Engine.load` does; tests pass a subclass's ``load``.
EngineLoader = Callable[..., Engine]
_TICK_S = 1.0  # the longest the main loop sleeps without looking at its parts
# Telemetry's share of the stop: with the default 5 s drain, the agent is gone within 10 s.
_TELEMETRY_STOP_S = 2.0


class Agent:
    """One running agent. Not thread-safe: the main thread calls everything but
    :meth:`request_stop`."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        notifier: Notifier | None = None,
        engine_loader: EngineLoader | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._env = os.environ if environ is None else environ
        self.notifier = notifier if notifier is not None else Notifier.from_env(self._env)
        self._load: EngineLoader = engine_loader or Engine.load
        self._stop = threading.Event()
        self._stop_reason = ""
        self.boot_id = uuid.uuid4().hex
        self.engine: Engine | None = None
        self.server: LocalInferenceServer | None = None
        self.telemetry: TelemetryPublisher | None = None
        self.recorder: Recorder | None = None
        self.spool: Spool | None = None
        self.service: ModelService | None = None
        self.updater: Updater | None = None
        self.cascade: Cascade | None = None
        self.http_url: str | None = None
        self._probation: Recorder | None = None

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part in order and send READY=1; on failure, stop what started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        config = self.config
        state_dir = prepare_state_dir(config.agent.state_dir)
        identity = load_identity(state_dir)
        device, fleet = resolve_device(config, identity, socket.gethostname())
        profile = self._profile()
        installed = _recover(state_dir)
        path = installed.path(state_dir) if installed is not None else config.model.path
        self._status(f"loading model {path}")
        self.engine = self._load_engine(profile, state_dir, path)
        if installed is not None:
            name, version = installed.model, installed.version
        else:
            name, version = resolve_model(config, self.engine.card)
        _LOG.info(
            "model %s %s loaded on %s (%s); selection: %s",
            name,
            version,
            self.engine.backend_name,
            ", ".join(self.engine.backend.accelerators),
            self.engine.selection.explain(),
        )
        self.recorder = _new_recorder() if config.mqtt.enabled else None
        updates = _updates_wanted(config, identity, state_dir)
        self._probation = _new_recorder() if updates else None
        self.service = _new_service(self.engine, name, version, self._tee())
        self.cascade = new_cascade(
            config.offload, local_model=name, identity=identity, recorder=self.recorder
        )
        self.service.cascade = self.cascade
        if updates:
            assert identity is not None
            baseline = _baseline(config, name, version, self.engine)
            self.updater = self._new_updater(identity, state_dir, profile, baseline)
        if config.http.enabled and not self._stop.is_set():
            self._start_http()
        if config.mqtt.enabled and not self._stop.is_set():
            broker = resolve_broker(config.mqtt, identity, device, config.source)
            self._start_telemetry(broker, device, fleet, state_dir, profile, name)
        if self.updater is not None and not self._stop.is_set():
            self.updater.start()
            _LOG.info("model updates from %s", self.updater.client.hub)
        if self._stop.is_set():
            return  # a signal came while starting: no READY, straight to stop()
        where = f" on {self.http_url}" if self.http_url else ""
        self.notifier.ready(f"serving {name} {version} ({self.engine.backend_name}){where}")
        _LOG.info("ready: device %s in fleet %s, boot id %s", device, fleet, self.boot_id)

    def _tee(self) -> Recorder | TeeRecorder | None:
        from .updater import TeeRecorder

        recorders = [r for r in (self.recorder, self._probation) if r is not None]
        return TeeRecorder(*recorders) if len(recorders) > 1 else next(iter(recorders), None)

    def _new_updater(
        self, identity: Identity, state_dir: Path, profile: DeviceProfile, baseline: CurrentModel
    ) -> Updater:
        from ..ota.client import OtaClient
        from ..ota.installer import SWITCH_PAUSE_S, Installer
        from ..ota.trust import TrustedUpdater
        from .updater import Updater, reporter_for

        assert self.service is not None and self._probation is not None
        client = OtaClient(identity.hub, identity)
        trusted = TrustedUpdater(state_dir, client.fetcher())
        installer = Installer(
            state_dir,
            self.service,
            partial(self._load_engine, profile, state_dir, pause_s=SWITCH_PAUSE_S),
            client,
            trusted,
            reporter_for(client),
            profile.name,
            baseline=baseline,
            step_pause_s=SWITCH_PAUSE_S,
        )
        return Updater(
            client=client,
            trusted=trusted,
            installer=installer,
            probation=self._probation,
            boot_id=self.boot_id,
            profile=profile.name,
            baseline=baseline,
            interval_s=self.config.ota.check_in_interval_s,
            probation_interval_s=resolve_interval(self.config, profile),
        )

    def _start_http(self) -> None:
        assert self.service is not None
        http = self.config.http
        self._status(f"starting the HTTP server on {http.host}:{http.port}")
        self.server = _start_server(self.service, self.config)
        self.http_url = self.server.url
        _LOG.info("serving Open Inference Protocol v2 on %s", self.http_url)

    def _start_telemetry(
        self,
        broker: Broker,
        device: str,
        fleet: str,
        state_dir: Path,
        profile: DeviceProfile,
        name: str,
    ) -> None:
        assert self.recorder is not None  # made before the HTTP server, which feeds it
        interval = resolve_interval(self.config, profile)
        self._status(f"starting telemetry to {broker.host}:{broker.port} every {interval:g}s")
        self.spool = open_spool(state_dir, self.config)
        model_info = partial(self._model_info, name)
        self.telemetry = start_publisher(
            broker,
            device=device,
            fleet=fleet,
            boot_id=self.boot_id,
            spool=self.spool,
            recorder=self.recorder,
            system=new_system_probe(state_dir, profile),
            model_info=model_info,
            interval_s=interval,
            on_command=self.updater.on_command if self.updater is not None else None,
        )
        self.telemetry.publish_event("started", model_info())
        _LOG.info("telemetry to %r", broker)

    def _profile(self) -> DeviceProfile:
        wanted = self.config.agent.profile
        profile, detection = detect_profile(override=None if wanted == "auto" else wanted)
        for line in detection.evidence:
            _LOG.debug("profile: %s", line)
        _LOG.info("device profile %s (%s)", profile.name, profile.source)
        return profile

    def _load_engine(
        self, profile: DeviceProfile, state_dir: Path, path: Path, *, pause_s: float = 0.0
    ) -> Engine:
        model = self.config.model
        backend = None if model.backend == "auto" else model.backend
        return self._load(
            path,
            profile=profile,
            backend=backend,
            cache_dir=state_dir / "cache",
            runtimes=_probe_runtimes(detect_format(path), backend),
            pause_s=pause_s,
        )

    def _model_info(self, name: str) -> dict[str, str]:
        """What telemetry says runs; read at each message, so an update shows at once."""
        assert self.service is not None
        engine = self.service.engine
        return {
            "name": name,
            "version": self.service.version,
            "backend": engine.backend_name if engine is not None else "",
            "format": str(getattr(engine, "model_format", "")),
        }

    # -- the main loop ------------------------------------------------------------------

    def run_until_stopped(self) -> None:
        """Loop on the main thread until :meth:`request_stop`, pinging the watchdog."""
        interval = watchdog_interval(self._env)
        if interval is not None:
            _LOG.debug("watchdog: pinging every %.3fs", interval)
        next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            if interval is not None and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            wait = _TICK_S if interval is None else min(_TICK_S, max(0.0, next_ping - now))
            if self._stop.wait(wait):
                return

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to end; safe from a signal handler or any thread."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    # -- stop ---------------------------------------------------------------------------

    def stop(self) -> bool:
        """Stop the parts in reverse order; False when one of them failed to stop."""
        parts = (self.updater, self.server, self.cascade, self.telemetry, self.spool, self.engine)
        if all(part is None for part in parts):
            return True  # nothing started (or stopped already)
        reason = f" ({self._stop_reason})" if self._stop_reason else ""
        self.notifier.stopping(f"stopping{reason}: finishing in-flight requests")
        _LOG.info("stopping%s", reason)
        ok = True
        if self.updater is not None:
            drain = self.config.shutdown.drain_timeout_s
            ok &= _attempt("stop the update thread", partial(self.updater.stop, drain))
            self.updater = None
        if self.server is not None:
            ok &= _attempt("stop the HTTP server", self._stop_server)
            self.server = None
        if self.cascade is not None:
            ok &= _attempt("close the offload client", self.cascade.close)
            self.cascade = None
        if self.telemetry is not None:
            ok &= _attempt("stop telemetry", partial(self.telemetry.stop, _TELEMETRY_STOP_S))
            self.telemetry = None
        if self.spool is not None:
            ok &= _attempt("close the telemetry spool", self.spool.close)
            self.spool = None
        if self.engine is not None:
            ok &= _attempt("close the engine", self._close_engine)
            self.engine = self.service = None
        _LOG.info("stopped")
        return ok

    def _close_engine(self) -> None:
        """Close what the service runs now: after an update that is no longer ``engine``."""
        running = self.service.engine if self.service is not None else self.engine
        close = getattr(running, "close", None)
        if close is not None:
            close()

    def _stop_server(self) -> None:
        assert self.server is not None
        left = self.server.stop(self.config.shutdown.drain_timeout_s)
        if left:
            _LOG.warning("%d request(s) were still running after the drain timeout", left)

    def _status(self, text: str) -> None:
        _LOG.info("%s", text)
        self.notifier.status(text)


def serve(
    config: AgentConfig,
    *,
    engine_loader: EngineLoader | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the agent until SIGTERM or SIGINT; 0 after a clean stop.

    Start-up errors propagate (the CLI prints them as one line) after whatever had
    started is stopped again.
    """
    agent = Agent(config, engine_loader=engine_loader, environ=environ)
    with agent.notifier, _stop_on_signals(agent):
        try:
            agent.start()
        except EdgeAgentError as exc:
            agent.notifier.status(f"failed: {exc}")
            raise
        agent.run_until_stopped()
        return 0 if agent.stop() else 1


@contextmanager
def _stop_on_signals(agent: Agent) -> Iterator[None]:
    """SIGTERM and SIGINT set the agent's stop event, nothing more."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; an embedding caller stops us itself
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        agent.request_stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _attempt(what: str, action: Callable[[], object]) -> bool:
    try:
        action()
    except Exception:
        _LOG.exception("could not %s", what)
        return False
    return True


# -- adapters to the parts the agent owns -------------------------------------------------


def _probe_runtimes(fmt: ModelFormat, only: str | None) -> dict[str, RuntimeInfo]:
    """Probe only the runtimes that could load ``fmt``: importing LiteRT to serve an ONNX
    model would cost the daemon ~10 MB of RSS for nothing. Selection gives the same answer,
    since it passes over a backend of the wrong format before it looks at the runtime."""
    from ..backends import BACKEND_FORMATS
    from ..probe import probe_runtimes

    names = [n for n, formats in BACKEND_FORMATS.items() if fmt in formats and only in (None, n)]
    return probe_runtimes(names)


def _recover(state_dir: Path) -> CurrentModel | None:
    """The installed model to run (finishing or undoing an interrupted install), if any."""
    from ..ota.slots import recover

    installed = recover(state_dir)
    if installed is not None:
        _LOG.info(
            "running the installed model %s %s (slot %s) instead of [model] path",
            installed.model,
            installed.version,
            installed.slot,
        )
    return installed


def _updates_wanted(config: AgentConfig, identity: Identity | None, state_dir: Path) -> bool:
    """Updates run on an enrolled device whose hub gave it an update root to pin."""
    from ..ota.trust import METADATA_DIR

    if not config.ota.enabled:
        return False
    if identity is None or not identity.hub:
        _LOG.info("model updates off: the device has not enrolled with a hub")
        return False
    if not (state_dir / METADATA_DIR / "root.json").exists():
        _LOG.info("model updates off: no pinned update root (the hub had none at enrollment)")
        return False
    return True


def _baseline(config: AgentConfig, name: str, version: str, engine: Engine) -> CurrentModel:
    """``[model] path`` as the installer sees it: the model to roll back to."""
    from ..ota.slots import CurrentModel

    return CurrentModel(
        slot=None,
        model=name,
        version=version,
        format=str(engine.model_format),
        file=str(config.model.path),
    )


def _new_service(
    engine: Engine, name: str, version: str, recorder: Recorder | TeeRecorder | None
) -> ModelService:
    from ..server import ModelService

    return ModelService(engine, name, version, recorder=recorder)


def _new_recorder() -> Recorder:
    from ..telemetry.aggregate import Recorder

    return Recorder(time.time())


def _start_server(service: ModelService, config: AgentConfig) -> LocalInferenceServer:
    from ..server import LocalInferenceServer

    server = LocalInferenceServer(
        service,
        host=config.http.host,
        port=config.http.port,
        max_request_bytes=config.http.max_request_bytes,
    )
    server.start()
    return server
