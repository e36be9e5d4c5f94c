"""The quantile sketch against NumPy's nearest-rank quantiles, and its bookkeeping."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels import InvalidValueError, KernelError, ShapeMismatchError
from kernels.sketch import Sketch

QUANTILES = [0.5, 0.9, 0.95, 0.99, 0.999]
ALPHA = 0.01
# The guarantee is exactly alpha; allow float rounding in log/exp on top.
TOLERANCE = ALPHA * (1 + 1e-9)


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 200_000
    return {
        "lognormal": rng.lognormal(mean=-4.0, sigma=1.0, size=n),
        "pareto": (rng.pareto(1.2, size=n) + 1.0) * 1e-3,  # heavy tail: p99.9 ~ 300x median
        "bimodal": np.concatenate([rng.normal(0.005, 0.0005, n // 2),
                                   rng.normal(0.2, 0.02, n // 2)]).clip(1e-6),
        "constant": np.full(n, 0.0421),
    }


DATASETS = _datasets()


def _relative_errors(sketch: Sketch, data: np.ndarray) -> np.ndarray:
    expected = np.quantile(data, QUANTILES, method="inverted_cdf")
    return np.abs(sketch.quantiles(QUANTILES) - expected) / expected


@pytest.mark.parametrize("name", list(DATASETS))
def test_single_sketch_within_alpha_of_nearest_rank(name: str) -> None:
    data = DATASETS[name]
    sketch = Sketch(alpha=ALPHA)
    sketch.add_many(data)
    assert sketch.count == data.size
    assert np.all(_relative_errors(sketch, data) <= TOLERANCE)


@pytest.mark.parametrize("name", list(DATASETS))
def test_merge_of_four_shards_within_alpha(name: str) -> None:
    data = DATASETS[name]
    shards = np.array_split(np.random.default_rng(1).permutation(data), 4)
    merged = Sketch(alpha=ALPHA)
    for shard in shards:
        part = Sketch(alpha=ALPHA)
        part.add_many(shard)
        merged.merge(part)
    whole = Sketch(alpha=ALPHA)
    whole.add_many(data)
    assert np.all(_relative_errors(merged, data) <= TOLERANCE)
    # Merging is lossless: same bins and counters as one sketch fed everything.
    assert merged == whole


def test_min_max_sum_and_extreme_quantiles_are_exact() -> None:
    data = DATASETS["lognormal"]
    sketch = Sketch()
    sketch.add_many(data)
    assert sketch.min == data.min() and sketch.max == data.max()
    assert sketch.quantile(0.0) == data.min() and sketch.quantile(1.0) == data.max()
    assert sketch.sum == pytest.approx(data.sum(), rel=1e-12)
    assert sketch.mean == pytest.approx(data.mean(), rel=1e-12)


def test_subtract_undoes_merge() -> None:
    rng = np.random.default_rng(3)
    a, b = Sketch(), Sketch()
    a.add_many(rng.lognormal(-3, 1, 5000))
    b.add_many(rng.lognormal(-3, 0.2, 3000))  # b sits inside a's range: extrema survive
    assert (a + b) - b == a
    assert (a + b).count == 8000


def test_subtract_when_removed_sketch_held_the_extremes() -> None:
    rng = np.random.default_rng(4)
    a, b = Sketch(), Sketch()
    a.add_many(rng.uniform(0.01, 0.02, 1000))
    b.add_many([0.001, 5.0])
    back = (a + b) - b
    assert np.array_equal(back.to_arrays()["bins"], a.to_arrays()["bins"])
    assert back.count == a.count
    # The true extremes are lost; what stands in is within one bin of them, on the safe side.
    assert a.min / a.gamma <= back.min <= a.min
    assert a.max <= back.max <= a.max * a.gamma
    assert np.all(np.abs(back.quantiles(QUANTILES) / a.quantiles(QUANTILES) - 1) <= 2 * ALPHA)


def test_subtract_more_than_held_is_refused_and_leaves_state() -> None:
    a, b = Sketch(), Sketch()
    a.add_many([0.1, 0.2])
    b.add_many([0.1, 0.3])
    before = a.copy()
    with pytest.raises(KernelError, match="merged into"):
        a.subtract(b)
    assert a == before


def test_rejected_values_are_counted_apart() -> None:
    sketch = Sketch(min_value=1e-9, max_value=10.0)
    sketch.add_many([np.nan, -1.0, -np.inf, np.inf, 0.0, 1e-12, 5e-7, 20.0, 0.5])
    sketch.add(float("nan"))
    assert (sketch.nan_count, sketch.negative_count, sketch.infinite_count) == (2, 2, 1)
    assert sketch.rejected_count == 5
    assert sketch.count == 5  # 0, 1e-12 (zero bucket), 5e-7, 20 (overflow), 0.5
    assert (sketch.zero_count, sketch.overflow_count) == (2, 1)
    assert sketch.min == 0.0 and sketch.max == 20.0
    assert sketch.quantile(0.0) == 0.0
    # Sub-microsecond values are indexed, not rounded to zero.
    assert sketch.quantile(0.6) == pytest.approx(5e-7, rel=ALPHA)
    assert sketch.quantile(1.0) == 20.0


def test_only_rejected_values_leave_the_sketch_empty() -> None:
    sketch = Sketch()
    sketch.add_many([np.nan, -3.0])
    assert sketch.count == 0
    assert math.isnan(sketch.quantile(0.5)) and math.isnan(sketch.min)


def test_bytes_and_arrays_round_trip() -> None:
    sketch = Sketch(alpha=0.02, min_value=1e-6, max_value=100.0)
    sketch.add_many(DATASETS["bimodal"][:5000])
    sketch.add_many([np.nan, -1.0])
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch
    assert Sketch.from_arrays(sketch.to_arrays()) == sketch
    assert Sketch.from_bytes(Sketch().to_bytes()) == Sketch()
    # Only the occupied span of bins travels.
    assert len(sketch.to_bytes()) < 8 * sketch.to_arrays()["bins"].size


def test_sketch_pickles_for_ray() -> None:
    sketch = Sketch()
    sketch.add_many([0.1, 0.2, np.nan])
    assert pickle.loads(pickle.dumps(sketch)) == sketch


def test_corrupt_bytes_are_refused() -> None:
    data = Sketch().to_bytes()
    with pytest.raises(InvalidValueError):
        Sketch.from_bytes(data[:10])
    with pytest.raises(InvalidValueError):
        Sketch.from_bytes(b"XXXX" + data[4:])


def test_mismatched_parameters_cannot_combine() -> None:
    with pytest.raises(ShapeMismatchError, match="same alpha"):
        Sketch(alpha=0.01).merge(Sketch(alpha=0.02))
    with pytest.raises(ShapeMismatchError):
        Sketch(max_value=10.0).subtract(Sketch(max_value=20.0))


def test_invalid_parameters_and_quantiles() -> None:
    with pytest.raises(InvalidValueError):
        Sketch(alpha=0.0)
    with pytest.raises(InvalidValueError):
        Sketch(min_value=1.0, max_value=1.0)
    with pytest.raises(InvalidValueError, match=r"\[0, 1\]"):
        Sketch().quantiles([0.5, 1.5])


def test_reset_forgets_everything() -> None:
    sketch = Sketch()
    sketch.add_many([0.1, np.nan])
    sketch.reset()
    assert sketch == Sketch() and sketch.rejected_count == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=hnp.arrays(np.float64, st.integers(1, 400),
                      elements=st.floats(1e-7, 1e5, allow_nan=False, allow_infinity=False)),
    q=st.floats(0.0, 1.0),
)
def test_any_positive_data_any_quantile(values: np.ndarray, q: float) -> None:
    sketch = Sketch()
    sketch.add_many(values)
    expected = np.quantile(values, q, method="inverted_cdf")
    assert abs(sketch.quantile(q) - expected) <= TOLERANCE * expected


@settings(max_examples=40, deadline=None)
@given(
    a=hnp.arrays(np.float64, st.integers(0, 200), elements=st.floats(-1.0, 1e3)),
    b=hnp.arrays(np.float64, st.integers(0, 200), elements=st.floats(-1.0, 1e3)),
)
def test_merge_then_subtract_restores_counts(a: np.ndarray, b: np.ndarray) -> None:
    sa, sb = Sketch(), Sketch()
    sa.add_many(a)
    sb.add_many(b)
    back = (sa + sb) - sb
    assert np.array_equal(back.to_arrays()["bins"], sa.to_arrays()["bins"])
    assert np.array_equal(back.to_arrays()["counters"], sa.to_arrays()["counters"])
