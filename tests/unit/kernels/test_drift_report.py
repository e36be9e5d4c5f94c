"""drift_report end to end: statistics agree with the single-feature functions, p-values
agree with thresholds, and corrections follow their definitions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from kernels import InvalidValueError, ShapeMismatchError, adjust_pvalues, drift_report, thresholds
from kernels.calibration import STATISTICS
from kernels.profile import ReferenceProfile
from kernels.quality import LiveWindow
from kernels.statistics import chi_square, hellinger, js_distance, psi

RNG = np.random.default_rng(21)
REFERENCE = np.column_stack([RNG.normal(size=(20_000, 4)), RNG.integers(0, 3, 20_000)])
PROFILE = ReferenceProfile.from_matrix(REFERENCE, categorical=[4])


def _live(n: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    live = np.column_stack([rng.normal(size=(n, 4)), rng.integers(0, 3, n)]).astype(float)
    live[:, 0] += shift
    return live


@pytest.mark.parametrize("test", ["psi", "ks", "chi2", "wasserstein", "js", "hellinger", "kl"])
def test_a_shifted_feature_is_flagged_and_only_it(test: str) -> None:
    report = drift_report(PROFILE, _live(2000, shift=0.5), test=test)
    assert report.drifted == ("f0",)
    assert report.any_drift and report.feature("f0").adjusted_pvalue < 1e-6
    # The categorical feature has no KS; it is decided by PSI instead.
    assert report.feature("f4").test == ("psi" if test in ("ks", "wasserstein") else test)


def test_report_statistics_equal_the_single_feature_functions() -> None:
    live = _live(3000, shift=0.1, seed=3)
    window = LiveWindow(PROFILE, sample_capacity=3000)
    window.update(live)
    report = drift_report(PROFILE, window)
    for i, feature in enumerate(PROFILE.features):
        got = report.features[i].statistics
        ref_counts, live_counts = np.array(feature.counts), window.feature_counts(i)
        assert got["psi"] == pytest.approx(psi(ref_counts, live_counts), rel=1e-12)
        assert got["js"] == pytest.approx(js_distance(ref_counts, live_counts), rel=1e-12)
        assert got["hellinger"] == pytest.approx(hellinger(ref_counts, live_counts), rel=1e-12)
        assert got["chi2"] == pytest.approx(chi_square(ref_counts, live_counts, 0.5)[0], rel=1e-12)
        if feature.kind == "numeric":
            expected = stats.ks_2samp(np.array(feature.sample), live[:, i], method="asymp")
            assert got["ks"] == pytest.approx(expected.statistic, rel=1e-12)
            assert got["wasserstein"] == pytest.approx(
                stats.wasserstein_distance(feature.sample, live[:, i]), rel=1e-9)
        else:
            assert math.isnan(got["ks"])


@pytest.mark.parametrize("n", [150, 5000])
def test_thresholds_sit_where_pvalues_cross_alpha(n: int) -> None:
    alpha = 0.01
    limits = thresholds(PROFILE, n, alpha)["f1"]
    report = drift_report(PROFILE, _live(n, seed=4))
    f1 = report.feature("f1")
    for name, value in f1.statistics.items():
        # The statistic alarms (p < alpha) exactly when it exceeds its threshold.
        assert (f1.pvalues[name] < alpha) == (value > limits[name]), name
    # At the threshold itself the p-value is alpha (checked through the KS p-value).
    from kernels._kolmogorov_kernels import kolmogorov_sf

    en = round(n * 20_000 / (n + 20_000))
    assert kolmogorov_sf(en, limits["ks"]) == pytest.approx(alpha, rel=1e-6)


def test_adjustments_follow_their_definitions() -> None:
    p = np.array([0.001, 0.2, np.nan, 0.012, 0.04, 0.03])
    bonferroni = adjust_pvalues(p, "bonferroni")
    np.testing.assert_allclose(bonferroni[~np.isnan(p)], np.minimum(p[~np.isnan(p)] * 5, 1))
    bh = adjust_pvalues(p, "bh")
    tested = p[~np.isnan(p)]
    for alpha in (0.01, 0.025, 0.05, 0.1):
        ranked = np.sort(tested)
        passing = np.nonzero(ranked <= alpha * np.arange(1, 6) / 5)[0]
        cutoff = ranked[passing[-1]] if passing.size else -1.0  # step-up: largest k wins
        np.testing.assert_array_equal(bh[~np.isnan(p)] <= alpha, tested <= cutoff)
    assert np.isnan(bh[2]) and np.isnan(bonferroni[2])
    np.testing.assert_array_equal(adjust_pvalues(p, "none"), p)
    with pytest.raises(InvalidValueError):
        adjust_pvalues(p, "holm")


def test_empty_windows_and_missing_columns_decide_nothing() -> None:
    empty = drift_report(PROFILE, LiveWindow(PROFILE))
    assert not empty.any_drift and empty.rows == 0
    assert all(math.isnan(f.pvalue) and f.n == 0 for f in empty.features)
    live = _live(500)
    live[:, 2] = np.nan
    report = drift_report(PROFILE, live, test="ks")
    assert report.feature("f2").n == 0 and not report.feature("f2").drifted
    assert math.isnan(report.feature("f2").statistics["ks"])


def test_single_value_and_one_bin_features() -> None:
    data = np.column_stack([np.full(1000, 2.0), RNG.normal(size=1000)])
    profile = ReferenceProfile.from_matrix(data, bins=1)
    same = drift_report(profile, np.column_stack([np.full(300, 2.0), RNG.normal(size=300)]))
    assert not same.any_drift
    assert same.features[0].pvalues["psi"] == 1.0  # one bin: nothing can move
    moved = drift_report(profile, np.column_stack([np.full(300, 2.5), RNG.normal(size=300)]),
                         test="ks")
    assert moved.drifted == ("f0",)


def test_count_only_window_falls_back_to_histogram_tests() -> None:
    window = LiveWindow(PROFILE, sample_capacity=0)
    window.update(_live(1000, shift=1.0, seed=1))
    report = drift_report(PROFILE, window, test="ks")
    assert report.feature("f0").test == "psi" and report.drifted == ("f0",)


def test_threads_give_the_same_report_and_dict_is_json() -> None:
    live = _live(4000, shift=0.05, seed=9)
    one = drift_report(PROFILE, live, test="ks")
    two = drift_report(PROFILE, live, test="ks", threads=2)
    assert one.to_dict() == two.to_dict()  # (dict form: NaN never equals NaN)
    json.dumps(one.to_dict(), allow_nan=False)


def test_arguments_are_checked() -> None:
    with pytest.raises(InvalidValueError, match="Unknown drift test"):
        drift_report(PROFILE, _live(10), test="psi2")
    with pytest.raises(InvalidValueError, match="correction"):
        drift_report(PROFILE, _live(10), correction="holm")
    with pytest.raises(InvalidValueError):
        drift_report(PROFILE, _live(10), alpha=1.5)
    with pytest.raises(InvalidValueError):
        thresholds(PROFILE, 100, alpha=0.0)
    other = ReferenceProfile.from_matrix(REFERENCE[:500], categorical=[4])
    with pytest.raises(ShapeMismatchError, match="another reference profile"):
        drift_report(PROFILE, LiveWindow(other))


def _kinds_profile(rng: np.random.Generator, rows: int) -> tuple[ReferenceProfile, np.ndarray]:
    data = np.column_stack([rng.standard_t(2, rows), (rng.random(rows) < 0.05).astype(float),
                            np.full(rows, 7.0), rng.normal(size=rows)])
    return ReferenceProfile.from_matrix(data, names=["t2", "binary", "constant", "normal"]), data


def test_statistics_that_cannot_be_calibrated_decline_and_say_why() -> None:
    rng = np.random.default_rng(31)
    profile, _ = _kinds_profile(rng, 20_000)
    _, live = _kinds_profile(rng, 2000)
    report = drift_report(profile, live, test="wasserstein")
    t2, binary, normal = report.feature("t2"), report.feature("binary"), report.feature("normal")
    assert set(t2.declined) == {"wasserstein"} and "heavy tails" in t2.declined["wasserstein"]
    assert math.isnan(t2.pvalues["wasserstein"]) and not math.isnan(t2.statistics["wasserstein"])
    assert t2.test == "ks" and t2.pvalue == t2.pvalues["ks"]  # decided by one that can
    assert set(binary.declined) == {"ks"} and "ties" in binary.declined["ks"]
    assert drift_report(profile, live, test="ks").feature("binary").test == "psi"
    assert normal.declined == {} and normal.test == "wasserstein"
    assert report.to_dict()["features"][0]["declined"]["wasserstein"] == t2.declined["wasserstein"]
    limits = thresholds(profile, 2000)
    assert math.isnan(limits["t2"]["wasserstein"]) and math.isnan(limits["binary"]["ks"])


def test_a_rare_binary_value_gets_its_own_bin_and_its_drift_is_seen() -> None:
    rng = np.random.default_rng(32)
    profile, _ = _kinds_profile(rng, 20_000)
    assert profile.feature("binary").counts[0] == 0 and len(profile.feature("binary").counts) == 4
    _, live = _kinds_profile(rng, 2000)
    live[:, 1] = (rng.random(2000) < 0.10).astype(float)  # ones 5% -> 10%
    report = drift_report(profile, live, test="psi")
    assert report.drifted == ("binary",)


def test_constant_features_get_fishers_exact_test() -> None:
    """A value the reference never held is rare, not impossible: the reference is a sample
    too. Read as the population, one such value alarmed with p = 0, a false alarm on one
    window in ten for a flag that is 1 once in 10,000 rows."""
    rng = np.random.default_rng(33)
    profile, _ = _kinds_profile(rng, 20_000)
    _, live = _kinds_profile(rng, 500)
    same = drift_report(profile, live, test="ks").feature("constant")
    assert same.pvalues["psi"] == same.pvalues["ks"] == same.pvalues["wasserstein"] == 1.0
    reference_n = profile.features[2].count
    for outside in (1, 5):
        live[:outside, 2] = 8.0  # values the reference never had
        moved = drift_report(profile, live, test="ks").feature("constant")
        fisher = stats.fisher_exact([[outside, 500 - outside], [0, reference_n]],
                                    alternative="greater").pvalue
        assert moved.pvalues["psi"] == moved.pvalues["ks"] == moved.pvalues["wasserstein"]
        assert moved.pvalues["ks"] == pytest.approx(fisher, rel=1e-9)
        assert 0.0 < moved.pvalues["ks"] < 1.0
    assert moved.drifted  # five of 500 where none of 20,000 were: evidence
    assert math.isnan(thresholds(profile, 500)["constant"]["ks"])


def test_a_handful_of_live_values_decides_nothing() -> None:
    rng = np.random.default_rng(34)
    profile, _ = _kinds_profile(rng, 20_000)
    _, live = _kinds_profile(rng, 500)
    live[5:, 3] = np.nan  # five values of "normal" left
    live[:5, 3] += 10.0  # far off, but five values are no evidence a calibrated test can use
    feature = drift_report(profile, live, test="ks").feature("normal")
    assert set(feature.declined) == set(STATISTICS) and "5 live value(s)" in feature.declined["ks"]
    assert math.isnan(feature.pvalue) and not feature.drifted


def test_one_bin_over_values_that_differ_keeps_its_sample_tests() -> None:
    """Most values at one point and the rest spread: the histogram collapses to one
    bin, whose count statistics are judged by counting values outside it (none can be);
    Wasserstein still tests the reference sample, which has a spread."""
    rng = np.random.default_rng(35)
    spiky = np.zeros(20_000)
    spiky[:1600] = rng.uniform(0, 1, 1600)
    profile = ReferenceProfile.from_matrix(np.c_[spiky, rng.normal(size=20_000)],
                                           names=["spiky", "normal"])
    assert np.count_nonzero(profile.features[0].counts) == 1
    moved = np.where(rng.random(1000) < 0.9, 0.0, rng.uniform(0.5, 1.5, 1000))  # spread moved up
    feature = drift_report(profile, np.c_[moved, rng.normal(size=1000)],
                           test="wasserstein").feature("spiky")
    assert feature.pvalues["psi"] == 1.0  # nothing outside the one bin
    assert feature.pvalues["wasserstein"] < 1e-6 and feature.drifted
    assert not math.isnan(thresholds(profile, 1000)["spiky"]["wasserstein"])
    assert math.isnan(thresholds(profile, 1000)["spiky"]["psi"])
