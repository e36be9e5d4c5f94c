"""Rollout plans, the lifecycle's allowed transitions and the analysis gates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as stats_module

from control_plane.errors import InvalidInputError
from control_plane.rollouts import (
    AnalysisConfig,
    FailureStreak,
    RolloutState,
    Strategy,
    Verdict,
    analyse,
    can_transition,
    plan_steps,
)
from control_plane.rollouts.analysis import accuracy_upper_bound, mae_lower_bound
from serving.monitoring import (
    Accuracy,
    Drift,
    DriftVerdict,
    ShadowComparison,
    VersionSnapshot,
)
from serving.monitoring.snapshot import PredictionDrift
from tests.snapshots import served


def stats(requests: int = 500, error_rate: float = 0.0, p95: float = 10.0, p99: float = 20.0,
          shadow: ShadowComparison | None = None) -> VersionSnapshot:
    return served(requests, error_rate, p95, p99=p99, shadow=shadow)


def test_canary_plan_defaults_and_validation() -> None:
    assert [s.candidate_weight for s in plan_steps(Strategy.CANARY)] == [5, 25, 50, 100]
    steps = plan_steps(Strategy.CANARY, steps=[10, 100], step_duration_s=5)
    assert [(s.candidate_weight, s.stable_weight, s.hold_s) for s in steps] == [(10, 90, 5), (100, 0, 5)]
    for bad in ([50, 25, 100], [10, 50], [0, 100], [10, 150]):
        with pytest.raises(InvalidInputError):
            plan_steps(Strategy.CANARY, steps=bad)


def test_rolling_follows_replica_shares_and_others_end_at_full() -> None:
    assert [s.candidate_weight for s in plan_steps(Strategy.ROLLING, replicas=4)] == [25, 50, 75, 100]
    assert [s.candidate_weight for s in plan_steps(Strategy.ROLLING, replicas=3)][-1] == 100
    for replicas in (1, 7, 29, 31, 58, 97):  # 29: a float step count held 100% twice
        weights = [s.candidate_weight for s in plan_steps(Strategy.ROLLING, replicas=replicas)]
        assert len(weights) == replicas and weights[-1] == 100 and weights == sorted(set(weights))
    blue_green = plan_steps(Strategy.BLUE_GREEN)
    assert [(s.shadow, s.candidate_weight) for s in blue_green] == [(True, 0), (False, 100)]
    shadow = plan_steps(Strategy.SHADOW, shadow_then=Strategy.BLUE_GREEN)
    assert shadow[0].shadow and shadow[-1].candidate_weight == 100
    with pytest.raises(InvalidInputError, match="promotes through"):
        plan_steps(Strategy.SHADOW, shadow_then=Strategy.SHADOW)


def test_lifecycle_transitions() -> None:
    assert can_transition(RolloutState.PENDING, RolloutState.PROGRESSING)
    assert can_transition(RolloutState.PROGRESSING, RolloutState.PAUSED)
    assert can_transition(RolloutState.PAUSED, RolloutState.PROGRESSING)
    assert can_transition(RolloutState.AWAITING_APPROVAL, RolloutState.SUCCEEDED)
    assert not can_transition(RolloutState.PENDING, RolloutState.SUCCEEDED)
    for terminal in (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK, RolloutState.FAILED):
        assert terminal.terminal
        assert not any(can_transition(terminal, target) for target in RolloutState)


def test_too_few_samples_never_decide() -> None:
    config = AnalysisConfig(min_samples=100)
    result = analyse(config, stats(requests=5, error_rate=1.0), stats())
    assert result.verdict == Verdict.INCONCLUSIVE and "5 randomly routed requests" in result.reason


def test_error_rate_and_latency_gates_name_the_failing_check() -> None:
    config = AnalysisConfig(max_error_rate=0.01, max_p95_ms=50, max_p95_ratio=1.5)
    assert analyse(config, stats(), stats()).verdict == Verdict.PASS
    failing = analyse(config, stats(error_rate=0.2), stats())
    assert failing.verdict == Verdict.FAIL and "error_rate 0.2 > 0.01" in failing.reason
    slow = analyse(config, stats(p95=60), stats(p95=10))
    assert slow.verdict == Verdict.FAIL
    assert slow.checks["p95_ms"]["passed"] is False and slow.checks["p95_ratio"]["value"] == 6.0


def test_the_p95_ratio_fails_on_both_versions_bounds_at_the_paired_confidence() -> None:
    """The ratio's bound is the candidate's lower bound over stable's upper one: each at
    95% held together only at 90%. Each is now at 97.5%, so the ratio's holds at 95%."""
    from serving.monitoring.snapshot import PAIRED_CONFIDENCE, QUANTILE_CONFIDENCE

    assert pytest.approx(1 - QUANTILE_CONFIDENCE) == 2 * (1 - PAIRED_CONFIDENCE)
    config = AnalysisConfig(max_p95_ratio=2.0)
    stable = served(500, p95=10.0, p95_bounds=(9.0, 11.0), p95_paired_bounds=(8.5, 12.0))
    # 25 / 11 = 2.27 past the limit at 95% each; 22 / 12 = 1.83 within it, paired.
    slower = served(500, p95=30.0, p95_bounds=(25.0, 35.0), p95_paired_bounds=(22.0, 38.0))
    looked = analyse(config, slower, stable)
    assert looked.verdict == Verdict.INCONCLUSIVE and looked.worse_decides
    assert looked.checks["p95_ratio"]["value"] == 3.0
    clearly = served(500, p95=40.0, p95_bounds=(36.0, 44.0), p95_paired_bounds=(34.0, 46.0))
    assert analyse(config, clearly, stable).verdict == Verdict.FAIL  # 34 / 12 = 2.8


def test_the_monitor_s_paired_p95_bounds_are_the_order_statistics_at_97_5_percent() -> None:
    from kernels.order_statistics import quantile_bound_ranks
    from kernels.sketch import Sketch
    from serving.monitoring.monitor import _quantiles_ms

    rng = np.random.default_rng(7)
    latencies = np.sort(rng.lognormal(-5, 0.5, size=400))
    sketch = Sketch()
    sketch.add_many(latencies)
    quantiles = _quantiles_ms(sketch)
    low, high = quantile_bound_ranks(400, 0.95, 0.975)
    wide = quantile_bound_ranks(400, 0.95, 0.95)
    assert low is not None and high is not None and low < wide[0] and high > wide[1]
    expected = (latencies[low - 1] * 1000, latencies[high - 1] * 1000)
    assert quantiles.p95_paired_bounds_ms == pytest.approx(expected, rel=0.02)
    assert quantiles.p95_paired_bounds_ms[0] <= quantiles.p95_bounds_ms[0]
    assert quantiles.p95_paired_bounds_ms[1] >= quantiles.p95_bounds_ms[1]
    # Fewer than 72 requests cannot bound a p95 from above at 97.5% (59 at 95%).
    assert quantile_bound_ranks(71, 0.95, 0.975)[1] is None
    assert quantile_bound_ranks(72, 0.95, 0.975)[1] == 72


def test_shadow_gate_uses_mirrored_comparisons() -> None:
    config = AnalysisConfig(min_samples=50, min_shadow_agreement=0.9)
    few = stats(shadow=ShadowComparison(compared=10, agreement=1.0))
    assert analyse(config, few, None, shadow=True).verdict == Verdict.INCONCLUSIVE
    agree = stats(shadow=ShadowComparison(compared=100, agreement=0.95))
    assert analyse(config, agree, None, shadow=True).verdict == Verdict.PASS
    differ = stats(shadow=ShadowComparison(compared=100, agreement=0.7))
    result = analyse(config, differ, None, shadow=True)
    assert result.verdict == Verdict.FAIL and "shadow_agreement" in result.reason


def test_a_shadow_whose_answers_differ_from_the_primarys_fails_on_max_shadow_mae() -> None:
    """A regressor's shadow, judged on how far its answers are from the primary's: its
    agreement is a classifier's figure, and without this its answers went unjudged."""
    config = AnalysisConfig(min_samples=50, max_shadow_mae=0.5)
    close = stats(shadow=ShadowComparison(compared=100, mean_abs_diff=0.2))
    result = analyse(config, close, None, shadow=True)
    assert result.verdict == Verdict.PASS and result.checks["shadow_mae"]["value"] == 0.2
    far = analyse(config, stats(shadow=ShadowComparison(compared=100, mean_abs_diff=3.0)),
                  None, shadow=True)
    assert far.verdict == Verdict.FAIL and "shadow_mae 3 > 0.5" in far.reason
    broken = analyse(config, stats(shadow=ShadowComparison(compared=100,
                                                           mean_abs_diff=float("nan"))),
                     None, shadow=True)
    assert broken.verdict == Verdict.FAIL and broken.checks["shadow_mae"]["value"] is None


def test_where_stable_takes_no_traffic_the_candidate_is_compared_with_its_earlier_figures(
        ) -> None:
    """At 100% (blue-green's switch, a canary's last step) stable answers nothing in the
    window: every check against it was skipped, and with the defaults no latency was
    judged at all. Its figures over a longer window (the baseline) stand in."""
    config = AnalysisConfig(min_samples=50)
    slow, idle, before = stats(p95=60), stats(requests=0), stats(p95=10)
    # Nothing to compare with: unknown, never a pass (a restarted Monitor, a step held past
    # its memory) ...
    unknown = analyse(config, slow, idle)
    assert unknown.verdict == Verdict.INCONCLUSIVE and "p95_ratio" in unknown.reason
    assert "stable answered 0 requests" in unknown.reason
    # ... unless there is no stable version to compare with, or no relative check asked.
    assert analyse(config, slow, None).verdict == Verdict.PASS
    assert analyse(config, slow, idle, has_stable=False).verdict == Verdict.PASS
    alone = AnalysisConfig(min_samples=50, max_p95_ratio=None, max_refused_rate_increase=None,
                           max_abandoned_rate_increase=None)
    assert analyse(alone, slow, idle).verdict == Verdict.PASS
    result = analyse(config, slow, idle, baseline=before)
    assert result.verdict == Verdict.FAIL and result.checks["p95_ratio"]["value"] == 6.0
    assert analyse(config, stats(p95=11), idle, baseline=before).verdict == Verdict.PASS
    # Where stable has a sample in the window, that is what counts.
    assert analyse(config, slow, stats(p95=50), baseline=before).verdict == Verdict.PASS
    # A baseline without a sample of its own is none.
    thin = analyse(config, slow, idle, baseline=stats(requests=10))
    assert thin.verdict == Verdict.INCONCLUSIVE and "in its baseline" not in thin.reason
    # Taking far more requests per second than stable did then, the candidate may be
    # slower for the load alone: not judged against that baseline in this window.
    from dataclasses import replace

    loaded = replace(slow, traffic=replace(slow.traffic, throughput_rps=40.0))
    result = analyse(config, loaded, idle, baseline=before)
    assert result.verdict == Verdict.INCONCLUSIVE and "4.00x the requests" in result.reason
    assert result.checks["p95_ratio"]["disturbed"]


def test_only_a_failure_on_the_candidates_own_evidence_rejects_it() -> None:
    """Against stable's earlier figures (or judged alone), the shares and ratios that what
    callers send moves fail the step but do not reject the version: at a 100% step anyone
    sending malformed requests (refused by whichever version takes them, and only the
    candidate does then) failed a good candidate for good. Against stable in the same
    window, or on an absolute gate, a failure rejects as before."""
    config = AnalysisConfig(min_samples=50)
    idle, before = stats(requests=0), stats(p95=10)

    def refusing(snapshot: VersionSnapshot, refused: int) -> VersionSnapshot:
        routing = {"random": replace(snapshot.traffic.routing["random"], refused=refused)}
        return replace(snapshot, traffic=replace(snapshot.traffic, routing=routing))

    flooded = refusing(stats(), 60)  # one request in ten, malformed: refused
    against_then = analyse(config, flooded, idle, baseline=before)
    assert against_then.verdict == Verdict.FAIL and not against_then.rejects
    assert "refused_rate_increase" in against_then.reason
    assert "not the same requests" in against_then.reason
    slower = analyse(config, stats(p95=60), idle, baseline=before)
    assert slower.verdict == Verdict.FAIL and not slower.rejects and "p95_ratio" in slower.reason
    # In the same window stable takes the same mix: the candidate's own doing.
    now = analyse(config, flooded, stats(), baseline=before)
    assert now.verdict == Verdict.FAIL and now.rejects and "not the same" not in now.reason
    # So is a share judged against stable's few requests in the window, where no baseline
    # stands in (too few for the checks that need min_samples of stable's).
    few = analyse(config, refusing(stats(), 500), refusing(stats(requests=49), 1))
    assert few.verdict == Verdict.FAIL and few.rejects, few.reason
    assert "refused_rate_increase" in few.reason and "over 1000 and 50 requests" in few.reason
    # An absolute gate callers cannot move failing beside them rejects, baseline or not.
    absolute = analyse(config, stats(p95=60, error_rate=0.2), idle, baseline=before)
    assert absolute.verdict == Verdict.FAIL and absolute.rejects
    assert "error_rate 0.2" in absolute.reason and "p95_ratio" in absolute.reason


def test_absolute_latency_and_drift_reject_only_on_the_candidates_own_evidence() -> None:
    """Heavy requests are slow on whichever version answers them, and far-off rows drift
    on it: at a 100% step anyone sending those failed max_p95_ms, max_p99_ms or drift, and
    got a good version rejected for good. Judged without stable's share of the same
    requests beside the candidate they roll back without rejecting; at a step that routes
    stable some, a failure is the candidate's own, as before."""
    config = AnalysisConfig(min_samples=50, max_p95_ms=40, max_p99_ms=80, max_p95_ratio=None)
    idle, before = stats(requests=0), stats(p95=10)
    heavy = stats(p95=60, p99=120)
    alone = analyse(config, heavy, idle, baseline=before, stable_routed=False)
    assert alone.verdict == Verdict.FAIL and not alone.rejects, alone.reason
    assert "p95_ms 60 > 40" in alone.reason and "p99_ms 120 > 80" in alone.reason
    assert "p95_ms, p99_ms judged without stable beside it" in alone.reason
    assert not analyse(config, heavy, None).rejects  # no stable version at all
    # Stable's last second before the switch, however many requests that held: at a step
    # that routes it nothing, those are not the same requests.
    sliver = analyse(config, heavy, stats(requests=300, p95=10), stable_routed=False)
    assert sliver.verdict == Verdict.FAIL and not sliver.rejects, sliver.reason
    # At a step that routes stable a share: the candidate's own, whether stable answered
    # enough in the window or its baseline stands in (a quiet endpoint, a 95% step).
    own = analyse(config, heavy, stats(p95=10, p99=20))
    assert own.verdict == Verdict.FAIL and own.rejects
    thin = analyse(config, heavy, stats(requests=10), baseline=before)
    assert thin.verdict == Verdict.FAIL and thin.rejects
    assert analyse(config, heavy, stats(requests=10)).rejects
    # Mixed with a failure that is the candidate's own, the streak rejects as before.
    mixed = analyse(config, stats(p95=60, error_rate=0.2), idle, baseline=before,
                    stable_routed=False)
    assert mixed.verdict == Verdict.FAIL and mixed.rejects

    drifted = replace(stats(), drift=Drift(verdict=DriftVerdict.DRIFT, drifted_features=("age",)))
    clean = replace(stats(), drift=Drift(verdict=DriftVerdict.OK))
    on_drift = AnalysisConfig(min_samples=50, fail_on_drift=True, max_p95_ratio=None)
    result = analyse(on_drift, drifted, clean, stable_routed=False)
    assert result.verdict == Verdict.FAIL and not result.rejects
    assert "drift judged without stable beside it" in result.reason
    beside = analyse(on_drift, drifted, clean)
    assert beside.verdict == Verdict.FAIL and beside.rejects, beside.reason


def test_requests_slow_on_both_versions_at_a_routed_step_hold_it_and_never_reject() -> None:
    """Heavy requests sent at a 50% step are slow on whichever version answers them: the
    candidate failed max_p95_ms and was rejected for good, though stable, on its share of
    the same requests, was as slow. That holds the step now; it never passes it, so a
    candidate slow on its own (its stable slow too, by load or a flood pinned to it) is
    still caught by the p95 ratio, or held until the inconclusive deadline rolls it back."""
    config = AnalysisConfig(min_samples=50, max_p95_ms=40, max_p99_ms=80)
    heavy = stats(p95=60, p99=120)
    both = analyse(config, heavy, stats(p95=70, p99=130))
    assert both.verdict == Verdict.INCONCLUSIVE and both.worse_decides, both.reason
    assert "p95_ms 60 > 40" in both.reason and "stable's 70 on the same requests" in both.reason
    assert "slow on both versions" in both.reason
    assert both.checks["p95_ms"]["also_on_stable"] == 70
    assert both.checks["p99_ms"]["also_on_stable"] == 130
    # A failure of its own (p99 here: stable's is within the limit) fails it on all of them.
    one = analyse(config, heavy, stats(p95=70, p99=30))
    assert one.verdict == Verdict.FAIL and one.rejects and "p99_ms 120 > 80" in one.reason
    assert "p95_ms 60 > 40" in one.reason and "also_on_stable" not in one.checks["p95_ms"]
    # Slower than stable on the same requests: the ratio fails it, stable's slowness aside.
    slower = analyse(config, stats(p95=200, p99=300), stats(p95=70, p99=130))
    assert slower.verdict == Verdict.FAIL and slower.rejects and "p95_ratio" in slower.reason
    # Another failure of its own still fails the candidate.
    erring = analyse(config, stats(p95=60, p99=120, error_rate=0.2), stats(p95=70, p99=130))
    assert erring.verdict == Verdict.FAIL and erring.rejects and "error_rate" in erring.reason
    # Stable's share too thin to say it was slow (a 95% step): the failure is the candidate's.
    assert analyse(config, heavy, stats(requests=10, p95=70, p99=130)).verdict == Verdict.FAIL
    # At a step routing stable nothing its figures are from before: rolled back, unrejected.
    switched = analyse(config, heavy, stats(p95=70, p99=130), stable_routed=False)
    assert switched.verdict == Verdict.FAIL and not switched.rejects


def test_only_a_candidate_not_shown_slower_than_stable_on_a_random_sample_is_held() -> None:
    """What may not excuse a candidate's latency by stable's: its own tail far past
    stable's (p95 alike), a p95 far past stable's where no ratio is asked for, stable's
    figures from requests a caller picked (pinned, or sticky keys it can choose), and a
    rollout whose inconclusive steps never end (whoever kept stable slow would hold the
    candidate at its share for good)."""
    config = AnalysisConfig(min_samples=50, max_p95_ms=40, max_p99_ms=80)
    slow_stable = stats(p95=45, p99=85)
    tail = analyse(config, stats(p95=45, p99=800), slow_stable)
    assert tail.verdict == Verdict.FAIL and tail.rejects and "p99_ms 800 > 80" in tail.reason
    unratioed = replace(config, max_p95_ratio=None)
    far = analyse(unratioed, stats(p95=400, p99=450), slow_stable)
    assert far.verdict == Verdict.FAIL and far.rejects and "p95_ms 400 > 40" in far.reason
    alike = analyse(unratioed, stats(p95=44, p99=84), slow_stable)
    assert alike.verdict == Verdict.INCONCLUSIVE, alike.reason
    # Within the ratio, not on evidence slower: held (the ratio's own check passes it).
    near = analyse(config, stats(p95=60, p99=100), slow_stable)
    assert near.verdict == Verdict.INCONCLUSIVE and "slow on both" in near.reason, near.reason
    # Too few requests to bound the candidate's p99 (fewer than 299): not yet on evidence,
    # and its p95, held, is not failed either.
    unbounded = served(200, p95=60, p99=120, p99_bounds=(float("nan"), float("nan")))
    thin = analyse(config, unbounded, served(200, p95=70, p99=130))
    assert thin.verdict == Verdict.INCONCLUSIVE and thin.checks["p99_ms"]["unproven"]
    assert thin.checks["p95_ms"]["also_on_stable"] == 70
    # Against stable's figure, not its upper bound, which one slow request stretches.
    outlier = served(400, p95=70, p99=130, p99_bounds=(100.0, 5000.0))
    tail_past = analyse(config, served(400, p95=60, p99=600, p99_bounds=(500.0, 700.0)), outlier)
    assert tail_past.verdict == Verdict.FAIL and tail_past.rejects, tail_past.reason
    for picked in ({"include_pinned": True}, {"include_sticky": True}):
        result = analyse(replace(config, **picked), stats(p95=60, p99=100), slow_stable)
        assert result.verdict == Verdict.FAIL and result.rejects, (picked, result.reason)
    endless = analyse(config, stats(p95=60, p99=100), slow_stable, holds_end=False)
    assert endless.verdict == Verdict.FAIL and endless.rejects


def test_a_gate_held_for_stable_s_slowness_still_yields_to_an_ab_test_s_worse() -> None:
    """A flood pinned to stable loads it past the imbalance limit: the relative checks
    are not judged in the window, and the held latency gate with them must not hide an
    A/B test that finds the candidate worse on the same requests."""
    from control_plane.rollouts.decision import _with_ab_test

    config = AnalysisConfig(min_samples=50, max_p95_ms=40)
    flooded = stats(p95=70, p99=90)
    pinned = replace(flooded.traffic.routing["random"], requests=2000)
    flooded = replace(flooded, traffic=replace(
        flooded.traffic, routing={**flooded.traffic.routing, "pinned": pinned}))
    held = analyse(config, stats(p95=60, p99=72), flooded)
    assert held.verdict == Verdict.INCONCLUSIVE and held.worse_decides, held.reason
    assert "loaded the versions unevenly" in held.reason and "stable's 70" in held.reason
    worse = _with_ab_test(held, "worse", "conversion lower on evidence")
    assert worse.verdict == Verdict.FAIL and worse.rejects


def test_at_a_step_without_stable_traffic_its_last_figures_are_no_same_window_evidence() -> None:
    """On a busy endpoint the first windows after a switch hold stable's last second or
    two, enough for min_samples: the relative checks compared the candidate with those as
    if they were the same requests, and a caller's malformed ones rejected it."""
    config = AnalysisConfig(min_samples=50)

    def refusing(snapshot: VersionSnapshot, refused: int) -> VersionSnapshot:
        routing = {"random": replace(snapshot.traffic.routing["random"], refused=refused)}
        return replace(snapshot, traffic=replace(snapshot.traffic, routing=routing))

    flooded, sliver = refusing(stats(), 60), stats(requests=300)
    switched = analyse(config, flooded, sliver, stable_routed=False)
    assert switched.verdict == Verdict.FAIL and not switched.rejects, switched.reason
    assert "refused_rate_increase" in switched.reason
    assert "not the same requests" in switched.reason
    shared = analyse(config, flooded, sliver)
    assert shared.verdict == Verdict.FAIL and shared.rejects


def test_an_error_rate_increase_fails_on_evidence_not_on_two_stray_errors() -> None:
    """It was judged on the point estimate alone: 2 errors in 100 against none in 900
    failed a 1% limit, and, held in the window for several analyses, rolled back."""
    config = AnalysisConfig(min_samples=100, max_error_rate_increase=0.01)
    thin = analyse(config, stats(requests=100, error_rate=0.02), stats(requests=900))
    assert thin.verdict == Verdict.INCONCLUSIVE and thin.checks["error_rate_increase"]["unproven"]
    assert thin.checks["error_rate_increase"]["value"] == pytest.approx(0.02)
    assert thin.checks["error_rate_increase"]["bound"] < 0.01
    clear = analyse(config, stats(requests=2000, error_rate=0.05), stats(requests=2000))
    assert clear.verdict == Verdict.FAIL and "error_rate_increase 0.05 > 0.01" in clear.reason


def test_a_shadow_that_answered_nothing_is_not_passed() -> None:
    """With no error limit set, a shadow failing every mirrored call compared none and
    read "shadow checks passed"."""
    config = AnalysisConfig(min_samples=50, min_shadow_agreement=0.9, max_error_rate=None)
    failing = stats(shadow=ShadowComparison(compared=0, errors=100))
    result = analyse(config, failing, None, shadow=True)
    assert result.verdict == Verdict.INCONCLUSIVE and "none of 100 mirrored" in result.reason


def test_rollback_needs_consecutive_failures() -> None:
    config = AnalysisConfig(failures_to_rollback=2)
    streak = FailureStreak(config.failures_to_rollback)
    fail = analyse(config, stats(error_rate=0.5), stats()).verdict
    ok = analyse(config, stats(), stats()).verdict
    unsure = analyse(config, stats(requests=1), stats()).verdict
    seen = []
    for verdict in (fail, unsure, ok, fail, fail):
        streak = streak.after(verdict)
        seen.append((streak.count, streak.reached))
    # Inconclusive keeps the streak, a pass breaks it, two failures in a row reach it.
    assert seen == [(1, False), (1, False), (0, False), (1, False), (2, True)]
    assert FailureStreak(2).after(fail) == FailureStreak(2, 1)  # a value: nothing is changed


def test_drift_and_online_accuracy_gates() -> None:
    config = AnalysisConfig(min_samples=10, min_accuracy=0.9, min_labels=20, fail_on_drift=True)
    drifted = replace(stats(), drift=Drift(verdict=DriftVerdict.DRIFT, drifted_features=("age",)))
    result = analyse(config, drifted, None)
    assert result.verdict == Verdict.FAIL and "drift in age" in result.reason
    insufficient = replace(stats(), drift=Drift(verdict=DriftVerdict.INSUFFICIENT))
    drift_only = replace(config, min_accuracy=None)
    # Too few rows for a verdict: unknown, not passed (the deadline for evidence runs).
    assert analyse(drift_only, insufficient, None).verdict == Verdict.INCONCLUSIVE
    assert "drift" not in analyse(drift_only, insufficient, None).checks
    off = AnalysisConfig(min_samples=10)
    assert analyse(off, drifted, None).verdict == Verdict.PASS

    # Stable answers the same stream: drift it shows too is the traffic's, not the candidate's.
    def drifting(*features: str, prediction: bool = False) -> VersionSnapshot:
        return replace(stats(), drift=Drift(verdict=DriftVerdict.DRIFT, drifted_features=features,
                                            prediction=PredictionDrift(drifted=prediction)))

    shared = analyse(drift_only, drifting("age", prediction=True), drifting("age", prediction=True))
    assert shared.verdict == Verdict.PASS
    assert shared.checks["drift"] == {"value": [], "limit": [], "passed": True,
                                      "also_on_stable": ["age", "<prediction>"]}
    own = analyse(drift_only, drifting("age", "income", prediction=True), drifting("age"))
    assert own.verdict == Verdict.FAIL and "drift in income, <prediction>" in own.reason
    # Stable too little seen to judge: the candidate is judged alone, as without stable.
    unjudged = replace(stats(), drift=Drift(verdict=DriftVerdict.INSUFFICIENT, drifted_features=("age",)))
    assert analyse(drift_only, drifting("age"), unjudged).verdict == Verdict.FAIL

    few_labels = replace(stats(), accuracy=Accuracy(labelled=19, accuracy=0.5))
    waiting = analyse(config, few_labels, None)
    assert waiting.verdict == Verdict.INCONCLUSIVE  # asked for, and not known yet
    assert waiting.reason == ("19 labels joined in the window, need 20 (min_labels) for "
                              "min_accuracy; the other checks passed")
    assert analyse(config, replace(stats(), accuracy=Accuracy(labelled=0)),
                   None).verdict == Verdict.INCONCLUSIVE
    assert analyse(replace(config, min_accuracy=None, fail_on_drift=False), few_labels,
                   None).verdict == Verdict.PASS
    # Evidence against the candidate is not waited on: drift fails it with no label in.
    assert analyse(config, replace(drifted, accuracy=Accuracy(labelled=0)),
                   None).verdict == Verdict.FAIL
    wrong = replace(stats(), accuracy=Accuracy(labelled=20, accuracy=0.5))
    result = analyse(config, wrong, None)
    assert result.verdict == Verdict.FAIL and result.checks["accuracy"]["value"] == 0.5
    regression = AnalysisConfig(min_samples=10, max_mae=1.0, min_labels=5)
    assert analyse(regression, replace(stats(), accuracy=Accuracy(labelled=5, mae=2.5)),
                   None).verdict == Verdict.FAIL


@pytest.mark.parametrize("correct, labelled", [(16, 19), (94, 100), (0, 30), (30, 30), (450, 600)])
def test_the_accuracy_bound_is_wilsons(correct: int, labelled: int) -> None:
    reference = stats_module.binomtest(correct, labelled).proportion_ci(0.90, method="wilson")
    assert accuracy_upper_bound(correct / labelled, labelled) == pytest.approx(reference.high,
                                                                               abs=1e-12)


def test_accuracy_and_mae_gates_fail_on_evidence_not_on_a_thin_windows_luck() -> None:
    """16 right out of 19 reads 0.84 for a model whose accuracy is 0.94: below 0.85, but no
    evidence of it; 160 out of 200 is."""
    config = AnalysisConfig(min_samples=10, min_accuracy=0.85, min_labels=8)
    lucky = analyse(config, replace(stats(), accuracy=Accuracy(labelled=19, accuracy=16 / 19)), None)
    assert lucky.verdict == Verdict.INCONCLUSIVE and lucky.checks["accuracy"]["unproven"]
    assert lucky.checks["accuracy"]["value"] < 0.85 < lucky.checks["accuracy"]["bound"]
    worse = analyse(config, replace(stats(), accuracy=Accuracy(labelled=200, accuracy=0.8)), None)
    assert worse.verdict == Verdict.FAIL
    assert worse.reason.startswith("accuracy 0.8 < 0.85 (95% upper bound 0.84")
    assert worse.reason.endswith("over 200 labels)")

    # MAE: the absolute errors' spread is rmse² - mae²; a wide spread is weak evidence.
    regression = AnalysisConfig(min_samples=10, max_mae=1.0, min_labels=5)
    errors = np.abs(np.random.default_rng(3).normal(1.1, 1.0, size=40))
    mae, rmse = float(errors.mean()), float(np.sqrt((errors ** 2).mean()))
    assert mae_lower_bound(mae, rmse, errors.size) == pytest.approx(
        mae - stats_module.norm.ppf(0.95) * errors.std() / np.sqrt(errors.size), rel=1e-9)
    # MAE 1.1 over 40 labels with a spread of 1.0: above 1.0, but not credibly.
    spread = analyse(regression, replace(stats(), accuracy=Accuracy(
        labelled=40, mae=1.1, rmse=float(np.hypot(1.1, 1.0)))), None)
    assert spread.verdict == Verdict.INCONCLUSIVE and spread.checks["mae"]["bound"] < 1.0
    tight = analyse(regression, replace(stats(), accuracy=Accuracy(labelled=40, mae=1.2, rmse=1.21)),
                    None)
    assert tight.verdict == Verdict.FAIL and tight.checks["mae"]["bound"] > 1.0


def test_a_look_passes_a_candidate_only_within_its_limits() -> None:
    """A look passed whatever was not proven past a limit, and one pass after the step's
    hold advances it: a candidate failing 3% of 100 requests (three times the limit)
    passed two looks in five, and one right 85% of the time against a 90% minimum over 50
    labels, two in three. Past a limit without the evidence to fail, a look is
    inconclusive; the good candidates' looks still pass."""
    rng = np.random.default_rng(7)
    config = AnalysisConfig(min_samples=100)
    labelled = AnalysisConfig(min_samples=100, min_accuracy=0.90, min_labels=50)

    def passes(verdicts: list[Verdict]) -> float:
        return sum(v == Verdict.PASS for v in verdicts) / len(verdicts)

    def error_looks(rate: float) -> list[Verdict]:
        return [analyse(config, stats(requests=100, error_rate=errors / 100), None).verdict
                for errors in rng.binomial(100, rate, size=400)]

    def accuracy_looks(accuracy: float) -> list[Verdict]:
        return [analyse(labelled, replace(stats(), accuracy=Accuracy(
            labelled=50, accuracy=right / 50)), None).verdict
            for right in rng.binomial(50, accuracy, size=400)]

    assert passes(error_looks(0.03)) < 0.3 and passes(accuracy_looks(0.85)) < 0.3
    assert passes(error_looks(0.002)) > 0.95 and passes(accuracy_looks(0.97)) > 0.95
    assert Verdict.FAIL not in error_looks(0.002) + accuracy_looks(0.97)


def test_the_ab_test_s_worse_fails_a_candidate_whose_checks_are_only_unproven() -> None:
    """Past a limit without the evidence to fail, a look is inconclusive; the A/B test's
    proof that the candidate is worse must still fail it (it was set aside, and the
    rollout waited out its deadline to end failed, the version never rejected)."""
    from control_plane.rollouts.decision import _with_ab_test

    config = AnalysisConfig(min_samples=100)
    unproven = analyse(config, stats(requests=100, error_rate=0.02), None)
    assert unproven.verdict == Verdict.INCONCLUSIVE and unproven.worse_decides
    worse = _with_ab_test(unproven, "worse", "error rate higher than stable's")
    assert worse.verdict == Verdict.FAIL and worse.reason == "A/B test: error rate higher than stable's"
    assert _with_ab_test(unproven, "no_worse", "").verdict == Verdict.INCONCLUSIVE
    thin = analyse(config, stats(requests=20), None)  # too few requests: nothing decides
    assert thin.verdict == Verdict.INCONCLUSIVE and not thin.worse_decides
    assert _with_ab_test(thin, "worse", "x").verdict == Verdict.INCONCLUSIVE
