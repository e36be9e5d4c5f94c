"""Drift reports: every statistic for every feature, calibrated and corrected, in one call.

``drift_report(profile, live)`` computes the histogram statistics (PSI, KL, JS,
Hellinger, chi-square) from the live counts and, when the live window holds samples, KS
and Wasserstein-1 against the reference sample; turns each into a p-value under its null
at the live window's size (:mod:`kernels.calibration`); then decides drift per feature
on one chosen statistic with p-values adjusted across features, so that 64 features do
not multiply the false alarms by 64.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kernels import _calibration_kernels as _ck
from kernels import _stats_kernels as _sk
from kernels.calibration import (
    CORRECTIONS,
    COUNT_STATISTICS,
    STATISTICS,
    adjust_pvalues,
    declines,
    null_parameters,
)
from kernels.errors import InvalidValueError, ShapeMismatchError
from kernels.profile import ReferenceProfile
from kernels.quality import LiveWindow
from kernels.statistics import DEFAULT_PSEUDO_COUNT

_SAMPLE_TESTS = ("ks", "wasserstein")
# Where the chosen statistic has no calibrated p-value for a feature (it does not apply,
# or it declined), the first of these that has one decides.
FALLBACK_TESTS = ("ks", "psi", "chi2", "wasserstein")
_pool: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift verdict: all statistics, their p-values, and the decision."""

    name: str
    kind: str
    n: int  # live values in the histogram (non-missing)
    statistics: dict[str, float]
    pvalues: dict[str, float]
    test: str  # the statistic the decision used
    pvalue: float
    adjusted_pvalue: float
    drifted: bool
    # Statistics that cannot be calibrated for this feature and window, with the reason;
    # their p-values are NaN and they never decide (see kernels.calibration.declines).
    declined: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReport:
    """Drift verdicts for every feature of a live window against a reference profile."""

    features: tuple[FeatureDrift, ...]
    test: str
    alpha: float
    correction: str
    rows: int

    @property
    def drifted(self) -> tuple[str, ...]:
        """Names of the features judged to have drifted."""
        return tuple(f.name for f in self.features if f.drifted)

    @property
    def any_drift(self) -> bool:
        """Whether any feature drifted (the family-wise decision)."""
        return any(f.drifted for f in self.features)

    def feature(self, name: str) -> FeatureDrift:
        """One feature's verdict by name."""
        for f in self.features:
            if f.name == name:
                return f
        raise InvalidValueError(f"No feature named {name!r} in this report.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN and inf become None)."""
        return _json_safe(asdict(self))


def drift_report(profile: ReferenceProfile, live: LiveWindow | Any, *, alpha: float = 0.05,
                 correction: str = "bh", test: str = "psi",
                 pseudo_count: float = DEFAULT_PSEUDO_COUNT, threads: int = 1) -> DriftReport:
    """Judge drift of ``live`` (a :class:`LiveWindow`, or a rows x features array) from
    ``profile``.

    ``test`` is the statistic that decides (one of ``STATISTICS``); features it does not
    apply to (KS or Wasserstein on a categorical feature or a window without samples) or
    that it cannot be calibrated for (``FeatureDrift.declined`` says why) are decided by
    the first of ``FALLBACK_TESTS`` that can, and ``FeatureDrift.test`` names it. ``correction`` is ``bh`` (controls the false discovery rate, and the
    family-wise rate when nothing drifted), ``bonferroni`` or ``none``. ``threads`` > 1
    splits features across threads; the kernels release the GIL.
    """
    if test not in STATISTICS:
        raise InvalidValueError(f"Unknown drift test {test!r}; use one of {STATISTICS}.")
    if correction not in CORRECTIONS:
        raise InvalidValueError(f"Unknown correction {correction!r}; use one of {CORRECTIONS}.")
    if not 0.0 < alpha < 1.0:
        raise InvalidValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    if not isinstance(live, LiveWindow):
        rows = np.ascontiguousarray(live, dtype=np.float64)
        window = LiveWindow(profile, sample_capacity=rows.shape[0] if rows.ndim == 2 else 1)
        window.update(rows)
        live = window
    elif live.profile is not profile and live.profile != profile:
        raise ShapeMismatchError("The live window was built on another reference profile; build "
                                 "it with LiveWindow(profile) for the profile you check against.")
    stats, count_n, sample_n = snapshot(profile, live, pseudo_count, threads)
    has_samples = live.sample_columns().shape[1] > 0
    scale, dof, tails, sims, w1 = null_parameters(profile, count_n, pseudo_count, has_samples)
    layout = profile.layout()
    p = _ck.pvalues(stats, sample_n, layout.ref_n, scale, dof, tails, sims, w1)
    _judge_one_bin_references(p, layout, live.hist, count_n, w1)
    counts, samples = count_n.tolist(), sample_n.tolist()
    declined = [declines(profile, f, counts[f], samples[f]) for f in range(p.shape[0])]
    for f, reasons in enumerate(declined):
        for name in reasons:
            p[f, STATISTICS.index(name)] = math.nan
    order = [STATISTICS.index(name) for name in (test, *FALLBACK_TESTS) if name != test]
    order.insert(0, STATISTICS.index(test))
    # Plain Python floats from here on: indexing NumPy rows value by value, and building
    # the dicts from NumPy scalars, was a third of a 50-feature report's time.
    p_rows, stat_rows = p.tolist(), stats.tolist()
    chosen = [next((j for j in order if row[j] == row[j]), order[0]) for row in p_rows]
    decisive = [row[j] for row, j in zip(p_rows, chosen, strict=True)]
    adjusted = adjust_pvalues(decisive, correction).tolist()
    features = tuple(
        FeatureDrift(
            name=feature.name, kind=feature.kind, n=counts[f],
            statistics=dict(zip(STATISTICS, stat_rows[f], strict=True)),
            pvalues=dict(zip(STATISTICS, p_rows[f], strict=True)),
            test=STATISTICS[chosen[f]], pvalue=decisive[f], adjusted_pvalue=adjusted[f],
            drifted=adjusted[f] <= alpha,  # NaN (no live data) compares False
            declined=declined[f],
        )
        for f, feature in enumerate(profile.features)
    )
    return DriftReport(features, test, alpha, correction, live.rows)


_COUNT_COLUMNS = [STATISTICS.index(name) for name in COUNT_STATISTICS]


def _judge_one_bin_references(p: np.ndarray, layout: Any, live_hist: np.ndarray,
                              count_n: np.ndarray, w1_null: np.ndarray) -> None:
    """The statistics of a feature whose reference occupies one bin, where their null is
    degenerate, as Fisher's exact test on the live values outside that bin (see
    :func:`one_bin_pvalue`): the count statistics, and KS and Wasserstein where the
    reference sample is constant too (one bin over values that differ keeps their tests)."""
    one_bin = layout.cache.get("one_bin")
    if one_bin is None:
        one_bin = []
        for f in range(len(layout.bin_offsets) - 1):
            bins = layout.ref_counts[layout.bin_offsets[f]:layout.bin_offsets[f + 1]]
            occupied = np.flatnonzero(bins)
            if occupied.size == 1:
                one_bin.append((f, int(layout.bin_offsets[f] + occupied[0]), int(bins[occupied[0]])))
        layout.cache["one_bin"] = one_bin
    for f, at, reference_n in one_bin:
        n = int(count_n[f])
        if n <= 0:
            continue
        pvalue = one_bin_pvalue(n - int(live_hist[at]), n, reference_n)
        columns = _COUNT_COLUMNS if w1_null[f, 1] > 0.0 else range(p.shape[1])
        for j in columns:
            if p[f, j] == p[f, j]:  # not NaN: the statistic applies
                p[f, j] = pvalue


def one_bin_pvalue(outside: int, n: int, reference_n: int) -> float:
    """The one-sided p-value of Fisher's exact test that ``outside`` of ``n`` live values
    fall outside the one bin all ``reference_n`` reference values fell in, the reference
    being a sample too: given ``outside`` such values among both, the chance that every
    one of them is live, C(n, k) / C(N + n, k).

    Read as the population (p 0 for any value outside), a flag that is 0 in 10,000
    reference rows and 1 once in 10,000 in truth alarmed on one window in ten of 1,000
    rows; here one such value reads p = 0.09, and five read 6e-6."""
    if outside <= 0:
        return 1.0
    k = min(outside, n)
    return math.exp(math.lgamma(n + 1) - math.lgamma(n - k + 1)
                    - math.lgamma(reference_n + n + 1) + math.lgamma(reference_n + n - k + 1))


def snapshot(profile: ReferenceProfile, live: LiveWindow, pseudo_count: float = DEFAULT_PSEUDO_COUNT,
             threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw statistics ``[F, 7]`` (``STATISTICS`` order), live histogram totals and live
    sample counts per feature: the compiled part of :func:`drift_report`."""
    layout = profile.layout()
    features = layout.n_features
    samples = live.sample_columns()
    stats = np.empty((features, len(STATISTICS)))
    count_n = np.empty(features, dtype=np.int64)
    sample_n = np.empty(features, dtype=np.int64)
    size = samples.shape[1]
    # The ring is C-contiguous (features x capacity); a prefix of each row is contiguous.
    ring = live._samples

    def run(first: int, stop: int) -> None:
        _sk.snapshot(layout.ref_counts, live.hist, layout.bin_offsets, float(pseudo_count),
                     ring, size, layout.kinds, layout.sample_offsets, layout.uniques,
                     layout.cumulative, layout.sample_n, layout.table_offsets, layout.table,
                     layout.table_lo, layout.table_scale, first, stop, stats, count_n, sample_n)

    if threads <= 1 or features < 2:
        run(0, features)
    else:
        bounds = np.linspace(0, features, min(threads, features) + 1).astype(int)
        for future in [_executor(threads).submit(run, a, b) for a, b in itertools.pairwise(bounds)]:
            future.result()
    return stats, count_n, sample_n


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < threads:
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kernels-drift")
    return _pool


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
