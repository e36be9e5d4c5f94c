"""Triton's gRPC messages (``tritonclient.grpc.service_pb2``) to plain values and back.

The gRPC ingress parses a ``ModelInferRequest`` into a :class:`GrpcInferCall` here, sends
that to the endpoint's replica (which decodes it in ``grpc_tensors``) and builds the
``ModelInferResponse`` from the :class:`GrpcInferAnswer` it gets back. Nothing here
validates: the replica does, so its monitoring counts malformed requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from serving.protocol.grpc_tensors import (
    FIELD_DTYPE,
    GrpcInferAnswer,
    GrpcInferCall,
    GrpcRequestedOutput,
    GrpcTensor,
)

# A message past this is read off the event loop, as a REST body past the same size is.
HEAVY_MESSAGE_BYTES = 1 << 20


def parameters_of(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as a dict of Python values."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    """Fill a protobuf ``map<string, InferParameter>`` from Python values."""
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


def _contents(contents: Any) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for descriptor, values in contents.ListFields():  # only the fields that hold values
        dtype = FIELD_DTYPE[descriptor.name]
        if dtype.kind == "O":
            array = np.empty(len(values), dtype=object)
            array[:] = list(values)
        else:
            array = np.fromiter(values, dtype=dtype, count=len(values))
        arrays[descriptor.name] = array
    return arrays


async def read_call_off_loop_if_heavy(request: pb.ModelInferRequest,
                                      metadata: Iterable[tuple[str, str | bytes]] = ()
                                      ) -> GrpcInferCall:
    """:func:`call_from_request`, off the event loop for a large message: typed contents are
    converted value by value (a 64 MB message takes half a second), and the gRPC ingress's
    loop serves every endpoint's calls, as REST decodes a large body off its loop."""
    if request.ByteSize() <= HEAVY_MESSAGE_BYTES:
        return call_from_request(request, metadata)
    return await asyncio.to_thread(call_from_request, request, tuple(metadata))


def call_from_request(request: pb.ModelInferRequest,
                      metadata: Iterable[tuple[str, str | bytes]] = ()) -> GrpcInferCall:
    """A ``ModelInferRequest`` and its call metadata (text values only) as plain values."""
    raw = request.raw_input_contents
    inputs = tuple(
        GrpcTensor(
            name=tensor.name,
            datatype=tensor.datatype,
            shape=tuple(tensor.shape),
            parameters=parameters_of(tensor.parameters) if tensor.parameters else {},
            raw=raw[index] if index < len(raw) else None,
            contents=_contents(tensor.contents) if tensor.HasField("contents") else {},
        )
        for index, tensor in enumerate(request.inputs)
    )
    outputs = tuple(
        GrpcRequestedOutput(output.name, parameters_of(output.parameters))
        for output in request.outputs
    ) or None
    return GrpcInferCall(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters_of(request.parameters),
        raw_input_count=len(raw),
        headers={key: value for key, value in metadata if isinstance(value, str)},
    )


def response_from_answer(answer: GrpcInferAnswer) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` of an answer, every output in ``raw_output_contents``."""
    response = pb.ModelInferResponse(
        model_name=answer.model_name,
        model_version=answer.model_version,
        id=answer.id,
        outputs=[pb.ModelInferResponse.InferOutputTensor(
            name=output.name, datatype=output.datatype, shape=output.shape)
            for output in answer.outputs],
        raw_output_contents=[output.raw for output in answer.outputs],
    )
    set_parameters(response.parameters, answer.parameters)
    return response


def metadata_response(body: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """A ``ModelMetadataResponse`` from the REST metadata answer (the same fields)."""
    def tensors(specs: Iterable[Mapping[str, Any]]) -> list[Any]:
        return [pb.ModelMetadataResponse.TensorMetadata(
            name=spec["name"], datatype=spec["datatype"], shape=spec["shape"]) for spec in specs]

    return pb.ModelMetadataResponse(
        name=body["name"], versions=body.get("versions", []), platform=body.get("platform", ""),
        inputs=tensors(body.get("inputs", [])), outputs=tensors(body.get("outputs", [])),
    )
