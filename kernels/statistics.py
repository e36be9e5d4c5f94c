"""Drift statistics between one reference and one live sample, one feature at a time.

These are the building blocks :func:`kernels.drift_report` runs for every feature in one
compiled pass; here they take plain arrays, for tests, notebooks and one-off checks.

=================  ==============================================================  ===============================================
statistic          definition                                                      equals
=================  ==============================================================  ===============================================
``psi``            sum (q - p) ln(q / p), p and q smoothed with ``pseudo_count``    --
``kl_divergence``  sum q ln(q / p) (live relative to reference), smoothed           ``scipy.stats.entropy(q, p)`` on smoothed p, q
``js_distance``    sqrt of the Jensen-Shannon divergence, natural log, raw counts   ``scipy.spatial.distance.jensenshannon(r, l)``
``hellinger``      sqrt(1/2 sum (sqrt p - sqrt q)^2), raw proportions               --
``chi_square``     Pearson statistic of live counts vs reference proportions       ``scipy.stats.chisquare(l, n * p)``
``ks_2samp``       sup |F_ref - F_live| and its p-value                             ``scipy.stats.ks_2samp(r, l, method='asymp')``
``wasserstein``    integral of |F_ref - F_live|                                     ``scipy.stats.wasserstein_distance(r, l)``
=================  ==============================================================  ===============================================

Smoothing: with ``pseudo_count`` e (default 0.5, the Jeffreys prior) each of the k bins
occupied in either histogram gets ``p_i = (R_i + e) / (N + k e)``; bins empty on both
sides are left out, since smoothing them would score a difference where there is none. PSI and KL are infinite on an empty bin, and the
usual fix (a 1e-4 floor) lets one empty bin of a small window dominate the score; a
pseudo-count shrinks empty and tiny bins toward uniform by an amount that vanishes as
windows grow. Non-finite sample values are treated as missing and ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import _stats_kernels as _k
from kernels._gamma_kernels import chi2_sf
from kernels._kolmogorov_kernels import kolmogorov_sf
from kernels._layout import pad_cumulative, pad_sample, rank_table
from kernels.errors import ShapeMismatchError

DEFAULT_PSEUDO_COUNT = 0.5


def psi(reference_counts: Any, live_counts: Any, pseudo_count: float = DEFAULT_PSEUDO_COUNT) -> float:
    """Population stability index of live counts against reference counts (same bins)."""
    return float(_counts(reference_counts, live_counts, pseudo_count)[_k.PSI])


def kl_divergence(reference_counts: Any, live_counts: Any,
                  pseudo_count: float = DEFAULT_PSEUDO_COUNT) -> float:
    """KL(live || reference) in nats, on smoothed proportions."""
    return float(_counts(reference_counts, live_counts, pseudo_count)[_k.KL])


def js_distance(reference_counts: Any, live_counts: Any) -> float:
    """Jensen-Shannon distance (natural log) between the two histograms' proportions."""
    return float(_counts(reference_counts, live_counts, 0.0)[_k.JS])


def hellinger(reference_counts: Any, live_counts: Any) -> float:
    """Hellinger distance between the two histograms' proportions, in [0, 1]."""
    return float(_counts(reference_counts, live_counts, 0.0)[_k.HELLINGER])


def chi_square(reference_counts: Any, live_counts: Any, pseudo_count: float = 0.0) -> tuple[float, float]:
    """Pearson chi-square of live counts against reference proportions scaled to the live
    total, and its p-value on ``occupied bins - 1`` degrees of freedom (1.0 for one bin)."""
    stat = float(_counts(reference_counts, live_counts, pseudo_count)[_k.CHI2])
    occupied = np.count_nonzero(np.add(reference_counts, live_counts))
    return stat, float(chi2_sf(stat, float(occupied - 1)))


def ks_2samp(reference: Any, live: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov distance and its p-value from the Kolmogorov
    distribution at ``n N / (n + N)``, as ``scipy.stats.ks_2samp(method='asymp')``."""
    n, d, _ = _samples(reference, live)
    big_n = int(np.isfinite(np.asarray(reference, dtype=np.float64)).sum())
    if n == 0 or big_n == 0:
        return float("nan"), float("nan")
    en = float(_k.effective_n(n, big_n))
    return d, float(kolmogorov_sf(int(np.round(en)), d))


def wasserstein(reference: Any, live: Any) -> float:
    """First Wasserstein (earth mover's) distance between the two samples' distributions."""
    return _samples(reference, live)[2]


def _counts(reference_counts: Any, live_counts: Any, pseudo_count: float) -> np.ndarray:
    ref = np.ascontiguousarray(reference_counts, dtype=np.int64).reshape(-1)
    live = np.ascontiguousarray(live_counts, dtype=np.int64).reshape(-1)
    if ref.shape != live.shape or ref.size == 0:
        raise ShapeMismatchError(
            f"Histograms must have the same, non-zero number of bins; got {ref.size} and {live.size}.")
    return _k.pair_count_stats(ref, live, float(pseudo_count))


def _samples(reference: Any, live: Any) -> tuple[int, float, float]:
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    values, counts = np.unique(ref[np.isfinite(ref)], return_counts=True)
    table, lo, scale = rank_table(values)
    out = _k.pair_sample_stats(pad_sample(values), pad_cumulative(counts), table, lo, scale,
                               np.ascontiguousarray(live, dtype=np.float64).reshape(-1))
    return int(out[0]), float(out[1]), float(out[2])
