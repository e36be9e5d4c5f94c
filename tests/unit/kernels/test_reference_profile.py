"""Reference profiles: what the builder records, and that it survives JSON and bytes."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from kernels import InvalidValueError, ShapeMismatchError
from kernels.profile import ReferenceProfile


def _matrix() -> np.ndarray:
    rng = np.random.default_rng(2)
    n = 5000
    data = np.column_stack([
        rng.normal(10, 2, n),  # numeric
        rng.integers(0, 4, n).astype(float),  # categorical codes
        np.full(n, 3.0),  # a single distinct value
        np.full(n, np.nan),  # all missing
        rng.exponential(1, n),  # numeric with missing and infinities
    ])
    data[::10, 4] = np.nan
    data[1::50, 4] = np.inf
    return data


def test_numeric_feature_bins_extrema_and_sample() -> None:
    data = _matrix()
    profile = ReferenceProfile.from_matrix(data, names=list("abcde"), categorical=["b"], bins=8,
                                           sample_size=256)
    a = profile.feature("a")
    assert a.kind == "numeric" and a.bins == 8 and a.count == 5000 and a.missing == 0
    assert (a.min, a.max) == (data[:, 0].min(), data[:, 0].max())
    np.testing.assert_allclose(a.edges, np.quantile(data[:, 0], np.arange(1, 8) / 8))
    expected = np.bincount(np.searchsorted(a.edges, data[:, 0], side="right"), minlength=8)
    assert a.counts == tuple(expected)
    assert len(a.sample) == 256 and list(a.sample) == sorted(a.sample)
    assert a.sample[0] >= a.min and a.sample[-1] <= a.max


def test_categorical_single_value_missing_and_non_finite() -> None:
    data = _matrix()
    profile = ReferenceProfile.from_matrix(data, categorical=[1])
    b, c, d, e = profile.features[1:]
    assert b.kind == "categorical" and b.edges == (0.0, 1.0, 2.0, 3.0)
    assert b.counts[:-1] == tuple(np.bincount(data[:, 1].astype(int))) and b.counts[-1] == 0
    # A constant gets its own bin with an empty one on either side, so any other value shows.
    assert c.edges == (3.0, float(np.nextafter(3.0, np.inf))) and c.counts == (0, 5000, 0)
    assert c.min == c.max == 3.0
    assert d.count == 0 and d.missing == 5000 and math.isnan(d.min) and d.missing_rate == 1.0
    assert e.missing == int((~np.isfinite(data[:, 4])).sum())
    assert e.count + e.missing == 5000


def test_round_trips_through_strict_json_and_bytes() -> None:
    profile = ReferenceProfile.from_matrix(_matrix(), categorical=[1])
    text = json.dumps(profile.to_dict(), allow_nan=False)
    again = ReferenceProfile.from_dict(json.loads(text))
    assert again == profile
    assert ReferenceProfile.from_bytes(profile.to_bytes()) == profile
    assert math.isnan(again.features[3].min)


def test_pickles_without_its_derived_layout() -> None:
    profile = ReferenceProfile.from_matrix(_matrix(), categorical=[1])
    profile.layout()
    copy = pickle.loads(pickle.dumps(profile))
    assert copy == profile and copy._layout is None
    assert copy.layout().n_bins == profile.layout().n_bins


def test_layout_packs_every_feature() -> None:
    profile = ReferenceProfile.from_matrix(_matrix(), categorical=[1], bins=5)
    layout = profile.layout()
    assert layout is profile.layout()  # built once
    assert layout.n_features == 5
    assert layout.n_bins == sum(f.bins for f in profile.features)
    assert list(layout.kinds) == [0, 1, 0, 0, 0]


def test_invalid_inputs_are_refused_with_a_reason() -> None:
    with pytest.raises(ShapeMismatchError, match="distinct feature names"):
        ReferenceProfile.from_matrix(np.zeros((3, 2)), names=["x", "x"])
    with pytest.raises(ShapeMismatchError, match="not among"):
        ReferenceProfile.from_matrix(np.zeros((3, 2)), categorical=["nope"])
    with pytest.raises(InvalidValueError):
        ReferenceProfile.from_matrix(np.zeros((3, 2)), bins=0)
    broken = ReferenceProfile.from_matrix(np.arange(10.0)).to_dict()
    broken["features"][0]["counts"][0] += 1
    with pytest.raises(InvalidValueError, match="sum to count"):
        ReferenceProfile.from_dict(broken)
    with pytest.raises(InvalidValueError):
        ReferenceProfile.from_bytes(b"not a profile")
    with pytest.raises(ShapeMismatchError):
        ReferenceProfile.from_matrix(np.arange(10.0)).feature("missing")
