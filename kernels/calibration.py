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
_W1_SIMULATIONS = 4000
# Brownian-bridge points for the Wasserstein null: the reference sample's gaps are pooled
# into at most this many blocks, which moves the null's moments by well under 1%.
_W1_BLOCKS = 128
_SEED = 20240611


def count_null(reference_counts: np.ndarray, n: int, pseudo_count: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(scale[5], dof[5])`` of each count statistic's ``c * chi2(d)`` null at live size n."""
    counts = np.ascontiguousarray(reference_counts, dtype=np.int64)
    return _count_null(counts.tobytes(), int(n), float(pseudo_count))


@functools.lru_cache(maxsize=8192)
def _count_null(key: bytes, n: int, pseudo: float) -> tuple[np.ndarray, np.ndarray]:
    counts = np.frombuffer(key, dtype=np.int64).copy()  # kernels take writable arrays
    big_n = int(counts.sum())
    positive = counts[counts > 0]
    scale = np.zeros(5)
    dof = np.zeros(5)
    if n <= 0 or positive.size <= 1:
        return scale, dof  # one occupied bin: no distribution to drift from
    if min(n, big_n) * positive.min() / big_n >= _ASYMPTOTIC_MIN_EXPECTED:
        spread = 1.0 / n + 1.0 / big_n
        scale[:] = spread
        scale[4] = n * spread
        dof[:] = positive.size - 1
        return scale, dof
    moments = _ck.count_null_moments(counts, n, pseudo, _COUNT_SIMULATIONS, _SEED)
    mean, var = moments[0], moments[1]
    ok = (mean > 0) & (var > 0)
    # Satterthwaite: the c * chi2(d) with the simulated mean and variance.
    scale[ok] = var[ok] / (2.0 * mean[ok])
    dof[ok] = 2.0 * mean[ok] ** 2 / var[ok]
    return scale, dof


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


def null_parameters(profile: ReferenceProfile, count_n: np.ndarray, pseudo_count: float,
                    with_samples: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature null parameters for :func:`_calibration_kernels.pvalues`."""
    layout = profile.layout()
    features = layout.n_features
    scale = np.zeros((features, 5))
    dof = np.zeros((features, 5))
    w1 = np.zeros((features, 3))
    for f in range(features):
        counts = layout.ref_counts[layout.bin_offsets[f]:layout.bin_offsets[f + 1]]
        scale[f], dof[f] = count_null(counts, int(count_n[f]), pseudo_count)
        if with_samples and layout.kinds[f] == 0:
            w1[f] = w1_null(profile, f)
    return scale, dof, w1


def thresholds(profile: ReferenceProfile, n: int, alpha: float = 0.05,
               pseudo_count: float = 0.5) -> dict[str, dict[str, float]]:
    """Per feature, the value of each statistic above which a window of ``n`` live values
    alarms at false-alarm rate ``alpha`` (uncorrected; pass ``alpha / features`` for a
    Bonferroni family). NaN where a statistic does not apply; inf where nothing can alarm.
    """
    _check_alpha(alpha)
    layout = profile.layout()
    out: dict[str, dict[str, float]] = {}
    for f, feature in enumerate(profile.features):
        counts = layout.ref_counts[layout.bin_offsets[f]:layout.bin_offsets[f + 1]]
        scale, dof = count_null(counts, n, pseudo_count)
        row: dict[str, float] = {}
        for j, name in enumerate(COUNT_STATISTICS):
            form = scale[j] * chi2_isf(alpha, dof[j]) if scale[j] > 0 else math.inf
            row[name] = math.sqrt(form / 8.0) if name in ("js", "hellinger") else (
                form / 2.0 if name == "kl" else form)
        big_n = feature.count
        if feature.kind == "numeric" and n > 0 and big_n > 0:
            en = max(n, big_n) * min(n, big_n) / (max(n, big_n) + min(n, big_n))
            row["ks"] = _bisect(lambda d, m=round(en): kolmogorov_sf(m, d), alpha, 0.0, 1.0)
            mean, sd, skew = w1_null(profile, f)
            row["wasserstein"] = _w1_quantile(alpha, mean, sd, skew) / math.sqrt(en)
        else:
            row["ks"] = row["wasserstein"] = math.nan
        out[feature.name] = row
    return out


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
