"""The Open Inference Protocol v2 (KServe v2) REST codec: wire models, datatypes, framing.

Transport-agnostic and Ray-free: ``decode_request`` turns an infer body and its headers
into numpy arrays, ``encode_response`` turns output arrays into a body and headers, JSON
or with the binary tensor extension, exactly as the official ``tritonclient`` expects.
"""

from serving.protocol.codec import (
    DecodedInput,
    DecodedRequest,
    EncodedResponse,
    RequestedOutput,
    decode_request,
    encode_response,
)
from serving.protocol.datatypes import (
    V2_DATATYPES,
    Datatype,
    from_numpy_dtype,
    to_numpy_dtype,
)
from serving.protocol.framing import (
    DEFAULT_MAX_BODY_BYTES,
    INFERENCE_HEADER_CONTENT_LENGTH,
    check_body_size,
)
from serving.protocol.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "INFERENCE_HEADER_CONTENT_LENGTH",
    "V2_DATATYPES",
    "Datatype",
    "DecodedInput",
    "DecodedRequest",
    "EncodedResponse",
    "InferenceRequest",
    "InferenceResponse",
    "ModelMetadata",
    "RequestInput",
    "RequestOutput",
    "RequestedOutput",
    "ResponseOutput",
    "ServerMetadata",
    "TensorMetadata",
    "check_body_size",
    "decode_request",
    "encode_response",
    "from_numpy_dtype",
    "to_numpy_dtype",
]
