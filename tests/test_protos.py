"""The wire contracts: generated code is current, OIP v2 matches Triton's, services answer."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import service_pb2 as triton_pb2

from edge_agent.wire import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    ota_pb2,
    ota_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
GEN_SCRIPT = ROOT / "scripts" / "gen_protos.py"


def _load_gen_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", GEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- (a) the committed generated code is what the script produces -----------------------------


def test_committed_wire_code_matches_regeneration() -> None:
    problems = _load_gen_script().check()
    assert problems == [], "run python scripts/gen_protos.py:\n" + "\n".join(problems)


def test_check_mode_flags_a_changed_file(tmp_path: Path) -> None:
    gen = _load_gen_script()
    gen.generate(tmp_path)
    assert gen.check(tmp_path) == []
    (tmp_path / "ota_pb2.py").write_text("# edited by hand\n", encoding="utf-8")
    (tmp_path / "old_pb2.py").write_text("# left behind\n", encoding="utf-8")
    (tmp_path / "enrollment_pb2.pyi").unlink()
    assert gen.check(tmp_path) == [
        "missing: enrollment_pb2.pyi",
        "stale (no proto makes it): old_pb2.py",
        "differs: ota_pb2.py",
    ]


def test_check_cli_exits_zero_when_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- (b) our OIP v2 messages are Triton's, field for field --------------------------------------

OIP_MESSAGES = [
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelMetadataResponse",
    "InferParameter",
    "InferTensorContents",
    "ServerLiveResponse",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
]


def _field_facts(field: FieldDescriptor) -> tuple[object, ...]:
    return (
        field.number,
        field.type,
        field.is_repeated,
        field.is_packed,
        field.message_type.full_name if field.message_type else None,
        field.containing_oneof.name if field.containing_oneof else None,
    )


def _assert_subset_of(ours: Descriptor, theirs: Descriptor) -> None:
    assert ours.full_name == theirs.full_name
    for field in ours.fields:
        assert field.name in theirs.fields_by_name, f"{ours.full_name}.{field.name} not in Triton"
        expected = _field_facts(theirs.fields_by_name[field.name])
        assert _field_facts(field) == expected, f"{ours.full_name}.{field.name}"
    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry
    for nested in ours.nested_types:
        _assert_subset_of(nested, theirs.nested_types_by_name[nested.name])


@pytest.mark.parametrize("name", OIP_MESSAGES)
def test_oip_message_fields_match_triton(name: str) -> None:
    ours = inference_pb2.DESCRIPTOR.message_types_by_name[name]
    _assert_subset_of(ours, triton_pb2.DESCRIPTOR.message_types_by_name[name])


def test_oip_core_messages_have_all_of_tritons_fields() -> None:
    # These carry tensors: a field Triton has and we lack would be silently dropped.
    for name in [
        "ModelInferRequest",
        "ModelInferResponse",
        "InferParameter",
        "InferTensorContents",
    ]:
        ours = inference_pb2.DESCRIPTOR.message_types_by_name[name]
        theirs = triton_pb2.DESCRIPTOR.message_types_by_name[name]
        assert [f.name for f in ours.fields] == [f.name for f in theirs.fields], name


def test_oip_service_methods_match_triton() -> None:
    ours = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        twin = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == twin.input_type.full_name
        assert method.output_type.full_name == twin.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (False, False)
    assert [m.name for m in ours.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]


def test_triton_request_parses_as_ours_and_back() -> None:
    theirs = triton_pb2.ModelInferRequest(model_name="resnet", model_version="3", id="req-1")
    theirs.parameters["priority"].int64_param = 2
    theirs.parameters["deadline"].uint64_param = 2**40
    theirs.parameters["scale"].double_param = 0.5
    tensor = theirs.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3])
    tensor.parameters["binary_data_size"].int64_param = 12
    theirs.inputs.add(name="INPUT1", datatype="INT64", shape=[2]).contents.int64_contents.extend(
        [7, -9]
    )
    theirs.outputs.add(name="OUTPUT0").parameters["classification"].bool_param = True
    theirs.raw_input_contents.append(np.arange(3, dtype="<f4").tobytes())

    ours = inference_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert (ours.model_name, ours.model_version, ours.id) == ("resnet", "3", "req-1")
    assert ours.parameters["priority"].int64_param == 2
    assert ours.parameters["deadline"].uint64_param == 2**40
    assert ours.parameters["scale"].WhichOneof("parameter_choice") == "double_param"
    assert [(t.name, t.datatype, list(t.shape)) for t in ours.inputs] == [
        ("INPUT0", "FP32", [1, 3]),
        ("INPUT1", "INT64", [2]),
    ]
    assert ours.inputs[0].parameters["binary_data_size"].int64_param == 12
    assert list(ours.inputs[1].contents.int64_contents) == [7, -9]
    assert ours.outputs[0].parameters["classification"].bool_param is True
    assert np.frombuffer(ours.raw_input_contents[0], dtype="<f4").tolist() == [0.0, 1.0, 2.0]
    # Nothing was parsed as an unknown field: dropping unknowns loses nothing on the way back.
    ours.DiscardUnknownFields()
    assert triton_pb2.ModelInferRequest.FromString(ours.SerializeToString()) == theirs


def test_our_response_parses_as_tritons() -> None:
    ours = inference_pb2.ModelInferResponse(model_name="m", model_version="1", id="x")
    out = ours.outputs.add(name="OUT", datatype="BYTES", shape=[2])
    out.contents.bytes_contents.extend([b"cat", b"dog"])
    ours.parameters["sequence_end"].bool_param = True
    theirs = triton_pb2.ModelInferResponse.FromString(ours.SerializeToString())
    assert list(theirs.outputs[0].contents.bytes_contents) == [b"cat", b"dog"]
    assert theirs.parameters["sequence_end"].bool_param is True

    meta = inference_pb2.ModelMetadataResponse(name="m", versions=["1"], platform="onnxruntime")
    meta.inputs.add(name="x", datatype="FP32", shape=[-1, 3, 224, 224])
    twin = triton_pb2.ModelMetadataResponse.FromString(meta.SerializeToString())
    assert list(twin.inputs[0].shape) == [-1, 3, 224, 224]


# --- (c) tritonclient against a real server built on our generated servicer ------------------


class _EchoServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Live and ready; the model "echo" returns each input as an output of the same name."""

    def ServerLive(
        self, request: inference_pb2.ServerLiveRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ServerLiveResponse:
        return inference_pb2.ServerLiveResponse(live=True)

    def ServerReady(
        self, request: inference_pb2.ServerReadyRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ServerReadyResponse:
        return inference_pb2.ServerReadyResponse(ready=True)

    def ModelInfer(
        self, request: inference_pb2.ModelInferRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ModelInferResponse:
        if request.model_name != "echo":
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
        response = inference_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for tensor in request.inputs:
            out = response.outputs.add(name=tensor.name, datatype=tensor.datatype)
            out.shape.extend(tensor.shape)
            out.contents.CopyFrom(tensor.contents)
        response.raw_output_contents.extend(request.raw_input_contents)
        return response


_Registration = tuple[Callable[[Any, grpc.Server], None], object]


def _start_server(*services: _Registration) -> tuple[grpc.Server, int]:
    """A real gRPC server on a free loopback port, serving (add_X_to_server, servicer) pairs."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for register, servicer in services:
        register(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    server.start()
    return server, port


@pytest.fixture
def oip_address() -> Iterator[str]:
    server, port = _start_server(
        (inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, _EchoServicer())
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_tritonclient_talks_to_our_server(oip_address: str) -> None:
    client = triton_grpc.InferenceServerClient(url=oip_address)
    try:
        assert client.is_server_live() is True
        assert client.is_server_ready() is True

        data = np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, 6.0e6]], dtype=np.float32)
        tensor = triton_grpc.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer(
            "echo",
            [tensor],
            outputs=[triton_grpc.InferRequestedOutput("INPUT0")],
            request_id="r-42",
        )
        answer = result.as_numpy("INPUT0")
        assert answer is not None
        assert answer.dtype == np.float32
        np.testing.assert_array_equal(answer, data)
        assert result.get_response().id == "r-42"

        with pytest.raises(triton_grpc.InferenceServerException, match="unknown model"):
            client.infer("nope", [tensor])
    finally:
        client.close()


def test_unimplemented_rpc_answers_unimplemented(oip_address: str) -> None:
    with grpc.insecure_channel(oip_address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="echo"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- (d) edgeloop.v1 ------------------------------------------------------------------------


def _method_paths(module: ModuleType, service: str) -> list[str]:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return [f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods]


def test_edgeloop_method_paths() -> None:
    assert _method_paths(enrollment_pb2, "Enrollment") == [
        "/edgeloop.v1.Enrollment/Enroll",
        "/edgeloop.v1.Enrollment/WhoAmI",
    ]
    assert _method_paths(ota_pb2, "Ota") == [
        "/edgeloop.v1.Ota/CheckIn",
        "/edgeloop.v1.Ota/Download",
        "/edgeloop.v1.Ota/ReportStatus",
    ]
    download = ota_pb2.DESCRIPTOR.services_by_name["Ota"].methods_by_name["Download"]
    assert (download.client_streaming, download.server_streaming) == (False, True)


def test_enrollment_messages_round_trip() -> None:
    request = enrollment_pb2.EnrollRequest(
        enrollment_token="tok-123",
        public_key_pem="-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",
        hostname="pi-7",
        device_profile="rpi5",
        hardware={"model": "Raspberry Pi 5 Model B", "accelerators": ""},
        agent_version="0.1.0",
    )
    assert enrollment_pb2.EnrollRequest.FromString(request.SerializeToString()) == request

    response = enrollment_pb2.EnrollResponse(
        device_id="dev-1",
        fleet="warehouse",
        credential=enrollment_pb2.DeviceCredential(secret="s3cret"),
        mqtt=enrollment_pb2.MqttSettings(
            host="broker",
            port=8883,
            username="dev-1",
            password="pw",
            topic_prefix="edgeloop/v1/warehouse/dev-1",
            tls=True,
        ),
        tuf_root=b'{"signed": {"_type": "root"}}',
        hub_endpoint="hub:50051",
    )
    parsed = enrollment_pb2.EnrollResponse.FromString(response.SerializeToString())
    assert parsed == response
    assert parsed.credential.certificate_pem == ""
    assert parsed.mqtt.port == 8883


def test_ota_messages_round_trip() -> None:
    check_in = ota_pb2.CheckInRequest(
        device_id="dev-1",
        boot_id="b-1",
        model_name="detector",
        model_version="4",
        model_format="tflite",
        slot="a",
        profile="rpi5",
        free_disk_bytes=12 * 2**30,
        last_status=ota_pb2.StatusReport(rollout_id="r-1", phase=ota_pb2.UPDATE_PHASE_INSTALLED),
    )
    assert ota_pb2.CheckInRequest.FromString(check_in.SerializeToString()) == check_in

    gate = ota_pb2.Gate(metric="latency_p95_ms", max_value=20.0)
    assert gate.HasField("max_value") and not gate.HasField("min_value")
    answer = ota_pb2.CheckInResponse(
        assignment=ota_pb2.Assignment(
            rollout_id="r-2",
            model_name="detector",
            model_version="5",
            model_format="tflite",
            target_path="detector/5/model.tflite",
            probation_seconds=600,
            gates=[gate, ota_pb2.Gate(metric="error_rate", max_value=0.0)],
        ),
        next_check_in_seconds=300,
    )
    parsed = ota_pb2.CheckInResponse.FromString(answer.SerializeToString())
    assert parsed == answer
    assert parsed.assignment.gates[1].HasField("max_value")  # 0.0 still counts as set
    assert not ota_pb2.CheckInResponse().HasField("assignment")

    phases = [v.name for v in ota_pb2.UpdatePhase.DESCRIPTOR.values]
    assert phases == [
        "UPDATE_PHASE_UNSPECIFIED",
        "UPDATE_PHASE_DOWNLOADING",
        "UPDATE_PHASE_VERIFYING",
        "UPDATE_PHASE_STAGED",
        "UPDATE_PHASE_HEALTH_CHECK",
        "UPDATE_PHASE_INSTALLED",
        "UPDATE_PHASE_FAILED",
        "UPDATE_PHASE_ROLLED_BACK",
    ]
    report = ota_pb2.StatusReport(
        device_id="dev-1",
        rollout_id="r-2",
        phase=ota_pb2.UPDATE_PHASE_ROLLED_BACK,
        percent=100,
        reason="p95 latency 31 ms > 20 ms",
        model_name="detector",
        model_version="5",
        timestamp_ms=1_760_000_000_000,
    )
    assert ota_pb2.StatusReport.FromString(report.SerializeToString()) == report


_BLOB = bytes(range(256)) * 10_000  # 2.5 MB, so a download spans several chunks
_CHUNK = 1 << 20


class _Ota(ota_pb2_grpc.OtaServicer):
    def CheckIn(
        self, request: ota_pb2.CheckInRequest, context: grpc.ServicerContext
    ) -> ota_pb2.CheckInResponse:
        return ota_pb2.CheckInResponse(next_check_in_seconds=len(request.device_id))

    def Download(
        self, request: ota_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[ota_pb2.DownloadChunk]:
        end = len(_BLOB)
        if request.max_length:
            end = min(end, request.offset + request.max_length)
        for start in range(request.offset, end, _CHUNK):
            stop = min(start + _CHUNK, end)
            yield ota_pb2.DownloadChunk(
                offset=start, data=_BLOB[start:stop], total_length=len(_BLOB), last=stop == end
            )

    def ReportStatus(
        self, request: ota_pb2.StatusReport, context: grpc.ServicerContext
    ) -> ota_pb2.StatusAck:
        return ota_pb2.StatusAck(accepted=request.phase == ota_pb2.UPDATE_PHASE_STAGED)


class _Enrollment(enrollment_pb2_grpc.EnrollmentServicer):
    def Enroll(
        self, request: enrollment_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> enrollment_pb2.EnrollResponse:
        return enrollment_pb2.EnrollResponse(device_id=f"dev-{request.hostname}")


def test_edgeloop_services_answer_on_their_full_paths() -> None:
    server, port = _start_server(
        (ota_pb2_grpc.add_OtaServicer_to_server, _Ota()),
        (enrollment_pb2_grpc.add_EnrollmentServicer_to_server, _Enrollment()),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            # Raw calls on the literal paths: the server registered exactly these names.
            enroll = channel.unary_unary(
                "/edgeloop.v1.Enrollment/Enroll",
                request_serializer=enrollment_pb2.EnrollRequest.SerializeToString,
                response_deserializer=enrollment_pb2.EnrollResponse.FromString,
            )
            assert enroll(enrollment_pb2.EnrollRequest(hostname="pi"), timeout=10).device_id == (
                "dev-pi"
            )
            check_in = channel.unary_unary(
                "/edgeloop.v1.Ota/CheckIn",
                request_serializer=ota_pb2.CheckInRequest.SerializeToString,
                response_deserializer=ota_pb2.CheckInResponse.FromString,
            )
            answer = check_in(ota_pb2.CheckInRequest(device_id="dev-1"), timeout=10)
            assert answer.next_check_in_seconds == 5

            stub = ota_pb2_grpc.OtaStub(channel)
            ack = stub.ReportStatus(
                ota_pb2.StatusReport(phase=ota_pb2.UPDATE_PHASE_STAGED), timeout=10
            )
            assert ack.accepted and not ack.abort

            # A download cut short, then resumed from where it stopped.
            first = list(stub.Download(ota_pb2.DownloadRequest(path="targets/m", max_length=1000)))
            assert [(c.offset, len(c.data), c.last) for c in first] == [(0, 1000, True)]
            rest = list(stub.Download(ota_pb2.DownloadRequest(path="targets/m", offset=1000)))
            assert all(len(c.data) <= _CHUNK for c in rest)
            assert [c.last for c in rest] == [False] * (len(rest) - 1) + [True]
            assert {c.total_length for c in rest} == {len(_BLOB)}
            assert b"".join(c.data for c in first + rest) == _BLOB
    finally:
        server.stop(grace=None)
