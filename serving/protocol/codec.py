"""Decode v2 inference requests into numpy arrays and encode responses, JSON or binary.

The codec is the whole of the wire format and nothing else: it knows no models, no Ray and
no HTTP framework. A transport hands it the body bytes and headers, and gets back arrays;
it hands it output arrays and gets back body bytes and the headers to send. Whether an
input or a requested output exists in the model is the model server's business; the
codec checks that the request is well formed and that every length adds up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pydantic_core

from serving.errors import InferenceFailedError, InvalidRequestError
from serving.protocol.datatypes import from_numpy_dtype
from serving.protocol.framing import (
    DEFAULT_MAX_BODY_BYTES,
    INFERENCE_HEADER_CONTENT_LENGTH,
    check_body_size,
    decompress_body,
    get_header,
    json_header_length,
)
from serving.protocol.schemas import InferenceRequest, parse_inference_request
from serving.protocol.tensors import array_from_binary, array_from_json, binary_data, json_data

_SHARED_MEMORY_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True, slots=True)
class DecodedInput:
    """One input tensor of a decoded request; ``data`` may be a read-only view of the body."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` says whether it goes in the binary part."""

    name: str
    binary: bool
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """A well-formed v2 inference request with its tensors as numpy arrays.

    ``outputs`` is ``None`` when the client asked for every output of the model.
    ``binary_data_output`` is the request-wide default for outputs it did not list.
    """

    id: str | None
    inputs: tuple[DecodedInput, ...]
    outputs: tuple[RequestedOutput, ...] | None
    parameters: dict[str, Any]
    binary_data_output: bool

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Input arrays by input name, in request order."""
        return {tensor.name: tensor.data for tensor in self.inputs}

    def output_is_binary(self, name: str) -> bool:
        """Whether output ``name`` should be returned in the binary part of the response."""
        for output in self.outputs or ():
            if output.name == name:
                return output.binary
        return self.binary_data_output


class EncodedResponse(NamedTuple):
    """A response body and the headers that must travel with it."""

    body: bytes
    headers: dict[str, str]


def decode_request(
    body: bytes,
    headers: Mapping[str, Any] | None = None,
    *,
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
) -> DecodedRequest:
    """Decode an infer request body (JSON, or JSON plus binary tensors) into arrays.

    ``headers`` may be any mapping; ``Inference-Header-Content-Length`` and
    ``Content-Encoding`` (gzip, deflate) are read from it. Numeric arrays taken from the
    binary part are read-only views of ``body`` (no copy). Raises ``InvalidRequestError``
    naming the offending field for anything malformed, and ``PayloadTooLargeError`` for a
    body (or its decompressed form) over ``max_body_bytes``.
    """
    check_body_size(len(body), max_body_bytes)
    body = decompress_body(bytes(body), get_header(headers, "Content-Encoding"), max_body_bytes)
    header_length = json_header_length(headers, len(body))
    view = memoryview(body)
    json_part = body if header_length is None else view[:header_length].tobytes()
    request = parse_inference_request(json_part)
    parameters = request.parameters or {}
    binary_data_output = _bool_parameter(parameters, "binary_data_output", "parameters")
    offset = len(json_part)
    inputs: list[DecodedInput] = []
    seen: set[str] = set()
    for index, tensor in enumerate(request.inputs):
        field = f"inputs[{index}]"
        if tensor.name in seen:
            raise _invalid(
                f"{field}.name {tensor.name!r} repeats an earlier input", f"{field}.name"
            )
        seen.add(tensor.name)
        params = tensor.parameters or {}
        _refuse_shared_memory(params, field)
        size = _binary_size(params, field, header_length)
        if size is None:
            if tensor.data is None:
                raise _invalid(
                    f"{field}.data is absent and {field}.parameters.binary_data_size is not set; "
                    "send the tensor as JSON data or as binary data",
                    f"{field}.data",
                )
            array = array_from_json(tensor.data, tensor.datatype, tensor.shape, field)
        else:
            if tensor.data is not None:
                raise _invalid(
                    f"{field}.data and {field}.parameters.binary_data_size are both set; send "
                    "the tensor one way",
                    f"{field}.data",
                )
            if offset + size > len(body):
                raise _invalid(
                    f"{field}.parameters.binary_data_size {size} runs past the end of the body "
                    f"({len(body) - offset} bytes of binary data left)",
                    f"{field}.parameters.binary_data_size",
                )
            array = array_from_binary(
                view[offset : offset + size], tensor.datatype, tensor.shape, field
            )
            offset += size
        inputs.append(
            DecodedInput(tensor.name, tensor.datatype, tuple(tensor.shape), array, params)
        )
    if header_length is not None and offset != len(body):
        raise _invalid(
            f"the body has {len(body) - offset} bytes after the last binary tensor: the inputs' "
            f"parameters.binary_data_size must add up to the body length minus "
            f"{INFERENCE_HEADER_CONTENT_LENGTH}",
            INFERENCE_HEADER_CONTENT_LENGTH,
        )
    return DecodedRequest(
        id=request.id,
        inputs=tuple(inputs),
        outputs=_requested_outputs(request, binary_data_output),
        parameters=parameters,
        binary_data_output=binary_data_output,
    )


def _invalid(message: str, field: str) -> InvalidRequestError:
    return InvalidRequestError(message, detail={"field": field})


def _bool_parameter(parameters: dict[str, Any], key: str, field: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise _invalid(f"{field}.{key} must be true or false, got {value!r:.40}", f"{field}.{key}")
    return value


def _refuse_shared_memory(params: dict[str, Any], field: str) -> None:
    for key in _SHARED_MEMORY_KEYS:
        if key in params:
            raise _invalid(
                f"{field}.parameters.{key}: the shared-memory extension is not supported; send "
                "the tensor as JSON data or binary data",
                f"{field}.parameters.{key}",
            )


def _binary_size(params: dict[str, Any], field: str, header_length: int | None) -> int | None:
    if "binary_data_size" not in params:
        return None
    name = f"{field}.parameters.binary_data_size"
    size = params["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _invalid(f"{name} must be a non-negative integer, got {size!r:.40}", name)
    if header_length is None:
        raise _invalid(
            f"{name} is set but the request has no {INFERENCE_HEADER_CONTENT_LENGTH} header "
            "saying where the binary data starts",
            name,
        )
    return size


def _requested_outputs(
    request: InferenceRequest, default_binary: bool
) -> tuple[RequestedOutput, ...] | None:
    if request.outputs is None:
        return None
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, output in enumerate(request.outputs):
        field = f"outputs[{index}]"
        if output.name in seen:
            raise _invalid(
                f"{field}.name {output.name!r} repeats an earlier output", f"{field}.name"
            )
        seen.add(output.name)
        params = output.parameters or {}
        _refuse_shared_memory(params, field)
        binary = _bool_parameter(
            {"binary_data": default_binary, **params}, "binary_data", f"{field}.parameters"
        )
        outputs.append(RequestedOutput(output.name, binary, params))
    return tuple(outputs)


def encode_response(
    outputs: Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    model_name: str,
    model_version: str | None = None,
    request: DecodedRequest | None = None,
    parameters: Mapping[str, Any] | None = None,
    response_id: str | None = None,
) -> EncodedResponse:
    """Encode output arrays as a v2 inference response, the way tritonclient reads it.

    Each output goes in the binary part when ``request`` asked for it there
    (``DecodedRequest.output_is_binary``), else as JSON ``data``; without a request every
    output is JSON. The request ``id`` is echoed; a request without one gets
    ``response_id`` (the server's id for it, which feedback refers to). With any binary output the body is the
    JSON header followed by the tensors, ``Inference-Header-Content-Length`` gives the
    header's length and the content type is ``application/octet-stream``.
    """
    items = outputs.items() if isinstance(outputs, Mapping) else outputs
    described: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    for name, value in items:
        array = np.asarray(value)
        datatype = from_numpy_dtype(array.dtype)
        if datatype is None:
            raise InferenceFailedError(
                f"output {name!r} has numpy dtype {array.dtype}, which the v2 protocol cannot "
                "carry; cast it in the model or its post-processing",
                detail={"field": f"outputs.{name}"},
            )
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request is not None and request.output_is_binary(name):
            payload = binary_data(array, datatype)
            entry["parameters"] = {"binary_data_size": len(payload)}
            buffers.append(payload)
        else:
            entry["data"] = json_data(array, datatype, f"output {name!r}")
        described.append(entry)
    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request is not None and request.id is not None:
        response["id"] = request.id
    elif response_id is not None:
        response["id"] = response_id
    if parameters:
        response["parameters"] = dict(parameters)
    response["outputs"] = described
    # pydantic-core's serializer is about 4x faster than json.dumps on float lists and
    # writes NaN/Infinity the way tritonclient's rapidjson reads them.
    header = pydantic_core.to_json(response, inf_nan_mode="constants")
    if not buffers:
        return EncodedResponse(header, {"Content-Type": "application/json"})
    return EncodedResponse(
        b"".join([header, *buffers]),
        {
            "Content-Type": "application/octet-stream",
            INFERENCE_HEADER_CONTENT_LENGTH: str(len(header)),
        },
    )
