"""Where the Monitor's windows begin: the judged slots are those that began within the
window, so the second a rollout's step started in, or the second in which a failing
analysis read its window, is never judged again as part of the next one."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from serving.monitoring.monitor import SLOTS, CounterWindow, MonitorState
from serving.monitoring.stats import StatsRecorder


def _brute_force_slots(now: float, window_s: float) -> int:
    """The slots (one second each) from the current one back to the oldest that began
    after ``now - window_s``: at least the current one, at most the ring."""
    current = math.floor(now)
    began_within = [s for s in range(current - SLOTS - 2, current + 1) if s > now - window_s]
    return max(1, min(SLOTS, len(began_within)))


def test_a_window_takes_every_slot_that_began_within_it_and_no_other() -> None:
    rng = np.random.default_rng(3)
    now = [0.0]
    window = CounterWindow(SLOTS, 1.0, lambda: now[0])
    cases = [(1000 + rng.uniform(0, 1000), rng.choice([rng.uniform(0.01, 400), rng.integers(1, 300)]))
             for _ in range(3000)]
    cases += [(2000.25, 10.25), (2000.25, 10.0), (2000.0, 10.0), (2000.0, 2.0), (2000.5, 0.2),
              (2000.5, 1e9)]
    for at, window_s in cases:
        now[0] = at
        assert window.window_slots(float(window_s)) == _brute_force_slots(at, float(window_s)), \
            (at, window_s)


def _ship(monitor: MonitorState, recorder_calls: Callable[[StatsRecorder], None]) -> None:
    recorder = StatsRecorder()
    recorder_calls(recorder)
    monitor.record("churn", "replica-1", recorder.to_delta())


@pytest.mark.parametrize("start_fraction", [0.1, 0.35, 0.6, 0.85])
@pytest.mark.parametrize("now_fraction", [0.05, 0.3, 0.55, 0.8, 0.95])
def test_requests_that_arrived_before_the_windows_start_are_never_judged(
        start_fraction: float, now_fraction: float) -> None:
    """A failing analysis read its window at ``start``; errors had arrived in that second.
    The next analysis's window runs from ``start`` (analysis_window), and whatever the two
    moments' places within their seconds, it judges only what arrived after: before, the
    second of ``start`` counted whenever ``now`` was further along in its second."""
    clock = [1000.0]
    monitor = MonitorState(clock=lambda: clock[0], wall_clock=lambda: clock[0])
    _ship(monitor, lambda r: [r.record(1, 200, 0.005) for _ in range(5)])  # the version is known
    start = 1009.0 + start_fraction
    clock[0] = start - 0.05
    _ship(monitor, lambda r: [r.record(1, 500, 0.5) for _ in range(10)])  # judged, and failed
    clock[0] = start
    assert monitor.snapshot("churn", 1.0)[1].traffic.server_errors == 10
    answered_after = 0
    for second in range(1010, 1020):
        clock[0] = second + 0.5
        _ship(monitor, lambda r: [r.record(1, 200, 0.005) for _ in range(2)])
        answered_after += 2
    clock[0] = 1019.0 + now_fraction
    stats = monitor.snapshot("churn", clock[0] - start)[1]
    assert (stats.traffic.requests, stats.traffic.server_errors) == (answered_after, 0)
    assert stats.latency.all_requests.count == answered_after
    assert stats.latency.all_requests.p99_ms < 100
