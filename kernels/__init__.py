"""Numba kernels for the request path: quantile sketches, drift statistics, data quality.

Importing this package is cheap; Numba compiles on first use (or in :func:`warmup`).
"""

from kernels.errors import InvalidValueError, KernelError, ShapeMismatchError

__all__ = ["InvalidValueError", "KernelError", "ShapeMismatchError"]
