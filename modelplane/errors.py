"""The root of every error modelplane raises on purpose.

Each package keeps its own subtree in its ``errors`` module; all of them meet here::

    ModelplaneError                     code "modelplane_error", HTTP 500
    ├── ConfigurationError              a setting (environment variable) is invalid, HTTP 500
    ├── kernels.KernelError             bad input to a kernel (NaN where none allowed, shapes)
    ├── serving.ServingError            inference protocol and model execution
    ├── control_plane.ControlPlaneError registry, store, artifacts, auth, rollouts
    └── training.TrainingError          job specs, submission, export

Every error carries a stable machine-readable ``code``, the HTTP status it maps to, a
message that says what was wrong and what to do, and an optional ``detail`` dict of
structured context (the field name, the allowed values). Errors cross Ray actor
boundaries, so they must pickle with all of that intact.

Both planes answer an error with the same JSON body, built by :func:`error_body`::

    {"error": message, "code": code, "request_id": id, "detail": {...}}
"""

from __future__ import annotations

from typing import Any, ClassVar


class ModelplaneError(Exception):
    """Base class for every error modelplane raises deliberately."""

    code: ClassVar[str] = "modelplane_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, Any] = dict(detail or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive the default Exception pickling.
        return (_rebuild, (type(self), self.message, self.detail))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[ModelplaneError], message: str, detail: dict[str, Any]) -> ModelplaneError:
    error = cls.__new__(cls)
    ModelplaneError.__init__(error, message, detail=detail)
    return error


def error_body(error: ModelplaneError, request_id: str) -> dict[str, Any]:
    """The JSON body the data plane and the control plane answer ``error`` with.

    ``error`` holds the message, not the code: the Open Inference Protocol's error body is
    ``{"error": "<message>"}`` and tritonclient prints that field, so a user of the official
    client reads what was wrong. The stable code sits beside it for programs.
    """
    return {
        "error": error.message,
        "code": error.code,
        "request_id": request_id,
        "detail": dict(error.detail),
    }


class ConfigurationError(ModelplaneError):
    """A setting read from the environment is invalid."""

    code = "configuration_error"
    http_status = 500
