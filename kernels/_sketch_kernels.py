"""Compiled kernels behind :class:`kernels.Sketch`.

The mapping is DDSketch's cubically interpolated one: ``log2(x)`` is approximated from
the float's exponent bits plus a cubic in its mantissa, which is monotone, costs six
flops instead of a libm ``log`` call (the log was three quarters of the recording cost),
and, with bins ``1 / C`` narrower than the logarithmic mapping's, keeps the same relative
accuracy guarantee (DataDog sketches-java, ``CubicallyInterpolatedMapping``).

State is three flat arrays so a sketch ships between processes as plain arrays:

- ``bins``: int64 counts; bin ``i`` holds values whose key ``ceil(L(x) * multiplier)``
  is ``i + offset``, ``L`` the approximate log2;
- ``counters``: int64, indexed by the ``C_*`` constants below;
- ``extrema``: float64 ``[sum, min, max]`` of the accepted values.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import b1, f64, f64_1d, f64_2d, helper, i64, i64_1d, i64_2d, kernel, void

# counters[...] layout. ACCEPTED counts everything folded into the distribution (bins plus
# the zero bucket); the rejected kinds are kept apart so they never distort a quantile.
C_ACCEPTED = 0
C_ZERO = 1  # 0 <= value < min_value: reported as 0 (clamped to the tracked min)
C_OVERFLOW = 2  # max_value < value < inf: clamped into the last bin, also counted here
C_NAN = 3
C_NEGATIVE = 4  # includes -inf
C_INFINITE = 5  # +inf
N_COUNTERS = 6

S_SUM = 0
S_MIN = 1
S_MAX = 2

# Cubic approximation of log2 on a mantissa in [1, 2): exact at both ends, monotone.
A = 6.0 / 35.0
B = -3.0 / 5.0
C = 10.0 / 7.0
_MANTISSA = (1 << 52) - 1
_ULP = 2.0**-52


@helper
def cubic_log2(value):
    """Approximate log2 of a positive normal float (same arithmetic as the batch kernel)."""
    mantissa, exponent = math.frexp(value)
    s = 2.0 * mantissa - 1.0
    return ((A * s + B) * s + C) * s + (exponent - 1)


@helper
def cubic_exp2(value):
    """Inverse of :func:`cubic_log2` (Cardano's formula on the cubic)."""
    exponent = math.floor(value)
    delta_0 = B * B - 3.0 * A * C
    delta_1 = 2.0 * B * B * B - 9.0 * A * B * C - 27.0 * A * A * (value - exponent)
    inner = (delta_1 - math.sqrt(delta_1 * delta_1 - 4.0 * delta_0 * delta_0 * delta_0)) / 2.0
    cardano = -((-inner) ** (1.0 / 3.0)) if inner < 0 else inner ** (1.0 / 3.0)
    significand = -(B + cardano + delta_0 / cardano) / (3.0 * A)
    return math.ldexp((significand + 1.0) / 2.0, exponent + 1)


@kernel(f64(f64))
def key_of(value):
    """``L(value)``: the sketch's approximate log2, for computing bin ranges in Python."""
    return cubic_log2(value)


@kernel(void(i64_1d, i64_1d, f64_1d, f64_1d, f64, i64, f64, f64))
def add_values(bins, counters, extrema, values, multiplier, offset, min_value, max_value):
    """Fold a batch of values into the sketch state in one pass."""
    bits = values.view(np.int64)
    last = bins.size - 1
    accepted = 0
    zero = 0
    overflow = 0
    nan = 0
    negative = 0
    infinite = 0
    total = 0.0
    lo = extrema[S_MIN]
    hi = extrema[S_MAX]
    for k in range(values.size):
        v = values[k]
        if v >= min_value:  # False for NaN, so NaN falls through to the rejects below
            if v <= max_value:
                # Exponent and mantissa straight from the bits (min_value keeps v normal).
                word = bits[k]
                s = (word & _MANTISSA) * _ULP
                log2 = ((A * s + B) * s + C) * s + ((word >> 52) - 1023)
                i = np.int64(math.ceil(log2 * multiplier)) - offset
                # Rounding can push a value sitting on the range ends one bin out.
                if i < 0:
                    i = 0
                elif i > last:
                    i = last
            elif v == math.inf:
                infinite += 1
                continue
            else:
                i = last
                overflow += 1
            bins[i] += 1
        elif v >= 0.0:
            zero += 1
        elif v < 0.0:
            negative += 1
            continue
        else:
            nan += 1
            continue
        accepted += 1
        total += v
        lo = min(lo, v)
        hi = max(hi, v)
    counters[C_ACCEPTED] += accepted
    counters[C_ZERO] += zero
    counters[C_OVERFLOW] += overflow
    counters[C_NAN] += nan
    counters[C_NEGATIVE] += negative
    counters[C_INFINITE] += infinite
    extrema[S_SUM] += total
    extrema[S_MIN] = lo
    extrema[S_MAX] = hi


@kernel(void(i64_1d, i64_1d, f64_1d, f64, f64, i64, f64, f64))
def add_value(bins, counters, extrema, value, multiplier, offset, min_value, max_value):
    """Fold one value into the sketch state (same rules as :func:`add_values`)."""
    v = value
    if v >= min_value:
        if v <= max_value:
            i = np.int64(math.ceil(cubic_log2(v) * multiplier)) - offset
            i = min(max(i, 0), bins.size - 1)
        elif v == math.inf:
            counters[C_INFINITE] += 1
            return
        else:
            i = bins.size - 1
            counters[C_OVERFLOW] += 1
        bins[i] += 1
    elif v >= 0.0:
        counters[C_ZERO] += 1
    elif v < 0.0:
        counters[C_NEGATIVE] += 1
        return
    else:
        counters[C_NAN] += 1
        return
    counters[C_ACCEPTED] += 1
    extrema[S_SUM] += v
    extrema[S_MIN] = min(extrema[S_MIN], v)
    extrema[S_MAX] = max(extrema[S_MAX], v)


@kernel(void(i64_1d, i64_1d, f64_1d, i64_1d, i64_1d, f64_1d))
def merge_into(bins, counters, extrema, other_bins, other_counters, other_extrema):
    """Add another sketch's state into this one (lossless)."""
    for i in range(bins.size):
        bins[i] += other_bins[i]
    for i in range(counters.size):
        counters[i] += other_counters[i]
    extrema[S_SUM] += other_extrema[S_SUM]
    extrema[S_MIN] = min(extrema[S_MIN], other_extrema[S_MIN])
    extrema[S_MAX] = max(extrema[S_MAX], other_extrema[S_MAX])


@helper
def _quantiles(bins, counters, extrema, qs, multiplier, offset, value_scale):
    out = np.full(qs.size, np.nan)
    n = counters[C_ACCEPTED]
    if n == 0:
        return out
    # Same floating-point steps as numpy's _inverted_cdf so ranks agree at boundaries.
    ranks = np.empty(qs.size, dtype=np.int64)
    for j in range(qs.size):
        index = n * qs[j] - 1.0
        previous = math.floor(index)
        rank = np.int64(previous) if index - previous == 0.0 else np.int64(previous) + 1
        ranks[j] = min(max(rank, 0), n - 1)
    order = np.argsort(ranks)
    lo = extrema[S_MIN]
    hi = extrema[S_MAX]
    cumulative = counters[C_ZERO]
    i = 0
    for j in order:
        rank = ranks[j]
        if rank == 0 or rank == n - 1:
            out[j] = lo if rank == 0 else hi  # the extremes are tracked exactly
            continue
        if rank < counters[C_ZERO]:
            out[j] = min(max(0.0, lo), hi)
            continue
        while cumulative <= rank and i < bins.size:
            cumulative += bins[i]
            i += 1
        estimate = cubic_exp2((i - 1 + offset) / multiplier) * value_scale
        # The tracked extrema are exact, so clamping can only move the estimate closer.
        out[j] = min(max(estimate, lo), hi)
    return out


@kernel(f64_1d(i64_1d, i64_1d, f64_1d, f64_1d, f64, i64, f64))
def quantiles(bins, counters, extrema, qs, multiplier, offset, value_scale):
    """Nearest-rank quantiles (NumPy's ``inverted_cdf``) for each q in ``qs``, one pass.

    ``value_scale`` is ``2 / (1 + gamma)``: a bin spans at most a factor ``gamma``, so its
    upper edge times ``value_scale`` is within ``alpha`` of every value in it.
    """
    return _quantiles(bins, counters, extrema, qs, multiplier, offset, value_scale)


@kernel(f64_1d(i64_2d, i64_2d, f64_2d, i64_1d, f64_1d, f64, i64, f64))
def merged_quantiles(bins, counters, extrema, rows, qs, multiplier, offset, value_scale):
    """:func:`quantiles` of the merge of the sketches stored in ``rows`` of 2-D state."""
    merged_bins = np.zeros(bins.shape[1], dtype=np.int64)
    merged_counters = np.zeros(counters.shape[1], dtype=np.int64)
    merged_extrema = np.array([0.0, math.inf, -math.inf])
    for r in rows:
        merge_into(merged_bins, merged_counters, merged_extrema, bins[r], counters[r], extrema[r])
    return _quantiles(merged_bins, merged_counters, merged_extrema, qs, multiplier, offset,
                      value_scale)


@kernel(b1(i64_1d, i64_1d, f64_1d, i64_1d, i64_1d, f64_1d, f64, i64, f64))
def subtract_from(bins, counters, extrema, other_bins, other_counters, other_extrema,
                  multiplier, offset, min_value):
    """Remove another sketch's state from this one; False (state untouched) if not contained.

    Counts subtract exactly. The minimum survives exactly when the removed sketch did not
    hold it; otherwise the true minimum is lost and the lower edge of the lowest non-empty
    bin (within one bin of it) stands in. Likewise for the maximum.
    """
    for i in range(bins.size):
        if other_bins[i] > bins[i]:
            return False
    for i in range(counters.size):
        if other_counters[i] > counters[i]:
            return False
    for i in range(bins.size):
        bins[i] -= other_bins[i]
    for i in range(counters.size):
        counters[i] -= other_counters[i]
    extrema[S_SUM] -= other_extrema[S_SUM]
    if counters[C_ACCEPTED] == 0:
        extrema[S_SUM] = 0.0
        extrema[S_MIN] = math.inf
        extrema[S_MAX] = -math.inf
        return True
    # Both edges below are bounds the true extreme cannot cross, and so is the old extreme,
    # so the tighter of the two is kept.
    if other_extrema[S_MIN] <= extrema[S_MIN] and counters[C_ZERO] == 0:
        first = 0
        while bins[first] == 0:
            first += 1
        edge = min_value if first == 0 else cubic_exp2((first - 1 + offset) / multiplier)
        extrema[S_MIN] = max(extrema[S_MIN], edge)
    if other_extrema[S_MAX] >= extrema[S_MAX]:
        last = bins.size - 1
        while last >= 0 and bins[last] == 0:
            last -= 1
        if last < 0:
            extrema[S_MAX] = min(extrema[S_MAX], min_value)  # only zero-bucket values remain
        elif last < bins.size - 1 or counters[C_OVERFLOW] == 0:
            extrema[S_MAX] = min(extrema[S_MAX], cubic_exp2((last + offset) / multiplier))
    return True
