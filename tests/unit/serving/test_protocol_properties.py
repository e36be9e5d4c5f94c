"""Property tests: any shape and datatype survives tritonclient -> codec -> tritonclient."""

from __future__ import annotations

import numpy as np
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from protocol_helpers import assert_same, triton_parse, triton_request

from serving import InvalidRequestError, PayloadTooLargeError
from serving.protocol import INFERENCE_HEADER_CONTENT_LENGTH, decode_request, encode_response

NUMERIC_DTYPES = [
    np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32,
    np.int64, np.float16, np.float32, np.float64,
]  # fmt: skip
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tensors(draw: st.DrawFn, *, utf8: bool) -> np.ndarray:
    """A numeric array of any v2 dtype, or a BYTES array of text (utf8) or raw bytes."""
    shape = draw(SHAPES)
    if draw(st.integers(0, len(NUMERIC_DTYPES))) == len(NUMERIC_DTYPES):
        elements = st.text(max_size=20).map(str.encode) if utf8 else st.binary(max_size=20)
        return draw(hnp.arrays(np.object_, shape, elements=elements))
    return draw(hnp.arrays(draw(st.sampled_from(NUMERIC_DTYPES)), shape))


def _client_view(array: np.ndarray, binary: bool) -> np.ndarray:
    if binary or array.dtype != np.object_:
        return array
    return np.vectorize(bytes.decode, otypes=[object])(array) if array.size else array


@PROPERTY
@given(
    arrays=st.lists(tensors(utf8=True), min_size=1, max_size=3),
    request_binary=st.lists(st.booleans(), min_size=3, max_size=3),
    response_binary=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_tritonclient_round_trip(
    arrays: list[np.ndarray], request_binary: list[bool], response_binary: list[bool]
) -> None:
    named = {f"t{i}": array for i, array in enumerate(arrays)}
    binary = {name: request_binary[i] for i, name in enumerate(named)}
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=response_binary[i])
        for i, name in enumerate(named)
    ]
    body, headers = triton_request(named, binary=binary, outputs=outputs, request_id="p")
    request = decode_request(body, headers)
    for name, array in named.items():
        assert_same(request.arrays[name], array)

    result = triton_parse(encode_response(request.arrays, model_name="m", request=request))
    for i, (name, array) in enumerate(named.items()):
        assert_same(result.as_numpy(name), _client_view(array, response_binary[i]))


@PROPERTY
@given(array=tensors(utf8=False))
def test_binary_round_trip_is_bit_exact(array: np.ndarray) -> None:
    body, headers = triton_request({"x": array}, binary=True)
    request = decode_request(body, headers)
    decoded = request.arrays["x"]
    if array.dtype != np.object_:
        # Bit patterns, not values: NaN payloads and negative zeros must survive.
        assert decoded.tobytes() == array.tobytes()
    result = triton_parse(encode_response({"x": decoded}, model_name="m", request=request))
    assert_same(result.as_numpy("x"), array)


@PROPERTY
@given(
    array=hnp.arrays(st.sampled_from(NUMERIC_DTYPES), SHAPES),
    order=st.sampled_from(["C", "F"]),
    big_endian=st.booleans(),
)
def test_any_memory_layout_of_an_output_encodes_the_same(
    array: np.ndarray, order: str, big_endian: bool
) -> None:
    laid_out = np.asarray(array, order=order)
    if big_endian:
        laid_out = laid_out.astype(laid_out.dtype.newbyteorder(">"))
    outputs = [httpclient.InferRequestedOutput("y", binary_data=True)]
    body, headers = triton_request({"x": np.zeros(1, np.int8)}, binary=True, outputs=outputs)
    request = decode_request(body, headers)
    result = triton_parse(encode_response({"y": laid_out}, model_name="m", request=request))
    assert_same(result.as_numpy("y"), array)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([b"", b'{"inputs":[{"name":"x","shape":[2],"datatype":"BYTES",']),
    noise=st.binary(max_size=200),
    header=st.one_of(st.none(), st.integers(-5, 260).map(str), st.text(max_size=5)),
)
def test_garbage_never_escapes_as_anything_but_a_client_error(
    prefix: bytes, noise: bytes, header: str | None
) -> None:
    headers = {} if header is None else {INFERENCE_HEADER_CONTENT_LENGTH: header}
    try:
        decode_request(prefix + noise, headers, max_body_bytes=256)
    except (InvalidRequestError, PayloadTooLargeError) as error:
        assert error.detail.get("field")
