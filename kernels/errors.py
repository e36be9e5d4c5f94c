"""Errors raised by the kernels' Python API.

::

    ModelplaneError
    └── KernelError                 kernel_error, HTTP 400
        ├── InvalidValueError       NaN, negative or non-finite values where none are allowed
        └── ShapeMismatchError      arrays whose shapes or feature counts disagree
"""

from modelplane.errors import ModelplaneError


class KernelError(ModelplaneError):
    """Bad input to a kernel."""

    code = "kernel_error"
    http_status = 400


class InvalidValueError(KernelError):
    """A value the kernel cannot account for (NaN, negative latency, infinity)."""

    code = "invalid_value"


class ShapeMismatchError(KernelError):
    """Arrays whose shapes, feature counts or sketch parameters disagree."""

    code = "shape_mismatch"
