"""Errors raised by the data plane.

::

    ModelplaneError
    └── ServingError                serving_error, HTTP 500
        ├── InvalidRequestError     invalid_request, HTTP 400 (names the offending field)
        ├── PayloadTooLargeError    payload_too_large, HTTP 413 (body over the configured limit)
        ├── ModelNotFoundError      model_not_found, HTTP 404
        ├── ModelNotReadyError      model_not_ready, HTTP 503
        ├── OverloadedError         overloaded, HTTP 503 with Retry-After (the replica's queue is full)
        ├── InferenceFailedError    inference_failed, HTTP 500
        ├── UnauthenticatedError    unauthenticated, HTTP 401 (no token, or one not known)
        ├── ForbiddenError          forbidden, HTTP 403 (the token's role is too low)
        └── AuthorityUnavailableError  authority_unavailable, HTTP 503 (tokens cannot be checked)
"""

from modelplane.errors import ModelplaneError


class ServingError(ModelplaneError):
    """A failure in the data plane."""

    code = "serving_error"
    http_status = 500


class InvalidRequestError(ServingError):
    """An inference request that does not match the protocol or the model's signature."""

    code = "invalid_request"
    http_status = 400


class PayloadTooLargeError(ServingError):
    """A request body larger than the server accepts (before or after decompression)."""

    code = "payload_too_large"
    http_status = 413


class ModelNotFoundError(ServingError):
    """No endpoint or version by that name is deployed."""

    code = "model_not_found"
    http_status = 404


class ModelNotReadyError(ServingError):
    """The endpoint exists but its models are still loading."""

    code = "model_not_ready"
    http_status = 503


class OverloadedError(ServingError):
    """The replica is at one of its bounds (it holds its ``max_queued_requests`` waiting
    requests, or as many token checks as it makes at once): the call is refused at once, to
    be retried after ``detail["retry_after_s"]`` (sent as Retry-After)."""

    code = "overloaded"
    http_status = 503


def overloaded_error(limit: int | None) -> OverloadedError:
    """The refusal of a request that finds its replica's queue full (``limit`` waiting, or
    the limit Serve enforced at a handle when not known here)."""
    from serving.schemas import RETRY_AFTER_S

    held = f"already holds {limit} requests waiting" if limit is not None else "is full"
    return OverloadedError(
        f"the endpoint's replica queue {held} (max_queued_requests); retry in {RETRY_AFTER_S}s",
        detail={"max_queued_requests": limit, "retry_after_s": RETRY_AFTER_S})


class InferenceFailedError(ServingError):
    """The model raised while running a valid request."""

    code = "inference_failed"
    http_status = 500


class UnauthenticatedError(ServingError):
    """A call that needs a token came without one, or with one the control plane refused."""

    code = "unauthenticated"
    http_status = 401


class ForbiddenError(ServingError):
    """The token is valid but its role does not allow the call."""

    code = "forbidden"
    http_status = 403


class AuthorityUnavailableError(ServingError):
    """The control plane, which checks tokens, cannot be reached: the call is refused."""

    code = "authority_unavailable"
    http_status = 503
