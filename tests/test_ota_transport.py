"""The OTA transport: the hub's ``edgeloop.v1.Ota`` service and the agent's ``OtaClient``.

A real hub gRPC server on a free loopback port over a real registry (SQLite in tmp_path),
a device enrolled with a real token, real files in a repository folder. Faults are made at
seams we own: ``FileSource`` wrappers that cut a stream or fail every second call, a
``RolloutBackend`` that fails every second call, and a hostile ``Ota`` servicer that sends
more than it may.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

import grpc
import pytest

from cloud_hub.errors import Unavailable
from cloud_hub.grpc_server import HubGrpcServer
from cloud_hub.ota.service import (
    AssignmentSpec,
    CheckInAnswer,
    DeviceState,
    DirectorySource,
    FileSource,
    GateSpec,
    NoRollouts,
    OtaServicer,
    StatusInfo,
    add_ota_service,
)
from cloud_hub.registry import Device, Registry
from cloud_hub.settings import HubSettings, load_settings
from edge_agent.enroll import device_metadata, enroll
from edge_agent.errors import IntegrityError, TransportError
from edge_agent.identity import Identity
from edge_agent.ota import client as ota_client
from edge_agent.ota.client import HubRefused, NotOnHub, OtaClient, Phase, Retry
from edge_agent.wire import ota_pb2, ota_pb2_grpc

MiB = 1024 * 1024
FLEET = "lab"
PROFILE = "x86-64-cpu"  # named, so enrolling detects no hardware
TARGET = "models/digits/1.1.0/digits.onnx"
FAST_RETRY = Retry(attempts=4, initial_s=0.01, max_s=0.05)
DEADLINE_S = 60.0


@pytest.fixture
def settings(tmp_path: Path) -> HubSettings:
    return load_settings(
        data_dir=tmp_path / "hub",
        database_url=f"sqlite:///{tmp_path / 'hub.db'}",
        grpc_port=0,
    )


@pytest.fixture
def registry(settings: HubSettings) -> Iterator[Registry]:
    with Registry.open(settings) as opened:
        opened.create_fleet(FLEET)
        yield opened


@pytest.fixture
def blob() -> bytes:
    """3.5 MiB that differ everywhere, so a byte in the wrong place shows."""
    return (bytes(range(256)) * (7 * MiB // 2 // 256 + 1))[: 7 * MiB // 2]


@pytest.fixture
def repo(tmp_path: Path, blob: bytes) -> Path:
    root = tmp_path / "repo"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "timestamp.json").write_bytes(b'{"signed": {"version": 7}}')
    target = root / "targets" / TARGET
    target.parent.mkdir(parents=True)
    target.write_bytes(blob)
    (tmp_path / "secret.txt").write_text("hub secrets")
    return root


@contextmanager
def running_hub(
    registry: Registry,
    settings: HubSettings,
    files: FileSource,
    rollouts: Any = None,
    *,
    chunk_bytes: int = MiB,
) -> Iterator[tuple[HubGrpcServer, OtaServicer]]:
    server = HubGrpcServer(registry, settings, broker=None, max_workers=4)
    servicer = add_ota_service(server, files, rollouts, chunk_bytes=chunk_bytes)
    server.start()
    try:
        yield server, servicer
    finally:
        server.stop(grace=None)


def enroll_device(server: HubGrpcServer, registry: Registry) -> Identity:
    """A device enrolled the way a real one is: a token, a key, the Enroll call."""
    token = registry.create_enrollment_token(FLEET, ttl=timedelta(hours=1), uses=1).token
    with tempfile.TemporaryDirectory(prefix="device-") as state_dir:
        hub = f"127.0.0.1:{server.port}"
        return enroll(hub, token, Path(state_dir), profile=PROFILE, hostname="pi-1").identity


@contextmanager
def client_for(identity: Identity, **options: Any) -> Iterator[OtaClient]:
    options.setdefault("chunk_retry", FAST_RETRY)
    with OtaClient(identity.hub, identity, **options) as client:
        yield client


def download(
    identity: Identity, path: str, offset: int = 0, max_length: int = 0, metadata: Any = None
) -> list[ota_pb2.DownloadChunk]:
    """Every chunk of one raw Download call."""
    with grpc.insecure_channel(identity.hub) as channel:
        stub = ota_pb2_grpc.OtaStub(channel)
        request = ota_pb2.DownloadRequest(path=path, offset=offset, max_length=max_length)
        call = stub.Download(
            request,
            metadata=device_metadata(identity) if metadata is None else metadata,
            timeout=60,
        )
        return list(call)


def refused_code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    code: grpc.StatusCode = failed.value.code()
    return code


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- seams we own, made to misbehave ----------------------------------------------------------


class _Handle:
    """A file handle that records where it was read and can break after some bytes."""

    def __init__(self, inner: Any, log: Recording, fail_after: int | None) -> None:
        self.inner = inner
        self.log = log
        self.fail_after = fail_after
        self.read_bytes = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        self.log.seeks.append(offset)
        return int(self.inner.seek(offset, whence))

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.read_bytes >= self.fail_after:
            raise ConnectionResetError("the disk went away (test)")
        data: bytes = self.inner.read(size)
        self.read_bytes += len(data)
        self.log.read_bytes += len(data)
        return data

    def close(self) -> None:
        self.inner.close()
        self.log.closed += 1

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Recording:
    """A FileSource over another that records opens, seeks and reads, and injects faults.

    ``cut_after``: each opened file breaks after that many bytes, on the first ``cuts`` opens.
    ``fail_odd``: every odd-numbered open (1st, 3rd, ...) is refused UNAVAILABLE.
    """

    def __init__(
        self,
        inner: FileSource,
        *,
        cut_after: int | None = None,
        cuts: int = 0,
        fail_odd: bool = False,
    ) -> None:
        self.inner = inner
        self.cut_after = cut_after
        self.cuts = cuts
        self.fail_odd = fail_odd
        self.opens = 0
        self.seeks: list[int] = []
        self.read_bytes = 0
        self.closed = 0
        self._lock = threading.Lock()

    def open(self, path: str) -> tuple[BinaryIO, int]:
        with self._lock:
            self.opens += 1
            number = self.opens
        if self.fail_odd and number % 2 == 1:
            raise Unavailable(f"open #{number} of {path} fails (test)")
        handle, total = self.inner.open(path)
        cut = self.cut_after if (self.cuts < 0 or number <= self.cuts) else None
        return cast(BinaryIO, _Handle(handle, self, cut)), total


class _Zeros:
    def read(self, size: int) -> bytes:
        return bytes(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return offset

    def close(self) -> None:
        pass


class Huge:
    """A FileSource whose every file is 1 GiB of zeros; counts reads and closes."""

    LENGTH = 1024 * MiB

    def __init__(self) -> None:
        self.log = Recording(self)

    def open(self, path: str) -> tuple[BinaryIO, int]:
        return cast(BinaryIO, _Handle(_Zeros(), self.log, None)), self.LENGTH


class FlakyRollouts(NoRollouts):
    """NoRollouts that fails every odd-numbered call, or assigns a model when told."""

    def __init__(self, *, fail_odd: bool = False, assignment: AssignmentSpec | None = None) -> None:
        super().__init__(next_check_in_seconds=120)
        self.fail_odd = fail_odd
        self.assignment = assignment
        self.calls = 0
        self.states: list[DeviceState] = []

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.fail_odd and self.calls % 2 == 1:
            raise Unavailable(f"call #{self.calls} fails (test)")

    def check_in(self, device: Device, state: DeviceState) -> CheckInAnswer:
        self._maybe_fail()
        self.states.append(state)
        return CheckInAnswer(self.assignment, self.next_check_in_seconds)

    def report(self, device: Device, status: StatusInfo) -> tuple[bool, bool]:
        self._maybe_fail()
        return super().report(device, status)


class Endless(ota_pb2_grpc.OtaServicer):
    """A hostile hub: streams chunks forever, announcing ``announced`` as the total."""

    def __init__(self, announced: int, chunk: int = 64 * 1024) -> None:
        self.announced = announced
        self.chunk = chunk
        self.sent = 0
        self.stopped = threading.Event()

    def Download(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        offset = request.offset
        try:
            while context.is_active():
                yield ota_pb2.DownloadChunk(
                    offset=offset, data=b"\xee" * self.chunk, total_length=self.announced
                )
                offset += self.chunk
                self.sent += 1
        finally:
            self.stopped.set()


@contextmanager
def hostile_hub(servicer: Endless) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ota_pb2_grpc.add_OtaServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()


# -- chunking and resuming --------------------------------------------------------------------


def test_a_file_arrives_in_chunks_of_at_most_1_mib_with_its_length_and_a_last_mark(
    registry: Registry, settings: HubSettings, repo: Path, blob: bytes, tmp_path: Path
) -> None:
    with running_hub(registry, settings, DirectorySource(repo)) as (server, _):
        device = enroll_device(server, registry)
        chunks = download(device, f"targets/{TARGET}")
        seen: list[tuple[int, int]] = []
        dest = tmp_path / "slot" / "digits.onnx.partial"
        dest.parent.mkdir()
        with client_for(device) as client:
            length = client.download_to(
                f"targets/{TARGET}",
                dest,
                expected_length=len(blob),
                progress=lambda done, total: seen.append((done, total)),
            )
            metadata = b"".join(client.fetcher()("metadata/timestamp.json", 1000))

    assert [len(c.data) for c in chunks] == [MiB, MiB, MiB, MiB // 2]
    assert [c.offset for c in chunks] == [0, MiB, 2 * MiB, 3 * MiB]
    assert {c.total_length for c in chunks} == {len(blob)}
    assert [c.last for c in chunks] == [False, False, False, True]
    assert b"".join(c.data for c in chunks) == blob
    assert length == len(blob)
    assert dest.read_bytes() == blob
    assert seen[-1] == (len(blob), len(blob))
    assert metadata == (repo / "metadata" / "timestamp.json").read_bytes()


def test_a_download_starts_at_its_offset_and_honours_max_length(
    registry: Registry, settings: HubSettings, repo: Path, blob: bytes, tmp_path: Path
) -> None:
    files = Recording(DirectorySource(repo))
    with running_hub(registry, settings, files, chunk_bytes=256 * 1024) as (server, _):
        device = enroll_device(server, registry)
        middle = download(device, f"targets/{TARGET}", offset=MiB + 100, max_length=MiB)
        at_end = download(device, f"targets/{TARGET}", offset=len(blob))
        past_end = refused_code(lambda: download(device, f"targets/{TARGET}", offset=len(blob) + 1))

        dest = tmp_path / "partial"
        dest.write_bytes(blob[: 5 * MiB // 4])
        files.read_bytes, files.seeks = 0, []
        with client_for(device) as client:
            client.download_to(TARGET, dest, expected_length=len(blob))

    assert b"".join(c.data for c in middle) == blob[MiB + 100 : 2 * MiB + 100]
    assert all(len(c.data) <= 256 * 1024 for c in middle) and middle[-1].last
    assert [(c.offset, c.data, c.last, c.total_length) for c in at_end] == [
        (len(blob), b"", True, len(blob))
    ]
    assert past_end == grpc.StatusCode.OUT_OF_RANGE
    assert dest.read_bytes() == blob
    assert files.seeks == [5 * MiB // 4]  # resumed where the partial file ended
    assert files.read_bytes == len(blob) - 5 * MiB // 4


def test_a_download_cut_mid_stream_resumes_from_its_offset(
    registry: Registry, settings: HubSettings, repo: Path, blob: bytes, tmp_path: Path
) -> None:
    files = Recording(DirectorySource(repo), cut_after=MiB + 1000, cuts=1)
    with running_hub(registry, settings, files, chunk_bytes=256 * 1024) as (server, _):
        device = enroll_device(server, registry)
        dest = tmp_path / "digits.partial"
        with client_for(device) as client:
            client.download_to(TARGET, dest, expected_length=len(blob))

    assert dest.read_bytes() == blob
    assert files.opens == 2
    # The first call sent five whole chunks (the fifth read crossed the cut, the sixth
    # failed); the second call began where they ended.
    assert files.seeks == [0, 5 * 256 * 1024]


def test_a_server_failing_every_second_request_still_completes(
    registry: Registry, settings: HubSettings, repo: Path, blob: bytes, tmp_path: Path
) -> None:
    files = Recording(DirectorySource(repo), cut_after=MiB, cuts=-1, fail_odd=True)
    rollouts = FlakyRollouts(fail_odd=True)
    with running_hub(registry, settings, files, rollouts, chunk_bytes=512 * 1024) as (server, _):
        device = enroll_device(server, registry)
        dest = tmp_path / "digits.partial"
        with client_for(device) as client:
            client.download_to(TARGET, dest, expected_length=len(blob))
            metadata = b"".join(client.fetch("metadata/timestamp.json", 1000))
            assignment, next_s = client.check_in(ota_client.DeviceState(boot_id="b1"))
            ack = client.report(Phase.DOWNLOADING, rollout_id="r-1", percent=100)

    assert dest.read_bytes() == blob
    assert files.opens >= 8  # 4 good calls of at most 1 MiB each, a failed one before each
    assert metadata == (repo / "metadata" / "timestamp.json").read_bytes()
    assert (assignment, next_s) == (None, 120)
    assert ack.accepted and not ack.abort
    assert rollouts.calls == 4


def test_a_client_gives_up_after_its_retries_with_a_transport_error(
    registry: Registry, settings: HubSettings, repo: Path, tmp_path: Path
) -> None:
    files = Recording(DirectorySource(repo), cut_after=0, cuts=-1)
    with running_hub(registry, settings, files) as (server, _):
        device = enroll_device(server, registry)
        with client_for(device) as client, pytest.raises(TransportError, match="4 times"):
            client.download_to(TARGET, tmp_path / "x", expected_length=7 * MiB // 2)
    assert files.opens == FAST_RETRY.attempts


# -- the length cap ---------------------------------------------------------------------------


def test_a_file_longer_than_the_signed_length_is_refused_before_a_byte_is_written(
    registry: Registry, settings: HubSettings, repo: Path, tmp_path: Path
) -> None:
    with running_hub(registry, settings, DirectorySource(repo)) as (server, _):
        device = enroll_device(server, registry)
        dest = tmp_path / "digits.partial"
        with client_for(device) as client:
            with pytest.raises(IntegrityError, match="signed metadata says 1000"):
                client.download_to(TARGET, dest, expected_length=1000)
            with pytest.raises(IntegrityError, match="signed metadata says 10"):
                b"".join(client.fetch("metadata/timestamp.json", 10))
    assert dest.read_bytes() == b""


@pytest.mark.parametrize("announced", [200_000, 0])
def test_a_server_streaming_more_than_the_signed_length_is_cut_off_at_the_cap(
    announced: int, tmp_path: Path
) -> None:
    """The hub lies about the length (or says nothing) and streams forever."""
    cap = 200_000
    hostile = Endless(announced=announced)
    identity = Identity(device_id="dev-1", fleet=FLEET, hub="", credential="s")
    with hostile_hub(hostile) as address:
        dest = tmp_path / "model.partial"
        with OtaClient(address, identity, chunk_retry=FAST_RETRY) as client:
            with pytest.raises(IntegrityError, match=r"more than|signed metadata says"):
                client.download_to(TARGET, dest, expected_length=cap)
            received: list[bytes] = []
            with pytest.raises(IntegrityError):
                for data in client.fetch("metadata/timestamp.json", cap):
                    received.append(data)
        wait_until(hostile.stopped.is_set, "the hostile stream to be cut")

    assert dest.stat().st_size <= cap
    assert sum(map(len, received)) <= cap
    if announced:  # it claimed the right length: whole chunks up to the cap were kept
        assert dest.read_bytes() == b"\xee" * (cap // (64 * 1024) * 64 * 1024)


def test_a_cancelled_download_stops_reading_on_the_hub(
    registry: Registry, settings: HubSettings, tmp_path: Path
) -> None:
    huge = Huge()
    with running_hub(registry, settings, huge, chunk_bytes=64 * 1024) as (server, _):
        device = enroll_device(server, registry)
        with client_for(device) as client:
            stream = cast(Generator[bytes, None, None], client.fetch(f"targets/{TARGET}", None))
            assert len(next(stream)) == 64 * 1024
            stream.close()  # cancels the call
            wait_until(lambda: huge.log.closed == 1, "the hub to close the file")

            class Aborted(Exception):
                pass

            def stop(done: int, total: int) -> None:
                raise Aborted("the rollout was aborted (test)")

            dest = tmp_path / "huge.partial"
            with pytest.raises(Aborted):
                client.download_to(TARGET, dest, expected_length=Huge.LENGTH, progress=stop)
            wait_until(lambda: huge.log.closed == 2, "the hub to close the second file")
    assert huge.log.read_bytes < Huge.LENGTH // 4
    assert dest.stat().st_size == 64 * 1024  # the chunk the progress callback saw


# -- refusals ---------------------------------------------------------------------------------


def test_unauthenticated_and_revoked_devices_are_refused(
    registry: Registry, settings: HubSettings, repo: Path, tmp_path: Path
) -> None:
    with running_hub(registry, settings, DirectorySource(repo)) as (server, _):
        device = enroll_device(server, registry)
        other = enroll_device(server, registry)
        path = f"targets/{TARGET}"
        anonymous = refused_code(lambda: download(device, path, metadata=()))
        wrong = Identity(device.device_id, FLEET, device.hub, credential="not-the-secret")
        with client_for(wrong) as client, pytest.raises(HubRefused) as bad_secret:
            client.check_in(ota_client.DeviceState(boot_id="b"))
        with grpc.insecure_channel(device.hub) as channel:
            impostor = refused_code(
                lambda: ota_pb2_grpc.OtaStub(channel).ReportStatus(
                    ota_pb2.StatusReport(
                        device_id=other.device_id, phase=ota_pb2.UPDATE_PHASE_DOWNLOADING
                    ),
                    metadata=device_metadata(device),
                    timeout=30,
                )
            )

        registry.revoke_device(device.device_id)
        with client_for(device) as client:
            with pytest.raises(HubRefused) as revoked_download:
                client.download_to(path, tmp_path / "x", expected_length=7 * MiB // 2)
            with pytest.raises(HubRefused) as revoked_check_in:
                client.check_in(ota_client.DeviceState(boot_id="b"))

    assert anonymous == grpc.StatusCode.UNAUTHENTICATED
    assert bad_secret.value.code == "UNAUTHENTICATED"
    assert impostor == grpc.StatusCode.PERMISSION_DENIED
    assert revoked_download.value.code == "PERMISSION_DENIED"
    assert revoked_check_in.value.code == "PERMISSION_DENIED"
    assert "revoked" in str(revoked_check_in.value)


@pytest.mark.parametrize(
    "path",
    [
        "targets/../../secret.txt",
        "metadata/../targets/x",
        "/etc/passwd",
        "targets/a/./b",
        "targets//x",
        "targets/",
        "secret.txt",
        "targets\\..\\secret.txt",
    ],
)
def test_path_traversal_is_refused(
    path: str, registry: Registry, settings: HubSettings, repo: Path
) -> None:
    with running_hub(registry, settings, DirectorySource(repo)) as (server, _):
        device = enroll_device(server, registry)
        assert refused_code(lambda: download(device, path)) == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_paths_and_links_out_of_the_repository_are_not_found(
    registry: Registry, settings: HubSettings, repo: Path, tmp_path: Path
) -> None:
    (repo / "targets" / "escape").symlink_to(tmp_path / "secret.txt")
    with running_hub(registry, settings, DirectorySource(repo)) as (server, _):
        device = enroll_device(server, registry)
        escape = refused_code(lambda: download(device, "targets/escape"))
        with client_for(device) as client, pytest.raises(NotOnHub) as missing:
            b"".join(client.fetch("metadata/2.root.json", 10_000))
    assert escape == grpc.StatusCode.NOT_FOUND
    assert missing.value.path == "metadata/2.root.json"


def test_the_hubs_tuf_repository_is_served_through_repository_source(
    registry: Registry, settings: HubSettings, blob: bytes, tmp_path: Path
) -> None:
    from cloud_hub.ota.repository import TufRepository
    from cloud_hub.ota.service import RepositorySource

    repository = TufRepository.for_data_dir(tmp_path / "hub")
    repository.init_keys(tmp_path / "offline")
    repository.create(tmp_path / "offline")
    artifact = tmp_path / "digits.onnx"
    artifact.write_bytes(blob)
    repository.publish_target(TARGET, artifact, {"edgeloop": {"model": "digits"}})
    with running_hub(registry, settings, RepositorySource(repository)) as (server, _):
        device = enroll_device(server, registry)
        dest = tmp_path / "slot.partial"
        with client_for(device) as client:
            timestamp = b"".join(client.fetch("metadata/timestamp.json", 10_000))
            client.download_to(TARGET, dest, expected_length=len(blob))
            with pytest.raises(NotOnHub):
                b"".join(client.fetch("metadata/2.root.json", 10_000))
            with pytest.raises(NotOnHub):
                client.download_to("models/digits/9.9.9/x.onnx", tmp_path / "y", expected_length=9)

    assert timestamp == repository.read_metadata("timestamp.json")
    assert dest.read_bytes() == blob


# -- check-in and status ----------------------------------------------------------------------


def test_report_status_round_trip_with_the_default_backend(
    registry: Registry, settings: HubSettings, repo: Path
) -> None:
    with running_hub(registry, settings, DirectorySource(repo)) as (server, servicer):
        device = enroll_device(server, registry)
        with client_for(device) as client:
            ack = client.report(
                Phase.DOWNLOADING,
                rollout_id="r-1",
                percent=40,
                model_name="digits",
                model_version="1.1.0",
            )
            assignment, next_s = client.check_in(ota_client.DeviceState(boot_id="b1"))
            with pytest.raises(HubRefused, match="needs a reason") as no_reason:
                client.report(Phase.FAILED, rollout_id="r-1")

    assert (ack.accepted, ack.abort) == (True, False)
    assert (assignment, next_s) == (None, 300)
    assert no_reason.value.code == "INVALID_ARGUMENT"
    assert isinstance(servicer.rollouts, NoRollouts)
    (report,) = servicer.rollouts.reports
    assert report.device_id == device.device_id
    assert (report.rollout_id, report.phase, report.percent) == ("r-1", "downloading", 40)
    assert (report.model_name, report.model_version) == ("digits", "1.1.0")
    assert report.timestamp_ms > 0


def test_check_in_carries_the_state_and_the_assignment_both_ways(
    registry: Registry, settings: HubSettings, repo: Path
) -> None:
    spec = AssignmentSpec(
        rollout_id="r-2",
        model_name="digits",
        model_version="1.2.0",
        model_format="onnx",
        target_path=TARGET,
        probation_seconds=600,
        gates=(
            GateSpec("latency_p95_ms", max_value=50.0),
            GateSpec("mean_confidence", min_value=0.5),
        ),
    )
    rollouts = FlakyRollouts(assignment=spec)
    with running_hub(registry, settings, DirectorySource(repo), rollouts) as (server, _):
        device = enroll_device(server, registry)
        with client_for(device) as client:
            client.report(Phase.FAILED, rollout_id="r-1", reason="disk full")
            assignment, next_s = client.check_in(
                ota_client.DeviceState(
                    boot_id="b1",
                    model_name="digits",
                    model_version="1.1.0",
                    model_format="onnx",
                    slot="a",
                    profile="raspberry-pi-5",
                    free_disk_bytes=123,
                )
            )

    assert next_s == 120
    assert assignment == ota_client.Assignment(
        rollout_id="r-2",
        model_name="digits",
        model_version="1.2.0",
        model_format="onnx",
        target_path=TARGET,
        probation_seconds=600,
        gates=(
            ota_client.Gate("latency_p95_ms", max_value=50.0),
            ota_client.Gate("mean_confidence", min_value=0.5),
        ),
    )
    (state,) = rollouts.states
    assert (state.device_id, state.slot, state.free_disk_bytes) == (device.device_id, "a", 123)
    assert state.last_status is not None  # the last report is resent with every check-in
    assert (state.last_status.phase, state.last_status.reason) == ("failed", "disk full")


# -- small pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "rand", "expected"),
    [(1, 0.5, 0.5), (2, 0.5, 1.0), (3, 0.0, 1.6), (4, 1.0, 4.8), (20, 0.5, 30.0)],
)
def test_backoff_doubles_with_jitter_up_to_its_cap(
    failures: int, rand: float, expected: float
) -> None:
    assert Retry().delay(failures, rand=lambda: rand) == pytest.approx(expected)


def test_chunks_larger_than_the_contract_are_refused_at_construction(registry: Registry) -> None:
    from cloud_hub.grpc_auth import DeviceAuthenticator

    with pytest.raises(ValueError, match="chunk_bytes"):
        OtaServicer(DeviceAuthenticator(registry), DirectorySource(Path(".")), chunk_bytes=2 * MiB)
