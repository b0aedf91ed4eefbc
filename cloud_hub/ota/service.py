"""The gRPC ``edgeloop.v1.Ota`` service: check-in, resumable chunked download, status report.

::

    servicer = OtaServicer(server.auth, RepositorySource(tuf_repository), rollouts)
    server.add_servicer(ota_pb2_grpc.add_OtaServicer_to_server, servicer)

Every call is authenticated (:meth:`DeviceAuthenticator.authenticate`), and a device may only
speak for itself. The service does no update logic of its own; it sits between the wire and
two seams:

- :class:`FileSource` gives the bytes ``Download`` streams: ``metadata/<file>`` and
  ``targets/<target path>`` from the hub's TUF repository (:class:`RepositorySource` adapts
  one with ``read_metadata``/``target_file``; :class:`DirectorySource` serves a folder).
- :class:`RolloutBackend` decides what a device should run (``CheckIn``), takes its status
  reports (``ReportStatus``) and may refuse a target the device is not assigned. Until
  rollouts are wired in, :class:`NoRollouts` assigns nothing and accepts every report.

``Download`` sends chunks of at most 1 MiB from ``offset``, never more than ``max_length``
bytes in all, with ``total_length`` in each chunk and ``last`` on the final one; it stops
reading as soon as the client goes away. Refusals are hub errors, turned into statuses by
the one table in :mod:`cloud_hub.grpc_errors`: a bad path is INVALID_ARGUMENT, an unknown
one NOT_FOUND, an offset past the end OUT_OF_RANGE, a target the device may not fetch
PERMISSION_DENIED, a file the hub cannot read UNAVAILABLE (the device retries).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import grpc

from edge_agent.wire import ota_pb2, ota_pb2_grpc

from ..errors import Forbidden, InvalidRequest, NotFound, OutOfRange, Unavailable
from ..grpc_auth import DeviceAuthenticator
from ..registry import Device

if TYPE_CHECKING:
    from ..grpc_server import HubGrpcServer

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 1024 * 1024  # the contract: no chunk carries more than 1 MiB
DEFAULT_CHECK_IN_S = 300
MAX_PATH_CHARS = 1024
MAX_TEXT_CHARS = 256
MAX_REASON_CHARS = 4096
ROOTS = ("metadata", "targets")

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_PHASES = {
    ota_pb2.UPDATE_PHASE_DOWNLOADING: "downloading",
    ota_pb2.UPDATE_PHASE_VERIFYING: "verifying",
    ota_pb2.UPDATE_PHASE_STAGED: "staged",
    ota_pb2.UPDATE_PHASE_HEALTH_CHECK: "health_check",
    ota_pb2.UPDATE_PHASE_INSTALLED: "installed",
    ota_pb2.UPDATE_PHASE_FAILED: "failed",
    ota_pb2.UPDATE_PHASE_ROLLED_BACK: "rolled_back",
}
PHASES = tuple(_PHASES.values())
_NEEDS_REASON = ("failed", "rolled_back")


# -- what the seams take and give -------------------------------------------------------------


@dataclass(frozen=True)
class StatusInfo:
    """A device's status report, off the wire. ``phase`` is one of :data:`PHASES`."""

    device_id: str
    rollout_id: str
    phase: str
    percent: int
    reason: str
    model_name: str
    model_version: str
    timestamp_ms: int


@dataclass(frozen=True)
class DeviceState:
    """What a device says about itself at check-in (empty strings for "none")."""

    device_id: str
    boot_id: str
    model_name: str
    model_version: str
    model_format: str
    slot: str
    profile: str
    free_disk_bytes: int
    agent_version: str
    last_status: StatusInfo | None


@dataclass(frozen=True)
class GateSpec:
    metric: str
    max_value: float | None = None
    min_value: float | None = None


@dataclass(frozen=True)
class AssignmentSpec:
    """The model a device should move to (see ``Assignment`` in ota.proto)."""

    rollout_id: str
    model_name: str
    model_version: str
    model_format: str
    target_path: str
    probation_seconds: int = 0
    gates: tuple[GateSpec, ...] = ()


@dataclass(frozen=True)
class CheckInAnswer:
    assignment: AssignmentSpec | None
    next_check_in_seconds: int = DEFAULT_CHECK_IN_S


class FileSource(Protocol):
    """Files of the hub's TUF repository by path: ``metadata/<file>``, ``targets/<path>``."""

    def open(self, path: str) -> tuple[BinaryIO, int]:
        """The file opened for reading and its length; :class:`NotFound` if there is none."""
        ...


class RolloutBackend(Protocol):
    """What the rollouts decide for the ``Ota`` service."""

    def check_in(self, device: Device, state: DeviceState) -> CheckInAnswer:
        """Record ``state``; the model ``device`` should move to, if any."""
        ...

    def report(self, device: Device, status: StatusInfo) -> tuple[bool, bool]:
        """Record a status report: ``(accepted, abort)`` (see ``StatusAck``)."""
        ...

    def may_fetch(self, device: Device, target_path: str) -> bool:
        """Whether ``device`` may download the target (it is, or was, assigned to it)."""
        ...


class NoRollouts:
    """The backend before rollouts exist: nothing is assigned, every report is accepted.

    Every authenticated device may fetch every target: targets are verified by signed
    metadata on the device, and no device is told to install one.
    """

    def __init__(self, next_check_in_seconds: int = DEFAULT_CHECK_IN_S) -> None:
        self.next_check_in_seconds = next_check_in_seconds
        self.reports: list[StatusInfo] = []  # the last few, for logs and tests
        self._keep = 100

    def check_in(self, device: Device, state: DeviceState) -> CheckInAnswer:
        return CheckInAnswer(None, self.next_check_in_seconds)

    def report(self, device: Device, status: StatusInfo) -> tuple[bool, bool]:
        self.reports = [*self.reports[-(self._keep - 1) :], status]
        return True, False

    def may_fetch(self, device: Device, target_path: str) -> bool:
        return True


# -- file sources -----------------------------------------------------------------------------


class DirectorySource:
    """Serves ``<root>/metadata/...`` and ``<root>/targets/...`` from a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def open(self, path: str) -> tuple[BinaryIO, int]:
        file = (self.root / check_path(path)).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            raise NotFound(f"the update repository has no file {path!r}")
        return _open(file, path)


class _Repository(Protocol):
    def read_metadata(self, name: str) -> bytes: ...

    def target_file(self, target_path: str) -> Path: ...


class RepositorySource:
    """A :class:`FileSource` over the hub's TUF repository (``read_metadata``, ``target_file``)."""

    def __init__(self, repository: _Repository) -> None:
        self.repository = repository

    def open(self, path: str) -> tuple[BinaryIO, int]:
        root, _, rest = check_path(path).partition("/")
        if root == "metadata":
            data = self.repository.read_metadata(rest)
            return io.BytesIO(data), len(data)
        return _open(self.repository.target_file(rest), path)


def _open(file: Path, path: str) -> tuple[BinaryIO, int]:
    try:
        handle = file.open("rb")
    except FileNotFoundError:
        raise NotFound(f"the update repository has no file {path!r}") from None
    except OSError as exc:
        raise Unavailable(f"cannot read {path!r} in the update repository: {exc}") from exc
    return handle, os.fstat(handle.fileno()).st_size


def check_path(path: str) -> str:
    """``path`` if it names a file under ``metadata/`` or ``targets/``; InvalidRequest if not."""
    if not path or len(path) > MAX_PATH_CHARS or _CONTROL.search(path):
        raise InvalidRequest(
            f"path {path[:80]!r}: expected 'metadata/<file>' or 'targets/<path>' of at most "
            f"{MAX_PATH_CHARS} characters, without control characters or backslashes"
        )
    parts = path.split("/")
    if parts[0] not in ROOTS or len(parts) < 2:
        raise InvalidRequest(f"path {path!r}: expected 'metadata/<file>' or 'targets/<path>'")
    if any(part in ("", ".", "..") for part in parts[1:]):
        raise InvalidRequest(f"path {path!r}: empty, '.' and '..' parts are not allowed")
    return path


# -- the service ------------------------------------------------------------------------------


class OtaServicer(ota_pb2_grpc.OtaServicer):
    """``edgeloop.v1.Ota``: CheckIn, Download, ReportStatus."""

    def __init__(
        self,
        auth: DeviceAuthenticator,
        files: FileSource,
        rollouts: RolloutBackend | None = None,
        *,
        chunk_bytes: int = MAX_CHUNK_BYTES,
    ) -> None:
        if not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes {chunk_bytes}: expected 1 to {MAX_CHUNK_BYTES}")
        self.auth = auth
        self.files = files
        self.rollouts: RolloutBackend = rollouts if rollouts is not None else NoRollouts()
        self.chunk_bytes = chunk_bytes

    def CheckIn(
        self, request: ota_pb2.CheckInRequest, context: grpc.ServicerContext
    ) -> ota_pb2.CheckInResponse:
        device = self.auth.authenticate(context)
        _check_self(device, request.device_id)
        last = request.last_status if request.HasField("last_status") else None
        state = DeviceState(
            device_id=device.id,
            boot_id=_text("boot_id", request.boot_id),
            model_name=_text("model_name", request.model_name),
            model_version=_text("model_version", request.model_version),
            model_format=_text("model_format", request.model_format),
            slot=_text("slot", request.slot),
            profile=_text("profile", request.profile),
            free_disk_bytes=request.free_disk_bytes,
            agent_version=_text("agent_version", request.agent_version),
            last_status=_status(device, last) if last is not None else None,
        )
        return _check_in_response(self.rollouts.check_in(device, state))

    def ReportStatus(
        self, request: ota_pb2.StatusReport, context: grpc.ServicerContext
    ) -> ota_pb2.StatusAck:
        device = self.auth.authenticate(context)
        status = _status(device, request)
        accepted, abort = self.rollouts.report(device, status)
        log.info(
            "device %s: rollout %s %s %d%% %s",
            device.id,
            status.rollout_id or "-",
            status.phase,
            status.percent,
            status.reason,
        )
        return ota_pb2.StatusAck(accepted=accepted, abort=abort)

    def Download(
        self, request: ota_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[ota_pb2.DownloadChunk]:
        device = self.auth.authenticate(context)
        path = check_path(request.path)
        if path.startswith("targets/") and not self.rollouts.may_fetch(
            device, path.removeprefix("targets/")
        ):
            raise Forbidden(f"device {device.id} is not assigned {path!r}")
        handle, total = self.files.open(path)
        with handle:
            yield from self._chunks(handle, total, request, context)

    def _chunks(
        self,
        handle: BinaryIO,
        total: int,
        request: ota_pb2.DownloadRequest,
        context: grpc.ServicerContext,
    ) -> Iterator[ota_pb2.DownloadChunk]:
        path, offset = request.path, request.offset
        if offset > total:
            raise OutOfRange(f"offset {offset} is past the end of {path!r} ({total} bytes)")
        end = total if request.max_length == 0 else min(total, offset + request.max_length)
        if offset == end:
            yield ota_pb2.DownloadChunk(offset=offset, total_length=total, last=True)
            return
        try:
            handle.seek(offset)
        except OSError as exc:
            raise Unavailable(f"cannot read {path!r} in the update repository: {exc}") from exc
        position = offset
        while position < end:
            if not context.is_active():
                log.info("Download %s: the client went away at byte %d", path, position)
                return
            data = _read(handle, min(self.chunk_bytes, end - position), path)
            if not data:
                raise Unavailable(f"{path!r} ended at byte {position}, before its {total} bytes")
            yield ota_pb2.DownloadChunk(
                offset=position,
                data=data,
                total_length=total,
                last=position + len(data) >= end,
            )
            position += len(data)


def _read(handle: BinaryIO, size: int, path: str) -> bytes:
    """Up to ``size`` bytes; fewer only at the end of the file."""
    parts: list[bytes] = []
    wanted = size
    try:
        while wanted > 0:
            data = handle.read(wanted)
            if not data:
                break
            parts.append(data)
            wanted -= len(data)
    except OSError as exc:
        raise Unavailable(f"cannot read {path!r} in the update repository: {exc}") from exc
    return b"".join(parts)


def _check_self(device: Device, claimed: str) -> None:
    if claimed and claimed != device.id:
        raise Forbidden(f"device {device.id} cannot speak for device {claimed[:80]!r}")


def _text(field: str, value: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if len(value) > max_chars:
        raise InvalidRequest(f"{field} is longer than {max_chars} characters")
    return value.strip()


def _status(device: Device, report: ota_pb2.StatusReport) -> StatusInfo:
    _check_self(device, report.device_id)
    phase = _PHASES.get(report.phase)
    if phase is None:
        raise InvalidRequest(
            f"phase {report.phase}: expected one of {', '.join(p.upper() for p in PHASES)}"
        )
    if report.percent > 100:
        raise InvalidRequest(f"percent {report.percent}: expected 0 to 100")
    reason = _text("reason", report.reason, MAX_REASON_CHARS)
    if phase in _NEEDS_REASON and not reason:
        raise InvalidRequest(f"a {phase.upper()} report needs a reason")
    return StatusInfo(
        device_id=device.id,
        rollout_id=_text("rollout_id", report.rollout_id),
        phase=phase,
        percent=report.percent,
        reason=reason,
        model_name=_text("model_name", report.model_name),
        model_version=_text("model_version", report.model_version),
        timestamp_ms=report.timestamp_ms,
    )


def _check_in_response(answer: CheckInAnswer) -> ota_pb2.CheckInResponse:
    response = ota_pb2.CheckInResponse(next_check_in_seconds=answer.next_check_in_seconds)
    spec = answer.assignment
    if spec is not None:
        response.assignment.CopyFrom(
            ota_pb2.Assignment(
                rollout_id=spec.rollout_id,
                model_name=spec.model_name,
                model_version=spec.model_version,
                model_format=spec.model_format,
                target_path=spec.target_path,
                probation_seconds=spec.probation_seconds,
                gates=[
                    ota_pb2.Gate(metric=g.metric, max_value=g.max_value, min_value=g.min_value)
                    for g in spec.gates
                ],
            )
        )
    return response


def add_ota_service(
    server: HubGrpcServer,
    files: FileSource,
    rollouts: RolloutBackend | None = None,
    *,
    chunk_bytes: int = MAX_CHUNK_BYTES,
) -> OtaServicer:
    """Register the ``Ota`` service on the hub's gRPC server (before it starts)."""
    servicer = OtaServicer(server.auth, files, rollouts, chunk_bytes=chunk_bytes)
    server.add_servicer(ota_pb2_grpc.add_OtaServicer_to_server, servicer)
    return servicer


__all__ = [
    "DEFAULT_CHECK_IN_S",
    "MAX_CHUNK_BYTES",
    "PHASES",
    "AssignmentSpec",
    "CheckInAnswer",
    "DeviceState",
    "DirectorySource",
    "FileSource",
    "GateSpec",
    "NoRollouts",
    "OtaServicer",
    "RepositorySource",
    "RolloutBackend",
    "StatusInfo",
    "add_ota_service",
    "check_path",
]
