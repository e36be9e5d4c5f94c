"""The official tritonclient.http must work unchanged: its bodies decode, our bodies parse.

Requests are built by tritonclient's own ``generate_request_body`` and responses read by
its own ``parse_response_body``, for every datatype, JSON and binary both ways.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from protocol_helpers import ALL_DATATYPES, assert_same, sample, triton_parse, triton_request
from starlette.datastructures import Headers

from serving.protocol import (
    INFERENCE_HEADER_CONTENT_LENGTH,
    InferenceResponse,
    decode_request,
    encode_response,
)

SHAPES = [(2, 3), (1,), (4, 1, 2), (0, 3), ()]


def _as_client_sees_json(array: np.ndarray) -> np.ndarray:
    # tritonclient reads JSON BYTES outputs as str elements, binary ones as bytes.
    if array.dtype != np.object_:
        return array
    return np.array([item.decode() for item in array.ravel()], dtype=np.object_).reshape(
        array.shape
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", ALL_DATATYPES)
@pytest.mark.parametrize("request_binary", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("response_binary", [False, True], ids=["json-out", "binary-out"])
def test_every_datatype_round_trips_through_tritonclient(
    datatype: str, shape: tuple[int, ...], request_binary: bool, response_binary: bool
) -> None:
    original = sample(datatype, shape)
    requested = [httpclient.InferRequestedOutput("y", binary_data=response_binary)]
    body, headers = triton_request(
        {"x": original}, binary=request_binary, outputs=requested, request_id="req-7"
    )
    assert (INFERENCE_HEADER_CONTENT_LENGTH in headers) == (
        (request_binary and original.size > 0) or request_binary
    )

    request = decode_request(body, headers)
    assert request.id == "req-7"
    assert_same(request.arrays["x"], original)
    assert request.inputs[0].datatype == datatype

    encoded = encode_response(
        {"y": request.arrays["x"]}, model_name="m", model_version="3", request=request
    )
    result = triton_parse(encoded)
    expected = original if response_binary else _as_client_sees_json(original)
    assert_same(result.as_numpy("y"), expected)
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == (
        "req-7",
        "m",
        "3",
    )
    binary_part = INFERENCE_HEADER_CONTENT_LENGTH in encoded.headers
    assert binary_part == response_binary
    content_type = "application/octet-stream" if response_binary else "application/json"
    assert encoded.headers["Content-Type"] == content_type


def test_binary_bytes_that_are_not_utf8_round_trip() -> None:
    original = np.array([b"\x00\xff\xfe", b"", b"\x80" * 70000, b"ok"], dtype=np.object_)
    body, headers = triton_request({"blob": original.reshape(2, 2)}, binary=True)
    request = decode_request(body, headers)
    assert_same(request.arrays["blob"], original.reshape(2, 2))
    # No outputs listed: tritonclient sets binary_data_output, so every output is binary.
    assert request.outputs is None and request.binary_data_output
    result = triton_parse(encode_response(request.arrays, model_name="m", request=request))
    assert_same(result.as_numpy("blob"), original.reshape(2, 2))


def test_mixed_inputs_and_outputs_keep_their_order_and_form() -> None:
    arrays = {
        "a": sample("FP32", (3, 4), seed=1),
        "b": sample("BYTES", (5,)),
        "c": sample("INT8", (2, 2), seed=2),
        "d": sample("BOOL", (7,), seed=3),
    }
    binary = {"a": True, "b": False, "c": True, "d": True}
    outputs = [
        httpclient.InferRequestedOutput("d", binary_data=True),
        httpclient.InferRequestedOutput("a", binary_data=False),
        httpclient.InferRequestedOutput("b", binary_data=True),
        httpclient.InferRequestedOutput("c", binary_data=True),
    ]
    body, headers = triton_request(arrays, binary=binary, outputs=outputs)
    request = decode_request(body, headers)
    for name, array in arrays.items():
        assert_same(request.arrays[name], array)
    assert [o.name for o in request.outputs] == ["d", "a", "b", "c"]
    assert [o.binary for o in request.outputs] == [True, False, True, True]

    encoded = encode_response(
        [(o.name, request.arrays[o.name]) for o in request.outputs], model_name="m", request=request
    )
    result = triton_parse(encoded)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["d", "a", "b", "c"]
    for name, array in arrays.items():
        assert_same(result.as_numpy(name), array)


def test_parameters_and_request_options_reach_the_decoded_request() -> None:
    body, headers = triton_request(
        {"x": sample("FP64", (2,))},
        binary=False,
        outputs=[httpclient.InferRequestedOutput("y", binary_data=False, class_count=3)],
        parameters={"temperature": 0.5, "tenant": "acme", "beam": True},
    )
    request = decode_request(body, headers)
    assert request.parameters == {"temperature": 0.5, "tenant": "acme", "beam": True}
    assert request.id is None
    assert request.outputs[0].parameters == {"classification": 3, "binary_data": False}
    assert request.output_is_binary("y") is False
    # Outputs the client did not list follow the request-wide default (false here).
    assert request.output_is_binary("other") is False


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_requests_as_tritonclient_sends_them(encoding: str) -> None:
    original = sample("FP32", (16, 16))
    body, headers = triton_request({"x": original}, binary=True)
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    request = decode_request(compressed, {**headers, "Content-Encoding": encoding})
    assert_same(request.arrays["x"], original)


def test_headers_match_case_insensitively_in_any_mapping() -> None:
    original = sample("UINT16", (3,))
    body, headers = triton_request({"x": original}, binary=True)
    length = headers[INFERENCE_HEADER_CONTENT_LENGTH]
    lowered = {"inference-header-content-length": length}
    starlette = Headers(raw=[(b"inference-header-content-length", length.encode())])
    for mapping in (headers, lowered, starlette):
        assert_same(decode_request(body, mapping).arrays["x"], original)


def test_response_without_request_is_json_and_matches_the_schema() -> None:
    arrays = {name.lower(): sample(name, (2, 2)) for name in ("INT64", "FP16", "BOOL")}
    encoded = encode_response(arrays, model_name="m", parameters={"batch": 2})
    assert encoded.headers == {"Content-Type": "application/json"}
    response = InferenceResponse.model_validate_json(encoded.body)
    assert response.parameters == {"batch": 2} and response.id is None
    result = triton_parse(encoded)
    for name, array in arrays.items():
        assert_same(result.as_numpy(name), array)


def test_binary_response_header_validates_against_the_schema() -> None:
    body, headers = triton_request({"x": sample("FP32", (2, 2))}, binary=True, request_id="abc")
    request = decode_request(body, headers)
    encoded = encode_response({"y": request.arrays["x"]}, model_name="m", request=request)
    length = int(encoded.headers[INFERENCE_HEADER_CONTENT_LENGTH])
    response = InferenceResponse.model_validate_json(encoded.body[:length])
    assert response.outputs[0].parameters == {"binary_data_size": 16}
    assert response.outputs[0].data is None and response.id == "abc"
