"""Compiled data-quality pass: one sweep over a batch updates histograms and counters.

For every cell of a (rows x features) batch: non-finite values count as missing;
numeric values outside the reference [min, max] count as out of range; categorical
codes the reference never saw count as out of range and land in the "unseen" bin; every
non-missing value is added to its feature's histogram (the drift counts).
"""

from __future__ import annotations

import math

from kernels._jit import f64_1d, f64_2d, i64_1d, kernel, void

# counters[...] of a live window
W_ROWS = 0  # rows seen
W_NEXT = 1  # sample ring column the next row is written to
W_SIZE = 2  # sample ring columns holding rows
N_WINDOW_STATE = 3
# Up to this many edges a value's bin is found by comparing it with every edge.
_LINEAR_EDGES = 16


@kernel(void(f64_2d, i64_1d, i64_1d, i64_1d, f64_1d, f64_1d, f64_1d, i64_1d, i64_1d, i64_1d,
             f64_2d, i64_1d))
def update_window(X, kinds, bin_offsets, edge_offsets, edges, ref_min, ref_max,
                  hist, missing, out_of_range, samples, state):
    """Add batch X into ``hist`` (flat, per ``bin_offsets``) and the per-feature counters,
    and append its rows to the column-major sample ring ``samples`` (features x capacity).
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
    # Feature-major: each feature's edges and extrema stay in registers for its column.
    # A batch is small (32 x 64 doubles is 16 KiB), so the strided reads hit L1.
    for f in range(features):
        e0 = edge_offsets[f]
        width = edge_offsets[f + 1] - e0
        lo_value = ref_min[f]
        hi_value = ref_max[f]
        base = bin_offsets[f]
        numeric = kinds[f] == 0
        n_missing = 0
        n_out = 0
        for r in range(rows):
            x = X[r, f]
            if not math.isfinite(x):
                n_missing += 1
                continue
            # How many edges are <= x (numeric) or < x (categorical). A bisection's
            # branch on the data was mispredicted about half the time on rows the kernel
            # had not just seen (live traffic), which made fresh rows cost 3-5x repeated
            # ones; with few edges a plain count has no such branch. Past that, a
            # bisection with a trip count fixed by the edge count.
            at = e0
            if width <= _LINEAR_EDGES:
                # Few edges (the usual 10 bins): count them all. No load waits on an
                # earlier comparison, and the loop has nothing to mispredict.
                if numeric:
                    for j in range(e0, e0 + width):
                        at += edges[j] <= x
                else:
                    for j in range(e0, e0 + width):
                        at += edges[j] < x
            else:
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
            else:
                if at < e0 + width and edges[at] == x:
                    hist[base + at - e0] += 1
                else:
                    n_out += 1
                    hist[base + width] += 1  # the unseen-category bin
        missing[f] += n_missing
        out_of_range[f] += n_out
