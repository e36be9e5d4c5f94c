"""Compiled kernels behind :class:`kernels.RingBuffer`: a bounded ring and exact percentiles.

Percentiles reproduce ``numpy.percentile(values, q)`` (method ``linear``) bit for bit:
the same virtual index ``(n - 1) * q``, the same neighbours and NumPy's two-sided lerp.
Order statistics come from an in-place multi-select, not a sort.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import f64_1d, helper, i64_1d, kernel, void

R_NEXT = 0  # ring index the next value is written to
R_SIZE = 1  # values held (<= capacity)
R_NAN = 2  # NaN values rejected
R_SEEN = 3  # values written, including those since overwritten
N_RING_STATE = 4


@kernel(void(f64_1d, i64_1d, f64_1d))
def ring_add(buffer, state, values):
    """Append values, overwriting the oldest once full; NaN is counted and skipped."""
    capacity = buffer.size
    at = state[R_NEXT]
    size = state[R_SIZE]
    for k in range(values.size):
        v = values[k]
        if v != v:
            state[R_NAN] += 1
            continue
        buffer[at] = v
        at += 1
        if at == capacity:
            at = 0
        if size < capacity:
            size += 1
        state[R_SEEN] += 1
    state[R_NEXT] = at
    state[R_SIZE] = size


@helper
def _multiselect(a, ks):
    """Place a[k] for every k in sorted ``ks`` where a full sort would put it.

    One quickselect that splits the wanted ranks between both sides of each partition, so
    nearby ranks (p95 and p99) share the partitioning work instead of repeating it.
    """
    # Explicit stack of (lo, hi, first k, end k): numba kernels avoid recursion.
    stack = np.empty((64, 4), dtype=np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = 0, a.size, 0, ks.size
    top = 1
    while top > 0:
        top -= 1
        lo, hi, kf, ke = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if kf >= ke or hi - lo <= 1:
            continue
        if hi - lo <= 16:
            # Insertion sort: cheaper than partitioning this small a range.
            for i in range(lo + 1, hi):
                v = a[i]
                j = i - 1
                while j >= lo and a[j] > v:
                    a[j + 1] = a[j]
                    j -= 1
                a[j + 1] = v
            continue
        mid = (lo + hi - 1) // 2
        # Median of three as pivot keeps sorted and reversed windows linear.
        x, y, z = a[lo], a[mid], a[hi - 1]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
            if x > y:
                y = x
        pivot = y
        i = lo
        j = hi - 1
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        # Now a[lo:j+1] <= pivot <= a[i:hi], and a[j+1:i] equals the pivot: ranks there
        # are already in place.
        split_left = kf
        while split_left < ke and ks[split_left] <= j:
            split_left += 1
        split_right = split_left
        while split_right < ke and ks[split_right] < i:
            split_right += 1
        if top + 2 > stack.shape[0]:
            # Kernels run without bounds checks: grow rather than write past the end.
            bigger = np.empty((2 * stack.shape[0], 4), dtype=np.int64)
            bigger[:top] = stack[:top]
            stack = bigger
        if split_left > kf:
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = lo, j + 1, kf, split_left
            top += 1
        if ke > split_right:
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = i, hi, split_right, ke
            top += 1


@kernel(f64_1d(f64_1d, f64_1d))
def percentiles_inplace(values, fractions):
    """``numpy.percentile(values, 100 * fractions)``; reorders ``values`` (pass a copy)."""
    n = values.size
    out = np.full(fractions.size, np.nan)
    if n == 0:
        return out
    lower = np.empty(fractions.size, dtype=np.int64)
    upper = np.empty(fractions.size, dtype=np.int64)
    gamma = np.empty(fractions.size)
    for j in range(fractions.size):
        virtual = (n - 1) * fractions[j]
        previous = math.floor(virtual)
        if virtual >= n - 1:
            # NumPy points both neighbours at the last element and keeps gamma relative to
            # index -1; the lerp of equal neighbours ignores gamma unless they are inf.
            lower[j] = n - 1
            upper[j] = n - 1
            gamma[j] = virtual + 1.0
        elif virtual < 0:
            lower[j] = 0
            upper[j] = 0
            gamma[j] = virtual - previous
        else:
            lower[j] = np.int64(previous)
            upper[j] = np.int64(previous) + 1
            gamma[j] = virtual - previous
    _multiselect(values, np.unique(np.concatenate((lower, upper))))
    for j in range(fractions.size):
        a = values[lower[j]]
        b = values[upper[j]]
        t = gamma[j]
        diff = b - a
        result = a + diff * t
        if t >= 0.5:
            result = b - diff * (1.0 - t)
        out[j] = result
    return out
