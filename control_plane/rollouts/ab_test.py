"""A/B statistics: candidate against stable on one window, safe to look at every interval.

Three comparisons, each oriented so that a positive effect means *the candidate is worse*:

- :func:`two_proportions`: error rate (``p_candidate - p_stable``) or online accuracy
  (``acc_stable - acc_candidate``) from counts;
- :func:`binned_mann_whitney`: latency, from the two versions' sketch bins. The bins are
  ordered, so a bin is a group of tied values and ranks are midranks: the Mann-Whitney U
  of the binned samples (the one SciPy computes on the bins' values, with the tie
  correction). The effect is ``P(candidate slower) + P(tie)/2 - 1/2`` (U over
  ``n_c * n_s``, less a half), with DeLong's variance computed from the bins'
  placement values;
- :func:`confidence_sequence`: an anytime-valid interval for the effect. The normal
  mixture boundary (Robbins; the asymptotic confidence sequence of Waudby-Smith et al.,
  "Time-uniform central limit theory", 2021) covers the true effect at *every* look with
  probability ``1 - alpha``, so a gate that checks every analysis interval and stops at
  its first decision keeps each one-sided error at most ``alpha``.

:func:`decide` turns an interval into ``worse`` (its lower end above 0), ``no_worse``
(its upper end below the minimum effect) or ``undecided``; :func:`samples_needed` says how
many candidate samples the interval needs to decide, with probability ``power``, when the
true effect is 0 or the minimum effect.

Pure NumPy and the standard library (the runtime does not depend on SciPy; the tests
compare these functions with ``scipy.stats``). Every function broadcasts over leading
axes, so a simulation runs thousands of rollouts at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()


class Decision(StrEnum):
    """What one test concluded about the candidate."""

    WORSE = "worse"  # the candidate is worse than stable (the interval lies above 0)
    NO_WORSE = "no_worse"  # worse by less than the minimum effect, if at all
    UNDECIDED = "undecided"  # the interval holds both 0 and the minimum effect


@dataclass(frozen=True)
class Estimate:
    """An effect (positive: the candidate is worse), the variance of its estimate, and what
    projects that variance to other sample sizes.

    ``unit_variance`` is the variance times the candidate's sample size at the window's
    split between the versions: ``variance == unit_variance / n_candidate``. ``z`` and
    ``p_value`` are the fixed-sample test of "no difference" against "the candidate is
    worse" (one-sided), reported for reference; decisions use the confidence sequence.
    """

    effect: np.ndarray
    variance: np.ndarray
    unit_variance: np.ndarray
    z: np.ndarray
    p_value: np.ndarray


def normal_sf(z: np.ndarray | float) -> np.ndarray:
    """P(Z > z) for a standard normal Z, elementwise."""
    z = np.asarray(z, dtype=np.float64)
    return np.vectorize(lambda v: 0.5 * math.erfc(v / math.sqrt(2.0)) if not math.isnan(v)
                        else math.nan, otypes=[np.float64])(z)


def two_proportions(x_c: np.ndarray | int, n_c: np.ndarray | int, x_s: np.ndarray | int,
                    n_s: np.ndarray | int) -> Estimate:
    """``x_c / n_c - x_s / n_s``: a higher rate of the candidate reads as worse.

    The estimate and its variance are Agresti and Caffo's (one success and one failure
    added to each group), so that no errors on either side still leaves an honest
    variance; ``z`` is the classic pooled two-proportion z statistic.
    """
    x_c, n_c, x_s, n_s = (np.asarray(a, dtype=np.float64) for a in (x_c, n_c, x_s, n_s))
    p_c, p_s = (x_c + 1) / (n_c + 2), (x_s + 1) / (n_s + 2)
    variance = p_c * (1 - p_c) / (n_c + 2) + p_s * (1 - p_s) / (n_s + 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = x_c / n_c - x_s / n_s
        pooled = (x_c + x_s) / (n_c + n_s)
        se0 = np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_s))
        z = np.where(se0 > 0, raw / se0, 0.0)
    return Estimate(effect=p_c - p_s, variance=variance, unit_variance=variance * n_c,
                    z=z, p_value=normal_sf(z))


def binned_mann_whitney(candidate: np.ndarray, stable: np.ndarray) -> Estimate:
    """Rank comparison of two binned samples: ``candidate[..., k]`` and ``stable[..., k]``
    count the values in bin ``k``, bins in increasing order of value.

    ``effect`` is ``U / (n_c n_s) - 1/2`` where U counts the (candidate, stable) pairs in
    which the candidate is slower, ties as a half: SciPy's ``mannwhitneyu(c, s).statistic``
    on the bins' values. ``z`` is the Mann-Whitney statistic with the tie correction
    (``scipy.stats.mannwhitneyu(..., method="asymptotic", use_continuity=False)``).
    ``variance`` is DeLong's: the variances of the placement values (each candidate's
    share of stable values below it, ties as a half, and the reverse) over their sample
    sizes, which holds away from "no difference" too.
    """
    c = np.asarray(candidate, dtype=np.float64)
    s = np.asarray(stable, dtype=np.float64)
    n_c, n_s = c.sum(axis=-1), s.sum(axis=-1)
    below_s = np.cumsum(s, axis=-1) - s  # stable values in lower bins
    below_c = np.cumsum(c, axis=-1) - c
    with np.errstate(divide="ignore", invalid="ignore"):
        # Placements: where each candidate bin sits among stable values, and the reverse.
        place_c = (below_s + 0.5 * s) / n_s[..., None]
        place_s = (below_c + 0.5 * c) / n_c[..., None]
        u = (c * (below_s + 0.5 * s)).sum(axis=-1)
        auc = u / (n_c * n_s)
        var_c = (c * (place_c - auc[..., None]) ** 2).sum(axis=-1) / (n_c - 1)
        var_s = (s * (place_s - (1 - auc)[..., None]) ** 2).sum(axis=-1) / (n_s - 1)
        variance = var_c / n_c + var_s / n_s
        n = n_c + n_s
        ties = c + s
        tie_term = (ties ** 3 - ties).sum(axis=-1) / (n * (n - 1))
        sigma = np.sqrt(n_c * n_s / 12.0 * ((n + 1) - tie_term))
        z = np.where(sigma > 0, (u - n_c * n_s / 2.0) / sigma, 0.0)
    return Estimate(effect=auc - 0.5, variance=variance, unit_variance=variance * n_c,
                    z=z, p_value=normal_sf(z))


def mixture_scale(min_effect: float, alpha: float, power: float) -> float:
    """The mixture's variance ``tau^2``: the boundary is tightest where a fixed-sample test
    at ``alpha`` (two-sided) would detect ``min_effect`` with ``power``, by the choice of
    Waudby-Smith et al. (their rho for the time t*)."""
    z = _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)
    design = (min_effect / z) ** 2
    log_alpha = -2.0 * math.log(alpha)
    return design * (log_alpha + math.log(1.0 + log_alpha))


def half_width(variance: np.ndarray | float, tau2: float, alpha: float) -> np.ndarray:
    """Half the width of the (1 - ``alpha``) normal-mixture confidence sequence for an
    estimate with ``variance``: ``sqrt(2 V (V + tau^2) / tau^2 * log(sqrt((V + tau^2) / V) / alpha))``."""
    v = np.asarray(variance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.sqrt(2.0 * v * (v + tau2) / tau2
                        * np.log(np.sqrt((v + tau2) / v) / alpha))
    return np.where(v > 0, width, np.where(np.isnan(v), np.nan, 0.0))


def confidence_sequence(estimate: Estimate, tau2: float,
                        alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): an interval that holds the true effect at every look with
    probability at least ``1 - alpha`` (asymptotically, as the samples grow)."""
    width = half_width(estimate.variance, tau2, alpha)
    return estimate.effect - width, estimate.effect + width


def decide(low: np.ndarray | float, high: np.ndarray | float,
           min_effect: float) -> np.ndarray:
    """:class:`Decision` values, elementwise: ``worse`` when ``low > 0`` (it wins over
    ``no_worse`` when the interval lies between 0 and the minimum effect: the candidate is
    worse, if by little), ``no_worse`` when ``high < min_effect``, else ``undecided``."""
    low, high = np.asarray(low), np.asarray(high)
    return np.where(low > 0, Decision.WORSE.value,
                    np.where(high < min_effect, Decision.NO_WORSE.value,
                             Decision.UNDECIDED.value))


def required_variance(min_effect: float, alpha: float, power: float, tau2: float) -> float:
    """The estimate's variance at which the confidence sequence decides with probability
    ``power`` at one look: ``worse`` if the effect is ``min_effect``, ``no_worse`` if it is
    0 (both need ``min_effect >= half_width(V) + z_power * sqrt(V)``)."""
    z_power = _NORMAL.inv_cdf(power)

    def slack(v: float) -> float:
        return min_effect - float(half_width(v, tau2, alpha)) - z_power * math.sqrt(v)

    # slack falls as v grows; bisect on log v between a tiny variance and the effect's square.
    low, high = math.log(min_effect ** 2 * 1e-12), math.log(min_effect ** 2)
    for _ in range(100):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if slack(math.exp(middle)) > 0 else (low, middle)
    return math.exp(low)


def samples_needed(unit_variance: float, min_effect: float, alpha: float, power: float,
                   tau2: float) -> int:
    """Candidate samples (at the window's split between the versions) for the confidence
    sequence to decide with probability ``power``: ``unit_variance / required_variance``."""
    return math.ceil(unit_variance / required_variance(min_effect, alpha, power, tau2))
