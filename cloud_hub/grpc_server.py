"""The hub's gRPC server: one ``grpc.server`` that every edgeloop.v1 service is added to.

::

    server = HubGrpcServer(registry, settings)          # Enrollment is registered already
    server.add_servicer(ota_pb2_grpc.add_OtaServicer_to_server, OtaServicer(server.auth))
    port = server.start()                                # binds grpc_host:grpc_port (0: free)
    ...
    server.stop(grace=5)

Every servicer gets the hub's error table (:mod:`.grpc_errors`) through an interceptor,
and ``server.auth`` (:class:`~cloud_hub.grpc_auth.DeviceAuthenticator`) to authenticate
devices. When the hub manages the broker, ``start()`` first brings the broker's password
and ACL files in step with the registry, creating the hub's own broker user on the first
start.

The server is plaintext gRPC: put it behind TLS termination (or on a private network)
outside a lab; enrollment carries a token and returns a credential.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from concurrent import futures
from types import TracebackType
from typing import Any, Literal

import grpc

from edge_agent.wire import enrollment_pb2_grpc

from .broker import BrokerAuth
from .enrollment import EnrollmentServicer
from .errors import HubError, Unavailable
from .grpc_auth import DeviceAuthenticator
from .grpc_errors import HubErrorInterceptor
from .registry import Registry
from .settings import HubSettings

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 16
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class _Default(enum.Enum):
    FROM_SETTINGS = "from settings"


FROM_SETTINGS: Literal[_Default.FROM_SETTINGS] = _Default.FROM_SETTINGS

Register = Callable[[Any, grpc.Server], None]


class HubGrpcServer:
    """Owns the gRPC server, its thread pool and the servicers registered on it."""

    def __init__(
        self,
        registry: Registry,
        settings: HubSettings,
        *,
        broker: BrokerAuth | Literal[_Default.FROM_SETTINGS] | None = FROM_SETTINGS,
        max_workers: int = DEFAULT_WORKERS,
    ) -> None:
        """``broker``: who keeps the broker's files; by default the one the settings describe
        (None when they name no broker files); None: nobody."""
        self.registry = registry
        self.settings = settings
        self.broker = BrokerAuth.from_settings(settings) if broker is FROM_SETTINGS else broker
        self.auth = DeviceAuthenticator(registry)
        self._executor = futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="hub-grpc"
        )
        self._server = grpc.server(
            self._executor,
            interceptors=[HubErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._port: int | None = None
        self._stopped = False
        self._servicers: list[tuple[Register, Any]] = []
        self.add_servicer(
            enrollment_pb2_grpc.add_EnrollmentServicer_to_server,
            EnrollmentServicer(registry, settings, auth=self.auth, broker=self.broker),
        )

    def add_servicer(self, register: Register, servicer: Any) -> None:
        """Add ``servicer`` with its generated ``add_XServicer_to_server``; before start()."""
        if self._port is not None or self._stopped:
            raise HubError("add servicers to the gRPC server before start()")
        self._servicers.append((register, servicer))

    def start(self) -> int:
        """Bind ``grpc_host:grpc_port`` (port 0: a free one), start serving; the port."""
        if self._port is not None or self._stopped:
            raise HubError("the hub's gRPC server was already started")
        self._sync_broker()
        for register, servicer in self._servicers:
            register(servicer, self._server)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        try:
            port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise Unavailable(f"the hub's gRPC server cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise Unavailable(f"the hub's gRPC server cannot listen on {address}")
        self._server.start()
        self._port = port
        log.info("gRPC listening on %s:%d", self.settings.grpc_host, port)
        return port

    @property
    def port(self) -> int:
        if self._port is None:
            raise HubError("the hub's gRPC server is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self.settings.grpc_host}:{self.port}"

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting calls, give running ones ``grace`` seconds, then end them."""
        if self._stopped:
            return
        self._stopped = True
        self._server.stop(grace).wait()
        self._executor.shutdown(wait=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout``); True if it stopped."""
        return bool(self._server.wait_for_termination(timeout))

    def __enter__(self) -> HubGrpcServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _sync_broker(self) -> None:
        if self.broker is None:
            return
        try:
            self.broker.sync(self.registry.db)
        except (HubError, OSError) as exc:
            log.error("the broker's files could not be brought in step at start: %s", exc)
