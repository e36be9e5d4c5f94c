"""Compiled drift statistics: from histogram counts, and from live samples against a
sorted reference sample.

Count statistics, in column order ``PSI..CHI2``: PSI and KL on pseudo-count smoothed
proportions over the bins occupied in either histogram; Jensen-Shannon distance and Hellinger distance on raw proportions (both are
finite with empty bins); Pearson chi-square of live counts against reference
proportions (smoothed) scaled to the live total.

Sample statistics (KS, Wasserstein-1) never sort the live values. Each live value is
ranked among the reference sample's distinct values through a cell table (see
``kernels._layout.rank_table``: one multiply and a short scan); counts and offset sums per gap between reference values
then give the KS distance exactly, and the Wasserstein integral exactly for every gap
where the live CDF stays on one side of the reference CDF. The few gaps where it crosses
are integrated from their own sorted values in a second pass.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import f64, f64_1d, f64_2d, helper, i64, i64_1d, kernel, void

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
def sample_stats(xs, u, cum, m, table, lo, scale, gcnt, gsum, eq, before, head, chain):
    """(live count, KS distance, Wasserstein-1) of values ``xs`` against a reference sample.

    ``u``/``cum``: distinct sorted reference values and how many sample values are <= each;
    ``m``: sample size. Scratch: ``gcnt``, ``gsum``, ``before``, ``head`` need ``u.size + 1``
    entries, ``eq`` ``u.size``, ``chain`` ``xs.size``. Non-finite values are skipped.
    """
    M = u.size
    for g in range(M + 1):
        gcnt[g] = 0
        gsum[g] = 0.0
        head[g] = -1
    for g in range(M):
        eq[g] = 0
    n = 0
    last = M - 1
    cells = table.size - 1
    for r in range(xs.size):
        x = xs[r]
        if not math.isfinite(x):
            continue
        n += 1
        if M == 0:
            continue
        # k = how many of u are <= x. Inlined: a helper taking arrays costs reference
        # counting on every call, which was 5x the work of the lookup itself.
        if x < u[0]:
            k = 0
        elif x >= u[last]:
            k = M
        else:
            c = min(np.int64((x - lo) * scale), cells - 1)
            k = table[c]
            stop = table[c + 1]
            if stop - k <= 8:
                while k < stop and u[k] <= x:
                    k += 1
            else:
                while k < stop:
                    mid = (k + stop) >> 1
                    if u[mid] <= x:
                        k = mid + 1
                    else:
                        stop = mid
        if k > 0 and u[k - 1] == x:
            eq[k - 1] += 1
        else:
            gcnt[k] += 1
            # Offsets from the gap's finite edge: small numbers, so no cancellation later.
            gsum[k] += (u[0] - x) if k == 0 else (x - u[k - 1])
            # Thread the gap's values into a list, so a crossing gap finds them directly.
            chain[r] = head[k]
            head[k] = r
    if n == 0 or M == 0:
        return n, math.nan, math.nan
    d = 0.0
    w = gsum[0] / n + gsum[M] / n  # outer gaps: reference CDF is 0 (left) or 1 (right)
    below = 0  # live values <= the left edge of the current gap
    crossings = 0
    for g in range(M + 1):
        c = 0.0 if g == 0 else cum[g - 1] / m
        k = gcnt[g]
        before[g] = below
        if 0 < g < M:
            width = u[g] - u[g - 1]
            start = below / n - c
            end = (below + k) / n - c
            if (start >= 0.0 and end >= 0.0) or (start <= 0.0 and end <= 0.0):
                # Live CDF on one side: the integral of (F_live - c) over the gap, closed form.
                w += abs(start * width + (k * width - gsum[g]) / n)
            else:
                gcnt[g] = -k  # mark: integrate this gap from its sorted values below
                crossings += 1
        below += k
        if k > 0:
            d = max(d, abs(below / n - c))
        if g < M:
            below += eq[g]
            d = max(d, abs(below / n - cum[g] / m))
    if crossings:
        w += _crossing_integral(xs, u, cum, m, n, gcnt, before, head, chain)
    return n, d, w


@helper
def _crossing_integral(xs, u, cum, m, n, gcnt, before, head, chain):
    """Wasserstein contribution of the gaps where the live CDF crosses the reference's."""
    largest = 0
    for g in range(1, u.size):
        largest = max(largest, -gcnt[g])
    values = np.empty(largest)
    w = 0.0
    for g in range(1, u.size):
        k = -gcnt[g]
        if k <= 0:
            continue
        # Gather the gap's values from its list and sort them: a gap usually holds about
        # n / sample-size values, where insertion sort beats a general sort.
        r = head[g]
        for i in range(k):
            values[i] = xs[r]
            r = chain[r]
        if k > 32:
            values[:k].sort()
        else:
            for i in range(1, k):
                v = values[i]
                j = i - 1
                while j >= 0 and values[j] > v:
                    values[j + 1] = values[j]
                    j -= 1
                values[j + 1] = v
        c = cum[g - 1] / m
        level = before[g]
        previous = u[g - 1]
        for i in range(k):
            w += abs(level / n - c) * (values[i] - previous)
            previous = values[i]
            level += 1
        w += abs(level / n - c) * (u[g] - previous)
    return w


@kernel(f64_1d(i64_1d, i64_1d, f64))
def pair_count_stats(ref, live, pseudo):
    """Count statistics of one live histogram against one reference histogram."""
    out = np.empty(N_COUNT_STATS)
    count_stats_into(ref, live, pseudo, out)
    return out


@kernel(f64_1d(f64_1d, i64_1d, i64_1d, f64, f64, f64_1d))
def pair_sample_stats(u, cum, table, lo, scale, live):
    """[live count, KS distance, Wasserstein-1] of ``live`` against one reference sample."""
    M = u.size
    m = cum[M - 1] if M > 0 else 0
    n, d, w = sample_stats(live, u, cum, m, table, lo, scale,
                           np.empty(M + 1, dtype=np.int64), np.empty(M + 1),
                           np.empty(max(M, 1), dtype=np.int64), np.empty(M + 1, dtype=np.int64),
                           np.empty(M + 1, dtype=np.int64), np.empty(live.size, dtype=np.int64))
    out = np.empty(3)
    out[0] = n
    out[1] = d
    out[2] = w
    return out


@kernel(void(i64_1d, i64_1d, i64_1d, f64, f64_2d, i64, i64_1d, i64_1d, f64_1d, i64_1d,
             i64_1d, i64_1d, i64_1d, f64_1d, f64_1d, i64, i64, f64_2d, i64_1d, i64_1d))
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
        widest = max(widest, sample_offsets[f + 1] - sample_offsets[f] + 1)
    gcnt = np.empty(widest, dtype=np.int64)
    gsum = np.empty(widest)
    eq = np.empty(widest, dtype=np.int64)
    before = np.empty(widest, dtype=np.int64)
    head = np.empty(widest, dtype=np.int64)
    chain = np.empty(size, dtype=np.int64)
    for f in range(first, stop):
        if kinds[f] != 0:
            continue
        a, b = sample_offsets[f], sample_offsets[f + 1]
        ta, tb = table_offsets[f], table_offsets[f + 1]
        n, d, w = sample_stats(samples[f, :size], uniques[a:b], cumulative[a:b], sample_n[f],
                               table[ta:tb], table_lo[f], table_scale[f], gcnt, gsum, eq,
                               before, head, chain)
        sample_count[f] = n
        stats[f, KS] = d
        stats[f, WASSERSTEIN] = w


@kernel(f64(i64, i64))
def effective_n(n, big_n):
    """``n * N / (n + N)`` computed as SciPy's ks_2samp does (larger size first)."""
    m1 = float(max(n, big_n))
    m2 = float(min(n, big_n))
    return m1 * m2 / (m1 + m2)
