"""Check decoded request tensors against a version's signature before running the model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.errors import InvalidRequestError
from serving.protocol import DecodedRequest
from serving.schemas import TensorSignature

_NUMPY = {
    "bool": np.dtype(np.bool_), "int8": np.dtype(np.int8), "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32), "int64": np.dtype(np.int64), "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16), "uint32": np.dtype(np.uint32), "uint64": np.dtype(np.uint64),
    "float16": np.dtype(np.float16), "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64), "string": np.dtype(object),
}


def numpy_dtype(name: str) -> np.dtype:
    return _NUMPY[name]


def rejection_reason(error: Exception) -> str:
    """A bounded label for why a request was refused (a metric label, never a message)."""
    from serving.errors import ModelNotFoundError, PayloadTooLargeError

    detail = getattr(error, "detail", None) or {}
    if detail.get("reason"):
        return str(detail["reason"])
    if isinstance(error, PayloadTooLargeError):
        return "payload_too_large"
    if isinstance(error, ModelNotFoundError):
        return "unknown_version"
    return "malformed"


def validate_inputs(
    request: DecodedRequest, signature: Sequence[TensorSignature], *, model: str
) -> dict[str, np.ndarray]:
    """The request's arrays keyed by input name, checked for names, dtypes and shapes.

    Every error names the offending input and says what the model expects.
    """
    expected = {spec.name: spec for spec in signature}
    arrays: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidRequestError(
                f"input {tensor.name!r} is not an input of {model}; it takes "
                f"{sorted(expected)}",
                detail={"field": f"inputs.{tensor.name}", "reason": "unknown_input"},
            )
        want = numpy_dtype(spec.dtype)
        data = tensor.data
        if spec.dtype == "string":
            ok = data.dtype == object or data.dtype.kind in "SU"
        else:
            ok = data.dtype == want
        if not ok:
            raise InvalidRequestError(
                f"input {tensor.name!r} has datatype {tensor.datatype} but {model} expects "
                f"{spec.dtype}",
                detail={"field": f"inputs.{tensor.name}.datatype", "reason": "datatype"},
            )
        shape = data.shape
        if len(shape) != len(spec.shape) or any(
            want_dim is not None and want_dim != have for want_dim, have in zip(spec.shape, shape, strict=False)
        ):
            readable = ["-1" if d is None else str(d) for d in spec.shape]
            raise InvalidRequestError(
                f"input {tensor.name!r} has shape {list(shape)} but {model} expects "
                f"[{', '.join(readable)}] (-1 is any size)",
                detail={"field": f"inputs.{tensor.name}.shape", "reason": "shape"},
            )
        if shape and shape[0] == 0:
            # An answer to no rows is answered in microseconds and is no evidence of the
            # model: counted, a flood of them diluted a candidate's error rate, latency and
            # shadow comparison until a rollout promoted a version failing its real requests.
            raise InvalidRequestError(
                f"input {tensor.name!r} has shape {list(shape)}: no rows; a request to {model} "
                "carries at least one",
                detail={"field": f"inputs.{tensor.name}.shape", "reason": "no_rows"},
            )
        arrays[tensor.name] = data
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise InvalidRequestError(
            f"{model} needs input(s) {missing} which the request does not carry",
            detail={"field": f"inputs.{missing[0]}", "reason": "missing_input"},
        )
    return arrays


def check_requested_outputs(
    request: DecodedRequest, signature: Sequence[TensorSignature], *, model: str
) -> list[str] | None:
    """Names of the outputs to return (None for all), refusing names the model lacks."""
    if request.outputs is None:
        return None
    known = {spec.name for spec in signature}
    for output in request.outputs:
        if output.name not in known:
            raise InvalidRequestError(
                f"requested output {output.name!r} is not an output of {model}; it has "
                f"{sorted(known)}",
                detail={"field": f"outputs.{output.name}", "reason": "unknown_output"},
            )
    return [output.name for output in request.outputs]
