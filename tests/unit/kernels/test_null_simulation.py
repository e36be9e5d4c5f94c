"""The simulated null models never fail, whatever the reference looks like.

Every categorical feature carries an empty bin for unseen categories, and reference
histograms come from users' data: zeros, one huge bin, a single occupied bin. The
simulated two-sample null must take them all. Its draws are checked against NumPy's
multinomial, and its moments against a NumPy simulation of the same statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import _calibration_kernels as _ck
from kernels import drift_report
from kernels.calibration import count_null
from kernels.profile import FeatureProfile, ReferenceProfile

# The reference histogram from the crash report: five categories plus the unseen bin.
CRASH_COUNTS = (10019, 4029, 2993, 1970, 989, 0)


def _categorical_profile(counts: tuple[int, ...]) -> ReferenceProfile:
    codes = tuple(float(c) for c in range(len(counts) - 1))
    feature = FeatureProfile("colour", "categorical", codes, counts, sum(counts), 0,
                             0.0, float(len(codes) - 1))
    return ReferenceProfile((feature,))


@pytest.mark.parametrize("n", [60, 250])
def test_the_reported_reference_histogram_gets_a_null_at_small_windows(n: int) -> None:
    counts = np.array(CRASH_COUNTS, dtype=np.int64)
    scale, dof, tail = count_null(counts, n)
    assert np.all(scale > 0) and np.all(dof > 0) and np.all(np.diff(tail, axis=1) >= 0)
    profile = _categorical_profile(CRASH_COUNTS)
    rng = np.random.default_rng(n)
    live = rng.choice(5, size=(n, 1), p=counts[:5] / counts.sum()).astype(float)
    feature = drift_report(profile, live).features[0]
    assert 0.0 <= feature.pvalue <= 1.0, feature


def test_multinomial_draws_have_the_multinomial_mean_and_variance() -> None:
    weights = np.array(CRASH_COUNTS, dtype=np.int64)
    draws, sims = 250, 20_000
    ours = np.empty((sims, weights.size), dtype=np.int64)

    for s in range(sims):
        _ck.multinomial_into(draws, weights, ours[s])
    theirs = np.random.default_rng(3).multinomial(draws, weights / weights.sum(), size=sims)
    assert np.all(ours.sum(axis=1) == draws)
    assert np.all(ours[:, -1] == 0)  # an empty bin never receives a draw
    p = weights / weights.sum()
    standard_error = np.sqrt(draws * p * (1 - p) / sims) + 1e-12
    assert np.all(np.abs(ours.mean(axis=0) - draws * p) < 5 * standard_error)
    assert np.all(np.abs(theirs.mean(axis=0) - draws * p) < 5 * standard_error)
    assert np.allclose(ours.var(axis=0), theirs.var(axis=0), rtol=0.1, atol=1e-9)


def _numpy_null_moments(ref: np.ndarray, n: int, pseudo: float, sims: int) -> np.ndarray:
    """PSI and chi-square of simulated reference/live pairs, written plainly with NumPy."""
    rng = np.random.default_rng(11)
    p = ref / ref.sum()
    reference = rng.multinomial(ref.sum(), p, size=sims)
    live = rng.multinomial(n, p, size=sims)
    occupied = (reference + live) > 0
    k = occupied.sum(axis=1, keepdims=True)
    ps = np.where(occupied, (reference + pseudo) / (ref.sum() + k * pseudo), 1.0)
    qs = np.where(occupied, (live + pseudo) / (n + k * pseudo), 1.0)
    psi = ((qs - ps) * np.log(qs / ps)).sum(axis=1)
    chi2 = np.where(occupied, (live - n * ps) ** 2 / (n * ps), 0.0).sum(axis=1)
    return np.array([[psi.mean(), chi2.mean()], [psi.var(ddof=1), chi2.var(ddof=1)]])


@pytest.mark.parametrize("n", [60, 250, 5000])
def test_null_moments_agree_with_a_numpy_simulation(n: int) -> None:
    ref = np.array(CRASH_COUNTS, dtype=np.int64)
    sims = 20_000
    forms = _ck.count_null_forms(ref, n, 0.5, sims, 5)[[_ck.PSI, _ck.CHI2]]
    ours = np.array([forms.mean(axis=1), forms.var(axis=1, ddof=1)])
    theirs = _numpy_null_moments(ref, n, 0.5, sims)
    # Means within 5 standard errors; variances within 10% (both are simulations).
    assert np.all(np.abs(ours[0] - theirs[0]) < 5 * np.sqrt(theirs[1] / sims)), (ours, theirs)
    assert np.allclose(ours[1], theirs[1], rtol=0.1), (ours, theirs)


_COUNT_VECTORS = st.lists(st.one_of(st.just(0), st.integers(0, 50), st.integers(0, 10**6)),
                          min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(counts=_COUNT_VECTORS, n=st.one_of(st.integers(0, 300), st.integers(0, 200_000)),
       seed=st.integers(0, 2**31 - 1))
def test_count_null_takes_any_count_vector(counts: list[int], n: int, seed: int) -> None:
    ref = np.array(counts, dtype=np.int64)
    if ref.sum() > 0:
        forms = _ck.count_null_forms(ref, n, 0.5, 200, seed)
        # No live values: every statistic is undefined (NaN), which decides nothing.
        assert np.all(np.isfinite(forms)) if n > 0 else np.all(np.isnan(forms))
        assert not np.any(forms < 0)
    scale, dof, tail = count_null(ref, n)
    assert np.all(np.isfinite(tail))
    assert np.all(np.isfinite(scale)) and np.all(scale >= 0)
    assert np.all(np.isfinite(dof)) and np.all(dof >= 0)
    occupied = int((ref > 0).sum())
    if n == 0 or occupied <= 1:
        assert np.all(scale == 0)  # nothing to drift from: no null, not a crash


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 10**5), min_size=1, max_size=10),
       live=st.lists(st.integers(0, 400), min_size=1, max_size=10))
def test_drift_report_on_any_categorical_histogram_never_raises(counts: list[int], live: list[int]) -> None:
    counts = [*counts, 0]  # the unseen-category bin, empty in every reference
    if sum(counts) == 0:
        counts[0] = 1
    profile = _categorical_profile(tuple(counts))
    codes = np.repeat(np.arange(len(live), dtype=float), live)  # codes past the profile: unseen
    feature = drift_report(profile, codes.reshape(-1, 1)).features[0]
    assert math.isnan(feature.pvalue) or 0.0 <= feature.pvalue <= 1.0


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=60),
       repeats=st.lists(st.integers(1, 50), min_size=60, max_size=60))
def test_wasserstein_null_takes_any_reference_sample(values: list[float], repeats: list[int]) -> None:
    uniques = np.unique(np.array(values, dtype=np.float64))
    cumulative = np.cumsum(np.array(repeats[:uniques.size], dtype=np.int64))
    normals = np.random.default_rng(0).standard_normal((200, 33))
    mean, sd, skew = _ck.w1_null_moments(uniques, cumulative, normals)
    assert all(map(math.isfinite, (mean, sd, skew)))
    assert mean >= 0 and sd >= 0
