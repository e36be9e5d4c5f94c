"""Compiled data-quality pass: one sweep over a batch updates histograms and counters.

For every cell of a (rows x features) batch: non-finite values count as missing;
numeric values outside the reference [min, max] count as out of range; categorical
codes the reference never saw count as out of range and land in the "unseen" bin; every
non-missing value is added to its feature's histogram (the drift counts).
"""

from __future__ import annotations

import math

from kernels._jit import f64_1d, f64_2d, helper, i64_1d, kernel, void
from kernels._layout import PADDED_EDGES

# counters[...] of a live window
W_ROWS = 0  # rows seen
W_NEXT = 1  # sample ring column the next row is written to
W_SIZE = 2  # sample ring columns holding rows
N_WINDOW_STATE = 3
# Rows swept feature by feature at a time: 32 rows of 64 features are 16 KiB, so the
# strided reads of one feature's column stay in L1 whatever the batch's size.
_BLOCK_ROWS = 32


@helper
def _count_short(X, f, first, last, row_edges, lo_value, hi_value, base, hist, n_missing, n_out):
    """A numeric feature of at most ``PADDED_EDGES`` edges: its bin is how many of its
    padded edges are <= x (+inf never is), counted without a branch on the data. The loop's
    length is fixed, so the compiler turns it into vector compares: 3 to 4 times faster
    than a loop over the feature's own count of edges."""
    for r in range(first, last):
        x = X[r, f]
        if not math.isfinite(x):
            n_missing += 1
            continue
        at = 0
        for j in range(PADDED_EDGES):
            at += row_edges[j] <= x
        n_out += not (x >= lo_value and x <= hi_value)  # NaN extrema: all out
        hist[base + at] += 1
    return n_missing, n_out


@helper
def _count_long(X, f, first, last, numeric, edges, e0, width, lo_value, hi_value, base, hist,
                n_missing, n_out):
    """A categorical feature, or a numeric one of many edges: a bisection with a trip
    count fixed by the edge count (a branch on the data was mispredicted about half the
    time on fresh rows). Categorical: how many codes are < x, then whether x is that code;
    a code the reference never saw counts out of range, in the unseen bin."""
    for r in range(first, last):
        x = X[r, f]
        if not math.isfinite(x):
            n_missing += 1
            continue
        at = e0
        span = width
        while span > 0:
            half = span >> 1
            if numeric:
                at += (edges[at + half] <= x) * (span - half)
            else:
                at += (edges[at + half] < x) * (span - half)
            span = half
        if numeric:
            n_out += not (x >= lo_value and x <= hi_value)  # NaN extrema: all out
            hist[base + at - e0] += 1
        elif at < e0 + width and edges[at] == x:
            hist[base + at - e0] += 1
        else:
            n_out += 1
            hist[base + width] += 1  # the unseen-category bin
    return n_missing, n_out


@kernel(void(f64_2d, i64_1d, i64_1d, i64_1d, f64_1d, f64_2d, f64_1d, f64_1d, i64_1d, i64_1d,
             i64_1d, f64_2d, i64_1d))
def update_window(X, kinds, bin_offsets, edge_offsets, edges, padded, ref_min, ref_max,
                  hist, missing, out_of_range, samples, state):
    """Add batch X into ``hist`` (flat, per ``bin_offsets``) and the per-feature counters,
    and append its rows to the column-major sample ring ``samples`` (features x capacity).
    ``padded`` holds each numeric feature's edges padded to ``PADDED_EDGES`` with +inf.
    """
    rows, features = X.shape
    capacity = samples.shape[1]
    state[W_ROWS] += rows
    if capacity > 0:
        # Only the newest `capacity` rows of the batch can survive in the ring.
        skip = max(rows - capacity, 0)
        at = (state[W_NEXT] + skip) % capacity
        for r in range(skip, rows):
            for f in range(features):
                samples[f, at] = X[r, f]
            at += 1
            if at == capacity:
                at = 0
        state[W_NEXT] = at
        state[W_SIZE] = min(state[W_SIZE] + rows, capacity)
    # Feature-major within a block of rows: each feature's edges and extrema stay in
    # registers for its column.
    for first in range(0, rows, _BLOCK_ROWS):
        last = min(first + _BLOCK_ROWS, rows)
        for f in range(features):
            e0 = edge_offsets[f]
            width = edge_offsets[f + 1] - e0
            base = bin_offsets[f]
            if kinds[f] == 0 and width <= PADDED_EDGES:
                missing[f], out_of_range[f] = _count_short(
                    X, f, first, last, padded[f], ref_min[f], ref_max[f], base, hist,
                    missing[f], out_of_range[f])
            else:
                missing[f], out_of_range[f] = _count_long(
                    X, f, first, last, kinds[f] == 0, edges, e0, width, ref_min[f], ref_max[f],
                    base, hist, missing[f], out_of_range[f])
