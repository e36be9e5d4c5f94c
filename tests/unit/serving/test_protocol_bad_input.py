"""Malformed requests get InvalidRequestError (HTTP 400) with a message naming the field."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest

from serving import InferenceFailedError, InvalidRequestError, PayloadTooLargeError
from serving.protocol import (
    INFERENCE_HEADER_CONTENT_LENGTH,
    check_body_size,
    decode_request,
    encode_response,
)

HEADER = INFERENCE_HEADER_CONTENT_LENGTH


def _json(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _tensor(
    name: str = "x", shape: list | None = None, datatype: str = "FP32", **extra: object
) -> dict:
    return {"name": name, "shape": [2] if shape is None else shape, "datatype": datatype, **extra}


def _binary(*parts: tuple[dict, bytes], **extra: object) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body whose declared sizes are whatever the tensors say."""
    header = _json(*(tensor for tensor, _ in parts), **extra)
    return header + b"".join(raw for _, raw in parts), {HEADER: str(len(header))}


def _bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


FP32_2X3 = np.arange(6, dtype="<f4").tobytes()

# (id, body, headers, field the error must name, fragment of the message)
# fmt: off
CASES = [
    ("not-json", b"{inputs: oops", {}, "body", "not valid JSON"),
    ("json-array", b"[1, 2]", {}, "body", "should be an object"),
    ("no-inputs", b"{}", {}, "inputs", "inputs is required"),
    ("misspelt-field", json.dumps({"input": []}).encode(), {}, "input", "not a field"),
    ("extra-input-field", _json(_tensor(data=[1, 2], dtype="f")), {}, "inputs[0].dtype", "not a field"),
    ("unknown-datatype", _json(_tensor(datatype="FP31", data=[1, 2])), {}, "inputs[0].datatype",
     "inputs[0].datatype 'FP31' is not a v2 datatype; expected one of BOOL, UINT8"),
    ("lowercase-datatype", _json(_tensor(datatype="fp32", data=[1, 2])), {}, "inputs[0].datatype", "'fp32'"),
    ("negative-dim", _json(_tensor(shape=[2, -1], data=[1, 2])), {}, "inputs[0].shape[1]", "greater than or equal"),
    ("string-dim", _json(_tensor(shape=["2"], data=[1, 2])), {}, "inputs[0].shape[0]", "valid integer"),
    ("float-dim", _json(_tensor(shape=[2.0], data=[1, 2])), {}, "inputs[0].shape[0]", "valid integer"),
    ("name-not-string", _json(_tensor(name=5, data=[1, 2])), {}, "inputs[0].name", "valid string"),
    ("id-not-string", _json(_tensor(data=[1, 2]), id=7), {}, "id", "valid string"),
    ("count-mismatch", _json(_tensor(data=[1, 2]), _tensor("y", [2, 3], data=[1, 2, 3, 4, 5])), {},
     "inputs[1].shape", "inputs[1].shape [2, 3] holds 6 elements but data has 5"),
    ("ragged", _json(_tensor(shape=[2, 2], data=[[1, 2], [3]])), {}, "inputs[0].data", "rectangular"),
    ("float-for-int", _json(_tensor(datatype="INT32", data=[1, 1.5])), {}, "inputs[0].data", "1.5"),
    ("bool-for-int", _json(_tensor(datatype="INT32", data=[True, False])), {}, "inputs[0].data", "integers"),
    ("int-for-bool", _json(_tensor(datatype="BOOL", data=[0, 1])), {}, "inputs[0].data", "true/false"),
    ("string-for-float", _json(_tensor(data=["1.0", "2.0"])), {}, "inputs[0].data", "strings"),
    ("null-for-float", _json(_tensor(data=[1.0, None])), {}, "inputs[0].data", "None"),
    ("uint8-overflow", _json(_tensor(datatype="UINT8", data=[1, 300])), {}, "inputs[0].data",
     "300, out of range for UINT8"),
    ("negative-uint", _json(_tensor(datatype="UINT32", data=[-1, 1])), {}, "inputs[0].data", "-1, out of range"),
    ("uint64-overflow", _json(_tensor(datatype="UINT64", data=[1, 2**64])), {}, "inputs[0].data",
     "out of range for UINT64"),
    ("int64-overflow", _json(_tensor(datatype="INT64", data=[2**63, 0])), {}, "inputs[0].data",
     "out of range for INT64"),
    ("huge-int-for-float", _json(_tensor(datatype="FP64", data=[1, 2**2000])), {}, "inputs[0].data",
     "too large for FP64"),
    ("number-for-bytes", _json(_tensor(datatype="BYTES", data=["a", 1])), {}, "inputs[0].data", "strings"),
    ("no-data", _json(_tensor()), {}, "inputs[0].data",
     "inputs[0].data is absent and inputs[0].parameters.binary_data_size is not set"),
    ("duplicate-input", _json(_tensor(data=[1, 2]), _tensor(data=[3, 4])), {}, "inputs[1].name", "repeats"),
    ("binary-without-header", _json(_tensor(parameters={"binary_data_size": 8})), {},
     "inputs[0].parameters.binary_data_size", HEADER),
    ("shared-memory", _json(_tensor(parameters={"shared_memory_region": "r"})), {},
     "inputs[0].parameters.shared_memory_region", "not supported"),
    ("binary-output-flag", _json(_tensor(data=[1, 2]), parameters={"binary_data_output": "yes"}), {},
     "parameters.binary_data_output", "true or false"),
    ("output-binary-flag", _json(_tensor(data=[1, 2]), outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
     {}, "outputs[0].parameters.binary_data", "true or false"),
    ("duplicate-output", _json(_tensor(data=[1, 2]), outputs=[{"name": "y"}, {"name": "y"}]), {},
     "outputs[1].name", "repeats"),
    ("header-not-int", _json(_tensor(data=[1, 2])), {HEADER: "ten"}, HEADER, "'ten'"),
    ("header-negative", _json(_tensor(data=[1, 2])), {HEADER: "-1"}, HEADER, "negative"),
    ("header-past-body", b"{}", {HEADER: "99"}, HEADER, "99 but the body has only 2 bytes"),
    ("header-mid-json", _json(_tensor(data=[1, 2])), {HEADER: "10"}, "body", "not valid JSON"),
    ("unknown-encoding", b"{}", {"Content-Encoding": "br"}, "Content-Encoding", "'br'"),
    ("corrupt-gzip", b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, "Content-Encoding", "gzip"),
    ("truncated-gzip", gzip.compress(b'{"inputs": []}')[:-6], {"Content-Encoding": "gzip"},
     "Content-Encoding", "truncated"),
    ("data-and-binary", *_binary((_tensor(data=[1, 2], parameters={"binary_data_size": 8}), b"\0" * 8)),
     "inputs[0].data", "are both set"),
    ("size-negative", *_binary((_tensor(parameters={"binary_data_size": -8}), b"")),
     "inputs[0].parameters.binary_data_size", "non-negative integer, got -8"),
    ("size-string", *_binary((_tensor(parameters={"binary_data_size": "8"}), b"\0" * 8)),
     "inputs[0].parameters.binary_data_size", "'8'"),
    ("size-wrong-for-shape", *_binary((_tensor(shape=[2, 3], parameters={"binary_data_size": 20}), FP32_2X3[:20])),
     "inputs[0].parameters.binary_data_size", "is 20 but shape [2, 3] of FP32 needs 24 bytes"),
    ("size-past-body", *_binary((_tensor(shape=[2, 3], parameters={"binary_data_size": 24}), FP32_2X3[:16])),
     "inputs[0].parameters.binary_data_size", "runs past the end of the body"),
    ("trailing-bytes", *_binary((_tensor(shape=[2, 3], parameters={"binary_data_size": 24}), FP32_2X3 + b"junk")),
     HEADER, "4 bytes after the last binary tensor"),
    ("bytes-length-lies", *_binary((_tensor(datatype="BYTES", parameters={"binary_data_size": 13}),
                                    _bytes_elements(b"ab") + struct.pack("<I", 99) + b"abc")),
     "inputs[0]", "BYTES element 1 claims 99 bytes but only 3 remain"),
    ("bytes-prefix-cut", *_binary((_tensor(datatype="BYTES", parameters={"binary_data_size": 8}),
                                   _bytes_elements(b"ab") + b"\x01\x00")),
     "inputs[0]", "truncated 4-byte length prefix"),
    ("bytes-count", *_binary((_tensor(datatype="BYTES", parameters={"binary_data_size": 15}),
                              _bytes_elements(b"a", b"b", b"c"))),
     "inputs[0].shape", "holds 2 elements but its binary data has more than 2"),
    ("bytes-count-huge", *_binary((_tensor(datatype="BYTES", shape=[1],
                                           parameters={"binary_data_size": 5 * 200_000}),
                                   b"\x01\x00\x00\x00a" * 200_000)),
     "inputs[0].shape", "holds 1 elements but its binary data has more than 1"),
    ("too-many-dims", _json(_tensor(shape=[1] * 65, data=[1])), {}, "inputs[0].shape",
     "65 dimensions; at most 32"),
    ("too-many-dims-binary", *_binary((_tensor(shape=[1] * 33, parameters={"binary_data_size": 4}),
                                       b"\0" * 4)),
     "inputs[0].shape", "33 dimensions; at most 32"),
    ("bool-byte-2", *_binary((_tensor(datatype="BOOL", parameters={"binary_data_size": 2}), b"\x01\x02")),
     "inputs[0]", "other than 0 or 1"),
]
# fmt: on


@pytest.mark.parametrize(
    ("body", "headers", "field", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_request_names_the_field(
    body: bytes, headers: dict, field: str, fragment: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_request(body, headers)
    error = caught.value
    assert (error.code, error.http_status) == ("invalid_request", 400)
    assert error.detail["field"] == field
    assert field in str(error) or field == "body"
    assert fragment in str(error)


def test_oversized_body_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        decode_request(b"x" * 1025, {}, max_body_bytes=1024)
    assert (caught.value.code, caught.value.http_status) == ("payload_too_large", 413)
    assert "1025 bytes, over the limit of 1024" in str(caught.value)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_body_may_not_inflate_past_the_limit(encoding: str) -> None:
    bomb = b'{"inputs": []}' + b" " * 1_000_000
    body = gzip.compress(bomb) if encoding == "gzip" else zlib.compress(bomb)
    assert len(body) < 4096
    with pytest.raises(PayloadTooLargeError, match="decompressed request body"):
        decode_request(body, {"Content-Encoding": encoding}, max_body_bytes=64 * 1024)


def test_check_body_size_limits() -> None:
    check_body_size(10, 10)
    check_body_size(10**12, None)
    with pytest.raises(PayloadTooLargeError):
        check_body_size(11, 10)


def test_non_utf8_bytes_output_cannot_be_json() -> None:
    outputs = {"blob": np.array([b"\xff"], dtype=np.object_)}
    with pytest.raises(InvalidRequestError, match="output 'blob' .* parameters.binary_data: true"):
        encode_response(outputs, model_name="m")


def test_output_dtype_outside_the_protocol_is_a_server_error() -> None:
    with pytest.raises(InferenceFailedError, match="'z' has numpy dtype complex64"):
        encode_response({"z": np.zeros(2, dtype=np.complex64)}, model_name="m")


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "INT64"])
@pytest.mark.parametrize("shape", [[0, 10**20], [0, 2**31, 2], [2**16, 2**16]])
def test_a_shape_too_vast_for_any_tensor_is_the_callers_error_even_holding_nothing(
        datatype: str, shape: list[int]) -> None:
    """NumPy cannot make a [0, 10**20] array, empty as it is: the request failed as the
    version's 500, its traceback logged, for anyone who sent one."""
    with pytest.raises(InvalidRequestError, match="spans more than") as refused:
        decode_request(_json(_tensor("x", shape, datatype, data=[])))
    assert refused.value.detail["field"].endswith(".shape")
    body, headers = _binary((_tensor("x", shape, datatype,
                                     parameters={"binary_data_size": 0}), b""))
    with pytest.raises(InvalidRequestError, match="spans more than"):
        decode_request(body, headers)


def test_a_bytes_buffer_is_split_no_further_than_one_element_past_its_shape() -> None:
    from serving.protocol.tensors import decode_bytes_elements

    buffer = memoryview(_bytes_elements(*[b"a"] * 1000))
    assert decode_bytes_elements(buffer, "inputs[0]", at_most=2).size == 3
    assert decode_bytes_elements(buffer, "inputs[0]").size == 1000
