"""Wire models, the datatype table, body framing details and import hygiene."""

from __future__ import annotations

import subprocess
import sys
import typing
import warnings

import numpy as np
import pytest
from protocol_helpers import assert_same, triton_parse, triton_request
from pydantic import ValidationError

from serving import InvalidRequestError
from serving.protocol import (
    INFERENCE_HEADER_CONTENT_LENGTH,
    V2_DATATYPES,
    Datatype,
    InferenceRequest,
    ModelMetadata,
    RequestInput,
    ServerMetadata,
    TensorMetadata,
    decode_request,
    encode_response,
    from_numpy_dtype,
    to_numpy_dtype,
)
from serving.protocol.schemas import DatatypeName


def test_schema_literal_and_enum_list_the_same_datatypes() -> None:
    assert typing.get_args(DatatypeName) == V2_DATATYPES == tuple(Datatype)


@pytest.mark.parametrize("datatype", V2_DATATYPES)
def test_datatype_maps_to_numpy_and_back(datatype: str) -> None:
    assert from_numpy_dtype(to_numpy_dtype(datatype)) == datatype


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("<U5", "BYTES"), ("S3", "BYTES"), (">f4", "FP32"), (">i8", "INT64"), ("c8", None),
     ("M8[s]", None), ("f16" if hasattr(np, "float128") else "c16", None)],
)  # fmt: skip
def test_from_numpy_dtype_covers_strings_byte_orders_and_refuses_the_rest(
    dtype: str, expected: str | None
) -> None:
    assert from_numpy_dtype(np.dtype(dtype)) == expected


def test_parameters_are_open_but_objects_are_closed() -> None:
    tensor = RequestInput.model_validate(
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0],
         "parameters": {"anything": {"nested": [1]}, "binary_data_size": 4}}
    )  # fmt: skip
    assert tensor.parameters == {"anything": {"nested": [1]}, "binary_data_size": 4}
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        InferenceRequest.model_validate({"inputs": [], "output": []})


def test_metadata_models() -> None:
    meta = ModelMetadata(
        name="iris", versions=["1", "2"], platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorMetadata(name="y", datatype="INT64", shape=[-1])],
    )  # fmt: skip
    assert ModelMetadata.model_validate_json(meta.model_dump_json()) == meta
    with pytest.raises(ValidationError):
        TensorMetadata(name="x", datatype="FP32", shape=[-2])
    server = ServerMetadata(name="modelplane", version="0.1", extensions=["binary_tensor_data"])
    assert server.model_dump()["extensions"] == ["binary_tensor_data"]
    assert "description" in InferenceRequest.model_json_schema()["properties"]["inputs"]


def test_nested_and_flat_json_data_give_the_same_array() -> None:
    flat = b'{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT16","data":[1,2,3,4]}]}'
    nested = b'{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT16","data":[[1,2],[3,4]]}]}'
    expected = np.array([[1, 2], [3, 4]], dtype=np.int16)
    assert_same(decode_request(flat).arrays["x"], expected)
    assert_same(decode_request(nested).arrays["x"], expected)
    scalar = b'{"inputs":[{"name":"s","shape":[],"datatype":"FP64","data":[2.5]}]}'
    assert_same(decode_request(scalar).arrays["s"], np.array(2.5))


def test_json_integers_past_int64_fill_uint64_exactly() -> None:
    body = b'{"inputs":[{"name":"x","shape":[3],"datatype":"UINT64","data":[0,18446744073709551615,7]}]}'
    assert decode_request(body).arrays["x"].tolist() == [0, 2**64 - 1, 7]


def test_binary_inputs_are_zero_copy_views_and_misaligned_ones_are_copied() -> None:
    arrays = {"flag": np.array([True]), "x": np.arange(4, dtype=np.float32)}
    # Pick a request id that puts x at an offset no float32 may start at.
    for request_id in ("a", "ab", "abc", "abcd"):
        body, headers = triton_request(arrays, binary=True, request_id=request_id)
        if (int(headers[INFERENCE_HEADER_CONTENT_LENGTH]) + 1) % 4:
            break
    request = decode_request(body, headers)
    flag, x = request.arrays["flag"], request.arrays["x"]
    assert not flag.flags.writeable  # a view of the body
    assert x.flags.aligned  # would have started one byte after the BOOL input
    assert_same(x, arrays["x"])


def test_header_length_may_be_an_int_as_tritonclient_passes_it() -> None:
    body, headers = triton_request({"x": np.arange(3, dtype=np.int32)}, binary=True)
    length = int(headers[INFERENCE_HEADER_CONTENT_LENGTH])
    request = decode_request(body, {INFERENCE_HEADER_CONTENT_LENGTH: length})
    assert request.arrays["x"].tolist() == [0, 1, 2]


def test_binary_data_output_applies_to_outputs_not_listed() -> None:
    body = (
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}],'
        b'"parameters":{"binary_data_output":true},'
        b'"outputs":[{"name":"json","parameters":{"binary_data":false}},{"name":"dflt"}]}'
    )
    request = decode_request(body)
    assert [o.binary for o in request.outputs] == [False, True]
    assert request.output_is_binary("unlisted") is True
    encoded = encode_response(
        {"json": np.array([1.5]), "dflt": np.array([2.5])}, model_name="m", request=request
    )
    outputs = triton_parse(encoded).get_response()["outputs"]
    assert outputs[0]["data"] == [1.5] and outputs[1]["parameters"] == {"binary_data_size": 8}


def test_empty_json_body_part_is_named() -> None:
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        decode_request(b"")


def test_importing_the_codec_stays_light() -> None:
    code = (
        "import sys, serving.protocol; "
        "print(sorted(m for m in ('ray', 'numba', 'onnxruntime', 'tritonclient') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_json_floats_past_the_range_round_to_infinity_quietly() -> None:
    body = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP16","data":[70000.0, 1e300]}]}'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_request(body).arrays["x"].tolist() == [np.inf, np.inf]
    big = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1, 1e300]}]}'
    assert decode_request(big).arrays["x"].tolist() == [1.0, np.inf]
