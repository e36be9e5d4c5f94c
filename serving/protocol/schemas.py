"""Wire models of the Open Inference Protocol v2 REST API (KServe v2, Triton's HTTP API).

Every object is closed (``extra="forbid"``) except ``parameters``, which the spec leaves
open: any key, and clients such as tritonclient put their own there (``binary_data_size``,
``binary_data_output``, ``priority``, user parameters). Values are kept as given; the
codec checks the few keys the binary extension gives meaning to.

``codec.decode_request`` validates requests with these models; responses are built as
plain dicts on the request path (cheaper than model instances) and these models
document their shape in the OpenAPI schema and in tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import InvalidRequestError
from serving.protocol.datatypes import V2_DATATYPES

# The literal mirrors datatypes.Datatype (a Literal renders as an enum in OpenAPI yet
# validates to a plain str); a test keeps the two in step.
DatatypeName = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
"""A v2 tensor datatype name as a type, for fields that hold one."""

# Strict ints: lax mode would take "3" or 3.0 or true as a dimension, which the spec
# does not allow and which hides client bugs.
Dimension = Annotated[int, Field(strict=True, ge=0)]
"""A tensor dimension in a request or response: a JSON integer, zero or more."""
MetadataDimension = Annotated[int, Field(strict=True, ge=-1)]
"""A dimension in model metadata, where -1 stands for any size."""

Parameters = dict[str, Any]
"""A v2 ``$parameters`` object: arbitrary keys; the spec expects string, number or bool values."""

# The client's id is echoed and logged, never stored: a bound keeps it from carrying bulk.
MAX_REQUEST_ID_CHARS = 256


class _Closed(BaseModel):
    # Closed objects catch misspelt fields (``input`` for ``inputs``) instead of dropping them.
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Closed):
    """One input tensor of an inference request."""

    name: str = Field(description="Name of the input tensor.")
    shape: list[Dimension] = Field(description="Shape of the tensor; each dimension >= 0.")
    datatype: DatatypeName = Field(description="v2 datatype of the tensor elements.")
    parameters: Parameters | None = Field(
        default=None,
        description="Per-input parameters; `binary_data_size` places the tensor in the "
        "binary part of the body (binary tensor extension).",
    )
    data: Any = Field(
        default=None,
        description="Tensor elements in row-major order, flat or nested; absent when the "
        "tensor travels as binary data.",
    )


class RequestOutput(_Closed):
    """An output the client asks for, and how it wants it returned."""

    name: str = Field(description="Name of the requested output tensor.")
    parameters: Parameters | None = Field(
        default=None,
        description="Per-output parameters; `binary_data: true` asks for the tensor in the "
        "binary part of the response.",
    )


class InferenceRequest(_Closed):
    """The JSON part of ``POST /v2/models/{model}[/versions/{version}]/infer``."""

    id: str | None = Field(default=None, max_length=MAX_REQUEST_ID_CHARS,
                           description="Request id, echoed in the response (at most "
                           f"{MAX_REQUEST_ID_CHARS} characters).")
    parameters: Parameters | None = Field(
        default=None,
        description="Request parameters; `binary_data_output: true` asks for every output "
        "in binary unless the output says otherwise.",
    )
    inputs: list[RequestInput] = Field(description="Input tensors.")
    outputs: list[RequestOutput] | None = Field(
        default=None, description="Outputs to return; absent means every output of the model."
    )


class ResponseOutput(_Closed):
    """One output tensor of an inference response."""

    name: str = Field(description="Name of the output tensor.")
    shape: list[Dimension] = Field(description="Shape of the tensor.")
    datatype: DatatypeName = Field(description="v2 datatype of the tensor elements.")
    parameters: Parameters | None = Field(
        default=None,
        description="Per-output parameters; `binary_data_size` gives the byte length of the "
        "tensor in the binary part of the body.",
    )
    data: list[Any] | None = Field(
        default=None,
        description="Tensor elements, flat in row-major order; absent for binary outputs.",
    )


class InferenceResponse(_Closed):
    """The JSON part of an inference response."""

    model_name: str = Field(description="Name of the model (endpoint) that answered.")
    model_version: str | None = Field(default=None, description="Version that answered.")
    id: str | None = Field(default=None, description="The request id, when the request had one.")
    parameters: Parameters | None = Field(default=None, description="Response parameters.")
    outputs: list[ResponseOutput] = Field(description="Output tensors.")


class TensorMetadata(_Closed):
    """Name, datatype and shape of a model input or output."""

    name: str = Field(description="Name of the tensor.")
    datatype: DatatypeName = Field(description="v2 datatype of the tensor elements.")
    shape: list[MetadataDimension] = Field(
        description="Shape of the tensor; -1 marks a dimension of any size."
    )
    parameters: Parameters | None = Field(default=None, description="Tensor parameters.")


class ModelMetadata(_Closed):
    """``GET /v2/models/{model}[/versions/{version}]``: what a model takes and returns."""

    name: str = Field(description="Name of the model.")
    versions: list[str] | None = Field(default=None, description="Versions that can be addressed.")
    platform: str = Field(description="Framework and backend, e.g. `onnxruntime_onnx`.")
    inputs: list[TensorMetadata] = Field(description="Inputs the model takes.")
    outputs: list[TensorMetadata] = Field(description="Outputs the model returns.")
    parameters: Parameters | None = Field(default=None, description="Model parameters.")


class ServerMetadata(_Closed):
    """``GET /v2``: the server's name, version and the protocol extensions it supports."""

    name: str = Field(description="Name of the server.")
    version: str = Field(description="Version of the server.")
    extensions: list[str] = Field(
        default_factory=list, description="Supported extensions, e.g. `binary_tensor_data`."
    )


def parse_inference_request(json_part: bytes) -> InferenceRequest:
    """Parse and validate the JSON part of an infer request.

    Raises ``InvalidRequestError`` whose message and ``detail["field"]`` name the first
    offending field as a path (``inputs[1].shape[0]``), and count any further problems.
    """
    try:
        # pydantic-core parses and validates in one pass, several times faster than
        # json.loads followed by validation of the resulting dicts.
        return InferenceRequest.model_validate_json(json_part)
    except ValidationError as exc:
        # An unknown field first: a misspelt "input" also makes "inputs" missing, and
        # the spelling is the problem to report.
        errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
        field = _location(errors[0]["loc"])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise InvalidRequestError(
            _describe(errors[0], field) + more, detail={"field": field}
        ) from None


def _location(loc: tuple[int | str, ...]) -> str:
    """Pydantic's ``('inputs', 1, 'shape', 0)`` as ``inputs[1].shape[0]``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def _describe(error: Any, field: str) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "json_invalid":
        return f"the request body is not valid JSON: {error['ctx']['error']}"
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"{field} is not a field of the v2 protocol; check its spelling"
    if kind == "literal_error" and field.endswith("datatype"):
        return f"{field} {value!r} is not a v2 datatype; expected one of {', '.join(V2_DATATYPES)}"
    return f"{field}: {error['msg']} (got {value!r:.60})"
