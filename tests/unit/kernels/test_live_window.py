"""The data-quality pass: counts exact against a NumPy reference, merge and subtract."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels import ShapeMismatchError
from kernels.profile import ReferenceProfile
from kernels.quality import LiveWindow


def _profile() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(size=2000), rng.integers(0, 5, 2000).astype(float),
                            np.full(2000, 1.0), rng.uniform(0, 1, 2000)])
    data[:20, 3] = np.nan
    return ReferenceProfile.from_matrix(data, categorical=[1], bins=10)


PROFILE = _profile()


def reference_counts(profile: ReferenceProfile, batch: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """What the kernel must produce, written plainly with NumPy."""
    hists, missing, out = [], [], []
    for i, feature in enumerate(profile.features):
        column = batch[:, i]
        finite = column[np.isfinite(column)]
        missing.append(column.size - finite.size)
        edges = np.asarray(feature.edges)
        if feature.kind == "categorical":
            known = np.isin(finite, edges)
            bins = np.where(known, np.searchsorted(edges, finite), edges.size)
            out.append(int((~known).sum()))
        else:
            bins = np.searchsorted(edges, finite, side="right")
            out.append(int(((finite < feature.min) | (finite > feature.max)).sum()))
        hists.append(np.bincount(bins, minlength=edges.size + 1))
    return hists, np.array(missing), np.array(out)


_CELL = st.one_of(st.floats(-5, 5), st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0, 2.0, 7.0]))


@settings(max_examples=100, deadline=None)
@given(batches=st.lists(hnp.arrays(np.float64, st.tuples(st.integers(0, 40), st.just(4)),
                                   elements=_CELL), min_size=1, max_size=4))
def test_counts_equal_numpy_reference(batches: list[np.ndarray]) -> None:
    window = LiveWindow(PROFILE, sample_capacity=50)
    for batch in batches:
        window.update(batch)
    everything = np.concatenate(batches)
    hists, missing, out = reference_counts(PROFILE, everything)
    for i, hist in enumerate(hists):
        np.testing.assert_array_equal(window.feature_counts(i), hist)
    np.testing.assert_array_equal(window.missing, missing)
    np.testing.assert_array_equal(window.out_of_range, out)
    assert window.rows == everything.shape[0]
    np.testing.assert_array_equal(window.samples(), everything[-50:])


def _wide_profile() -> ReferenceProfile:
    # More edges than the kernel counts one by one (16): its bisection path.
    rng = np.random.default_rng(5)
    data = np.column_stack([rng.normal(size=4000), rng.integers(0, 40, 4000).astype(float),
                            rng.integers(0, 6, 4000).astype(float)])
    return ReferenceProfile.from_matrix(data, categorical=[1], bins=40)


WIDE = _wide_profile()


@settings(max_examples=60, deadline=None)
@given(batch=hnp.arrays(np.float64, st.tuples(st.integers(0, 60), st.just(3)),
                        elements=st.one_of(st.floats(-4, 45), st.integers(-2, 45).map(float),
                                           st.just(np.nan))))
def test_counts_equal_numpy_reference_with_many_bins(batch: np.ndarray) -> None:
    assert len(WIDE.features[0].edges) > 16 and len(WIDE.features[1].edges) > 16
    window = LiveWindow(WIDE, sample_capacity=0)
    window.update(batch)
    hists, missing, out = reference_counts(WIDE, batch)
    for i, hist in enumerate(hists):
        np.testing.assert_array_equal(window.feature_counts(i), hist)
    np.testing.assert_array_equal(window.missing, missing)
    np.testing.assert_array_equal(window.out_of_range, out)


def test_quality_summary_and_rates() -> None:
    window = LiveWindow(PROFILE, sample_capacity=0)
    batch = np.array([[0.0, 1.0, 1.0, 0.5], [np.nan, 9.0, 1.0, 2.0], [100.0, 2.0, np.nan, np.nan]])
    window.update(batch)
    quality = {q.name: q for q in window.quality()}
    assert (quality["f0"].missing, quality["f0"].out_of_range, quality["f0"].values) == (1, 1, 2)
    assert quality["f1"].out_of_range == 1  # code 9 was never seen
    assert quality["f2"].missing_rate == pytest.approx(1 / 3)
    assert quality["f3"].out_of_range_rate == 0.5
    assert quality["f3"].reference_missing_rate == 0.01
    assert window.sample_columns().shape == (4, 0)


def test_merge_and_subtract_deltas() -> None:
    rng = np.random.default_rng(1)
    a, b, both = (LiveWindow(PROFILE, 100) for _ in range(3))
    first, second = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    a.update(first)
    b.update(second)
    both.update(np.concatenate([first, second]))
    a.merge(b)
    np.testing.assert_array_equal(a.hist, both.hist)
    assert a.rows == 50
    np.testing.assert_array_equal(a.samples(), both.samples())
    a.subtract(b)
    np.testing.assert_array_equal(a.hist, LiveWindow(PROFILE, 0).hist + _hist_of(first))
    with pytest.raises(ShapeMismatchError):
        a.subtract(both)


def _hist_of(batch: np.ndarray) -> np.ndarray:
    window = LiveWindow(PROFILE, 0)
    window.update(batch)
    return window.hist


def test_wrong_width_is_refused() -> None:
    with pytest.raises(ShapeMismatchError, match="4 features"):
        LiveWindow(PROFILE).update(np.zeros((2, 3)))
    window = LiveWindow(PROFILE)
    window.update(np.zeros(4))  # a single row
    assert window.rows == 1
    window.reset()
    assert window.rows == 0 and window.hist.sum() == 0
