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

    def to_dict(self) -> dict[str, Any]:
        """The error as the JSON body clients receive (without the request id)."""
        return {"error": self.code, "detail": self.message, "context": self.detail}

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[ModelplaneError], message: str, detail: dict[str, Any]) -> ModelplaneError:
    error = cls.__new__(cls)
    ModelplaneError.__init__(error, message, detail=detail)
    return error


class ConfigurationError(ModelplaneError):
    """A setting read from the environment is invalid."""

    code = "configuration_error"
    http_status = 500
