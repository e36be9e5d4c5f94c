"""Exact percentiles over a bounded window of raw values.

A sketch answers quantiles within a relative error; this ring keeps the last
``capacity`` raw values and answers exactly what ``numpy.percentile`` would on them. It
costs O(capacity) memory and a linear-time selection per query, so it suits tests, small
windows and checking a sketch, not the request path at high rates.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from kernels import _percentile_kernels as _k
from kernels.errors import InvalidValueError


class RingBuffer:
    """The last ``capacity`` non-NaN values, in arrival order; NaN is counted, not stored."""

    def __init__(self, capacity: int) -> None:
        if int(capacity) < 1:
            raise InvalidValueError(f"RingBuffer capacity must be >= 1, got {capacity!r}.")
        self.capacity = int(capacity)
        self._buffer = np.zeros(self.capacity)
        self._state = np.zeros(_k.N_RING_STATE, dtype=np.int64)

    def add(self, value: float) -> None:
        """Append one value."""
        self.add_many(np.array([value], dtype=np.float64))

    def add_many(self, values: Iterable[float] | np.ndarray) -> None:
        """Append a batch in order (flattened); the oldest values are overwritten when full."""
        _k.ring_add(self._buffer, self._state,
                    np.ascontiguousarray(values, dtype=np.float64).reshape(-1))

    def __len__(self) -> int:
        return int(self._state[_k.R_SIZE])

    @property
    def nan_count(self) -> int:
        """NaN values offered and rejected."""
        return int(self._state[_k.R_NAN])

    @property
    def seen(self) -> int:
        """Values ever stored, including those since overwritten."""
        return int(self._state[_k.R_SEEN])

    def values(self) -> np.ndarray:
        """A copy of the held values, oldest first."""
        size = len(self)
        if size < self.capacity:
            return self._buffer[:size].copy()
        at = int(self._state[_k.R_NEXT])
        return np.concatenate((self._buffer[at:], self._buffer[:at]))

    def percentiles(self, qs: Iterable[float] | np.ndarray) -> np.ndarray:
        """``numpy.percentile(self.values(), qs)`` exactly, for q in [0, 100]; NaN if empty."""
        array = np.ascontiguousarray(qs, dtype=np.float64).reshape(-1)
        if array.size and not (min(array) >= 0.0 and max(array) <= 100.0):
            raise InvalidValueError(f"Percentiles must lie in [0, 100], got {array.tolist()!r}.")
        # Same division NumPy performs, so the virtual indices agree to the last bit.
        fractions = np.true_divide(array, 100)
        return _k.percentiles_inplace(self._buffer[: len(self)].copy(), fractions)

    def percentile(self, q: float) -> float:
        """One percentile, as :meth:`percentiles`."""
        return float(self.percentiles([q])[0])

    def reset(self) -> None:
        """Drop all values and counters."""
        self._state[:] = 0
