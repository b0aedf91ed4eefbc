"""The pure Open Inference Protocol v2 codec: JSON and binary tensors, both ways, and errors."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import InputError
from edge_agent.server.codec import (
    DATATYPES,
    InferenceRequest,
    OutputRequest,
    array_to_binary,
    datatype_of,
    decode_request,
    encode_error,
    encode_response,
    output_plan,
)

# datatype -> (JSON data for shape [2, 2], the array it must decode to)
SAMPLES: dict[str, tuple[list[Any], np.ndarray]] = {
    "BOOL": ([True, False, False, True], np.array([[1, 0], [0, 1]], dtype=np.bool_)),
    "UINT8": ([0, 1, 254, 255], np.array([[0, 1], [254, 255]], dtype=np.uint8)),
    "UINT16": ([0, 1, 2, 65535], np.array([[0, 1], [2, 65535]], dtype=np.uint16)),
    "UINT32": ([0, 1, 2, 2**32 - 1], np.array([[0, 1], [2, 2**32 - 1]], dtype=np.uint32)),
    "UINT64": ([0, 1, 2, 2**40], np.array([[0, 1], [2, 2**40]], dtype=np.uint64)),
    "INT8": ([-128, -1, 0, 127], np.array([[-128, -1], [0, 127]], dtype=np.int8)),
    "INT16": ([-32768, -1, 0, 32767], np.array([[-32768, -1], [0, 32767]], dtype=np.int16)),
    "INT32": ([-(2**31), -1, 0, 2**31 - 1], np.array([[-(2**31), -1], [0, 2**31 - 1]], np.int32)),
    "INT64": ([-(2**40), -1, 0, 2**40], np.array([[-(2**40), -1], [0, 2**40]], dtype=np.int64)),
    "FP16": ([0.5, -1.0, 2.0, 65504.0], np.array([[0.5, -1], [2, 65504]], dtype=np.float16)),
    "FP32": ([0.1, -1.5, 3.25, 1e30], np.array([[0.1, -1.5], [3.25, 1e30]], dtype=np.float32)),
    "FP64": ([0.1, -1.5, 3.25, 1e300], np.array([[0.1, -1.5], [3.25, 1e300]], dtype=np.float64)),
    "BYTES": (["a", "", "héllo", "z"], np.array([[b"a", b""], ["héllo".encode(), b"z"]], object)),
}


def _request(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _tensor(name: str, datatype: str, shape: list[int], **fields: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, **fields}


def _binary(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return _tensor(name, datatype, shape, parameters={"binary_data_size": size})


def test_every_protocol_datatype_has_a_sample() -> None:
    assert set(SAMPLES) == set(DATATYPES)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_input_decodes_to_the_right_array(datatype: str, nested: bool) -> None:
    data, expected = SAMPLES[datatype]
    given = [data[:2], data[2:]] if nested else data
    request = decode_request(_request(_tensor("x", datatype, [2, 2], data=given)))
    array = request.inputs["x"]
    assert array.shape == (2, 2)
    assert datatype_of(array) == datatype
    assert array.dtype == expected.dtype
    assert np.array_equal(array, expected)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_binary_input_round_trips(datatype: str) -> None:
    _, expected = SAMPLES[datatype]
    raw = bytes(array_to_binary(expected))
    header = _request(_binary("x", datatype, [2, 2], len(raw)))
    array = decode_request(header, bytearray(raw)).inputs["x"]
    assert datatype_of(array) == datatype
    assert np.array_equal(array, expected)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_output_encodes_and_reads_back(datatype: str, binary: bool) -> None:
    _, array = SAMPLES[datatype]
    encoded = encode_response(
        {"y": array}, [("y", binary)], model_name="m", model_version="3", request_id="r1"
    )
    header = bytes(encoded.chunks[0])
    body = json.loads(header)
    assert body["model_name"] == "m" and body["model_version"] == "3" and body["id"] == "r1"
    (tensor,) = body["outputs"]
    assert tensor["name"] == "y" and tensor["datatype"] == datatype and tensor["shape"] == [2, 2]
    if binary:
        assert encoded.header_length == len(header)
        size = tensor["parameters"]["binary_data_size"]
        assert "data" not in tensor and size == encoded.size - len(header)
        rest = b"".join(bytes(chunk) for chunk in encoded.chunks[1:])
        back = decode_request(_request(_binary("y", datatype, [2, 2], size)), bytearray(rest))
        assert np.array_equal(back.inputs["y"], array)
    else:
        assert encoded.header_length is None and len(encoded.chunks) == 1
        back = decode_request(_request(_tensor("y", datatype, [2, 2], data=tensor["data"])))
        assert np.array_equal(back.inputs["y"], array)


def test_binary_bytes_elements_are_length_prefixed_little_endian() -> None:
    raw = bytes(array_to_binary(np.array([b"ab", b"", b"xyz"], dtype=object)))
    assert (
        raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"xyz"
    )


def test_binary_numbers_are_little_endian_row_major() -> None:
    big_endian = np.array([[1, 2], [3, 4]], dtype=">u2").T  # neither native order nor contiguous
    assert bytes(array_to_binary(big_endian)) == struct.pack("<4H", 1, 3, 2, 4)


def test_mixed_json_and_binary_inputs_take_their_bytes_in_order() -> None:
    a, b = np.arange(3, dtype=np.int32), np.array([1.5, 2.5], dtype=np.float64)
    header = _request(
        _binary("a", "INT32", [3], 12),
        _tensor("j", "INT8", [1], data=[7]),
        _binary("b", "FP64", [2], 16),
    )
    request = decode_request(header, bytearray(a.tobytes() + b.tobytes()))
    assert list(request.inputs) == ["a", "j", "b"]
    assert np.array_equal(request.inputs["a"], a) and np.array_equal(request.inputs["b"], b)
    assert request.inputs["j"].tolist() == [7]


def test_aligned_binary_input_is_a_writable_view_without_a_copy() -> None:
    buffer = bytearray(np.arange(64, dtype=np.float32).tobytes())
    array = decode_request(_request(_binary("x", "FP32", [1, 8, 8, 1], 256)), buffer).inputs["x"]
    assert np.shares_memory(array, np.frombuffer(buffer, dtype=np.uint8))
    assert array.flags.writeable and array[0, 7, 7, 0] == 63


def test_misaligned_binary_input_is_copied_to_aligned_memory() -> None:
    buffer = bytearray(b"\x00" + np.arange(4, dtype=np.float32).tobytes())
    header = _request(_binary("pad", "UINT8", [1], 1), _binary("x", "FP32", [4], 16))
    array = decode_request(header, buffer).inputs["x"]
    assert array.flags.aligned and array.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_request_fields_are_read() -> None:
    header = _request(
        _tensor("x", "FP32", [1], data=[1.0]),
        id="req-9",
        outputs=[{"name": "p", "parameters": {"binary_data": True}}, {"name": "q"}],
        parameters={"binary_data_output": True, "priority": 1},
    )
    request = decode_request(header)
    assert request.id == "req-9"
    assert request.outputs == (OutputRequest("p", True), OutputRequest("q", None))
    assert request.binary_output is True


@pytest.mark.parametrize(
    ("outputs", "binary_output", "expected"),
    [
        (None, False, [("p", False), ("q", False)]),
        (None, True, [("p", True), ("q", True)]),
        ((OutputRequest("q"),), True, [("q", True)]),
        ((OutputRequest("q", False), OutputRequest("p", True)), True, [("q", False), ("p", True)]),
        ((OutputRequest("p", True),), False, [("p", True)]),
    ],
)
def test_output_plan_follows_binary_flags(
    outputs: tuple[OutputRequest, ...] | None, binary_output: bool, expected: list[Any]
) -> None:
    request = InferenceRequest(inputs={}, outputs=outputs, binary_output=binary_output)
    assert output_plan(request, ["p", "q"]) == expected


def test_output_plan_names_an_unknown_output() -> None:
    request = InferenceRequest(inputs={}, outputs=(OutputRequest("logits"),))
    with pytest.raises(InputError, match=r"output 'logits'.*has no such output.*'p'"):
        output_plan(request, ["p"])


def test_bytes_output_that_is_not_utf8_must_go_binary() -> None:
    array = np.array([b"\xff\xfe"], dtype=object)
    with pytest.raises(InputError, match=r"output 'y'.*not UTF-8.*binary_data"):
        encode_response({"y": array}, [("y", False)], model_name="m", model_version="1")
    encoded = encode_response({"y": array}, [("y", True)], model_name="m", model_version="1")
    assert b"".join(bytes(c) for c in encoded.chunks[1:]) == struct.pack("<I", 2) + b"\xff\xfe"


def test_error_body_is_the_protocol_shape() -> None:
    assert json.loads(encode_error('bad "x"')) == {"error": 'bad "x"'}


X = "x"
BAD_REQUESTS: list[tuple[str, bytes, bytes | None, str]] = [
    ("not json", b"{inputs", None, r"not valid JSON"),
    ("not utf-8", b"\xff\xfe", None, r"not valid JSON"),
    ("not an object", b"[1, 2]", None, r"must be a JSON object, got list"),
    ("no inputs", b"{}", None, r"'inputs' must be a non-empty list"),
    ("input not object", _request("x"), None, r"input #0: must be a JSON object"),  # type: ignore[arg-type]
    ("no name", _request({"datatype": "FP32", "shape": [1], "data": [1]}), None, r"input #0"),
    ("bad shape", _request(_tensor(X, "FP32", [-1], data=[1])), None, r"input 'x'.*'shape'"),
    ("bool shape", _request(_tensor(X, "FP32", [True], data=[1])), None, r"input 'x'.*'shape'"),
    ("BF16", _request(_tensor(X, "BF16", [1], data=[1])), None, r"input 'x'.*'BF16'"),
    ("no datatype", _request({"name": X, "shape": [1], "data": [1]}), None, r"datatype None"),
    ("count", _request(_tensor(X, "FP32", [2, 2], data=[1, 2, 3])), None, r"4 elements.*has 3"),
    ("ragged", _request(_tensor(X, "FP32", [2, 2], data=[[1, 2], [3]])), None, r"not a FP32"),
    ("text in FP32", _request(_tensor(X, "FP32", [1], data=["a"])), None, r"not a FP32"),
    ("float in INT32", _request(_tensor(X, "INT32", [1], data=[1.5])), None, r"must be integers"),
    ("range", _request(_tensor(X, "UINT8", [2], data=[0, 256])), None, r"0 to 256.*UINT8"),
    ("int in BOOL", _request(_tensor(X, "BOOL", [1], data=[1])), None, r"BOOL data must be"),
    ("int in BYTES", _request(_tensor(X, "BYTES", [1], data=[1])), None, r"must be strings"),
    ("no data", _request(_tensor(X, "FP32", [1])), None, r"neither 'data' nor"),
    (
        "data and binary",
        _request(_tensor(X, "FP32", [1], data=[1], parameters={"binary_data_size": 4})),
        b"1234",
        r"both 'data' and",
    ),
    ("size vs shape", _request(_binary(X, "FP32", [2], 4)), b"1234", r"is 4 bytes.*needs 8"),
    ("past end", _request(_binary(X, "FP32", [2], 8)), b"1234", r"runs past the end"),
    ("extra bytes", _request(_binary(X, "INT8", [2], 2)), b"123", r"3 bytes.*add up to 2"),
    ("negative size", _request(_binary(X, "INT8", [2], -2)), b"12", r"non-negative integer"),
    ("stray binary", _request(_tensor(X, "INT8", [1], data=[1])), b"1", r"1 bytes.*add up to 0"),
    (
        "BYTES truncated",
        _request(_binary(X, "BYTES", [1], 6)),
        struct.pack("<I", 5) + b"ab",
        r"BYTES element 0 runs past",
    ),
    (
        "BYTES count",
        _request(_binary(X, "BYTES", [2], 5)),
        struct.pack("<I", 1) + b"a",
        r"ends inside element 1 of 2",
    ),
    (
        "duplicate",
        _request(_tensor(X, "INT8", [1], data=[1]), _tensor(X, "INT8", [1], data=[2])),
        None,
        r"input 'x': given more than once",
    ),
    (
        "shared memory",
        _request(_tensor(X, "INT8", [1], parameters={"shared_memory_region": "r"})),
        None,
        r"shared-memory extension",
    ),
    (
        "outputs not list",
        _request(_tensor(X, "INT8", [1], data=[1]), outputs={"name": "y"}),
        None,
        r"'outputs' must be a list",
    ),
    (
        "classification",
        _request(
            _tensor(X, "INT8", [1], data=[1]),
            outputs=[{"name": "y", "parameters": {"classification": 3}}],
        ),
        None,
        r"output 'y'.*classification extension",
    ),
    (
        "binary flag",
        _request(
            _tensor(X, "INT8", [1], data=[1]),
            outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}],
        ),
        None,
        r"true or false, got 'yes'",
    ),
    (
        "request id",
        _request(_tensor(X, "INT8", [1], data=[1]), id=7),
        None,
        r"'id' must be a string",
    ),
]


@pytest.mark.parametrize(
    ("header", "binary", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_are_input_errors_that_say_what_is_wrong(
    header: bytes, binary: bytes | None, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        decode_request(header, None if binary is None else bytearray(binary))


def test_a_repeated_json_part_decodes_each_request_own_bytes() -> None:
    header = _request(_binary("x", "INT32", [2], 8), id="same")
    first = decode_request(header, bytearray(np.array([1, 2], dtype=np.int32).tobytes()))
    second = decode_request(header, bytearray(np.array([3, 4], dtype=np.int32).tobytes()))
    assert first.inputs["x"].tolist() == [1, 2] and second.inputs["x"].tolist() == [3, 4]
    with pytest.raises(InputError, match=r"input 'x': binary_data_size 8 runs past"):
        decode_request(header, bytearray(4))
