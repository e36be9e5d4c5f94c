"""A replica that stops reporting without a graceful stop (a crash, a kill) takes with it the
requests it had in flight, which the proxy answers and no replica records, and its last
statistics. The Monitor names such replicas per version, and an analysis whose window lost
one waits instead of passing the candidate. Deltas from real recorders feed a
real MonitorState on a fake clock; its snapshot is judged."""

from __future__ import annotations

import pytest

from control_plane.rollouts import AnalysisConfig, Verdict, analyse
from serving.monitoring.monitor import MonitorState
from serving.monitoring.replica_reports import SILENT_INTERVALS, SILENT_MIN_S
from serving.monitoring.stats import ServedConfig, StatsRecorder

INCARNATION = "2026-12-05T00:00:00+00:00#1"
BOTH = ServedConfig(INCARNATION, 2, (1, 2))
CONFIG = AnalysisConfig(min_samples=50, max_p95_ratio=None)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def delta(requests: dict[int, int], status: int = 200) -> dict:
    recorder = StatsRecorder()
    for version, count in requests.items():
        for _ in range(count):
            recorder.record(version, status, 0.002)
    return recorder.to_delta()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> MonitorState:
    state = MonitorState(clock=clock, wall_clock=clock)
    for replica in ("r1", "r2"):
        state.record("e", replica, delta({1: 60, 2: 60}), BOTH)
    return state


def judged(state: MonitorState, window_s: float = 60.0) -> tuple[Verdict, str]:
    snapshot = state.snapshot("e", window_s)
    result = analyse(CONFIG, snapshot[2], snapshot[1])
    return result.verdict, result.reason


def beat(state: MonitorState, clock: Clock, seconds: float, replicas: tuple[str, ...],
         served: ServedConfig = BOTH) -> None:
    """``seconds`` of one-second shipments (empty: no traffic) from ``replicas``."""
    for _ in range(int(seconds)):
        clock.now += 1
        for replica in replicas:
            state.record("e", replica, {}, served)


def test_a_replica_that_stops_reporting_holds_the_analysis(state: MonitorState,
                                                           clock: Clock) -> None:
    assert judged(state)[0] == Verdict.PASS
    beat(state, clock, SILENT_MIN_S - 1, ("r1",))  # r2 quiet, not yet silent: a stall
    assert state.snapshot("e")[2].replicas.silent == 0
    assert judged(state)[0] == Verdict.PASS
    beat(state, clock, 2, ("r1",))
    replicas = state.snapshot("e")[2].replicas
    assert (replicas.reporting, replicas.silent) == (2, 1)
    assert replicas.silent_for_s == pytest.approx(SILENT_MIN_S + 1)
    verdict, reason = judged(state)
    assert verdict == Verdict.INCONCLUSIVE
    assert "1 of the 2 replicas that served the endpoint in the window went silent" in reason
    assert state.snapshot("e")[1].replicas.silent == 1  # stable's too: they share replicas
    # A window that begins after its last report does not hold it.
    state.record("e", "r1", delta({1: 60, 2: 60}), BOTH)
    assert state.snapshot("e", SILENT_MIN_S)[2].replicas.silent == 0
    assert judged(state, SILENT_MIN_S)[0] == Verdict.PASS


def test_a_replica_that_says_goodbye_or_comes_back_is_not_missing(state: MonitorState,
                                                                  clock: Clock) -> None:
    state.record("e", "r2", delta({2: 3}), BOTH, leaving=True)  # stopped by Serve
    beat(state, clock, 30, ("r1",))
    replicas = state.snapshot("e")[2].replicas
    assert (replicas.reporting, replicas.silent) == (1, 0)
    assert state.snapshot("e")[2].traffic.requests == 123  # its last statistics merged
    assert judged(state)[0] == Verdict.PASS
    # r1 stalls past the limit, then reports again: its statistics came late, not lost.
    clock.now += 2 * SILENT_MIN_S
    assert state.snapshot("e")[2].replicas.silent == 1
    state.record("e", "r1", {}, BOTH)
    assert state.snapshot("e")[2].replicas.silent == 0


def test_a_replica_silent_since_before_the_candidate_came_counts_against_it(
        clock: Clock) -> None:
    """Which versions a replica held when it died is unknowable: one added within its last
    interval (a candidate whose first request kills it) is not in its last shipment."""
    state = MonitorState(clock=clock, wall_clock=clock)
    state.record("e", "old", delta({1: 60}), ServedConfig(INCARNATION, 1, (1,)))
    state.record("e", "r1", delta({1: 60, 2: 60}), BOTH)
    beat(state, clock, 10, ("r1",))
    snapshot = state.snapshot("e")
    assert snapshot[1].replicas.silent == snapshot[2].replicas.silent == 1


def test_a_failing_candidate_fails_whatever_was_lost(state: MonitorState, clock: Clock) -> None:
    state.record("e", "r1", delta({2: 40}, status=500), BOTH)
    beat(state, clock, 10, ("r1",))
    assert state.snapshot("e")[2].replicas.silent == 1
    verdict, reason = judged(state)
    assert verdict == Verdict.FAIL and "error_rate" in reason


def test_silence_is_judged_by_the_replicas_own_interval(clock: Clock) -> None:
    slow = ServedConfig(INCARNATION, 2, (1, 2), report_every_s=10.0)
    state = MonitorState(clock=clock, wall_clock=clock)
    state.record("e", "r1", delta({1: 60, 2: 60}), slow)
    clock.now += SILENT_INTERVALS * 10 - 1  # a shipment every 10 s: four missed so far
    assert state.snapshot("e", 300)[2].replicas.silent == 0
    clock.now += 2
    assert state.snapshot("e", 300)[2].replicas.silent == 1


def test_a_shadow_whose_replica_went_silent_is_not_judged(state: MonitorState,
                                                          clock: Clock) -> None:
    recorder = StatsRecorder()
    for _ in range(60):
        recorder.record_shadow(2, agreed=(1, 1), abs_diff=0.0, latency_delta_s=0.0, failed=False)
    state.record("e", "r1", recorder.to_delta(), BOTH)
    shadow_config = AnalysisConfig(min_samples=50, min_shadow_agreement=0.9)
    assert analyse(shadow_config, state.snapshot("e")[2], None, shadow=True).verdict == Verdict.PASS
    beat(state, clock, 10, ("r1",))
    result = analyse(shadow_config, state.snapshot("e")[2], None, shadow=True)
    assert result.verdict == Verdict.INCONCLUSIVE and "went silent" in result.reason


def test_the_monitor_forgets_replicas_after_its_memory(state: MonitorState, clock: Clock) -> None:
    beat(state, clock, 400, ("r1",))
    assert state.replicas.count() == 1  # r2, silent for longer than any window, is dropped
