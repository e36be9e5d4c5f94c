"""A mergeable quantile sketch for positive values such as latencies.

The mapping is DDSketch's: with ``gamma = (1 + alpha) / (1 - alpha)`` no bin spans more
than a factor ``gamma``, and a bin is reported as ``2 * upper_edge / (1 + gamma)``, within
relative error ``alpha`` of every value in it. The bin of ``x`` comes from DDSketch's
cubically interpolated approximation of ``log(x)`` (bits and six flops instead of a libm
call; see :mod:`kernels._sketch_kernels`). Bins are a dense int64 array over
``[min_value, max_value]``, so merging is an array addition and a sketch ships as
arrays or bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from kernels import _sketch_kernels as _k
from kernels.errors import InvalidValueError, KernelError, ShapeMismatchError
from kernels.order_statistics import quantile_bound_ranks

_MAGIC = b"MPSK"
_VERSION = 1
_HEADER = struct.Struct("<4sHdddqqq")  # magic, version, alpha, min, max, first, last, nbins


class Sketch:
    """DDSketch-style quantile sketch with relative accuracy ``alpha``.

    ``min_value`` and ``max_value`` bound the indexable range (defaults: 1 ns to about
    11.6 days, in seconds). Values in ``[0, min_value)`` go to a zero bucket and read as 0;
    values above ``max_value`` are clamped into the last bin and counted in
    :attr:`overflow_count` (the relative-error guarantee does not cover them). NaN,
    negative and infinite values are never folded in: they are counted apart.

    Record batches with :meth:`add_many` (a few ns per value); :meth:`add` pays a
    compiled-call overhead of a few hundred ns per value. A sketch is not locked: give
    each thread its own and merge them.
    """

    __slots__ = ("_bins", "_counters", "_extrema", "_multiplier", "_offset", "_value_scale",
                 "alpha", "gamma", "max_value", "min_value")

    def __init__(self, alpha: float = 0.01, min_value: float = 1e-9, max_value: float = 1e6) -> None:
        if not 0.0 < alpha < 1.0:
            raise InvalidValueError(f"Sketch alpha must lie in (0, 1), got {alpha!r}; 0.01 means 1% relative error.")
        if not 1e-300 <= min_value < max_value <= 1e300:
            raise InvalidValueError(
                f"Sketch range must satisfy 1e-300 <= min_value < max_value <= 1e300, got "
                f"[{min_value!r}, {max_value!r}]."
            )
        self.alpha = float(alpha)
        self.min_value = float(min_value)
        self.max_value = float(max_value)
        self.gamma = (1.0 + self.alpha) / (1.0 - self.alpha)
        # DDSketch's multiplier for the cubic mapping: bins 1/C narrower than log's.
        self._multiplier = 1.0 / (math.log1p(2.0 * self.alpha / (1.0 - self.alpha)) * _k.C)
        self._value_scale = 2.0 / (1.0 + self.gamma)
        self._offset = math.ceil(_k.key_of(self.min_value) * self._multiplier)
        last = math.ceil(_k.key_of(self.max_value) * self._multiplier)
        self._bins = np.zeros(last - self._offset + 1, dtype=np.int64)
        self._counters = np.zeros(_k.N_COUNTERS, dtype=np.int64)
        self._extrema = np.array([0.0, math.inf, -math.inf])

    # -- recording -------------------------------------------------------------------
    def add(self, value: float) -> None:
        """Record one value."""
        _k.add_value(self._bins, self._counters, self._extrema, float(value),
                     self._multiplier, self._offset, self.min_value, self.max_value)

    def add_many(self, values: Iterable[float] | np.ndarray) -> None:
        """Record a batch of values in one compiled pass (any shape; it is flattened)."""
        array = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        _k.add_values(self._bins, self._counters, self._extrema, array,
                      self._multiplier, self._offset, self.min_value, self.max_value)

    def reset(self) -> None:
        """Forget every value, keeping the parameters."""
        self._bins[:] = 0
        self._counters[:] = 0
        self._extrema[:] = (0.0, math.inf, -math.inf)

    # -- combining -------------------------------------------------------------------
    def merge(self, other: Sketch) -> Sketch:
        """Add ``other``'s values into this sketch (lossless); returns ``self``."""
        self._check_compatible(other)
        _k.merge_into(self._bins, self._counters, self._extrema,
                      other._bins, other._counters, other._extrema)
        return self

    def subtract(self, other: Sketch) -> Sketch:
        """Remove ``other``'s values, which must have been merged in before; returns ``self``.

        Counts are exact. ``sum`` carries float rounding, and ``min``/``max`` fall back to
        the edge of the outermost non-empty bin when ``other`` held the extreme.
        """
        self._check_compatible(other)
        if not _k.subtract_from(self._bins, self._counters, self._extrema, other._bins,
                                other._counters, other._extrema, self._multiplier,
                                self._offset, self.min_value):
            raise KernelError(
                "Cannot subtract a sketch whose counts exceed this one's; subtract only a "
                "sketch that was merged into this one.",
                detail={"count": self.count, "other_count": other.count},
            )
        return self

    def copy(self) -> Sketch:
        """An independent sketch with the same parameters and state."""
        clone = Sketch(self.alpha, self.min_value, self.max_value)
        clone._bins[:] = self._bins
        clone._counters[:] = self._counters
        clone._extrema[:] = self._extrema
        return clone

    def __add__(self, other: Sketch) -> Sketch:
        return self.copy().merge(other)

    def __sub__(self, other: Sketch) -> Sketch:
        return self.copy().subtract(other)

    # -- reading ---------------------------------------------------------------------
    def quantile(self, q: float) -> float:
        """The nearest-rank q-quantile (``numpy.quantile(..., method='inverted_cdf')``),
        within ``alpha`` relative error; NaN when the sketch is empty."""
        return float(self.quantiles([q])[0])

    def quantiles(self, qs: Iterable[float] | np.ndarray) -> np.ndarray:
        """Several quantiles in one pass over the bins; each q must lie in [0, 1]."""
        return _k.quantiles(self._bins, self._counters, self._extrema, _check_qs(qs),
                            self._multiplier, self._offset, self._value_scale)

    def quantile_bounds(self, qs: Iterable[float] | np.ndarray, confidence: float) -> np.ndarray:
        """``(low, high)`` per q, shape ``(len(qs), 2)``: the order statistics that bound the
        q-quantile of the distribution the values came from, each one-sided at
        ``confidence`` whatever that distribution (:mod:`kernels.order_statistics`), read
        within ``alpha``; NaN where the sketch holds too few values for a bound."""
        qs = _check_qs(qs)
        n = self.count
        out = np.full((qs.size, 2), np.nan)
        if n == 0:
            return out
        ranks = [quantile_bound_ranks(n, float(q), confidence) if 0.0 < q < 1.0 else (None, None)
                 for q in qs]
        # The k-th smallest is the nearest-rank quantile at any q in ((k - 1) / n, k / n].
        wanted = [(i, j, (rank - 0.5) / n) for i, pair in enumerate(ranks)
                  for j, rank in enumerate(pair) if rank is not None]
        if wanted:
            values = self.quantiles([q for _, _, q in wanted])
            for (i, j, _), value in zip(wanted, values, strict=True):
                out[i, j] = value
        return out

    def _merged_quantiles(self, bins: np.ndarray, counters: np.ndarray, extrema: np.ndarray,
                          rows: np.ndarray, qs: Iterable[float] | np.ndarray) -> np.ndarray:
        # Quantiles of the merge of rows of 2-D state with this sketch's parameters.
        return _k.merged_quantiles(bins, counters, extrema, rows, _check_qs(qs),
                                   self._multiplier, self._offset, self._value_scale)

    def _view(self, bins: np.ndarray, counters: np.ndarray, extrema: np.ndarray) -> Sketch:
        # A sketch with these parameters whose state lives in the given arrays (not copied).
        clone = self.copy()
        clone._bins, clone._counters, clone._extrema = bins, counters, extrema
        return clone

    def bin_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, counts)`` of the non-empty bins, in increasing order of value.

        Keys index this sketch's bins, so they compare across sketches with the same
        parameters; the zero bucket (values below ``min_value``) is key -1. A rank test
        reads the bins as groups of tied values (see ``control_plane.rollouts.ab_test``).
        """
        keys = np.flatnonzero(self._bins)
        counts = self._bins[keys]
        if self.zero_count:
            keys = np.concatenate(([-1], keys))
            counts = np.concatenate(([self.zero_count], counts))
        return keys.astype(np.int64), counts.astype(np.int64)

    @property
    def count(self) -> int:
        """Values folded into the distribution (zero bucket and overflow included)."""
        return int(self._counters[_k.C_ACCEPTED])

    @property
    def sum(self) -> float:
        """Sum of the accepted values."""
        return float(self._extrema[_k.S_SUM])

    @property
    def mean(self) -> float:
        """Mean of the accepted values; NaN when empty."""
        return self.sum / self.count if self.count else math.nan

    @property
    def min(self) -> float:
        """Smallest accepted value (NaN when empty)."""
        return float(self._extrema[_k.S_MIN]) if self.count else math.nan

    @property
    def max(self) -> float:
        """Largest accepted value (NaN when empty)."""
        return float(self._extrema[_k.S_MAX]) if self.count else math.nan

    @property
    def zero_count(self) -> int:
        """Accepted values below ``min_value`` (reported as 0)."""
        return int(self._counters[_k.C_ZERO])

    @property
    def overflow_count(self) -> int:
        """Accepted values above ``max_value``, clamped into the last bin."""
        return int(self._counters[_k.C_OVERFLOW])

    @property
    def nan_count(self) -> int:
        """NaN values seen and rejected."""
        return int(self._counters[_k.C_NAN])

    @property
    def negative_count(self) -> int:
        """Negative values (including -inf) seen and rejected."""
        return int(self._counters[_k.C_NEGATIVE])

    @property
    def infinite_count(self) -> int:
        """+inf values seen and rejected."""
        return int(self._counters[_k.C_INFINITE])

    @property
    def rejected_count(self) -> int:
        """All rejected values: NaN, negative and infinite."""
        return self.nan_count + self.negative_count + self.infinite_count

    # -- shipping --------------------------------------------------------------------
    def to_arrays(self) -> dict[str, Any]:
        """State and parameters as plain NumPy arrays and floats (copies)."""
        return {"alpha": self.alpha, "min_value": self.min_value, "max_value": self.max_value,
                "bins": self._bins.copy(), "counters": self._counters.copy(),
                "extrema": self._extrema.copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> Sketch:
        """Rebuild a sketch from :meth:`to_arrays` output."""
        sketch = cls(arrays["alpha"], arrays["min_value"], arrays["max_value"])
        for name, target in (("bins", sketch._bins), ("counters", sketch._counters),
                             ("extrema", sketch._extrema)):
            source = np.asarray(arrays[name])
            if source.shape != target.shape:
                raise ShapeMismatchError(
                    f"Sketch array {name!r} has shape {source.shape}, expected {target.shape} "
                    "for these parameters; rebuild it with the same alpha, min_value and max_value.",
                )
            target[:] = source
        return sketch

    def to_bytes(self) -> bytes:
        """Compact little-endian encoding: header, counters, extrema, non-empty bin span."""
        nonzero = np.flatnonzero(self._bins)
        first, last = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 0)
        header = _HEADER.pack(_MAGIC, _VERSION, self.alpha, self.min_value, self.max_value,
                              first, last, self._bins.size)
        return b"".join((header, self._counters.astype("<i8").tobytes(),
                         self._extrema.astype("<f8").tobytes(),
                         self._bins[first:last].astype("<i8").tobytes()))

    @classmethod
    def from_bytes(cls, data: bytes) -> Sketch:
        """Decode :meth:`to_bytes` output."""
        try:
            magic, version, alpha, min_value, max_value, first, last, nbins = _HEADER.unpack_from(data)
        except struct.error as exc:
            raise InvalidValueError("Sketch bytes are truncated; send the whole to_bytes() output.") from exc
        if magic != _MAGIC or version != _VERSION:
            raise InvalidValueError(f"Not a version-{_VERSION} sketch encoding (magic {magic!r}, version {version}).")
        sketch = cls(alpha, min_value, max_value)
        at = _HEADER.size
        body = np.frombuffer(data, dtype="<i8", count=_k.N_COUNTERS, offset=at)
        at += 8 * _k.N_COUNTERS
        extrema = np.frombuffer(data, dtype="<f8", count=3, offset=at)
        at += 24
        if nbins != sketch._bins.size or not 0 <= first <= last <= nbins or len(data) != at + 8 * (last - first):
            raise InvalidValueError("Sketch bytes are corrupt or truncated; their bin span does not fit.")
        sketch._counters[:] = body
        sketch._extrema[:] = extrema
        sketch._bins[first:last] = np.frombuffer(data, dtype="<i8", count=last - first, offset=at)
        return sketch

    # -- comparing -------------------------------------------------------------------
    def parameters(self) -> tuple[float, float, float]:
        """``(alpha, min_value, max_value)``: sketches combine only when these match."""
        return (self.alpha, self.min_value, self.max_value)

    def _check_compatible(self, other: Sketch) -> None:
        if not isinstance(other, Sketch) or other.parameters() != self.parameters():
            theirs = other.parameters() if isinstance(other, Sketch) else type(other).__name__
            raise ShapeMismatchError(
                f"Sketches with different parameters cannot be combined: {self.parameters()} vs "
                f"{theirs}; create both with the same alpha, min_value and max_value.",
            )

    def __eq__(self, other: object) -> bool:
        """Same parameters, bins, counters and extrema; sums equal up to float rounding.

        Sums are compared with a 1e-9 relative tolerance: summation order differs between
        a sketch fed directly and one merged from shards, and a sum that went through
        :meth:`subtract` carries the rounding of the addition it undid.
        """
        if not isinstance(other, Sketch):
            return NotImplemented
        return (self.parameters() == other.parameters()
                and np.array_equal(self._bins, other._bins)
                and np.array_equal(self._counters, other._counters)
                and np.array_equal(self._extrema[1:], other._extrema[1:])
                and math.isclose(self.sum, other.sum, rel_tol=1e-9, abs_tol=0.0))

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"Sketch(alpha={self.alpha}, count={self.count}, min={self.min:.6g}, "
                f"max={self.max:.6g}, rejected={self.rejected_count})")


def _check_qs(qs: Iterable[float] | np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(qs, dtype=np.float64).reshape(-1)
    # min()/max() on the handful of qs beat np.all() by ~5 us, a third of a query.
    if array.size and not (min(array) >= 0.0 and max(array) <= 1.0):
        raise InvalidValueError(f"Quantiles must lie in [0, 1], got {array.tolist()!r}.")
    return array
