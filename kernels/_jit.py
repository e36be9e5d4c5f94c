"""The one place that imports Numba and fixes how every kernel is compiled.

Kernels are compiled eagerly from explicit signatures: importing a ``_*_kernels`` module
compiles (or loads from the on-disk cache) every signature the serving path uses, so no
request pays compile time, and a caller passing the wrong dtype gets a ``TypeError``
instead of a silent recompilation. The Python wrappers convert inputs to these dtypes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba

# Shorthand for signatures: C-contiguous arrays only, so kernels never see strides.
f64 = numba.float64
i64 = numba.int64
b1 = numba.boolean
f64_1d = numba.float64[::1]
f64_2d = numba.float64[:, ::1]
f64_3d = numba.float64[:, :, ::1]
i64_1d = numba.int64[::1]
i32_1d = numba.int32[::1]
i64_2d = numba.int64[:, ::1]
void = numba.void


def kernel(signature: Any) -> Callable[[Callable[..., Any]], Any]:
    """``@njit(nogil=True, cache=True)`` compiled for exactly ``signature``.

    ``nogil`` lets replicas run kernels from worker threads without serialising on the
    GIL; ``cache`` keeps compiled code on disk so a restarted replica starts warm.
    ``error_model='numpy'`` makes a division by zero produce inf/NaN like NumPy rather
    than raise, which is what the statistics expect for empty bins.
    """
    return numba.njit(signature, nogil=True, cache=True, error_model="numpy")


def helper(func: Callable[..., Any]) -> Any:
    """A jitted helper called only from other kernels; compiled for each caller's types."""
    return numba.njit(nogil=True, cache=True, error_model="numpy")(func)
