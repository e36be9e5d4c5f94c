"""The Open Inference Protocol's gRPC tensors, without protobuf: decode into arrays, encode back.

The gRPC ingress (``serving.grpc_ingress``) turns a ``ModelInferRequest`` into a
:class:`GrpcInferCall` (plain values that pickle cheaply across a Serve handle) and the
endpoint replica decodes it here into the same :class:`DecodedRequest` the REST codec
makes, so routing, signature checks, monitoring and shadows are shared. Decoding happens
in the replica, not the ingress, so that a malformed request is counted by the endpoint's
monitoring like a malformed REST body.

A tensor's data travels as Triton sends it: either every input in ``raw_input_contents``
(what ``InferInput.set_data_from_numpy`` does) or each in the typed ``contents`` field of
its datatype (``fp32_contents`` for FP32 …; FP16 has none and must be raw). Outputs always
go back raw, in ``raw_output_contents``, which ``InferResult.as_numpy`` reads. Errors name
the field as the protobuf message spells it (``inputs[0].shape``,
``raw_input_contents[1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import InferenceFailedError, InvalidRequestError
from serving.protocol.codec import DecodedInput, DecodedRequest, RequestedOutput
from serving.protocol.datatypes import V2_DATATYPES, from_numpy_dtype, is_datatype, to_numpy_dtype
from serving.protocol.schemas import MAX_REQUEST_ID_CHARS
from serving.protocol.tensors import binary_data, decode_bytes_elements, element_count

# The typed contents field that carries each datatype (Triton's grpc_service.proto).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The numpy dtype each typed field holds, before narrowing to the tensor's datatype.
FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64), "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64), "bytes_contents": np.dtype(object),
}
_SHARED_MEMORY_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True, slots=True)
class GrpcTensor:
    """One input of a ``ModelInferRequest``: ``raw`` is its ``raw_input_contents`` entry, if
    the request used them; ``contents`` the typed fields that were set, as arrays."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    contents: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        if self.raw is not None:
            return len(self.raw)
        return sum(_size(array) for array in self.contents.values())


@dataclass(frozen=True, slots=True)
class GrpcRequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GrpcInferCall:
    """A ``ModelInferRequest`` as plain values, with the call's metadata as ``headers``."""

    model_name: str
    model_version: str
    id: str
    inputs: tuple[GrpcTensor, ...]
    outputs: tuple[GrpcRequestedOutput, ...] | None
    parameters: dict[str, Any]
    raw_input_count: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Tensor bytes the request carries (what the body limit counts)."""
        return sum(tensor.nbytes for tensor in self.inputs)


@dataclass(frozen=True, slots=True)
class GrpcOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class GrpcInferAnswer:
    """A ``ModelInferResponse`` as plain values; ``raw`` contents in output order."""

    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any]
    outputs: tuple[GrpcOutput, ...]


def _size(array: np.ndarray) -> int:
    if array.dtype == object:
        return sum(len(item) for item in array.ravel().tolist())
    return int(array.nbytes)


def _invalid(message: str, where: str) -> InvalidRequestError:
    return InvalidRequestError(message, detail={"field": where})


def decode_grpc_call(call: GrpcInferCall) -> DecodedRequest:
    """The call's tensors as numpy arrays, checked the way the REST codec checks a body.

    Raises ``InvalidRequestError`` naming the field for anything malformed: an unknown
    datatype, a negative dimension, data that does not fill the shape, contents in the
    wrong field, raw contents for some inputs only, shared memory (not supported).
    """
    if call.raw_input_count and call.raw_input_count != len(call.inputs):
        raise _invalid(
            f"raw_input_contents has {call.raw_input_count} entries for {len(call.inputs)} "
            "inputs; send every input raw (one entry each, in input order) or none",
            "raw_input_contents",
        )
    if len(call.id) > MAX_REQUEST_ID_CHARS:  # as REST's: it is echoed and logged
        raise _invalid(f"id is {len(call.id)} characters; at most {MAX_REQUEST_ID_CHARS}", "id")
    inputs: list[DecodedInput] = []
    seen: set[str] = set()
    for index, tensor in enumerate(call.inputs):
        where = f"inputs[{index}]"
        if tensor.name in seen:
            raise _invalid(f"{where}.name {tensor.name!r} repeats an earlier input", f"{where}.name")
        seen.add(tensor.name)
        _refuse_shared_memory(tensor.parameters, where)
        array = _decode_tensor(tensor, where, index)
        inputs.append(DecodedInput(tensor.name, tensor.datatype, tensor.shape, array,
                                   tensor.parameters))
    return DecodedRequest(
        id=call.id or None,
        inputs=tuple(inputs),
        outputs=_requested_outputs(call.outputs),
        parameters=call.parameters,
        binary_data_output=True,
    )


def _decode_tensor(tensor: GrpcTensor, where: str, index: int) -> np.ndarray:
    datatype = tensor.datatype
    if not is_datatype(datatype):
        raise _invalid(f"{where}.datatype {datatype!r:.40} is not a v2 datatype; expected one "
                       f"of {', '.join(V2_DATATYPES)}", f"{where}.datatype")
    for axis, dim in enumerate(tensor.shape):
        if dim < 0:
            raise _invalid(f"{where}.shape[{axis}] is {dim}; dimensions must be 0 or more",
                           f"{where}.shape")
    shape = list(tensor.shape)
    count = element_count(shape, where)
    described = f"{where} ({tensor.name!r}, {datatype}, shape {shape})"
    if tensor.raw is not None:
        if tensor.contents:
            raise _invalid(f"{where} has data both in raw_input_contents[{index}] and in "
                           f"contents.{next(iter(tensor.contents))}; send it one way",
                           f"{where}.contents")
        return _from_raw(tensor.raw, datatype, shape, count, described, f"raw_input_contents[{index}]")
    return _from_contents(tensor, shape, count, described, where)


def _from_raw(raw: bytes, datatype: str, shape: list[int], count: int, described: str,
              where: str) -> np.ndarray:
    if datatype == "BYTES":
        array = decode_bytes_elements(memoryview(raw), where, at_most=count)
        if array.size != count:
            held = array.size if array.size < count else f"more than {count}"
            raise _invalid(f"{where} holds {held} BYTES elements but {described} needs "
                           f"{count}", where)
        return array.reshape(shape)
    dtype = to_numpy_dtype(datatype)
    if len(raw) != count * dtype.itemsize:
        raise _invalid(f"{where} holds {len(raw)} bytes but {described} needs "
                       f"{count * dtype.itemsize}", where)
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and count and array.view(np.uint8).max() > 1:
        raise _invalid(f"{where} holds a BOOL byte other than 0 or 1", where)
    return array.reshape(shape)


def _from_contents(tensor: GrpcTensor, shape: list[int], count: int, described: str,
                   where: str) -> np.ndarray:
    datatype = tensor.datatype
    wanted = CONTENTS_FIELD.get(datatype)
    stray = sorted(set(tensor.contents) - {wanted})
    if stray:
        hint = f"contents.{wanted}" if wanted else "raw_input_contents (FP16 has no typed field)"
        raise _invalid(f"{where}.contents.{stray[0]} cannot carry {datatype} data; use {hint}",
                       f"{where}.contents.{stray[0]}")
    values = tensor.contents.get(wanted) if wanted else None
    if values is None:
        if count == 0:
            return np.empty(shape, dtype=to_numpy_dtype(datatype))
        typed = f" or {where}.contents.{wanted}" if wanted else ""
        raise _invalid(f"{described} carries no data: send raw_input_contents "
                       f"(InferInput.set_data_from_numpy){typed}", f"{where}.contents")
    if values.size != count:
        raise _invalid(f"{where}.contents.{wanted} holds {values.size} elements but {described} "
                       f"needs {count}", f"{where}.contents.{wanted}")
    if datatype == "BYTES":
        return values.reshape(shape)
    target = to_numpy_dtype(datatype)
    if target != values.dtype and target.kind in "iu" and count:
        info = np.iinfo(target)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            raise _invalid(f"{where}.contents.{wanted} holds {low if low < info.min else high}, "
                           f"out of range for {datatype} [{info.min}, {info.max}]",
                           f"{where}.contents.{wanted}")
    return values.astype(target, copy=False).reshape(shape)


def _refuse_shared_memory(parameters: dict[str, Any], where: str) -> None:
    for key in _SHARED_MEMORY_KEYS:
        if key in parameters:
            raise _invalid(f"{where}.parameters.{key}: the shared-memory extension is not "
                           "supported; send the tensor's data in the request",
                           f"{where}.parameters.{key}")


def _requested_outputs(outputs: tuple[GrpcRequestedOutput, ...] | None
                       ) -> tuple[RequestedOutput, ...] | None:
    if outputs is None:
        return None
    wanted: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, output in enumerate(outputs):
        where = f"outputs[{index}]"
        if output.name in seen:
            raise _invalid(f"{where}.name {output.name!r} repeats an earlier output", f"{where}.name")
        seen.add(output.name)
        _refuse_shared_memory(output.parameters, where)
        if "classification" in output.parameters:
            raise _invalid(f"{where}.parameters.classification: classification outputs are not "
                           "supported; ask for the output and take its top classes yourself",
                           f"{where}.parameters.classification")
        wanted.append(RequestedOutput(output.name, True, output.parameters))
    return tuple(wanted)


def encode_grpc_answer(outputs: dict[str, np.ndarray], *, model_name: str, model_version: str,
                       response_id: str, parameters: dict[str, Any]) -> GrpcInferAnswer:
    """Output arrays as raw little-endian contents (BYTES length-prefixed), in order."""
    encoded: list[GrpcOutput] = []
    for name, value in outputs.items():
        array = np.asarray(value)
        datatype = from_numpy_dtype(array.dtype)
        if datatype is None:
            raise InferenceFailedError(
                f"output {name!r} has numpy dtype {array.dtype}, which the v2 protocol cannot "
                "carry; cast it in the model or its post-processing",
                detail={"field": f"outputs.{name}"},
            )
        encoded.append(GrpcOutput(name, datatype, tuple(array.shape),
                                  bytes(binary_data(array, datatype))))
    return GrpcInferAnswer(model_name, model_version, response_id, parameters, tuple(encoded))
