"""The device's side of ``edgeloop.v1.Ota``: check in, download in resumable chunks, report.

::

    with OtaClient(identity.hub, identity) as hub:
        assignment, next_s = hub.check_in(DeviceState(boot_id=boot_id, profile="raspberry-pi-5"))
        hub.download_to("targets/models/digits/1.1.0/digits.onnx", slot / "model.onnx.partial",
                        expected_length=length_from_signed_metadata, progress=show)
        ack = hub.report(Phase.INSTALLED, rollout_id=assignment.rollout_id)
        updater = TrustedUpdater(state_dir, hub.fetcher())   # TUF metadata over the same calls

Every call carries the device credential (:func:`edge_agent.enroll.device_metadata`).

Downloads never trust the hub with a length: ``download_to`` takes the length the signed
metadata gives and refuses (:class:`~edge_agent.errors.IntegrityError`) as soon as the hub
announces or sends anything else, cutting the stream without writing a byte past the cap;
``fetch`` does the same with TUF's ``max_length``. A partial file is resumed from its size.
Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, a stream
that ends without its last chunk) are retried with exponential backoff and jitter, each
retry resuming where the last stopped; :class:`Retry` bounds the failures in a row without
progress, then :class:`~edge_agent.errors.TransportError`. A refusal by the hub (bad
credential, revoked device, bad request) is :class:`HubRefused` at once; an unknown path is
:class:`NotOnHub` (the TUF fetcher's 404).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from .. import __version__
from ..enroll import device_metadata
from ..errors import EdgeAgentError, IntegrityError, TransportError
from ..identity import Identity
from ..wire import ota_pb2, ota_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CHECK_IN_S = 300
MAX_CHUNK_BYTES = 1024 * 1024
# A download's deadline is timeout_s plus its bytes at this rate; a slower link is cut and
# resumed, so it still progresses.
MIN_RATE_BYTES_S = 64 * 1024
_UNKNOWN_LENGTH_BYTES = 1024 * 1024
_MAX_EMPTY_CHUNKS = 16
_ROOTS = ("metadata/", "targets/")
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)

Fetch = Callable[[str, "int | None"], Iterator[bytes]]
Progress = Callable[[int, int], None]
_Response = TypeVar("_Response")


class HubRefused(EdgeAgentError):
    """The hub refused the call: unknown or revoked credential, or a request it rejects."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code  # the gRPC status name, e.g. "PERMISSION_DENIED"


class NotOnHub(HubRefused):
    """The hub has no file at the path asked for (NOT_FOUND)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message, "NOT_FOUND")
        self.path = path


class Phase(str, enum.Enum):
    """Where an update stands (``UpdatePhase`` in ota.proto)."""

    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    HEALTH_CHECK = "health_check"
    INSTALLED = "installed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


_WIRE_PHASES = {
    Phase.DOWNLOADING: ota_pb2.UPDATE_PHASE_DOWNLOADING,
    Phase.VERIFYING: ota_pb2.UPDATE_PHASE_VERIFYING,
    Phase.STAGED: ota_pb2.UPDATE_PHASE_STAGED,
    Phase.HEALTH_CHECK: ota_pb2.UPDATE_PHASE_HEALTH_CHECK,
    Phase.INSTALLED: ota_pb2.UPDATE_PHASE_INSTALLED,
    Phase.FAILED: ota_pb2.UPDATE_PHASE_FAILED,
    Phase.ROLLED_BACK: ota_pb2.UPDATE_PHASE_ROLLED_BACK,
}


@dataclass(frozen=True)
class Retry:
    """Backoff for transient failures: ``attempts`` failures in a row without progress."""

    attempts: int = 6
    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_s < 0 or self.max_s < self.initial_s:
            raise ValueError(f"{self}: expected attempts >= 1 and 0 <= initial_s <= max_s")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"{self}: expected multiplier >= 1 and 0 <= jitter < 1")

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, failures - 1))
        return base * (1 + self.jitter * (2 * rand() - 1))


def with_jitter(
    seconds: float, spread: float = 0.2, rand: Callable[[], float] = random.random
) -> float:
    """``seconds`` moved by up to +-``spread`` of itself, so a fleet does not check in at once."""
    return seconds * (1 + spread * (2 * rand() - 1))


@dataclass(frozen=True)
class StatusReport:
    rollout_id: str
    phase: Phase
    percent: int = 0
    reason: str = ""
    model_name: str = ""
    model_version: str = ""
    timestamp_ms: int = 0  # 0: now


@dataclass(frozen=True)
class StatusAck:
    accepted: bool  # False: the hub does not know the rollout
    abort: bool  # True: drop the update, keep or restore the last good model


@dataclass(frozen=True)
class DeviceState:
    """What the device says about itself at check-in; empty strings for "nothing"."""

    boot_id: str
    model_name: str = ""
    model_version: str = ""
    model_format: str = ""
    slot: str = ""
    profile: str = ""
    free_disk_bytes: int = 0
    agent_version: str = __version__
    last_status: StatusReport | None = None  # None: the last one this client sent, if any


@dataclass(frozen=True)
class Gate:
    metric: str
    max_value: float | None = None
    min_value: float | None = None


@dataclass(frozen=True)
class Assignment:
    """The model the hub wants this device to run."""

    rollout_id: str
    model_name: str
    model_version: str
    model_format: str
    target_path: str
    probation_seconds: int
    gates: tuple[Gate, ...]


class OtaClient:
    """One device's calls to the hub's ``Ota`` service over one channel."""

    def __init__(
        self,
        hub: str,
        identity: Identity,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        chunk_retry: Retry = Retry(),  # frozen: one shared default is safe
        min_rate_bytes_s: int = MIN_RATE_BYTES_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if timeout_s <= 0 or min_rate_bytes_s <= 0:
            raise ValueError("timeout_s and min_rate_bytes_s must be more than 0")
        self.hub = hub
        self.identity = identity
        self.timeout_s = timeout_s
        self.retry = chunk_retry
        self.min_rate_bytes_s = min_rate_bytes_s
        self.last_status: StatusReport | None = None
        self._sleep = sleep
        self._metadata = device_metadata(identity)
        self._channel = grpc.insecure_channel(hub)
        self._stub = ota_pb2_grpc.OtaStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> OtaClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- check-in and status ------------------------------------------------------------------

    def check_in(self, state: DeviceState) -> tuple[Assignment | None, int]:
        """The model to move to (None: keep what runs) and seconds until the next check-in.

        The seconds are the hub's; add jitter (:func:`with_jitter`) before sleeping.
        """
        last = state.last_status if state.last_status is not None else self.last_status
        request = ota_pb2.CheckInRequest(
            device_id=self.identity.device_id,
            boot_id=state.boot_id,
            model_name=state.model_name,
            model_version=state.model_version,
            model_format=state.model_format,
            slot=state.slot,
            profile=state.profile,
            free_disk_bytes=state.free_disk_bytes,
            agent_version=state.agent_version,
            last_status=self._wire_report(last) if last is not None else None,
        )
        response = self._unary(self._stub.CheckIn, request, "check in")
        assignment = _assignment(response.assignment) if response.HasField("assignment") else None
        return assignment, response.next_check_in_seconds or DEFAULT_CHECK_IN_S

    def report(
        self,
        phase: Phase | str,
        *,
        rollout_id: str,
        percent: int = 0,
        reason: str = "",
        model_name: str = "",
        model_version: str = "",
        timestamp_ms: int = 0,
    ) -> StatusAck:
        """Report where an update stands; the hub's answer (``abort``: drop the update)."""
        status = StatusReport(
            rollout_id=rollout_id,
            phase=Phase(phase),
            percent=percent,
            reason=reason,
            model_name=model_name,
            model_version=model_version,
            timestamp_ms=timestamp_ms or int(time.time() * 1000),
        )
        self.last_status = status
        ack = self._unary(self._stub.ReportStatus, self._wire_report(status), "report status")
        return StatusAck(accepted=ack.accepted, abort=ack.abort)

    # -- downloads ----------------------------------------------------------------------------

    def download_to(
        self,
        path_in_repo: str,
        dest: Path,
        *,
        expected_length: int,
        progress: Progress | None = None,
    ) -> int:
        """Download the file at ``path_in_repo`` into ``dest``, resuming a partial ``dest``.

        ``path_in_repo`` is ``targets/<target path>`` or ``metadata/<file>``; a bare target
        path (``models/...``) means ``targets/<it>``. ``expected_length`` is the length the
        signed metadata gives: the hub must have exactly that many bytes, and nothing past it
        is written. ``progress(done, expected_length)`` follows every chunk. Returns the
        length; the file is fsynced. Verifying the content is the caller's (TUF) job.
        """
        path = _repo_path(
            path_in_repo if path_in_repo.startswith(_ROOTS) else "targets/" + path_in_repo
        )
        if expected_length < 0:
            raise ValueError(f"expected_length {expected_length}: expected 0 or more")
        done = _partial_size(dest, expected_length)
        if done == expected_length:
            return done
        chunks = self._stream(path, done, expected_length, exact=True)
        with dest.open("ab") as out, contextlib.closing(chunks):  # closing cancels the call
            try:
                for data in chunks:
                    out.write(data)
                    done += len(data)
                    if progress is not None:
                        progress(done, expected_length)
            finally:
                out.flush()
                os.fsync(out.fileno())
        return done

    def fetch(self, url_path: str, max_length: int | None) -> Iterator[bytes]:
        """The bytes of ``url_path`` (``metadata/...`` or ``targets/...``) as they arrive.

        More than ``max_length`` bytes (when given) is an :class:`IntegrityError`, raised
        before the excess is yielded; an unknown path is :class:`NotOnHub`.
        """
        if max_length is not None and max_length < 0:
            raise ValueError(f"max_length {max_length}: expected 0 or more")
        return self._stream(_repo_path(url_path.lstrip("/")), 0, max_length, exact=False)

    def fetcher(self) -> Fetch:
        """``fetch`` for the TUF updater: ``(url_path, max_length) -> Iterator[bytes]``."""
        return self.fetch

    def _stream(
        self, path: str, offset: int, cap: int | None, *, exact: bool
    ) -> Generator[bytes, None, None]:
        """Chunks of ``path`` from ``offset``, resumed across transient failures."""
        failures = 0
        while True:
            check = _ChunkCheck(path, offset, cap, exact=exact)
            remaining = None if cap is None else max(cap - offset, 1)
            request = ota_pb2.DownloadRequest(path=path, offset=offset, max_length=remaining or 0)
            call = self._stub.Download(
                request, metadata=self._metadata, timeout=self._deadline(remaining)
            )
            try:
                for chunk in call:
                    data = check.accept(chunk)
                    if data:
                        offset += len(data)
                        yield data
                    if chunk.last:
                        check.finish()
                        return
                problem = f"the stream ended at byte {offset} before its last chunk"
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in _TRANSIENT:
                    raise _refused(exc, f"downloading {path}", self.hub, path) from None
                problem = f"{code.name}: {exc.details()}"
            finally:
                call.cancel()  # cuts the stream when we stop early; nothing once it is done
            failures = 1 if check.progressed else failures + 1
            if failures >= self.retry.attempts:
                raise TransportError(
                    f"downloading {path} from the hub at {self.hub} failed {failures} times "
                    f"in a row at byte {offset}: {problem}"
                )
            delay = self.retry.delay(failures)
            log.info(
                "downloading %s: %s; resuming at byte %d in %.1f s", path, problem, offset, delay
            )
            self._sleep(delay)

    def _deadline(self, length: int | None) -> float:
        expected = _UNKNOWN_LENGTH_BYTES if length is None else length
        return self.timeout_s + expected / self.min_rate_bytes_s

    # -- plumbing -----------------------------------------------------------------------------

    def _unary(self, method: Callable[..., _Response], request: Any, what: str) -> _Response:
        failures = 0
        while True:
            try:
                return method(request, metadata=self._metadata, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in _TRANSIENT:
                    raise _refused(exc, what, self.hub) from None
                failures += 1
                if failures >= self.retry.attempts:
                    raise TransportError(
                        f"{what}: the hub at {self.hub} failed {failures} times in a row "
                        f"({code.name}: {exc.details()})"
                    ) from None
                self._sleep(self.retry.delay(failures))

    def _wire_report(self, status: StatusReport) -> ota_pb2.StatusReport:
        return ota_pb2.StatusReport(
            device_id=self.identity.device_id,
            rollout_id=status.rollout_id,
            phase=_WIRE_PHASES[status.phase],
            percent=status.percent,
            reason=status.reason,
            model_name=status.model_name,
            model_version=status.model_version,
            timestamp_ms=status.timestamp_ms,
        )


class _ChunkCheck:
    """Checks each chunk of one Download call against what was asked and what is allowed."""

    def __init__(self, path: str, offset: int, cap: int | None, *, exact: bool) -> None:
        self.path = path
        self.offset = offset
        self.cap = cap
        self.exact = exact
        self.total: int | None = None
        self.progressed = False
        self._empty = 0

    def accept(self, chunk: ota_pb2.DownloadChunk) -> bytes:
        """The chunk's data if it is the next piece and within bounds; IntegrityError if not."""
        data: bytes = chunk.data
        self._check_total(chunk.total_length)
        if chunk.offset != self.offset:
            self._fail(f"a chunk at byte {chunk.offset} where byte {self.offset} was next")
        if len(data) > MAX_CHUNK_BYTES:
            self._fail(f"a chunk of {len(data)} bytes (at most {MAX_CHUNK_BYTES} allowed)")
        end = self.offset + len(data)
        if self.cap is not None and end > self.cap:
            self._fail(f"more than the {self.cap} bytes the signed metadata allows")
        if self.total is not None and end > self.total:
            self._fail(f"more than the {self.total} bytes it announced")
        self._empty = 0 if data else self._empty + 1
        if self._empty > _MAX_EMPTY_CHUNKS:
            self._fail(f"{self._empty} empty chunks in a row")
        self.offset = end
        self.progressed = self.progressed or bool(data)
        return data

    def finish(self) -> None:
        """The call's last chunk came: for an exact download, every byte must be here."""
        if self.exact and self.offset != self.cap:
            self._fail(f"its last chunk at byte {self.offset} of {self.cap}")

    def _check_total(self, total: int) -> None:
        if self.total is not None and total != self.total:
            self._fail(f"a total length of {total} after {self.total}")
        self.total = total
        if self.cap is None:
            return
        if total > self.cap or (self.exact and total != self.cap):
            self._fail(f"a file of {total} bytes where the signed metadata says {self.cap}")

    def _fail(self, what: str) -> None:
        raise IntegrityError(f"the hub sent {what} for {self.path}; nothing more is accepted")


def _repo_path(path: str) -> str:
    if not path.startswith(_ROOTS) or ".." in path.split("/"):
        raise ValueError(f"path {path!r}: expected 'metadata/<file>' or 'targets/<path>'")
    return path


def _partial_size(dest: Path, expected_length: int) -> int:
    """Bytes of ``dest`` already here; a partial longer than allowed is discarded."""
    try:
        size = dest.stat().st_size
    except FileNotFoundError:
        return 0
    if size > expected_length:
        log.warning(
            "%s holds %d bytes, more than the %d expected: starting over",
            dest,
            size,
            expected_length,
        )
        with dest.open("r+b") as out:
            out.truncate(0)
            os.fsync(out.fileno())
        return 0
    return size


def _refused(exc: grpc.RpcError, what: str, hub: str, path: str | None = None) -> EdgeAgentError:
    code, details = exc.code(), (exc.details() or "").strip()
    message = f"{what}: the hub at {hub} answered {code.name}: {details or 'no reason given'}"
    if code == grpc.StatusCode.NOT_FOUND and path is not None:
        return NotOnHub(message, path)
    if code in _REFUSALS:
        return HubRefused(message, code.name)
    return TransportError(message)


def _assignment(wire: ota_pb2.Assignment) -> Assignment:
    return Assignment(
        rollout_id=wire.rollout_id,
        model_name=wire.model_name,
        model_version=wire.model_version,
        model_format=wire.model_format,
        target_path=wire.target_path,
        probation_seconds=wire.probation_seconds,
        gates=tuple(
            Gate(
                metric=gate.metric,
                max_value=gate.max_value if gate.HasField("max_value") else None,
                min_value=gate.min_value if gate.HasField("min_value") else None,
            )
            for gate in wire.gates
        ),
    )


__all__ = [
    "DEFAULT_CHECK_IN_S",
    "DEFAULT_TIMEOUT_S",
    "Assignment",
    "DeviceState",
    "Fetch",
    "Gate",
    "HubRefused",
    "NotOnHub",
    "OtaClient",
    "Phase",
    "Retry",
    "StatusAck",
    "StatusReport",
    "with_jitter",
]
