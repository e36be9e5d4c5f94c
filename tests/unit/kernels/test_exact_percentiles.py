"""The exact ring buffer answers what numpy.percentile answers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels import InvalidValueError
from kernels.percentiles import RingBuffer

_VALUES = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(np.float64, st.integers(1, 300), elements=_VALUES),
    capacity=st.integers(1, 200),
    qs=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=6),
)
def test_matches_numpy_percentile_exactly(values: np.ndarray, capacity: int, qs: list[float]) -> None:
    ring = RingBuffer(capacity)
    ring.add_many(values)
    held = values[-capacity:]
    np.testing.assert_array_equal(ring.values(), held)
    np.testing.assert_array_equal(ring.percentiles(qs), np.percentile(held, qs))


@pytest.mark.parametrize("order", ["random", "sorted", "reversed", "ties"])
def test_large_windows_and_adversarial_orders(order: str) -> None:
    rng = np.random.default_rng(5)
    values = {"random": rng.lognormal(size=50_000), "sorted": np.arange(50_000.0),
              "reversed": np.arange(50_000.0)[::-1].copy(),
              "ties": rng.integers(0, 3, 50_000).astype(float)}[order]
    ring = RingBuffer(40_000)
    for chunk in np.array_split(values, 7):
        ring.add_many(chunk)
    qs = [0, 1, 25, 50, 95, 99, 99.9, 100]
    np.testing.assert_array_equal(ring.percentiles(qs), np.percentile(values[-40_000:], qs))


def test_nan_is_counted_not_stored_and_empty_is_nan() -> None:
    ring = RingBuffer(3)
    assert np.isnan(ring.percentile(50))
    ring.add_many([1.0, np.nan, 2.0])
    ring.add(np.nan)
    assert len(ring) == 2 and ring.nan_count == 2 and ring.seen == 2
    assert ring.percentile(50) == 1.5
    ring.reset()
    assert len(ring) == 0


def test_invalid_arguments() -> None:
    with pytest.raises(InvalidValueError):
        RingBuffer(0)
    with pytest.raises(InvalidValueError, match=r"\[0, 100\]"):
        RingBuffer(2).percentiles([101])
