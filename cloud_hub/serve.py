"""``cloud-hub serve``: the hub process, and :class:`Hub`, the owner of its parts.

:meth:`Hub.start` brings the parts up in order and :meth:`Hub.stop` takes them down in
reverse:

1. the registry: the database is migrated to this hub's schema (what ``cloud-hub db
   upgrade`` does; concurrent starts wait for each other) and opened;
2. the REST API (:mod:`cloud_hub.api`) on ``http_host:http_port``;
3. the gRPC server (enrollment, OTA) on ``grpc_host:grpc_port``;
4. telemetry ingest from the MQTT broker at ``mqtt_host:mqtt_port``;
5. the rollout controller (:mod:`cloud_hub.rollouts`), which advances staged rollouts;
6. the offload server (:mod:`cloud_hub.offload`): Open Inference Protocol v2 over HTTP on
   ``offload_http_host:offload_http_port`` and over gRPC on the hub's gRPC server, handing
   answered device inputs to the hard-example recorder (:mod:`cloud_hub.hard_examples`)
   when this build has one.

Parts 3, 4 and 6 are imported when the hub starts; a build without them logs so and runs
the rest. A port of 0 picks a free one. Once everything is up the process prints one line
scripts can read (parse it by key: parts may be added at the end)::

    listening http=127.0.0.1:8080 grpc=127.0.0.1:50051 mqtt=127.0.0.1:1883 offload=127.0.0.1:8000

SIGTERM and SIGINT stop the hub cleanly (exit 0); a part that dies on its own stops the
rest and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the hub's dependencies load only when it starts
    from .api.server import HttpServer
    from .registry import Registry
    from .settings import HubSettings

_LOG = logging.getLogger(__name__)

LEVELS = ("debug", "info", "warning", "error")
# Stopping takes at most about 10 s in all: ingest stores what it has queued, gRPC and
# the REST API let calls in flight finish.
INGEST_STOP_S = 4.0
GRPC_GRACE_S = 2.0
WATCH_INTERVAL_S = 0.5
# Online TUF roles are re-signed past half their lifetime (timestamp: 1 day); hourly is plenty.
TUF_REFRESH_S = 3600.0
TOKEN_HINT = "no operator token yet: create one with cloud-hub operator-token create NAME"


class Hub:
    """The hub's parts in one process: registry, REST API, gRPC server, ingest."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.registry: Registry | None = None
        self.http: HttpServer | None = None
        self.addresses: dict[str, str] = {}  # part -> host:port it listens on or talks to
        self._stops: list[tuple[str, Callable[[], Any]]] = []

    def start(self) -> None:
        """Start every part; if one fails, stop those already started and raise."""
        try:
            registry = self._open_registry()
            self._start_http(registry)
            offload = self._make_offload(registry)
            self._start_grpc(registry, offload)
            self._start_offload(offload)
            self._start_ingest(registry)
            self._start_rollouts(registry)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> bool:
        """Stop the parts in reverse order; False if one of them failed to stop."""
        clean = True
        while self._stops:
            what, action = self._stops.pop()
            _LOG.info("%s", what)
            try:
                action()
            except Exception:
                _LOG.exception("could not %s", what)
                clean = False
        return clean

    def failure(self) -> str | None:
        """Why the hub cannot go on (a part died), or None while all is well."""
        if self.http is not None and not self.http.alive():
            return "the REST API server stopped"
        return None

    def listening(self) -> str:
        """``http=HOST:PORT grpc=... mqtt=... offload=...``, ``off`` for absent parts."""
        return " ".join(f"{part}={self.addresses.get(part, 'off')}" for part in _PARTS)

    def _open_registry(self) -> Registry:
        from .db import Database, schema_state, upgrade
        from .registry import ArtifactStore, Registry

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(self.settings.database_url)
        self._stops.append(("close the database", db.close))
        db.check_connection()
        before = upgrade(db)
        after = schema_state(db)
        if before.current == after.current:
            _LOG.info("database %s at schema revision %s", db.describe(), after.current)
        else:
            _LOG.info(
                "database %s migrated from %s to %s",
                db.describe(),
                before.current or "empty",
                after.current,
            )
        self.registry = Registry(db, ArtifactStore(self.settings.artifacts_dir))
        return self.registry

    def _start_http(self, registry: Registry) -> None:
        from .api import create_app
        from .api.server import HttpServer

        debug = logging.getLogger("cloud_hub").isEnabledFor(logging.DEBUG)
        server = HttpServer(
            create_app(registry, self.settings),
            self.settings.http_host,
            self.settings.http_port,
            access_log=debug,
        )
        server.start()
        self.http = server
        self._stops.append(("stop the REST API", server.stop))
        self.addresses["http"] = server.address
        _LOG.info("REST API at %s/api/v1 (OpenAPI docs at %s/docs)", server.url, server.url)

    def _start_grpc(self, registry: Registry, offload: Any = None) -> None:
        server_class = _optional("cloud_hub.grpc_server", "HubGrpcServer")
        if server_class is None:
            return
        server = server_class(registry, self.settings)
        self._add_ota(server)
        if offload is not None:
            offload.add_to(server)
        server.start()
        self._stops.append(("stop the gRPC server", lambda: server.stop(GRPC_GRACE_S)))
        self.addresses["grpc"] = _join(self.settings.grpc_host, server.port)
        _LOG.info("gRPC server (enrollment, updates) on %s", self.addresses["grpc"])

    def _make_offload(self, registry: Registry) -> Any:
        """The offload server (not started yet), with the hard-example recorder as its sink."""
        server_class = _optional("cloud_hub.offload", "OffloadServer")
        if server_class is None:
            return None
        sink = None
        recorder_class = _optional("cloud_hub.hard_examples", "HardExampleRecorder")
        if recorder_class is not None:
            sink = recorder_class(registry, self.settings)
            sink.start()
            self._stops.append(("stop the hard-example recorder", sink.stop))
        return server_class(registry, self.settings, sink=sink)

    def _start_offload(self, offload: Any) -> None:
        if offload is None:
            return
        offload.start()
        self._stops.append(("stop the offload server", offload.stop))
        self.addresses["offload"] = offload.address
        _LOG.info("offload server (OIP v2) on http://%s and the gRPC server", offload.address)

    def _add_ota(self, server: Any) -> None:
        """The OTA service, serving the hub's TUF repository (an empty one answers NOT_FOUND)."""
        add_ota_service = _optional("cloud_hub.ota.service", "add_ota_service")
        if add_ota_service is None:
            return
        from .ota.repository import TufRepository
        from .ota.service import RepositorySource

        repository = TufRepository.for_data_dir(self.settings.data_dir)
        from .rollouts.backend import RolloutBackend

        assert self.registry is not None
        add_ota_service(server, RepositorySource(repository), RolloutBackend(self.registry))
        self._start_tuf_refresh(repository)

    def _start_tuf_refresh(self, repository: Any) -> None:
        """An owned thread re-signing the online roles, so devices never see them expire."""
        stop = threading.Event()
        thread = threading.Thread(
            target=_refresh_tuf, args=(repository, stop), name="tuf-refresh", daemon=True
        )
        thread.start()

        def stop_refresh() -> None:
            stop.set()
            thread.join(5.0)

        self._stops.append(("stop the update metadata refresher", stop_refresh))

    def _start_rollouts(self, registry: Registry) -> None:
        from .rollouts import RolloutController

        controller = RolloutController(registry, self.settings)
        controller.start()
        self._stops.append(("stop the rollout controller", controller.stop))
        _LOG.info("rollout controller running")

    def _start_ingest(self, registry: Registry) -> None:
        service_class = _optional("cloud_hub.ingest", "IngestService")
        if service_class is None:
            return
        service = service_class(registry, self.settings)
        service.start()
        self._stops.append(("stop telemetry ingest", lambda: service.stop(INGEST_STOP_S)))
        self.addresses["mqtt"] = _join(self.settings.mqtt_host, self.settings.mqtt_port)
        _LOG.info("telemetry ingest from the MQTT broker at %s", self.addresses["mqtt"])


_PARTS = ("http", "grpc", "mqtt", "offload")


def serve(settings: HubSettings, *, stop: threading.Event | None = None) -> int:
    """Run the hub until SIGTERM/SIGINT (or ``stop`` is set); 0 after a clean stop.

    Start-up errors propagate (the CLI prints them as one line) after whatever had
    started is stopped again.
    """
    stop_event = stop if stop is not None else threading.Event()
    hub = Hub(settings)
    with _stop_on_signals(stop_event):
        hub.start()
        _announce(hub)
        failure = _wait(hub, stop_event)
        if failure is not None:
            _LOG.error("stopping the hub: %s", failure)
        clean = hub.stop()
    _LOG.info("hub stopped")
    return 0 if clean and failure is None else 1


def _announce(hub: Hub) -> None:
    print(f"listening {hub.listening()}", flush=True)
    _LOG.info("hub ready: %s", hub.listening())
    assert hub.registry is not None
    if not any(token.revoked_at is None for token in hub.registry.list_operator_tokens()):
        print(TOKEN_HINT, flush=True)


def _wait(hub: Hub, stop: threading.Event) -> str | None:
    while not stop.wait(WATCH_INTERVAL_S):
        failure = hub.failure()
        if failure is not None:
            return failure
    return None


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop``, nothing more (signals reach only the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            _LOG.warning("%s: already stopping", name)
        else:
            _LOG.info("%s: stopping the hub", name)
            stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _optional(module: str, attribute: str) -> Any | None:
    """``module.attribute``, or None (logged) when this build has no such module."""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # the module is here but something it needs is not
            raise
        _LOG.warning("%s is not in this build: that part of the hub is off", module)
        return None
    value = getattr(found, attribute, None)
    if value is None:
        _LOG.warning("%s has no %s: that part of the hub is off", module, attribute)
    return value


def _refresh_tuf(repository: Any, stop: threading.Event) -> None:
    """``refresh_timestamp`` now and every ``TUF_REFRESH_S`` until ``stop``."""
    while True:
        if repository.exists:
            try:
                if repository.refresh_timestamp():
                    _LOG.info("re-signed the update repository's online metadata")
            except Exception:
                _LOG.exception("could not re-sign the update metadata; retrying later")
        if stop.wait(TUF_REFRESH_S):
            return


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the command ------------------------------------------------------------------------------


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``cloud-hub serve``."""
    cmd = commands.add_parser(
        "serve",
        parents=[common],
        help="run the hub: REST API, gRPC server, telemetry ingest and the offload server",
        description="Migrate the database and run the hub until SIGTERM or SIGINT: the "
        "REST API (OpenAPI docs at /docs), the gRPC server for enrollment and updates, "
        "telemetry ingest from the MQTT broker, and the offload server (Open Inference "
        "Protocol v2). Defaults: SQLite in the data directory, REST on 127.0.0.1:8080, gRPC "
        "on 127.0.0.1:50051, broker at 127.0.0.1:1883, offload on 127.0.0.1:8000; each "
        "is also an EDGELOOP_HUB_* variable or a key in --config. Port 0 picks a free port; "
        "the line 'listening http=HOST:PORT grpc=HOST:PORT mqtt=HOST:PORT offload=HOST:PORT' "
        "says which.",
    )
    cmd.add_argument("--http-host", metavar="HOST", help="REST API address (default 127.0.0.1)")
    cmd.add_argument("--http-port", metavar="PORT", type=int, help="REST API port (default 8080)")
    cmd.add_argument("--grpc-host", metavar="HOST", help="gRPC address (default 127.0.0.1)")
    cmd.add_argument("--grpc-port", metavar="PORT", type=int, help="gRPC port (default 50051)")
    cmd.add_argument("--mqtt-host", metavar="HOST", help="MQTT broker host (default 127.0.0.1)")
    cmd.add_argument(
        "--mqtt-port", metavar="PORT", type=int, help="MQTT broker port (default 1883)"
    )
    cmd.add_argument(
        "--offload-host", metavar="HOST", help="offload server (OIP v2 HTTP) address (127.0.0.1)"
    )
    cmd.add_argument(
        "--offload-port", metavar="PORT", type=int, help="offload server HTTP port (default 8000)"
    )
    cmd.add_argument(
        "--log-level", choices=LEVELS, default="info", help="least severe level logged"
    )
    cmd.set_defaults(handler=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    from edge_agent.service.logs import configure_logging

    from .commands import settings_from

    configure_logging(args.log_level)
    logging.getLogger("cloud_hub").setLevel(args.log_level.upper())
    settings = settings_from(
        args,
        http_host=args.http_host,
        http_port=args.http_port,
        grpc_host=args.grpc_host,
        grpc_port=args.grpc_port,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        offload_http_host=args.offload_host,
        offload_http_port=args.offload_port,
    )
    return serve(settings)
