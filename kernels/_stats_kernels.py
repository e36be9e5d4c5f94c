"""Compiled drift statistics: from histogram counts, and from live samples against a
sorted reference sample.

Count statistics, in column order ``PSI..CHI2``: PSI and KL on pseudo-count smoothed
proportions over the bins occupied in either histogram; Jensen-Shannon and Hellinger
distances on raw proportions (both finite with empty bins); Pearson chi-square of live
counts against smoothed reference proportions scaled to the live total.

Sample statistics (KS, Wasserstein-1) never sort the live values. Each live value is
ranked among the reference sample's distinct values through a cell table
(``kernels._layout.rank_table``: one multiply, one lookup, one comparison). Counts and
offset sums per gap between reference values then give the KS distance exactly, and the
Wasserstein integral exactly for every gap where the live CDF stays on one side of the
reference CDF; the few gaps where it crosses are integrated from their own sorted values.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import f64, f64_1d, f64_2d, helper, i32_1d, i64, i64_1d, kernel, void

PSI, KL, JS, HELLINGER, CHI2, KS, WASSERSTEIN = range(7)
N_STATS = 7
N_COUNT_STATS = 5


@helper
def count_stats_into(ref, live, pseudo, out):
    """Fill ``out[0:5]`` with PSI, KL(live||ref), JS distance, Hellinger, chi-square."""
    big_n = 0
    n = 0
    k = 0  # bins occupied on either side; a bin empty on both carries no evidence
    for i in range(ref.size):
        big_n += ref[i]
        n += live[i]
        k += (ref[i] + live[i]) > 0
    if n == 0 or big_n == 0:
        for s in range(N_COUNT_STATS):
            out[s] = math.nan
        return
    psi = 0.0
    kl = 0.0
    js_left = 0.0
    js_right = 0.0
    hellinger = 0.0
    chi2 = 0.0
    ref_total = big_n + k * pseudo
    live_total = n + k * pseudo
    for i in range(ref.size):
        if ref[i] + live[i] == 0:
            # Smoothing it would still give p != q (the totals differ) and bias every score.
            continue
        p = (ref[i] + pseudo) / ref_total
        q = (live[i] + pseudo) / live_total
        if q > 0.0:
            ratio = math.log(q / p)
            psi += (q - p) * ratio
            kl += q * ratio
        elif p > 0.0:
            psi += p * math.inf  # unsmoothed empty live bin: PSI is infinite, as defined
        expected = n * p
        if expected > 0.0:
            chi2 += (live[i] - expected) ** 2 / expected
        elif live[i] > 0:
            chi2 = math.inf
        # JS and Hellinger on raw proportions, as scipy.spatial.distance.jensenshannon.
        pr = ref[i] / big_n
        qr = live[i] / n
        m = (pr + qr) / 2.0
        if pr > 0.0:
            js_left += pr * math.log(pr / m)
        if qr > 0.0:
            js_right += qr * math.log(qr / m)
        hellinger += (math.sqrt(pr) - math.sqrt(qr)) ** 2
    out[PSI] = psi
    out[KL] = kl
    out[JS] = math.sqrt(max((js_left + js_right) / 2.0, 0.0))
    out[HELLINGER] = math.sqrt(hellinger / 2.0)
    out[CHI2] = chi2


@helper
def sample_stats(xs, up, cp, m, table, lo, scale, ranks, gcnt, gsum, eq, before, cursor, values):
    """(live count, KS distance, Wasserstein-1) of values ``xs`` against a reference sample.

    ``up``: the M distinct sorted sample values padded as ``[u0, u0..u(M-1), NaN]``;
    ``cp``: ``[0, c0..c(M-1), m]`` with ``cj`` the sample values <= ``u(j)``; ``m`` the
    sample size. Scratch: ``ranks``/``values`` ``xs.size`` entries, ``gcnt``/``gsum``/
    ``before``/``cursor`` M + 1, ``eq`` M. Non-finite values are skipped.
    """
    M = up.size - 2
    n_values = xs.size
    if M <= 0:
        n = 0
        for r in range(n_values):
            n += math.isfinite(xs[r])
        return n, math.nan, math.nan
    # Two passes instead of one: branches that depend on the data mispredicted every few
    # values and cost more than the lookups. Pass 1 ranks: a cell holding at most one
    # sample value needs the table entry plus one comparison, no data-dependent branch
    # (the padding makes both ends safe, NaN compares False); crowded cells are flagged
    # negative in the table and are rare, so that branch predicts well. NaN and -inf
    # land in cell 0, +inf in the last cell.
    top = table.size - 2.0
    for r in range(n_values):
        x = xs[r]
        t = (x - lo) * scale
        t = min(t if t >= 0.0 else 0.0, top)
        k = table[np.int64(t)]
        if k >= 0:
            ranks[r] = k + (up[k + 1] <= x)
        else:
            k = -1 - k
            while up[k + 1] <= x:
                k += 1
            ranks[r] = k
    for g in range(M + 1):
        gcnt[g] = 0
        gsum[g] = 0.0
    for g in range(M):
        eq[g] = 0
    # Pass 2: per gap between sample values, count and sum offsets from the gap's finite
    # edge (small numbers: no cancellation later), and tally ties.
    n = 0
    for r in range(n_values):
        x = xs[r]
        if not math.isfinite(x):
            ranks[r] = -1
            continue
        n += 1
        k = ranks[r]
        edge = up[k]  # u(k-1); for k = 0, u0 (then x < u0)
        if x == edge and k > 0:
            eq[k - 1] += 1
            ranks[r] = -1  # not in any gap
        else:
            gcnt[k] += 1
            gsum[k] += abs(x - edge)
    if n == 0:
        return n, math.nan, math.nan
    d = 0.0
    w = gsum[0] / n + gsum[M] / n  # outer gaps: reference CDF is 0 (left) or 1 (right)
    below = 0  # live values <= the left edge of the current gap
    f_below = 0.0  # below / n: the live CDF at the gap's left edge
    c = 0.0  # the reference CDF across the gap (cp[0] / m)
    crossings = 0
    # CDF values are counts divided by sizes exactly as scipy.stats.ks_2samp computes them;
    # each is computed once and carried to the next gap (divisions dominated this loop).
    for g in range(M + 1):
        k = gcnt[g]
        before[g] = below
        f_after = (below + k) / n if k > 0 else f_below
        if 0 < g < M:
            width = up[g + 1] - up[g]
            start = f_below - c
            end = f_after - c
            if (start >= 0.0 and end >= 0.0) or (start <= 0.0 and end <= 0.0):
                # Live CDF on one side: the integral of (F_live - c) over the gap, closed form.
                w += abs(start * width + (k * width - gsum[g]) / n)
            else:
                gcnt[g] = -k  # mark: integrate this gap from its sorted values below
                crossings += 1
        below += k
        if k > 0:
            d = max(d, abs(f_after - c))
        if g < M:
            f_below = f_after
            if eq[g] > 0:
                below += eq[g]
                f_below = below / n
            c = cp[g + 1] / m
            d = max(d, abs(f_below - c))
    if crossings:
        w += _crossing_integral(xs, ranks, up, cp, m, n, gcnt, before, cursor, values)
    return n, d, w


@helper
def _crossing_integral(xs, ranks, up, cp, m, n, gcnt, before, cursor, values):
    """Wasserstein contribution of the gaps where the live CDF crosses the reference's
    (marked by a negative ``gcnt``): each is integrated step by step over its sorted values."""
    M = up.size - 2
    # Bucket the crossing gaps' values contiguously: one more sweep over the ranks, which
    # costs less than keeping per-gap lists during the main pass for every value.
    total = 0
    for g in range(M + 1):
        cursor[g] = total
        if gcnt[g] < 0:
            total -= gcnt[g]
    for r in range(xs.size):
        k = ranks[r]
        if k >= 0 and gcnt[k] < 0:
            values[cursor[k]] = xs[r]
            cursor[k] += 1
    w = 0.0
    for g in range(1, M):
        k = -gcnt[g]
        if k <= 0:
            continue
        lo = cursor[g] - k
        hi = cursor[g]
        # A gap usually holds about n / sample-size values: insertion sort beats a general
        # sort there; a crowded gap is sorted wholesale.
        if k > 32:
            values[lo:hi].sort()
        else:
            for i in range(lo + 1, hi):
                v = values[i]
                j = i - 1
                while j >= lo and values[j] > v:
                    values[j + 1] = values[j]
                    j -= 1
                values[j + 1] = v
        c = cp[g] / m
        level = before[g]
        previous = up[g]
        for i in range(lo, hi):
            w += abs(level / n - c) * (values[i] - previous)
            previous = values[i]
            level += 1
        w += abs(level / n - c) * (up[g + 1] - previous)
    return w


@kernel(f64_1d(i64_1d, i64_1d, f64))
def pair_count_stats(ref, live, pseudo):
    """Count statistics of one live histogram against one reference histogram."""
    out = np.empty(N_COUNT_STATS)
    count_stats_into(ref, live, pseudo, out)
    return out


@kernel(f64_1d(f64_1d, i64_1d, i32_1d, f64, f64, f64_1d))
def pair_sample_stats(up, cp, table, lo, scale, live):
    """[live count, KS distance, Wasserstein-1] of ``live`` against one padded sample
    (see :func:`sample_stats` for ``up`` and ``cp``)."""
    M = up.size - 2
    width = max(M + 1, 1)
    n, d, w = sample_stats(live, up, cp, cp[M + 1], table, lo, scale,
                           np.empty(live.size, dtype=np.int32), np.empty(width, dtype=np.int64),
                           np.empty(width), np.empty(width, dtype=np.int64),
                           np.empty(width, dtype=np.int64), np.empty(width, dtype=np.int64),
                           np.empty(live.size))
    out = np.empty(3)
    out[0] = n
    out[1] = d
    out[2] = w
    return out


@kernel(void(i64_1d, i64_1d, i64_1d, f64, f64_2d, i64, i64_1d, i64_1d, f64_1d, i64_1d,
             i64_1d, i64_1d, i32_1d, f64_1d, f64_1d, i64, i64, f64_2d, i64_1d, i64_1d))
def snapshot(ref_counts, live_counts, bin_offsets, pseudo, samples, size, kinds, sample_offsets,
             uniques, cumulative, sample_n, table_offsets, table, table_lo, table_scale,
             first, stop, stats, count_n, sample_count):
    """Every statistic for features ``first..stop-1``, written to their rows of the outputs.

    ``samples`` is column-major (features x capacity) with ``size`` valid values per
    feature, so each feature's values are contiguous. Outputs: ``stats[F, 7]`` in
    ``PSI..WASSERSTEIN`` order (sample statistics stay NaN for categorical features and
    when ``size`` is 0), ``count_n[F]`` live histogram totals, ``sample_count[F]`` finite
    live samples. Disjoint feature ranges may run on parallel threads.
    """
    for f in range(first, stop):
        a, b = bin_offsets[f], bin_offsets[f + 1]
        count_stats_into(ref_counts[a:b], live_counts[a:b], pseudo, stats[f])
        count_n[f] = live_counts[a:b].sum()
        stats[f, KS] = math.nan
        stats[f, WASSERSTEIN] = math.nan
        sample_count[f] = 0
    if size == 0:
        return
    widest = 1
    for f in range(first, stop):
        widest = max(widest, sample_offsets[f + 1] - sample_offsets[f])
    ranks = np.empty(size, dtype=np.int32)
    gcnt = np.empty(widest, dtype=np.int64)
    gsum = np.empty(widest)
    eq = np.empty(widest, dtype=np.int64)
    before = np.empty(widest, dtype=np.int64)
    cursor = np.empty(widest, dtype=np.int64)
    values = np.empty(size)
    for f in range(first, stop):
        if kinds[f] != 0:
            continue
        a, b = sample_offsets[f], sample_offsets[f + 1]
        ta, tb = table_offsets[f], table_offsets[f + 1]
        n, d, w = sample_stats(samples[f, :size], uniques[a:b], cumulative[a:b], sample_n[f],
                               table[ta:tb], table_lo[f], table_scale[f], ranks, gcnt, gsum,
                               eq, before, cursor, values)
        sample_count[f] = n
        stats[f, KS] = d
        stats[f, WASSERSTEIN] = w


@kernel(f64(i64, i64))
def effective_n(n, big_n):
    """``n * N / (n + N)`` computed as SciPy's ks_2samp does (larger size first)."""
    m1 = float(max(n, big_n))
    m2 = float(min(n, big_n))
    return m1 * m2 / (m1 + m2)
