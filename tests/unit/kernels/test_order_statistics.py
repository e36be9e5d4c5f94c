"""Confidence bounds on a quantile from order statistics: the ranks are the binomial ones
SciPy computes, the bounds cover the true quantile as often as they claim, and the sketch
reads them off its bins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from kernels import Sketch
from kernels.order_statistics import quantile_bound_ranks


def _reference_ranks(n: int, q: float, confidence: float) -> tuple[int | None, int | None]:
    cdf = stats.binom.cdf(np.arange(n + 1), n, q)  # cdf[j] = P(B <= j)
    lows = [k for k in range(1, n + 1) if cdf[k - 1] <= 1 - confidence]
    highs = [m for m in range(1, n + 1) if cdf[m - 1] >= confidence]
    return (max(lows) if lows else None), (min(highs) if highs else None)


@pytest.mark.parametrize("n", [2, 5, 10, 19, 59, 100, 333, 499, 501, 1000, 5001, 20000, 10**6])
@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_ranks_are_the_binomial_ones(n: int, q: float) -> None:
    assert quantile_bound_ranks(n, q, 0.95) == _reference_ranks(n, q, 0.95)


def test_too_few_values_give_no_bound() -> None:
    assert quantile_bound_ranks(10, 0.95, 0.95) == (8, None)  # no upper bound on a p95 of 10
    assert quantile_bound_ranks(2, 0.5, 0.95) == (None, None)
    # The maximum bounds a p95 from above once 1 - 0.95**n >= 0.95, from 59 values on.
    assert quantile_bound_ranks(58, 0.95, 0.95)[1] is None
    assert quantile_bound_ranks(59, 0.95, 0.95)[1] == 59


def test_bad_arguments_are_refused() -> None:
    for n, q, confidence in ((0, 0.5, 0.95), (10, 1.0, 0.95), (10, 0.5, 1.0)):
        with pytest.raises(ValueError, match="need n >= 1"):
            quantile_bound_ranks(n, q, confidence)


@pytest.mark.parametrize("n", [30, 100, 400])
def test_bounds_cover_the_true_quantile_as_often_as_claimed(n: int) -> None:
    rng = np.random.default_rng(n)
    true_p95 = stats.lognorm(s=0.8).ppf(0.95)
    low_rank, high_rank = quantile_bound_ranks(n, 0.95, 0.95)
    trials = 4000
    samples = np.sort(stats.lognorm(s=0.8).rvs(size=(trials, n), random_state=rng), axis=1)
    low_covers = np.mean(samples[:, low_rank - 1] <= true_p95)
    assert low_covers + 0.01 >= 0.95  # 4,000 trials: a standard error of 0.0035
    assert low_covers < 0.995  # a bound, not the minimum
    if high_rank is not None:
        assert np.mean(samples[:, high_rank - 1] >= true_p95) + 0.01 >= 0.95


def test_the_sketch_reads_the_bounding_order_statistics() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(-4.0, 0.6, size=250)
    sketch = Sketch()
    sketch.add_many(values)
    bounds = sketch.quantile_bounds([0.95, 0.99], 0.95)
    ordered = np.sort(values)
    for row, q in enumerate((0.95, 0.99)):
        low_rank, high_rank = quantile_bound_ranks(250, q, 0.95)
        assert bounds[row, 0] == pytest.approx(ordered[low_rank - 1], rel=0.0101)
        if high_rank is None:
            assert np.isnan(bounds[row, 1])
        else:
            assert bounds[row, 1] == pytest.approx(ordered[high_rank - 1], rel=0.0101)
    assert bounds[0, 0] <= sketch.quantile(0.95) <= bounds[0, 1]
    assert np.isnan(Sketch().quantile_bounds([0.95], 0.95)).all()
