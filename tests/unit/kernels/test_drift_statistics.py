"""Single-feature drift statistics against SciPy (to 1e-9) and NumPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from kernels import ShapeMismatchError
from kernels.statistics import (
    chi_square,
    hellinger,
    js_distance,
    kl_divergence,
    ks_2samp,
    psi,
    wasserstein,
)

RTOL = 1e-9


def close(actual: float, expected: float) -> bool:
    """Equal to 1e-9, relative to the value, and absolute for values near zero."""
    if math.isnan(expected) or math.isinf(expected):
        return actual == expected or (math.isnan(actual) and math.isnan(expected))
    return abs(actual - expected) <= RTOL * max(abs(expected), 1e-3)


def _smoothed(counts: np.ndarray, pseudo: float, occupied: np.ndarray | None = None) -> np.ndarray:
    """Pseudo-count smoothing over the bins occupied in either histogram."""
    counts = counts if occupied is None else counts[occupied]
    return (counts + pseudo) / (counts.sum() + counts.size * pseudo)


def _sample_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [
        ("normal-shift", rng.normal(size=800), rng.normal(0.3, 1.2, size=300)),
        ("lognormal-large", rng.lognormal(size=4000) * 1e3, rng.lognormal(0.1, size=2500) * 1e3),
        ("discrete-ties", rng.integers(0, 6, 500).astype(float), rng.integers(0, 8, 700).astype(float)),
        ("rounded-ties", rng.normal(size=600).round(1), rng.normal(size=400).round(2)),
        ("disjoint", rng.uniform(0, 1, 200), rng.uniform(5, 6, 150)),
        ("tiny", np.array([1.0]), np.array([2.0, 2.0, 3.0])),
        ("identical", np.arange(50.0), np.arange(50.0)),
        ("large-n", rng.normal(size=20000), rng.normal(0.02, 1, size=15000)),
    ]


@pytest.mark.parametrize(("name", "reference", "live"), _sample_pairs(), ids=lambda v: v if isinstance(v, str) else "")
def test_ks_and_wasserstein_equal_scipy(name: str, reference: np.ndarray, live: np.ndarray) -> None:
    expected = stats.ks_2samp(reference, live, method="asymp")
    d, p = ks_2samp(reference, live)
    assert close(d, expected.statistic)
    assert close(p, expected.pvalue)
    assert close(wasserstein(reference, live), stats.wasserstein_distance(reference, live))


@pytest.mark.parametrize("seed", range(4))
def test_count_statistics_equal_scipy_and_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 40))
    ref = rng.integers(1, 500, k)
    live = rng.integers(0, 300, k)
    live[0] += 1
    p, q = ref / ref.sum(), live / live.sum()
    assert close(js_distance(ref, live), jensenshannon(ref, live))
    assert close(hellinger(ref, live), np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)))
    for pseudo in (0.0, 0.5):
        expected = live.sum() * _smoothed(ref, pseudo)
        reference_result = stats.chisquare(live, expected)
        stat, pvalue = chi_square(ref, live, pseudo_count=pseudo)
        assert close(stat, reference_result.statistic) and close(pvalue, reference_result.pvalue)
    ps, qs = _smoothed(ref, 0.5), _smoothed(live, 0.5)
    assert close(kl_divergence(ref, live), stats.entropy(qs, ps))
    assert close(psi(ref, live), float(np.sum((qs - ps) * np.log(qs / ps))))
    # Unsmoothed PSI is the textbook formula when no bin is empty.
    full = live + 1
    p0, q0 = ref / ref.sum(), full / full.sum()
    assert close(psi(ref, full, pseudo_count=0.0), float(np.sum((q0 - p0) * np.log(q0 / p0))))


def test_bins_empty_on_both_sides_change_nothing() -> None:
    for statistic in (psi, kl_divergence, js_distance, hellinger, chi_square):
        assert statistic([5, 0, 7, 0], [3, 0, 4, 0]) == statistic([5, 7], [3, 4])


def test_unsmoothed_psi_is_infinite_on_an_empty_live_bin() -> None:
    assert psi([10, 10], [5, 0], pseudo_count=0.0) == math.inf
    assert math.isfinite(psi([10, 10], [5, 0]))


def test_identical_distributions_score_zero() -> None:
    counts = np.array([5, 10, 20, 5])
    assert psi(counts, counts * 3) == pytest.approx(0.0, abs=1e-3)
    assert js_distance(counts, counts * 3) == pytest.approx(0.0, abs=1e-12)
    assert hellinger(counts, counts * 3) == pytest.approx(0.0, abs=1e-12)
    assert chi_square(counts, counts * 3)[1] == pytest.approx(1.0)


def test_empty_and_degenerate_inputs() -> None:
    # An empty live window has no statistic, rather than a misleading zero.
    assert math.isnan(psi([3, 4], [0, 0]))
    assert math.isnan(ks_2samp([1.0, 2.0], [])[0])
    assert math.isnan(wasserstein([1.0, 2.0], [np.nan, np.inf]))  # all missing
    assert math.isnan(ks_2samp([], [1.0])[1])
    # One bin: nothing can differ.
    assert psi([7], [3]) == 0.0
    assert chi_square([7], [3]) == (0.0, 1.0)
    # A single distinct value on both sides.
    assert ks_2samp([2.0] * 5, [2.0] * 9) == (0.0, 1.0)
    assert wasserstein([2.0] * 5, [2.0] * 9) == 0.0
    with pytest.raises(ShapeMismatchError):
        psi([1, 2], [1, 2, 3])


def test_non_finite_samples_are_ignored() -> None:
    reference = np.array([0.1, 0.5, np.nan, 0.9, np.inf])
    live = np.array([0.3, -np.inf, 0.7, np.nan])
    clean_ref, clean_live = reference[np.isfinite(reference)], live[np.isfinite(live)]
    assert close(ks_2samp(reference, live)[0], stats.ks_2samp(clean_ref, clean_live).statistic)
    assert close(wasserstein(reference, live), stats.wasserstein_distance(clean_ref, clean_live))


_SAMPLE = hnp.arrays(
    np.float64, st.integers(1, 120),
    elements=st.one_of(st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
                       st.sampled_from([0.0, 1.0, 2.5])),
)


# One value on each side gives n*N/(n+N) = 0.5, which rounds to 0: SciPy warns and both
# return NaN for the p-value.
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reference=_SAMPLE, live=_SAMPLE)
def test_sample_statistics_property(reference: np.ndarray, live: np.ndarray) -> None:
    expected = stats.ks_2samp(reference, live, method="asymp")
    d, p = ks_2samp(reference, live)
    assert close(d, expected.statistic) and close(p, expected.pvalue)
    assert abs(wasserstein(reference, live) - stats.wasserstein_distance(reference, live)) <= (
        RTOL * max(stats.wasserstein_distance(reference, live), 1e-3))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), bins=st.integers(1, 25))
def test_count_statistics_property(data: st.DataObject, bins: int) -> None:
    counts = st.lists(st.integers(0, 1000), min_size=bins, max_size=bins)
    ref = np.array(data.draw(counts))
    live = np.array(data.draw(counts))
    if ref.sum() == 0 or live.sum() == 0:
        assert math.isnan(js_distance(ref, live)) and math.isnan(psi(ref, live))
        return
    p, q = ref / ref.sum(), live / live.sum()
    m = (p + q) / 2
    expected_js = math.sqrt(max((rel_entr(p, m).sum() + rel_entr(q, m).sum()) / 2, 0.0))
    assert close(js_distance(ref, live), expected_js)
    assert 0.0 <= hellinger(ref, live) <= 1.0 + 1e-12
    assert psi(ref, live) >= 0.0 and kl_divergence(ref, live) >= -1e-12
    stat, pvalue = chi_square(ref, live, pseudo_count=0.5)
    occupied = (ref + live) > 0
    expected = (stats.chisquare(live[occupied], live.sum() * _smoothed(ref, 0.5, occupied))
                if occupied.sum() > 1 else None)
    if expected is not None:
        assert close(stat, expected.statistic) and close(pvalue, expected.pvalue)
    else:
        assert pvalue == 1.0
