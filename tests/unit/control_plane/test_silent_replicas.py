"""A replica that stops reporting without a graceful stop (a crash, a kill) takes with it the
requests it had in flight, which the proxy answers and no replica records, and its last
statistics. The Monitor names such replicas, and an analysis whose window lost one waits
instead of passing the candidate. Deltas from real recorders feed a real MonitorState on a
fake clock; its snapshot is judged."""

from __future__ import annotations

import itertools

import pytest

from control_plane.rollouts import AnalysisConfig, Verdict, analyse
from control_plane.rollouts.decision import _with_ab_test
from serving.monitoring.monitor import MonitorState
from serving.monitoring.replica_reports import SILENT_INTERVALS, SILENT_MIN_S
from serving.monitoring.stats import ServedConfig, StatsRecorder

INCARNATION = "2026-12-05T00:00:00+00:00#1"
BOTH = ServedConfig(INCARNATION, 2, (1, 2))
CONFIG = AnalysisConfig(min_samples=50, max_p95_ratio=None)
NUMBERS = itertools.count(1)  # replicas number their shipments


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


def ship(state: MonitorState, replica: str, shipment: dict, served: ServedConfig = BOTH,
         leaving: bool = False) -> None:
    state.record("e", replica, shipment, served, leaving, next(NUMBERS))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> MonitorState:
    state = MonitorState(clock=clock, wall_clock=clock)
    for replica in ("r1", "r2"):
        ship(state, replica, delta({1: 60, 2: 60}))
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
            ship(state, replica, {}, served)


def test_a_replica_that_stops_reporting_holds_the_analysis(state: MonitorState,
                                                           clock: Clock) -> None:
    assert judged(state)[0] == Verdict.PASS
    beat(state, clock, SILENT_MIN_S, ("r1",))  # r2 quiet, not yet silent: a stall
    assert state.snapshot("e")[2].replicas.silent == 0
    assert judged(state)[0] == Verdict.PASS
    beat(state, clock, 1, ("r1",))
    replicas = state.snapshot("e")[2].replicas
    assert (replicas.reporting, replicas.silent) == (2, 1)
    assert replicas.silent_for_s == pytest.approx(SILENT_MIN_S + 1)
    verdict, reason = judged(state)
    assert verdict == Verdict.INCONCLUSIVE
    assert "1 of the 2 replicas that served the endpoint in the window went silent" in reason
    assert state.snapshot("e")[1].replicas.silent == 1  # stable's too: they share replicas
    # A window shorter than the silence, begun after r2's last shipment, still holds it:
    # what r2 took down with it fell after that shipment.
    ship(state, "r1", delta({1: 60, 2: 60}))
    assert state.snapshot("e", 2)[2].replicas.silent == 1
    assert judged(state, 2)[0] == Verdict.INCONCLUSIVE
    # Once its lost seconds are older than the window, it holds it no more.
    beat(state, clock, 60, ("r1",))
    ship(state, "r1", delta({1: 60, 2: 60}))
    assert state.snapshot("e")[2].replicas.silent == 0
    assert judged(state)[0] == Verdict.PASS


def test_a_replica_that_says_goodbye_or_comes_back_is_not_missing(state: MonitorState,
                                                                  clock: Clock) -> None:
    ship(state, "r2", delta({2: 3}), leaving=True)  # stopped by Serve
    beat(state, clock, 30, ("r1",))
    replicas = state.snapshot("e")[2].replicas
    assert (replicas.reporting, replicas.silent) == (1, 0)
    assert state.snapshot("e")[2].traffic.requests == 123  # its last statistics merged
    assert judged(state)[0] == Verdict.PASS
    # A stray shipment of r2's after its goodbye is merged, but r2 is not followed again
    # (it would go silent as its process ends).
    ship(state, "r2", delta({2: 1}))
    beat(state, clock, 10, ("r1",))
    assert state.snapshot("e")[2].replicas.silent == 0
    assert state.snapshot("e")[2].traffic.requests == 124
    # r1 stalls past the limit, then reports again: its statistics came late, not lost.
    clock.now += 2 * SILENT_MIN_S
    assert state.snapshot("e")[2].replicas.silent == 1
    ship(state, "r1", {})
    assert state.snapshot("e")[2].replicas.silent == 0


def test_a_replica_silent_since_before_the_candidate_came_counts_against_it(
        clock: Clock) -> None:
    """Which versions a replica held when it died is unknowable: one added within its last
    interval (a candidate whose first request kills it) is not in its last shipment."""
    state = MonitorState(clock=clock, wall_clock=clock)
    ship(state, "old", delta({1: 60}), ServedConfig(INCARNATION, 1, (1,)))
    ship(state, "r1", delta({1: 60, 2: 60}))
    beat(state, clock, 10, ("r1",))
    snapshot = state.snapshot("e")
    assert snapshot[1].replicas.silent == snapshot[2].replicas.silent == 1


def test_a_replica_of_a_release_that_ships_only_with_traffic_is_not_followed(
        clock: Clock) -> None:
    """Replicas still running the release before this one ship no empty shipments and no
    numbers: their quiet between requests is no silence."""
    state = MonitorState(clock=clock, wall_clock=clock)
    state.record("e", "older", delta({1: 60, 2: 60}), BOTH)
    clock.now += 30
    assert state.snapshot("e")[2].replicas.silent == 0
    assert state.snapshot("e")[2].traffic.requests == 60  # its statistics count as ever


def test_a_failing_candidate_fails_whatever_was_lost(state: MonitorState, clock: Clock) -> None:
    ship(state, "r1", delta({2: 40}, status=500))
    beat(state, clock, 10, ("r1",))
    assert state.snapshot("e")[2].replicas.silent == 1
    verdict, reason = judged(state)
    assert verdict == Verdict.FAIL and "error_rate" in reason


def test_the_ab_test_s_worse_still_fails_a_candidate_in_a_window_with_a_silence(
        state: MonitorState, clock: Clock) -> None:
    beat(state, clock, 10, ("r1",))
    ship(state, "r1", delta({1: 60, 2: 60}))
    held = analyse(CONFIG, state.snapshot("e")[2], state.snapshot("e")[1])
    assert held.verdict == Verdict.INCONCLUSIVE
    assert _with_ab_test(held, "worse", "slower than stable").verdict == Verdict.FAIL
    assert _with_ab_test(held, "no_worse", "").verdict == Verdict.INCONCLUSIVE


def test_silence_is_judged_by_the_replicas_own_interval(clock: Clock) -> None:
    slow = ServedConfig(INCARNATION, 2, (1, 2), report_every_s=10.0)
    state = MonitorState(clock=clock, wall_clock=clock)
    ship(state, "r1", delta({1: 60, 2: 60}), slow)
    clock.now += SILENT_INTERVALS * 10 - 1  # a shipment every 10 s: two missed so far
    assert state.snapshot("e")[2].replicas.silent == 0
    clock.now += 2
    assert state.snapshot("e")[2].replicas.silent == 1  # in a 60 s window, and a 5 s one
    assert state.snapshot("e", 5)[2].replicas.silent == 1


def test_a_shadow_whose_replica_went_silent_is_not_judged(state: MonitorState,
                                                          clock: Clock) -> None:
    recorder = StatsRecorder()
    for _ in range(60):
        recorder.record_shadow(2, agreed=(1, 1), abs_diff=0.0, latency_delta_s=0.0, failed=False)
    ship(state, "r1", recorder.to_delta())
    shadow_config = AnalysisConfig(min_samples=50, min_shadow_agreement=0.9)
    assert analyse(shadow_config, state.snapshot("e")[2], None, shadow=True).verdict == Verdict.PASS
    beat(state, clock, 10, ("r1",))
    result = analyse(shadow_config, state.snapshot("e")[2], None, shadow=True)
    assert result.verdict == Verdict.INCONCLUSIVE and "went silent" in result.reason


def test_a_shipment_sent_again_is_merged_once(state: MonitorState) -> None:
    shipment = delta({2: 5})
    state.record("e", "r1", shipment, BOTH, False, 10_000)
    state.record("e", "r1", shipment, BOTH, False, 10_000)  # its answer was lost: again
    assert state.snapshot("e")[2].traffic.requests == 125  # 120 before it


def test_the_monitor_forgets_replicas_after_its_memory(state: MonitorState, clock: Clock) -> None:
    beat(state, clock, 400, ("r1",))
    assert state.replicas.count() == 1  # r2, silent for longer than any window, is dropped
