"""Compiled null distributions for drift statistics, and p-values from them.

Every count statistic is, to second order, a scaled Pearson statistic, so its null
distribution is close to ``c * chi2(d)``. ``count_null_forms`` simulates the two-sample
null (reference and live both multinomial draws from the reference proportions) and
returns each statistic's chi-square form per simulated window, from whose moments the
caller fits ``c`` and ``d`` (Satterthwaite) and whose upper tail it keeps for p-values
where the fit is poor (:func:`count_pvalue`). ``w1_null_moments`` simulates the limit of
``sqrt(n N / (n + N)) * W1``: the integral of ``|B(F(x))|`` for a Brownian bridge ``B``
over the reference sample, whose mean, spread and skew fit a shifted gamma.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._gamma_kernels import chi2_sf, gammaincc
from kernels._jit import f64, f64_1d, f64_2d, f64_3d, helper, i64, i64_1d, kernel
from kernels._kolmogorov_kernels import kolmogorov_sf
from kernels._stats_kernels import (
    CHI2,
    HELLINGER,
    JS,
    KL,
    KS,
    N_COUNT_STATS,
    N_STATS,
    PSI,
    WASSERSTEIN,
    count_stats_into,
)


@helper
def chi2_form(stats, out):
    """Map [PSI, KL, JS, Hellinger, chi2] to their ~chi-square forms (second-order terms
    of each divergence equal, respectively, 1, 1/2, 1/8, 1/8 and n times a Pearson sum)."""
    out[PSI] = stats[PSI]
    out[KL] = 2.0 * stats[KL]
    out[JS] = 8.0 * stats[JS] * stats[JS]
    out[HELLINGER] = 8.0 * stats[HELLINGER] * stats[HELLINGER]
    out[CHI2] = stats[CHI2]


@helper
def multinomial_into(draws, weights, out):
    """Fill ``out`` with one multinomial(``draws``, ``weights / weights.sum()``) draw.

    Sequential binomials whose conditional probability is a ratio of integer counts,
    ``weights[i] / sum(weights[i:])``: it lies in [0, 1] exactly (IEEE division is
    monotone), and the last occupied bin takes the rest. ``np.random.multinomial`` on
    float proportions subtracts them from a running 1.0, and rounding left the
    conditional probability a few ulps above 1 for some reference histograms (a crash).
    """
    rest = 0
    for i in range(weights.size):
        rest += weights[i]
    left = draws
    for i in range(weights.size):
        if left == 0 or weights[i] == 0:
            out[i] = 0
        elif weights[i] >= rest:
            out[i] = left
        else:
            out[i] = np.random.binomial(left, weights[i] / rest)
        rest -= weights[i]
        left -= out[i]


@kernel(f64_2d(i64_1d, i64, f64, i64, i64))
def count_null_forms(ref, n, pseudo, sims, seed):
    """Each count statistic's chi-square form (rows) in ``sims`` simulated null windows."""
    big_n = ref.sum()
    np.random.seed(seed)
    raw = np.empty(N_COUNT_STATS)
    form = np.empty(N_COUNT_STATS)
    out = np.empty((N_COUNT_STATS, sims))
    reference = np.empty(ref.size, dtype=np.int64)
    live = np.empty(ref.size, dtype=np.int64)
    for s in range(sims):
        multinomial_into(big_n, ref, reference)
        multinomial_into(n, ref, live)
        count_stats_into(reference, live, pseudo, raw)
        chi2_form(raw, form)
        out[:, s] = form
    return out


@helper
def count_pvalue(form, scale, dof, tail, sims):
    """p-value of a count statistic's chi-square form under its null.

    ``scale``/``dof``: the fitted ``c * chi2(d)``; ``scale`` 0 marks a degenerate null
    (one occupied reference bin), where the exact test applies: under it every live value
    lands in that bin and the statistic is 0, so anything else is impossible. ``tail``:
    the largest simulated forms, ascending, out of ``sims`` (empty when the null was not
    simulated): in that range the p-value is the share of simulated windows at least as
    extreme, which holds where the fitted curve does not (a handful of expected values
    per bin, rare categories, two-valued features); past the last simulated value the
    fitted curve, capped at one simulated window's share, carries on.
    """
    if form != form:
        return math.nan
    if scale <= 0.0:
        return 1.0 if form <= 0.0 else 0.0
    fitted = chi2_sf(form / scale, dof)
    keep = tail.size
    if sims <= 0 or keep == 0 or form < tail[0]:
        return fitted
    lo = 0
    hi = keep
    while lo < hi:  # first simulated value >= form
        mid = (lo + hi) // 2
        if tail[mid] < form:
            lo = mid + 1
        else:
            hi = mid
    above = keep - lo
    if above == 0:
        return min(fitted, 1.0 / sims)
    return above / sims


@kernel(f64_1d(f64_1d, i64_1d, f64_2d))
def w1_null_moments(u, cum, normals):
    """Mean, standard deviation and skewness of the limiting scaled Wasserstein-1 null.

    ``normals`` (simulations x (blocks + 1)) are standard normal draws; the caller keeps
    one fixed matrix, so every feature reuses it (common random numbers, no RNG cost).
    """
    out = np.zeros(3)
    gaps = u.size - 1
    if gaps < 1:
        return out
    m = cum[gaps]
    blocks = min(gaps, normals.shape[1] - 1)
    times = np.empty(blocks)
    weights = np.empty(blocks)
    for b in range(blocks):
        lo = b * gaps // blocks
        hi = (b + 1) * gaps // blocks
        weight = 0.0
        moment = 0.0
        for j in range(lo, hi):
            width = u[j + 1] - u[j]
            weight += width
            moment += width * (cum[j] / m)
        weights[b] = weight
        times[b] = moment / weight if weight > 0 else cum[lo] / m
    steps = np.empty(blocks + 1)
    previous = 0.0
    for b in range(blocks):
        steps[b] = math.sqrt(max(times[b] - previous, 0.0))
        previous = times[b]
    steps[blocks] = math.sqrt(max(1.0 - previous, 0.0))
    sims = normals.shape[0]
    values = np.empty(sims)
    walk = np.empty(blocks)
    for s in range(sims):
        position = 0.0
        for b in range(blocks):
            position += steps[b] * normals[s, b]
            walk[b] = position
        end = position + steps[blocks] * normals[s, blocks]
        total = 0.0
        for b in range(blocks):
            total += weights[b] * abs(walk[b] - times[b] * end)
        values[s] = total
    mean = values.mean()
    centered = values - mean
    var = (centered**2).mean()
    sd = math.sqrt(var)
    out[0] = mean
    out[1] = sd
    # Standardise before cubing: var ** 1.5 underflows to 0 for a tiny spread (values
    # 1e-162 apart), which made the skew NaN.
    out[2] = ((centered / sd) ** 3).mean() if sd > 0 else 0.0
    return out


@helper
def _w1_pvalue(z, mean, sd, skew):
    if sd <= 0.0:
        return 1.0 if z <= mean else 0.0
    if skew <= 1e-3:  # no skew to fit: normal tail
        return 0.5 * math.erfc((z - mean) / sd / math.sqrt(2.0))
    shape = 4.0 / (skew * skew)
    scale = sd * skew / 2.0
    origin = mean - shape * scale
    if z <= origin:
        return 1.0
    return gammaincc(shape, (z - origin) / scale)


@kernel(f64_2d(f64_2d, i64_1d, i64_1d, f64_2d, f64_2d, f64_3d, i64_1d, f64_2d))
def pvalues(stats, sample_count, ref_n, scale, dof, tails, sims, w1_null):
    """Calibrated p-values for every statistic of every feature (NaN where the statistic is).

    ``scale``/``dof`` [F, 5]: fitted ``c * chi2(d)`` null of each count statistic's
    chi-square form; ``tails`` [F, 5, keep] and ``sims`` [F]: the simulated null's upper
    tail where it was simulated (``sims`` 0 where not; see :func:`count_pvalue`);
    ``w1_null`` [F, 3]: mean, sd, skew of the limiting Wasserstein null.
    """
    features = stats.shape[0]
    out = np.full((features, N_STATS), math.nan)
    form = np.empty(N_COUNT_STATS)
    for f in range(features):
        chi2_form(stats[f], form)
        for j in range(N_COUNT_STATS):
            out[f, j] = count_pvalue(form[j], scale[f, j], dof[f, j], tails[f, j], sims[f])
        n = sample_count[f]
        big_n = ref_n[f]
        if n > 0 and big_n > 0 and stats[f, KS] == stats[f, KS]:
            m1 = float(max(n, big_n))
            m2 = float(min(n, big_n))
            en = m1 * m2 / (m1 + m2)  # as scipy.stats.ks_2samp, larger size first
            if w1_null[f, 1] > 0.0:
                out[f, KS] = kolmogorov_sf(np.int64(round(en)), stats[f, KS])
            else:
                # A constant reference (the null has no spread): the exact test, as for
                # a one-bin histogram. Any live value elsewhere is impossible under it.
                out[f, KS] = 1.0 if stats[f, KS] <= 0.0 else 0.0
            out[f, WASSERSTEIN] = _w1_pvalue(math.sqrt(en) * stats[f, WASSERSTEIN],
                                             w1_null[f, 0], w1_null[f, 1], w1_null[f, 2])
    return out
