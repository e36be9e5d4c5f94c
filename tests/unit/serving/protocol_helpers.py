"""Helpers shared by the protocol tests: real tritonclient request bodies and response parsing.

Nothing here reimplements the wire format: bodies come from tritonclient's own request
builder and responses are read by its own parser, so the tests check the codec against
the official client rather than against our reading of the spec.
"""

from __future__ import annotations

import numpy as np
import tritonclient.http as httpclient
from tritonclient.http import InferenceServerClient, InferResult
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from serving.protocol import INFERENCE_HEADER_CONTENT_LENGTH, EncodedResponse

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
FLOATS = ["FP16", "FP32", "FP64"]
ALL_DATATYPES = [*NUMERIC, *FLOATS, "BYTES"]
# Valid UTF-8 (JSON can carry it), variable length, empty and multi-byte elements.
TEXT = ["", "a", "héllo", "日本語テキスト", "x" * 300, "tab\tand\nnewline", "emoji 🎉", "\x00nul"]


def triton_request(
    arrays: dict[str, np.ndarray],
    *,
    binary: bool | dict[str, bool],
    outputs: list[httpclient.InferRequestedOutput] | None = None,
    request_id: str = "",
    parameters: dict | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A request body and headers exactly as tritonclient.http would send them."""
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        as_binary = binary[name] if isinstance(binary, dict) else binary
        tensor.set_data_from_numpy(array, binary_data=as_binary)
        inputs.append(tensor)
    body, json_size = InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, parameters=parameters
    )
    headers = {} if json_size is None else {INFERENCE_HEADER_CONTENT_LENGTH: str(json_size)}
    return body, headers


def triton_parse(encoded: EncodedResponse) -> InferResult:
    """Read a response the way tritonclient.http does after a POST to /infer."""
    length = encoded.headers.get(INFERENCE_HEADER_CONTENT_LENGTH)
    return InferenceServerClient.parse_response_body(
        encoded.body,
        verbose=False,
        header_length=None if length is None else int(length),
        content_encoding=None,
    )


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A tensor of ``datatype`` that exercises the edges: extremes, NaN, infinities, text."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    if datatype == "BYTES":
        flat = np.empty(size, dtype=np.object_)
        flat[:] = [TEXT[i % len(TEXT)].encode() for i in range(size)]
        return flat.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, size=size, dtype=dtype, endpoint=True)
        flat[:2] = [info.min, info.max][:size]
        return flat.reshape(shape)
    flat = (rng.standard_normal(size) * 100).astype(dtype)
    flat[:4] = [np.nan, np.inf, -np.inf, np.finfo(dtype).tiny][:size]
    return flat.reshape(shape)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal shape, dtype and elements (NaN equals NaN; BYTES compared as Python bytes)."""
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)
