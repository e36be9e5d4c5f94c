"""Calibrated drift thresholds: each statistic judged against its own null distribution.

The fixed PSI 0.1 / 0.25 folklore ignores the window size: PSI between two samples of the
same distribution is about ``(k - 1) * (1/n + 1/N)``, so on a 100-row window with 10
bins it exceeds 0.1 most of the time. Here every statistic gets a p-value from its null
at the actual live size ``n``, reference size ``N`` and bin count ``k``:

- PSI, KL, JS, Hellinger, chi-square: ``c * chi2(d)`` for the statistic's chi-square
  form (see ``_calibration_kernels.chi2_form``). With at least 50 expected live and
  reference values in every bin, ``c`` is ``1/n + 1/N`` (chi-square: ``1 + n/N``) and
  ``d = k - 1``; below that, ``c`` and ``d`` are fitted to the two-sample multinomial null
  by simulation (2,000 draws, fixed seed, cached per reference histogram and ``n``).
- KS: the exact finite-``n`` Kolmogorov distribution at ``n N / (n + N)`` rounded, as
  ``scipy.stats.ks_2samp(method='asymp')``.
- Wasserstein-1: ``sqrt(n N / (n + N)) * W1`` against the simulated limit (integral of a
  Brownian bridge over the reference sample), matched by a shifted gamma (mean, sd, skew).

Both null models treat the reference as a sample too, so the false-alarm rate holds for
a new reference and live window from the same distribution. Across features, p-values
are adjusted by Benjamini-Hochberg (false discovery rate) or Bonferroni (family-wise).

Where a null model does not hold, the statistic declines (:func:`declines`) rather than
report a p-value with the wrong false-alarm rate (``benchmarks/calibration.py`` measures
every statistic on every kind of feature):

- KS on a reference with ties (binary, small integers, rounded values): the Kolmogorov
  null assumes continuous data; with ties it alarms far less often than alpha.
- Wasserstein on heavy tails (Student's t with 2 or 3 degrees of freedom, lognormal with
  sigma >= 1): the Brownian-bridge limit needs a finite ``integral sqrt(F (1 - F)) dx``,
  and the reference sample cannot show the tail beyond its extremes; it alarmed on 24%
  of clean 3,000-row windows of a t(2) feature at alpha 0.05. Declined when the outer 2%
  of the reference sample on either side carries more than a quarter of that integral.
- Every statistic when the window holds fewer than ``MIN_LIVE_VALUES`` values of the
  feature (a mostly-missing feature on a small window): no null fits a handful of values.

A feature whose reference occupies one bin (or one value) gets Fisher's exact test
instead, on the live values outside that bin (``kernels.drift.one_bin_pvalue``): the
reference is a sample too, and a value it never held is not impossible, only rare.
``thresholds`` gives no threshold for a statistic judged so (NaN): the test counts values.
KS and Wasserstein keep their own tests where the one bin holds values that differ.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from kernels import _calibration_kernels as _ck
from kernels._gamma_kernels import chi2_sf, gammaincc
from kernels._kolmogorov_kernels import kolmogorov_sf
from kernels.errors import InvalidValueError
from kernels.profile import ReferenceProfile

STATISTICS = ("psi", "kl", "js", "hellinger", "chi2", "ks", "wasserstein")
COUNT_STATISTICS = STATISTICS[:5]
CORRECTIONS = ("bh", "bonferroni", "none")
_ASYMPTOTIC_MIN_EXPECTED = 50.0
_COUNT_SIMULATIONS = 2000
# The simulated null's largest fifth is kept: p-values below 0.2 come from it directly.
_COUNT_TAIL = _COUNT_SIMULATIONS // 5
_W1_SIMULATIONS = 4000
# Brownian-bridge points for the Wasserstein null: the reference sample's gaps are pooled
# into at most this many blocks, which moves the null's moments by well under 1%.
_W1_BLOCKS = 128
_SEED = 20240611
# Fewer live values than this in a feature: every statistic declines (see the docstring).
MIN_LIVE_VALUES = 10
# KS declines when more than this share of the reference sample repeats another value.
_MAX_TIED_SHARE = 0.01
# Wasserstein declines when the outer _TAIL_QUANTILE of the reference sample on either
# side carries more than _MAX_TAIL_SHARE of integral sqrt(F (1 - F)) dx: 0.11 for a
# normal, 0.16 exponential, 0.21 t(5) (all calibrated); 0.32 t(3), 0.33 lognormal(1),
# 0.5 t(2) (false-alarm rates of 9% to 68% at alpha 0.05). Measured on 1,024-value samples.
_TAIL_QUANTILE = 0.02
_MAX_TAIL_SHARE = 0.25


def count_null(reference_counts: np.ndarray, n: int,
               pseudo_count: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scale[5], dof[5], tail[5, keep])`` of each count statistic's null at live size n:
    the fitted ``c * chi2(d)`` of its chi-square form and, where the null was simulated,
    the largest ``keep`` simulated forms, ascending (``keep`` 0 where it was not)."""
    counts = np.ascontiguousarray(reference_counts, dtype=np.int64)
    return _count_null(counts.tobytes(), int(n), float(pseudo_count))


@functools.lru_cache(maxsize=2048)  # ~16 kB each with a simulated tail
def _count_null(key: bytes, n: int, pseudo: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.frombuffer(key, dtype=np.int64).copy()  # kernels take writable arrays
    big_n = int(counts.sum())
    positive = counts[counts > 0]
    scale = np.zeros(5)
    dof = np.zeros(5)
    no_tail = np.zeros((5, 0))
    if n <= 0 or positive.size <= 1:
        return scale, dof, no_tail  # one occupied bin: the exact test (count_pvalue)
    if min(n, big_n) * positive.min() / big_n >= _ASYMPTOTIC_MIN_EXPECTED:
        spread = 1.0 / n + 1.0 / big_n
        scale[:] = spread
        scale[4] = n * spread
        dof[:] = positive.size - 1
        return scale, dof, no_tail
    forms = _ck.count_null_forms(counts, n, pseudo, _COUNT_SIMULATIONS, _SEED)
    mean, var = forms.mean(axis=1), forms.var(axis=1, ddof=1)
    ok = (mean > 0) & (var > 0)
    # Satterthwaite: the c * chi2(d) with the simulated mean and variance.
    scale[ok] = var[ok] / (2.0 * mean[ok])
    dof[ok] = 2.0 * mean[ok] ** 2 / var[ok]
    tail = np.ascontiguousarray(np.sort(forms, axis=1)[:, -_COUNT_TAIL:])
    return scale, dof, tail


def w1_null(profile: ReferenceProfile, feature: int) -> np.ndarray:
    """Mean, sd and skew of the limiting scaled Wasserstein-1 null of one numeric feature."""
    layout = profile.layout()
    key = ("w1", feature)
    if key not in layout.cache:
        a, b = layout.sample_offsets[feature], layout.sample_offsets[feature + 1]
        # Strip the padding (see _layout.pad_sample): the null needs the plain values.
        layout.cache[key] = _ck.w1_null_moments(layout.uniques[a + 1:b - 1],
                                                layout.cumulative[a + 1:b - 1], _bridge_normals())
    return layout.cache[key]


@functools.cache
def _bridge_normals() -> np.ndarray:
    # One fixed draw (4 MB) shared by every feature's simulation: drawing normals was
    # nine tenths of the cost, and a fixed draw makes each null reproducible.
    return np.random.default_rng(_SEED).standard_normal((_W1_SIMULATIONS, _W1_BLOCKS + 1))


def declines(profile: ReferenceProfile, feature: int, count_n: int, sample_n: int) -> dict[str, str]:
    """Statistics that cannot be calibrated for this feature and window, with the reason.

    ``count_n``/``sample_n``: the live values in the feature's histogram and samples. A
    declined statistic's p-value is not reported and it never decides a verdict.
    """
    out = dict(_reference_declines(profile, feature))
    for names, n in ((COUNT_STATISTICS, count_n), (("ks", "wasserstein"), sample_n)):
        if 0 < n < MIN_LIVE_VALUES:
            for name in names:
                out.setdefault(name, f"{n} live value(s) of this feature in the window, fewer than "
                                     f"the {MIN_LIVE_VALUES} a calibrated test needs")
    return out


def _reference_declines(profile: ReferenceProfile, feature: int) -> dict[str, str]:
    """The declines that depend on the reference alone (cached on the profile's layout)."""
    layout = profile.layout()
    key = ("declines", feature)
    if key not in layout.cache:
        layout.cache[key] = _sample_declines(profile.features[feature].sample)
    return layout.cache[key]


def _sample_declines(sample: tuple[float, ...]) -> dict[str, str]:
    values, counts = np.unique(np.asarray(sample, dtype=np.float64), return_counts=True)
    m = int(counts.sum())
    if values.size <= 1:
        return {}  # no sample (categorical) or a constant: the exact tests apply
    out = {}
    tied = 1.0 - values.size / m
    if tied > _MAX_TIED_SHARE:
        out["ks"] = (f"the reference has ties ({values.size} distinct values in a sample of {m}): "
                     "the Kolmogorov null assumes continuous data and would alarm less often than alpha")
    cdf = np.cumsum(counts)[:-1] / m
    spread = np.sqrt(cdf * (1.0 - cdf)) * np.diff(values)
    outer = (cdf < _TAIL_QUANTILE) | (cdf > 1.0 - _TAIL_QUANTILE)
    share = float(spread[outer].sum() / spread.sum())
    if share > _MAX_TAIL_SHARE:
        out["wasserstein"] = (f"heavy tails (the outer {_TAIL_QUANTILE:.0%} of the reference on either "
                              f"side carries {share:.0%} of the null's spread): the Wasserstein null "
                              "does not hold and would alarm more often than alpha")
    return out


def null_parameters(profile: ReferenceProfile, count_n: np.ndarray, pseudo_count: float,
                    with_samples: bool) -> tuple[np.ndarray, ...]:
    """Per-feature null parameters for :func:`_calibration_kernels.pvalues`: scale, dof,
    tails, simulation counts and the Wasserstein nulls."""
    layout = profile.layout()
    features = layout.n_features
    big_n, occupied, rarest = _histogram_shape(layout)
    n = np.asarray(count_n, dtype=np.int64)
    # Features whose every bin expects 50 values get the closed form, all at once (this
    # loop in Python was a tenth of a 50-feature report); the rest, the cached simulation.
    closed = (n > 0) & (occupied > 1) & (np.minimum(n, big_n) * rarest / np.maximum(big_n, 1)
                                         >= _ASYMPTOTIC_MIN_EXPECTED)
    spread = np.where(closed, 1.0 / np.maximum(n, 1) + 1.0 / np.maximum(big_n, 1), 0.0)
    scale = np.repeat(spread[:, None], 5, axis=1)
    scale[:, 4] *= n
    dof = np.repeat(np.where(closed, occupied - 1.0, 0.0)[:, None], 5, axis=1)
    # Rows of features that were not simulated are never read (sims[f] == 0).
    tails = np.empty((features, 5, _COUNT_TAIL))
    sims = np.zeros(features, dtype=np.int64)
    w1 = np.zeros((features, 3))
    for f in np.flatnonzero(~closed):
        counts = layout.ref_counts[layout.bin_offsets[f]:layout.bin_offsets[f + 1]]
        scale[f], dof[f], tail = count_null(counts, int(n[f]), pseudo_count)
        if tail.shape[1]:
            tails[f] = tail
            sims[f] = _COUNT_SIMULATIONS
    if with_samples:
        for f in np.flatnonzero(layout.kinds == 0):
            w1[f] = w1_null(profile, f)
    return scale, dof, tails, sims, w1


def _histogram_shape(layout: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per feature: reference total, occupied bins and the smallest occupied bin's count."""
    if "histogram_shape" not in layout.cache:
        shape = np.zeros((3, layout.n_features), dtype=np.int64)
        for f in range(layout.n_features):
            counts = layout.ref_counts[layout.bin_offsets[f]:layout.bin_offsets[f + 1]]
            positive = counts[counts > 0]
            shape[:, f] = counts.sum(), positive.size, positive.min() if positive.size else 0
        layout.cache["histogram_shape"] = tuple(shape)
    return layout.cache["histogram_shape"]


def thresholds(profile: ReferenceProfile, n: int, alpha: float = 0.05,
               pseudo_count: float = 0.5) -> dict[str, dict[str, float]]:
    """Per feature, the value of each statistic above which a window of ``n`` live values
    alarms at false-alarm rate ``alpha`` (uncorrected; pass ``alpha / features`` for a
    Bonferroni family). NaN where a statistic does not apply or declines
    (:func:`declines`).
    """
    _check_alpha(alpha)
    layout = profile.layout()
    out: dict[str, dict[str, float]] = {}
    for f, feature in enumerate(profile.features):
        counts = layout.ref_counts[layout.bin_offsets[f]:layout.bin_offsets[f + 1]]
        scale, dof, tail = count_null(counts, n, pseudo_count)
        sims = _COUNT_SIMULATIONS if tail.shape[1] else 0
        row: dict[str, float] = {}
        for j, name in enumerate(COUNT_STATISTICS):
            form = _count_threshold(alpha, scale[j], dof[j], tail[j], sims)
            row[name] = math.sqrt(form / 8.0) if name in ("js", "hellinger") else (
                form / 2.0 if name == "kl" else form)
        big_n = feature.count
        if feature.kind == "numeric" and n > 0 and big_n > 0:
            en = max(n, big_n) * min(n, big_n) / (max(n, big_n) + min(n, big_n))
            mean, sd, skew = w1_null(profile, f)
            # A constant reference is judged by counting values (kernels.drift.one_bin_pvalue).
            row["ks"] = _bisect(lambda d, m=round(en): kolmogorov_sf(m, d), alpha, 0.0, 1.0) \
                if sd > 0 else math.nan
            row["wasserstein"] = _w1_quantile(alpha, mean, sd, skew) / math.sqrt(en) \
                if sd > 0 else math.nan
        else:
            row["ks"] = row["wasserstein"] = math.nan
        for name in declines(profile, f, n, n if feature.kind == "numeric" else 0):
            row[name] = math.nan
        if np.count_nonzero(counts) == 1:  # judged by counting values (one_bin_pvalue)
            row.update(dict.fromkeys(COUNT_STATISTICS, math.nan))
        out[feature.name] = row
    return out


def _count_threshold(alpha: float, scale: float, dof: float, tail: np.ndarray, sims: int) -> float:
    """Smallest chi-square form whose p-value (``count_pvalue``) is at most ``alpha``."""
    if scale <= 0:
        return 0.0  # the exact test of a one-bin reference: any value above 0 alarms
    high = scale * chi2_isf(alpha, dof)
    if tail.size:
        high = max(high, float(tail[-1]) * 2.0 + 1.0)
    return _bisect(lambda x: _ck.count_pvalue(x, scale, dof, tail, sims), alpha, 0.0, high)


def adjust_pvalues(pvalues: Any, method: str = "bh") -> np.ndarray:
    """Multiple-testing adjusted p-values: ``bh`` (Benjamini-Hochberg), ``bonferroni`` or
    ``none``. NaN entries (untested features) stay NaN and do not count as tests."""
    if method not in CORRECTIONS:
        raise InvalidValueError(f"Unknown correction {method!r}; use one of {CORRECTIONS}.")
    p = np.asarray(pvalues, dtype=np.float64).copy()
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if method == "none" or m == 0:
        return p
    if method == "bonferroni":
        p[tested] = np.minimum(p[tested] * m, 1.0)
        return p
    order = tested[np.argsort(p[tested], kind="stable")]
    ranked = p[order] * m / np.arange(1, m + 1)
    # Step-up: each adjusted value is the smallest over its rank and every rank above.
    p[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return p


def chi2_isf(alpha: float, dof: float) -> float:
    """x with ``P(chi2(dof) >= x) = alpha`` (bisection on the compiled survival function)."""
    if dof <= 0:
        return math.inf
    high = max(dof, 1.0)
    while chi2_sf(high, dof) > alpha:
        high *= 2.0
    return _bisect(lambda x: chi2_sf(x, dof), alpha, 0.0, high)


def _w1_quantile(alpha: float, mean: float, sd: float, skew: float) -> float:
    if sd <= 0:
        return mean
    if skew <= 1e-3:
        return mean + sd * math.sqrt(2.0) * _erfc_inverse(2.0 * alpha)
    shape = 4.0 / (skew * skew)
    scale = sd * skew / 2.0
    high = shape + 10.0 * math.sqrt(shape) + 50.0
    while gammaincc(shape, high) > alpha:
        high *= 2.0
    return mean - shape * scale + scale * _bisect(lambda x: gammaincc(shape, x), alpha, 0.0, high)


def _erfc_inverse(y: float) -> float:
    return _bisect(lambda x: math.erfc(x), y, -10.0, 10.0)


def _bisect(sf: Any, target: float, low: float, high: float) -> float:
    """x in [low, high] where the decreasing function ``sf`` crosses ``target``."""
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if sf(middle) > target:
            low = middle
        else:
            high = middle
    return high


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise InvalidValueError(f"A false-alarm rate must lie in (0, 1), got {alpha!r}.")
