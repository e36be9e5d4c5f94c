"""The data plane on Ray Serve: inference protocol, model server, router, monitor."""

from serving.errors import (
    InferenceFailedError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    ServingError,
)

__all__ = [
    "InferenceFailedError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "PayloadTooLargeError",
    "ServingError",
]
