"""Rotating sketch windows, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import InvalidValueError
from kernels.sketch import Sketch
from kernels.windows import SketchWindow


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _window(clock: FakeClock) -> SketchWindow:
    return SketchWindow(slots=6, slot_seconds=10.0, clock=clock)


def test_values_age_out_slot_by_slot() -> None:
    clock = FakeClock(1000.0)
    window = _window(clock)
    for second in range(60):  # one value per second, value = its timestamp offset
        clock.now = 1000.0 + second
        window.add(float(second + 1))
    assert window.sketch().count == 60
    # 30 s back from t=1059 covers slots 1030-1039, 1040-1049, 1050-1059.
    assert window.sketch(30).count == 30
    assert window.sketch(30).min == 31.0
    # Just inside the last slot: one slot.
    assert window.sketch(0.5).count == 10
    clock.now = 1060.0  # a new slot opens; the oldest (1000-1009) is dropped
    assert window.sketch().count == 50
    assert window.sketch().min == 11.0
    clock.now = 1095.0
    assert window.sketch().count == 20  # slots 1040-1049 and 1050-1059 remain
    clock.now = 1_000_000.0  # long idle gap: everything expired
    assert window.sketch().count == 0


def test_window_quantiles_match_a_sketch_of_the_same_values() -> None:
    clock = FakeClock(0.0)
    window = _window(clock)
    rng = np.random.default_rng(0)
    expected = Sketch()
    for step in range(12):
        clock.now = step * 5.0
        batch = rng.lognormal(-4, 1, 100)
        window.add_many(batch)
        if step >= 6:  # steps 6..11 are t=30..55: the last 30 s (slots 30, 40, 50)
            expected.add_many(batch)
    assert window.sketch(30) == expected
    np.testing.assert_array_equal(window.quantiles([0.5, 0.99], seconds=30),
                                  expected.quantiles([0.5, 0.99]))


def test_merge_folds_a_replica_delta_into_the_current_slot() -> None:
    clock = FakeClock(0.0)
    window = _window(clock)
    delta = Sketch()
    delta.add_many([0.1, 0.2, 0.3])
    window.merge(delta)
    clock.now = 59.9
    assert window.sketch().count == 3
    clock.now = 60.0
    assert window.sketch().count == 0


def test_clock_going_backwards_does_not_rotate() -> None:
    clock = FakeClock(100.0)
    window = _window(clock)
    window.add(1.0)
    clock.now = 50.0
    window.add(2.0)
    assert window.sketch(10).count == 2


def test_reset_and_invalid_arguments() -> None:
    clock = FakeClock()
    window = _window(clock)
    window.add_many([0.1, 0.2])
    window.reset()
    assert window.sketch().count == 0
    assert window.span_seconds == 60.0
    with pytest.raises(InvalidValueError):
        window.sketch(0)
    with pytest.raises(InvalidValueError):
        SketchWindow(slots=0)
