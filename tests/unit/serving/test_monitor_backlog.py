"""Statistics a replica kept while the Monitor was away (killed and restarted, or not
answering) are filed in the seconds they were recorded in, so the windows a rollout
reads after the outage hold what they would have held had the Monitor been up.

Merged on arrival, a minute of backlog read as one second's traffic under the step it
arrived in: requests served at a canary's 10% counted in its 50% step's window, and a
candidate failing 2% of its requests at 50% read 0.8% and passed."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from control_plane.alerts.signals import SIGNALS, evidence
from control_plane.rollouts.analysis import AnalysisConfig, Verdict, analyse
from serving.monitoring.monitor import SLOT_SECONDS, SLOTS, MonitorState
from serving.monitoring.observations import attach_profiles
from serving.monitoring.stats import ServedConfig, StatsRecorder
from tests.unit.serving.monitoring_helpers import make_core, reference_profile, send_many

RPS = 200
STEP_AT = 1055  # the canary goes from 10% to 50% in this second
SERVED = ServedConfig("incarnation-1", 7, (1, 2), 1.0)
CONFIG = AnalysisConfig(min_samples=100, max_error_rate=0.01, max_p95_ratio=1.5)


def _second(second: int) -> dict:
    """One second of traffic: the candidate (2) answers nothing wrong at 10%; at 50%,
    from ``STEP_AT``, it fails 2% of its requests; stable (1) never fails."""
    recorder = StatsRecorder()
    share, failing = (0.1, 0.0) if second < STEP_AT else (0.5, 0.02)
    candidate = int(RPS * share)
    for _ in range(RPS - candidate):
        recorder.record(1, 200, 0.010)
    for i in range(candidate):
        recorder.record(2, 500 if i < round(candidate * failing) else 200, 0.010)
    return recorder.to_delta()


def _monitor(clock: list[float]) -> MonitorState:
    return MonitorState(clock=lambda: clock[0], wall_clock=lambda: clock[0])


def _on_time(until: int) -> tuple[MonitorState, list[float]]:
    """The Monitor up throughout: each second's delta, taken a quarter into the next
    second, arrives as it is taken."""
    clock = [990.0]
    monitor = _monitor(clock)
    for second in range(990, until):
        clock[0] = second + 1.25
        monitor.record("ep", "r1", _second(second), SERVED, sequence=second)
    return monitor, clock


def _figures(monitor: MonitorState, window_s: float) -> tuple[int, ...]:
    """The candidate's requests and 5xx, then stable's, then both latency sketches' counts."""
    snapshot = monitor.snapshot("ep", window_s, ("random",))
    return (snapshot[2].traffic.requests, snapshot[2].traffic.server_errors,
            snapshot[1].traffic.requests, snapshot[1].traffic.server_errors,
            snapshot[2].latency.all_requests.count, snapshot[1].latency.all_requests.count)


@pytest.mark.parametrize("outage", ["restarted", "unanswering"])
def test_a_backlog_is_filed_in_the_seconds_it_was_recorded_in(outage: str) -> None:
    truth, clock = _on_time(1063)
    now = 1063.5
    clock[0] = now
    window_s = now - (STEP_AT + 0.25)  # from the step (analysis_window)
    expected = _figures(truth, window_s)
    assert expected[0] > 600 and expected[1] > 10  # the window holds the 50% seconds alone

    clock = [990.0]
    monitor = _monitor(clock)
    for second in range(990, 1000):  # before the outage, on time
        clock[0] = second + 1.25
        monitor.record("ep", "r1", _second(second), SERVED, sequence=second)
    if outage == "restarted":  # killed at 1000; a new, empty Monitor at 1060.3
        clock[0] = 1060.3
        monitor = _monitor(clock)
    clock[0] = 1060.3
    for second in range(1000, 1060):  # the replica's kept shipments, oldest first, at once
        taken_at = second + 1.25
        monitor.record("ep", "r1", _second(second), SERVED, sequence=second,
                       age_s=clock[0] - taken_at)
    for second in range(1060, 1063):  # on time again
        clock[0] = second + 1.25
        monitor.record("ep", "r1", _second(second), SERVED, sequence=second)
    clock[0] = now

    assert _figures(monitor, window_s) == expected
    snapshot = monitor.snapshot("ep", window_s, ("random",))
    verdict = analyse(CONFIG, snapshot[2], snapshot[1])
    assert verdict.verdict == Verdict.FAIL and verdict.reason.startswith("error_rate")
    # Every request is counted once, the backlog's included.
    served_since_restart = sum(RPS for _ in range(1000, 1063))
    totals = sum(monitor.series[("ep", v)].totals[code] for v in (1, 2)
                 for code in monitor.series[("ep", v)].totals if code.startswith("code:"))
    before = 0 if outage == "restarted" else 10 * RPS
    assert totals == served_since_restart + before


def _requests_evidence(monitor: MonitorState, comparison: str) -> float | None:
    """What an alert on the window's requests, ``comparison`` 0, may act on."""
    value, details = SIGNALS["requests"].read(monitor.snapshot("ep", 5.0)[1])
    return evidence(value, details, comparison, 0.0)


def test_a_window_is_not_whole_until_every_replica_s_backlog_reached_it() -> None:
    """A Monitor merges a replica's kept shipments one at a time, oldest first.
    Once the oldest landed, the last five seconds read whole and empty while the newer
    ones were on their way: an alert on `requests > 0` resolved under steady traffic.
    (Here r1 alone could not ship from 1000, and the Monitor had heard from r2 for a while:
    test_a_restarted_monitor_reads_no_window_whole_until_it_may_have_heard_every_replica
    covers the seconds after a restart.)"""
    clock = [1056.3]
    monitor = _monitor(clock)
    for sequence in range(1, 5):  # another replica, on time throughout
        monitor.record("ep", "r2", {}, SERVED, sequence=sequence)
        clock[0] += 1
    monitor.record("ep", "r2", _second(1059), SERVED, sequence=5)
    for second in range(1000, 1030):  # the first half of r1's backlog
        monitor.record("ep", "r1", _second(second), SERVED, sequence=second,
                       age_s=clock[0] - (second + 1.25), more=True)
    clock[0] = 1062.8  # the rest is slow to come
    snapshot = monitor.snapshot("ep", 5.0)
    assert snapshot[1].replicas.catching_up_s == pytest.approx(clock[0] - 1030.25)
    assert not snapshot[1].traffic.whole_window and snapshot[1].traffic.observed_s == 0.0
    assert snapshot[1].traffic.seen_s == 5.0  # seen since the backlog's first second
    assert _requests_evidence(monitor, ">") is not None  # r2's: traffic goes on
    assert _requests_evidence(monitor, "<") is None  # neither is "too few" shown
    # The rate counts the seconds r1 has reached (stable's 90% of RPS in each), not the
    # ones still on their way (r2's second among them); none reached: unknown.
    assert monitor.snapshot("ep", 60.0)[1].traffic.throughput_rps == pytest.approx(0.9 * RPS)
    assert math.isnan(snapshot[1].traffic.throughput_rps)
    value, details = SIGNALS["throughput_rps"].read(snapshot[1])
    assert evidence(value, details, "<", 1.0) is None

    monitor.record("ep", "r2", {}, SERVED, sequence=6)  # on time again: r1 still behind
    assert monitor.snapshot("ep", 5.0)[1].replicas.catching_up_s > 20
    for second in range(1030, 1060):
        monitor.record("ep", "r1", _second(second), SERVED, sequence=second,
                       age_s=clock[0] - (second + 1.25), more=True)
    monitor.record("ep", "r1", {}, SERVED, sequence=1060, age_s=2.5)  # the newest, late too
    snapshot = monitor.snapshot("ep", 5.0)
    assert snapshot[1].replicas.catching_up_s == 0.0 and snapshot[1].traffic.whole_window
    assert snapshot[1].traffic.requests == 4 * RPS // 2  # r1's last three seconds, r2's one
    assert _requests_evidence(monitor, "<") is not None


def test_a_restarted_monitor_reads_no_window_whole_until_it_may_have_heard_every_replica() -> None:
    """Two replicas kept their statistics while there was no Monitor, and each finds the
    new one at its next shipment. Merged first, r1's whole backlog made every window whole
    while r2's half of the traffic was still to come: a count read half the requests, and
    an alert on too few of them could fire (or one on `requests >` resolve)."""
    clock = [1060.3]
    monitor = _monitor(clock)  # restarted; the Monitor before it went at 1000
    for second in range(1000, 1060):
        monitor.record("ep", "r1", _second(second), SERVED, sequence=second,
                       age_s=clock[0] - (second + 1.25), more=second < 1059)
    clock[0] = 1061.0
    snapshot = monitor.snapshot("ep", 5.0)[1]
    assert snapshot.replicas.catching_up_s == pytest.approx(clock[0] - 1001.25)
    assert not snapshot.traffic.whole_window and snapshot.traffic.observed_s == 0.0
    assert _requests_evidence(monitor, "<") is None  # r2's half, to come, is no lull
    assert _requests_evidence(monitor, ">") is not None
    assert math.isnan(snapshot.traffic.throughput_rps)
    for second in range(1000, 1060):
        monitor.record("ep", "r2", _second(second), SERVED, sequence=second,
                       age_s=clock[0] - (second + 1.25), more=second < 1059)
    for second in range(1060, 1063):  # both on time from here
        clock[0] = second + 1.25
        for replica in ("r1", "r2"):
            monitor.record("ep", replica, _second(second), SERVED, sequence=second)
    clock[0] = 1063.5  # a silence (3 s) after the first shipment: every replica heard
    snapshot = monitor.snapshot("ep", 5.0)[1]
    assert snapshot.replicas.catching_up_s == 0.0 and snapshot.traffic.whole_window
    assert _requests_evidence(monitor, "<") is not None
    assert snapshot.traffic.throughput_rps > 0


def test_a_slower_replica_heard_while_a_new_monitor_listens_lengthens_the_listening() -> None:
    """While an endpoint's statistics interval changes, its replicas ship at both: one
    shipping every 10 s finds a new Monitor up to 10 s after the others."""
    clock = [1060.3]
    monitor = _monitor(clock)
    monitor.record("ep", "r1", _second(1050), SERVED, sequence=1050, age_s=clock[0] - 1051.25)
    clock[0] = 1061.0
    slower = ServedConfig("incarnation-1", 7, (1, 2), 10.0)
    monitor.record("ep", "r2", {}, slower, sequence=1, age_s=25.0)
    clock[0] = 1075.0  # past r1's silence (3 s), within r2's (30 s)
    assert monitor.snapshot("ep", 5.0)[1].replicas.catching_up_s == pytest.approx(
        clock[0] - (1061.0 - 25.0))
    clock[0] = 1091.0
    assert monitor.snapshot("ep", 5.0)[1].replicas.catching_up_s == 0.0


def test_catching_up_reads_no_further_back_than_the_windows_reach() -> None:
    clock = [5000.5]
    monitor = _monitor(clock)
    monitor.record("ep", "r1", _second(2000), SERVED, sequence=1, age_s=SLOTS * 10.0, more=True)
    assert monitor.snapshot("ep", 5.0)[1].replicas.catching_up_s == SLOTS * SLOT_SECONDS


def test_a_late_shipment_with_nothing_after_it_is_no_catch_up() -> None:
    """A Monitor slow for a few seconds (or a replica's stalled loop) makes a shipment
    late, with nothing newer kept: every window stayed partial while it lasted."""
    clock = [1050.3]
    monitor = _monitor(clock)
    monitor.record("ep", "r1", _second(1049), SERVED, sequence=1)  # heard from long before
    clock[0] = 1060.3
    monitor.record("ep", "r1", _second(1057), SERVED, sequence=2, age_s=3.0)
    assert monitor.snapshot("ep", 5.0)[1].replicas.catching_up_s == 0.0


def test_a_replica_silent_in_its_catch_up_counts_as_silent_not_as_catching_up() -> None:
    clock = [1050.3]
    monitor = _monitor(clock)
    monitor.record("ep", "r1", {}, SERVED, sequence=999)  # heard from long before
    clock[0] = 1060.3
    monitor.record("ep", "r1", _second(1000), SERVED, sequence=1000, age_s=clock[0] - 1001.25,
                   more=True)
    assert monitor.snapshot("ep", 5.0)[1].replicas.catching_up_s > 50
    clock[0] += 10  # r1 died before sending the rest
    replicas = monitor.snapshot("ep", 30.0)[1].replicas
    assert replicas.silent == 1 and replicas.catching_up_s == 0.0


def test_a_shipment_on_time_or_just_late_goes_where_shipments_always_went() -> None:
    """Within two intervals of its taking a shipment is merged as it arrives, as every
    shipment was: a replica's slow second never moves figures into a window already read."""
    clock = [2000.6]
    monitor = _monitor(clock)
    monitor.record("ep", "r1", _second(2000), SERVED, sequence=1, age_s=1.9)
    assert _figures(monitor, 0.5)[0] == RPS // 2  # the current second holds it
    clock[0] = 2010.6
    monitor.record("ep", "r1", _second(2000), SERVED, sequence=2, age_s=float("nan"))
    assert _figures(monitor, 0.5)[0] == RPS // 2  # an unreadable age: as if on time


def test_a_shipment_older_than_the_windows_counts_in_the_totals_alone() -> None:
    clock = [4990.5]
    monitor = _monitor(clock)
    monitor.record("ep", "r1", {}, SERVED, sequence=0)  # heard from long before
    clock[0] = 5000.5
    monitor.record("ep", "r1", _second(2000), SERVED, sequence=1, age_s=SLOTS + 30.0)
    assert _figures(monitor, SLOTS)[::4] == (0, 0)
    assert sum(monitor.series[("ep", 2)].totals[key] for key in
               monitor.series[("ep", 2)].totals if key.startswith("code:")) == RPS // 2
    monitor.record("ep", "r1", _second(2000), SERVED, sequence=2, age_s=SLOTS - 30.0,
                   more=True)
    assert _figures(monitor, SLOTS)[:2] == (RPS // 2, 2)
    assert _figures(monitor, SLOTS)[4] == RPS // 2
    assert _figures(monitor, SLOTS - 40)[::4] == (0, 0)
    assert monitor.snapshot("ep", SLOTS)[2].traffic.observed_s < 1  # the rest on its way
    monitor.record("ep", "r1", {}, SERVED, sequence=3, age_s=0.1)  # it all came
    assert monitor.snapshot("ep", SLOTS)[2].traffic.observed_s >= SLOTS - 31


def test_the_rows_of_a_late_shipment_are_judged_for_drift_in_their_own_seconds() -> None:
    """A shifted half-minute kept while the Monitor was away is in the windows that reach
    back to it, not in the last ten seconds' drift."""
    clock = [3000.5]
    state = _monitor(clock)
    core = make_core(reference_profile())
    rng = np.random.default_rng(5)
    shifted = rng.normal(size=(300, 4))
    shifted[:, 1] += 1.0  # income, by one standard deviation

    def ship(rows: np.ndarray, age_s: float) -> None:
        asyncio.run(send_many(core, [row[None, :].astype(np.float32) for row in rows]))
        delta = core.take_stats().to_delta()
        attach_profiles(delta, core.monitoring, set())
        state.record("churn", "replica-a", delta, age_s=age_s)

    ship(shifted, age_s=30.0)
    ship(rng.normal(size=(300, 4)), age_s=0.0)
    recent = state.snapshot("churn", 10)[1].drift
    assert recent.verdict == "ok" and recent.samples == 300
    reaching_back = state.snapshot("churn", 60)[1].drift
    assert reaching_back.drifted_features == ("income",) and reaching_back.samples == 600
