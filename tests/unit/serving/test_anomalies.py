"""Latency and error-rate anomalies against an EWMA baseline, at the Monitor."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import Sketch
from serving.monitoring.anomalies import EWMA_WEIGHT, EwmaBaseline
from serving.monitoring.monitor import MonitorState
from serving.monitoring.stats import LATENCY_MAX_S, LATENCY_MIN_S


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def delta(latencies: list[float], errors: int = 0) -> dict:
    sketch = Sketch(0.01, LATENCY_MIN_S, LATENCY_MAX_S)
    sketch.add_many(np.asarray(latencies))
    return {1: {"latency": sketch.to_bytes(), "latency_sum": float(sum(latencies)),
                "codes": {200: len(latencies) - errors, **({500: errors} if errors else {})}}}


def run(state: MonitorState, clock: Clock, seconds: int, latency_s: float, errors: int = 0,
        per_second: int = 50, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(seconds):
        values = rng.normal(latency_s, latency_s * 0.05, per_second).clip(1e-5).tolist()
        state.record("e", "r", delta(values, errors))
        clock.now += 1


def test_the_baseline_is_an_exponentially_weighted_mean_and_variance() -> None:
    values = np.random.default_rng(1).normal(10, 2, 200)
    baseline = EwmaBaseline()
    for v in values:
        baseline.update(float(v))
    weights = (1 - EWMA_WEIGHT) ** np.arange(len(values) - 1)[::-1] * EWMA_WEIGHT
    # The first value seeds the mean; each later one pulls it by EWMA_WEIGHT.
    expected = values[0] * (1 - EWMA_WEIGHT) ** (len(values) - 1) + (weights * values[1:]).sum()
    assert baseline.mean == pytest.approx(expected)
    assert np.sqrt(baseline.variance) == pytest.approx(2, rel=0.35)


def test_steady_latency_is_not_an_anomaly_and_a_tripling_is() -> None:
    clock = Clock()
    state = MonitorState(clock=clock)
    run(state, clock, 60, 0.010)
    steady = state.snapshot("e", 5)[1].anomalies
    assert steady.latency_ms.baseline_slots >= 30
    assert steady.latency_ms.baseline == pytest.approx(10, rel=0.05)
    assert not steady.latency_ms.anomalous and not steady.any
    run(state, clock, 5, 0.030, seed=1)
    spike = state.snapshot("e", 5)[1].anomalies
    assert spike.latency_ms.anomalous and spike.any
    assert spike.latency_ms.value == pytest.approx(30, rel=0.05)
    assert spike.latency_ms.z > 4


def test_an_error_burst_is_an_anomaly() -> None:
    clock = Clock()
    state = MonitorState(clock=clock)
    run(state, clock, 60, 0.010, errors=0)
    run(state, clock, 5, 0.010, errors=10)
    errors = state.snapshot("e", 5)[1].anomalies.error_rate
    assert errors.value == pytest.approx(0.2) and errors.anomalous


def test_a_young_baseline_judges_nothing() -> None:
    clock = Clock()
    state = MonitorState(clock=clock)
    run(state, clock, 8, 0.010)
    run(state, clock, 3, 0.100)
    latency = state.snapshot("e", 3)[1].anomalies.latency_ms
    assert latency.z is None and not latency.anomalous


@pytest.mark.parametrize("window_s", [5, 60, 300])
def test_a_sustained_tripling_over_half_a_window_is_an_anomaly_whatever_the_window(
        window_s) -> None:
    """The baseline forgets in about 20 s: judged against today's baseline, a minute's
    window let a sustained regression leak into it before the window's mean moved, and
    nothing was ever flagged. Each window is judged against the baseline before it."""
    clock = Clock()
    state = MonitorState(clock=clock)
    run(state, clock, 400, 0.010)
    assert not state.snapshot("e", window_s)[1].anomalies.any
    run(state, clock, max(5, window_s // 2), 0.030, seed=1)
    judged = state.snapshot("e", window_s)[1].anomalies.latency_ms
    assert judged.anomalous, judged
    assert judged.baseline == pytest.approx(10, rel=0.05)


def test_refused_requests_neither_dilute_the_error_rate_nor_make_its_anomaly() -> None:
    """Error rates are of the requests answered: counted over every request, a flood of
    malformed ones (refused, 4xx) hid a model failing one answer in ten, and when the
    flood stopped the unchanged failure rate read as a new anomaly."""
    clock = Clock()
    state = MonitorState(clock=clock)
    for _ in range(60):
        answered = delta([0.01] * 10, errors=1)
        answered[1]["codes"][400] = 90  # the flood: refused before the model ran
        state.record("e", "r", answered)
        clock.now += 1
    flooded = state.snapshot("e", 30)[1]
    assert flooded.traffic.requests == 10 * flooded.traffic.answered > 0
    assert flooded.traffic.error_rate == pytest.approx(0.1)
    for _ in range(10):
        state.record("e", "r", delta([0.01] * 10, errors=1))
        clock.now += 1
    after = state.snapshot("e", 5)[1]
    assert after.traffic.error_rate == pytest.approx(0.1)
    assert after.anomalies.error_rate.value == pytest.approx(0.1)
    assert not after.anomalies.error_rate.anomalous
