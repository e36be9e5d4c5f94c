"""The A/B gate in the rollout's decision path: settings, alpha spending, blocks, the
decision on Monitor-shaped windows, and one rollout through the controller."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from control_plane.api.errors import install_error_handlers
from control_plane.errors import InvalidInputError
from control_plane.registry import Registry
from control_plane.rollouts import ab_gate
from control_plane.rollouts.ab_gate import ABWindow
from control_plane.rollouts.decision import Action, Snapshot, ab_window, decide
from control_plane.rollouts.schemas import (
    ABTestOut,
    ABTestSettings,
    AnalysisSettings,
    RolloutCreate,
    StepOut,
)
from control_plane.rollouts.states import RolloutState
from control_plane.schemas import ErrorBody
from serving.monitoring import VersionSnapshot
from serving.monitoring.snapshot import Replicas
from tests.snapshots import served
from tests.unit.control_plane.conftest import ALICE
from tests.unit.control_plane.test_rollout_controller import World
from tests.unit.control_plane.test_rollout_decision import ANALYSIS, T0, at, evidence, rollout

AB = {**ANALYSIS, "ab_test": {"alpha": 0.05, "error_rate_effect": 0.02, "latency_effect": 0.1}}


def ab_rollout(**fields: Any) -> Any:
    """A rollout of test_rollout_decision's shape, with the A/B gate on."""
    plain = rollout(**fields)
    return plain.model_copy(update={"spec": {"analysis": AB}})


def bins(shift: int = 0, scale: int = 1) -> dict[int, int]:
    """A latency histogram over 20 sketch bins, moved up ``shift`` bins."""
    weights = [1, 2, 4, 7, 10, 12, 12, 10, 8, 6, 5, 4, 3, 2, 2, 1, 1, 1, 1, 1]
    return {400 + shift + i: w * scale for i, w in enumerate(weights)}


def both(candidate: VersionSnapshot, stable: VersionSnapshot, window_s: float = 5.0,
         block: int = 0) -> Snapshot:
    return Snapshot(window_s, candidate, stable, ABWindow(window_s, block, candidate, stable))


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(("ab_test", "field", "words"), [
    ({"alpah": 0.1}, ("analysis", "ab_test", "alpah"), "Extra inputs are not permitted"),
    ({"alpha": 0.5}, ("analysis", "ab_test", "alpha"), "less than or equal to 0.2"),
    ({"power": 1.0}, ("analysis", "ab_test", "power"), "less than 1"),
    ({"latency_effect": 0.5}, ("analysis", "ab_test", "latency_effect"), "less than 0.5"),
    ({"error_rate_effect": None, "latency_effect": None},
     ("analysis", "ab_test"), "set at least one of error_rate_effect"),
])
def test_settings_refuse_what_they_cannot_use_naming_the_field(
        ab_test: dict[str, Any], field: tuple[str, ...], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RolloutCreate.model_validate({"endpoint": "iris", "model_ref": "iris:2",
                                      "analysis": {"ab_test": ab_test}})
    (error,) = caught.value.errors()
    assert error["loc"] == field and words in error["msg"], error


def test_rest_answers_a_bad_setting_with_its_path() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/rollouts")
    def start(spec: RolloutCreate) -> None:
        return None

    response = TestClient(app).post("/rollouts", json={
        "endpoint": "iris", "model_ref": "iris:2", "analysis": {"ab_test": {"power": 2}}})
    body = ErrorBody.model_validate(response.json())
    assert response.status_code == 422 and body.code == "validation_error"
    assert body.detail == {"fields": ["analysis.ab_test.power"]}, body


def test_defaults_and_the_switch() -> None:
    assert AnalysisSettings().ab_test is None  # the threshold gates alone, as before
    settings = AnalysisSettings.model_validate({"ab_test": {}}).ab_test
    assert settings is not None
    assert (settings.alpha, settings.power) == (0.05, 0.8)
    assert settings.effects == {"error_rate": 0.01, "latency": 0.05}
    assert "ab_test" not in vars(AnalysisSettings.model_validate({"ab_test": {}}).to_config())


# ---------------------------------------------------------------- spending alpha


def test_alpha_is_split_over_steps_and_tests_and_halved_per_block() -> None:
    settings = ABTestSettings(alpha=0.06, accuracy_effect=0.02)  # three tests
    assert ab_gate.test_alpha(settings, 2, 0) == pytest.approx(0.06 / 6 / 2)
    assert ab_gate.test_alpha(settings, 2, 1) == pytest.approx(0.06 / 6 / 4)
    spent = sum(ab_gate.test_alpha(settings, 2, block) for block in range(60)) * 2 * 3
    assert spent == pytest.approx(0.06) and spent <= 0.06


def test_blocks_of_the_monitors_span() -> None:
    assert ab_gate.block_window(T0, T0) == (0, 1.0)
    assert ab_gate.block_window(T0, at(120)) == (0, 120.0)
    assert ab_gate.block_window(T0, at(300)) == (0, 300.0)
    assert ab_gate.block_window(T0, at(301)) == (1, 1.0)
    assert ab_gate.block_window(T0, at(750)) == (2, 150.0)


def test_each_fresh_test_of_a_step_is_a_round_of_its_own() -> None:
    def window(block: int, seconds: float) -> ABWindow:
        return ABWindow(seconds, block, None, None)

    assert ab_gate.round_of(window(0, 10), None) == 0
    assert ab_gate.round_of(window(2, 10), None) == 2  # first seen late: earlier blocks counted
    last = {"round": 0, "block": 0, "window_s": 200}
    assert ab_gate.round_of(window(0, 210), last) == 0  # the same test, one look on
    assert ab_gate.round_of(window(1, 5), last) == 1  # the next block
    assert ab_gate.round_of(window(3, 5), last) == 3  # blocks passed unseen still spend
    assert ab_gate.round_of(window(0, 20), last) == 1  # the hold restarted (resumed)
    assert ab_gate.round_of(window(0, 20), {"round": 2, "block": 1, "window_s": 50}) == 3
    # The Monitor restarted within the block: a longer window holding fewer requests is a
    # new stream of evidence, and a new round (its alpha was not spent on the last one).
    counted = {**last, "samples": {"candidate": 400, "stable": 3600}}
    assert ab_gate.round_of(window(0, 210), counted, {"candidate": 420, "stable": 3800}) == 0
    assert ab_gate.round_of(window(0, 210), counted, {"candidate": 20, "stable": 180}) == 1
    # A new stream the counts cannot show: a Monitor that restarted and already holds more
    # than the last look's requests, and a hold restarted but looked at later than before.
    stream = {"step_started_at": "2026-12-04T10:00:00+00:00", "seen_since": 1000.0}
    looked = {**counted, "stream": stream}
    more = {"candidate": 450, "stable": 3900}
    assert ab_gate.round_of(window(0, 230), looked, more, {**stream, "seen_since": 1002.0}) == 0
    assert ab_gate.round_of(window(0, 230), looked, more, {**stream, "seen_since": 1150.0}) == 1
    resumed = {**stream, "step_started_at": "2026-12-04T10:03:00+00:00"}
    assert ab_gate.round_of(window(0, 230), looked, more, resumed) == 1


def test_the_stream_is_the_steps_start_and_since_when_the_monitor_saw_both() -> None:
    from dataclasses import replace
    from datetime import UTC, datetime

    now = datetime(2026, 12, 4, 10, 5, tzinfo=UTC)
    candidate, stable = served(100), served(400)
    fresh = replace(candidate, traffic=replace(candidate.traffic, observed_s=40.0))
    whole = replace(stable, traffic=replace(stable.traffic, observed_s=200.0))
    stream = ab_gate.evidence_stream(ABWindow(200.0, 0, fresh, whole),
                                     datetime(2026, 12, 4, 10, 1, 40, tzinfo=UTC), now)
    assert stream == {"step_started_at": "2026-12-04T10:01:40+00:00",
                      "seen_since": round(now.timestamp() - 40.0, 1)}
    # A replica still sending what it kept for the Monitor: the seconds it has not
    # reached are seen, not yet whole; no new stream (and no new round's alpha).
    catching_up = replace(fresh, traffic=replace(fresh.traffic, observed_s=25.0, seen_s=40.0),
                          replicas=Replicas(reporting=1, catching_up_s=15.0))
    assert ab_gate.evidence_stream(ABWindow(200.0, 0, catching_up, whole),
                                   datetime(2026, 12, 4, 10, 1, 40, tzinfo=UTC), now) == stream
    # Nor where the version was first seen after the seconds not yet reached (observed 0):
    # seen for its own 10 s, not for the catch-up's 15.
    late = replace(fresh, traffic=replace(fresh.traffic, observed_s=0.0, seen_s=10.0),
                   replicas=Replicas(reporting=1, catching_up_s=15.0))
    assert ab_gate.evidence_stream(ABWindow(200.0, 0, late, whole), None, now)["seen_since"] \
        == round(now.timestamp() - 10.0, 1)


def test_only_steps_where_both_versions_take_traffic_are_tested() -> None:
    steps = [StepOut(candidate_weight=0, shadow=True, hold_s=1),
             StepOut(candidate_weight=10, shadow=False, hold_s=1),
             StepOut(candidate_weight=100, shadow=False, hold_s=1)]
    assert [ab_gate.tested(s) for s in steps] == [False, True, False]
    assert ab_gate.tested_steps(steps) == 1
    assert ab_window(ab_rollout(), at(7)) == (0, 7.0)
    assert ab_window(ab_rollout(step_index=2), at(7)) is None  # 100%: no stable traffic
    assert ab_window(rollout(), at(7)) is None  # the gate is off


# ---------------------------------------------------------------- deciding


def test_a_clearly_worse_error_rate_fails_the_analysis() -> None:
    snapshot = both(served(4000, 0.08, latency_bins=bins(scale=200)),
                    served(16000, 0.01, latency_bins=bins(scale=800)))
    decision = decide(ab_rollout(), evidence(snapshot), at(3))
    assert decision.analysis["verdict"] == "fail" and decision.streak == 1
    assert "A/B test: error_rate: worse than stable" in decision.reason
    record = ABTestOut.model_validate(decision.analysis["ab_test"])
    error_rate = record.metrics["error_rate"]
    assert record.decision == "worse" and error_rate.decision == "worse"
    assert error_rate.ci is not None and error_rate.ci[0] is not None and error_rate.ci[0] > 0
    assert error_rate.candidate is not None and error_rate.candidate.count == 320
    assert error_rate.decided_at == at(3).isoformat()
    assert error_rate.alpha == pytest.approx(0.05 / 2 / 2 / 2)  # two tested steps, two tests
    assert (record.round, error_rate.round) == (0, 0)
    assert record.metrics["latency"].decision == "no_worse"


def test_a_slower_latency_distribution_fails_on_the_rank_test() -> None:
    snapshot = both(served(4000, latency_bins=bins(shift=3, scale=200)),
                    served(16000, latency_bins=bins(scale=800)))
    decision = decide(ab_rollout(), evidence(snapshot), at(3))
    latency = decision.analysis["ab_test"]["metrics"]["latency"]
    assert decision.analysis["verdict"] == "fail" and latency["decision"] == "worse"
    assert latency["effect"] > 0.1 and latency["z"] > 5
    assert "A/B test: latency: worse than stable" in decision.reason


def pinned(stats: VersionSnapshot, requests: int) -> VersionSnapshot:
    """``stats`` with ``requests`` more pinned to the version (answered, not sampled)."""
    from dataclasses import replace

    from serving.monitoring.snapshot import RoutedRequests

    routing = {**stats.traffic.routing, "pinned": RoutedRequests(requests=requests)}
    return replace(stats, traffic=replace(stats.traffic, routing=routing,
                                          pinned_requests=requests))


def test_a_flood_pinned_to_one_version_decides_nothing_its_load_could_have_made() -> None:
    """The threshold gates set aside what uneven load could have caused; the A/B gate did
    not: a flood pinned to a good candidate made its latency "worse", carried for the rest
    of the step (rollback, rejection), and one pinned to stable passed a slow candidate."""
    flooded_candidate = both(pinned(served(4000, latency_bins=bins(shift=3, scale=200)), 8000),
                             served(16000, latency_bins=bins(scale=800)))
    decision = decide(ab_rollout(), evidence(flooded_candidate), at(3))
    latency = decision.analysis["ab_test"]["metrics"]["latency"]
    assert latency["decision"] == "undecided" and "does not decide" in latency["reason"]
    assert latency["decided_at"] is None
    assert decision.analysis["verdict"] != "fail" and decision.streak == 0
    flooded_stable = both(served(4000, latency_bins=bins(scale=200)),
                          pinned(served(16000, latency_bins=bins(scale=800)), 32000))
    latency = decide(ab_rollout(), evidence(flooded_stable), at(10)).analysis[
        "ab_test"]["metrics"]["latency"]
    assert latency["decision"] == "undecided"  # "no worse" than a stable slowed by the flood
    slow_candidate = both(served(4000, latency_bins=bins(shift=3, scale=200)),
                          pinned(served(16000, latency_bins=bins(scale=800)), 32000))
    decision = decide(ab_rollout(), evidence(slow_candidate), at(3))
    assert decision.analysis["ab_test"]["metrics"]["latency"]["decision"] == "worse"


def test_latencies_all_in_one_bin_are_no_evidence_of_no_worse() -> None:
    """Both versions' requests in one sketch bin gave a zero variance, a zero-width interval
    and "no worse" at the first look with min_samples, whatever their number; they are
    judged at the variance with no ties (the largest), so only enough of them decide."""
    few = both(served(100, latency_bins={450: 100}), served(100, latency_bins={450: 100}))
    latency = decide(ab_rollout(), evidence(few), at(3)).analysis["ab_test"]["metrics"][
        "latency"]
    assert latency["decision"] == "undecided", latency["reason"]
    assert latency["ci"][0] < 0 < latency["ci"][1]
    many = both(served(2000, latency_bins={450: 2000}), served(8000, latency_bins={450: 8000}))
    latency = decide(ab_rollout(), evidence(many), at(3)).analysis["ab_test"]["metrics"][
        "latency"]
    assert latency["decision"] == "no_worse" and latency["ci"][0] < 0 < latency["ci"][1]


def test_no_difference_passes_once_the_samples_are_in() -> None:
    snapshot = both(served(4000, 0.01, latency_bins=bins(scale=200)),
                    served(16000, 0.01, latency_bins=bins(scale=800)))
    decision = decide(ab_rollout(), evidence(snapshot), at(10))
    assert decision.analysis["verdict"] == "pass", decision.reason
    assert decision.analysis["ab_test"]["decision"] == "no_worse"
    assert decision.action == Action.ADVANCE
    assert decision.analysis["reason"].endswith("A/B test: no worse than stable on error_rate, "
                                                "latency")


def test_too_few_samples_hold_and_say_how_many_more() -> None:
    snapshot = both(served(100, 0.01, latency_bins=bins(scale=5)),
                    served(400, 0.01, latency_bins=bins(scale=20)))
    decision = decide(ab_rollout(), evidence(snapshot), at(10))
    assert decision.analysis["verdict"] == "inconclusive"
    assert decision.action == Action.WAIT_INCONCLUSIVE and decision.streak == 0
    error_rate = decision.analysis["ab_test"]["metrics"]["error_rate"]
    assert error_rate["decision"] == "undecided" and error_rate["more_needed"] > 100
    assert error_rate["samples_needed"] == 100 + error_rate["more_needed"]
    # The window answered 100 candidate requests in 5 s: the rest at 20 per second.
    assert error_rate["eta_s"] == pytest.approx(error_rate["more_needed"] / 20)
    assert f"needs about {error_rate['more_needed']} more candidate requests" in decision.reason
    assert decision.analysis["inconclusive_since"] == at(10).isoformat()


def test_a_decided_test_stops_for_the_rest_of_its_step() -> None:
    clear = both(served(4000, 0.01, latency_bins=bins(scale=200)),
                 served(16000, 0.01, latency_bins=bins(scale=800)))
    first = decide(ab_rollout(), evidence(clear), at(3))
    assert first.analysis["ab_test"]["decision"] == "no_worse"
    # A later window of the step holds less: the decisions stand, with when they were made.
    thin = both(served(100, latency_bins=bins(scale=5)), served(400, latency_bins=bins(scale=20)))
    later = decide(ab_rollout(last_analysis=first.analysis), evidence(thin), at(5))
    assert later.analysis["ab_test"]["decision"] == "no_worse"
    assert later.analysis["ab_test"]["metrics"]["error_rate"]["decided_at"] == at(3).isoformat()
    # The next step is a new test.
    moved = ab_rollout(step_index=1, last_analysis=first.analysis)
    assert decide(moved, evidence(thin), at(5)).analysis["ab_test"]["decision"] == "undecided"


def test_an_analysis_that_read_nothing_keeps_the_tests_state_and_the_baseline() -> None:
    """One unreadable answer of the Monitor mid-step started the sequential test over (its
    decisions forgotten, its rounds counted again, its alpha spent anew) and dropped the
    stable baseline the step compared with."""
    clear = both(served(4000, 0.01, latency_bins=bins(scale=200)),
                 served(16000, 0.01, latency_bins=bins(scale=800)))
    first = decide(ab_rollout(), evidence(clear), at(3))
    assert first.analysis["ab_test"]["decision"] == "no_worse"
    kept = {**first.analysis, "stable_baseline": {"taken_at": at(2).isoformat(), "figures": {}}}
    blind = decide(ab_rollout(last_analysis=kept),
                   evidence(Snapshot(5.0, None, None, no_evidence="the Monitor's statistics "
                                     "could not be read: RuntimeError")), at(5))
    assert blind.analysis["verdict"] == "inconclusive"
    assert blind.analysis["ab_test"] == first.analysis["ab_test"]
    assert blind.analysis["stable_baseline"] == kept["stable_baseline"]


def test_the_last_step_is_judged_by_the_thresholds_alone() -> None:
    decision = decide(ab_rollout(step_index=2),
                      evidence(Snapshot(5.0, served(), None, baseline=served())), at(10))
    assert decision.action == Action.PROMOTE
    assert decision.analysis["ab_test"] == {
        "decision": "not_tested", "reason": "stable takes no traffic at this step",
        "alpha": 0.05, "window_s": None, "block": None, "round": None, "samples": None, "stream": None,
        "metrics": {}}


def test_a_threshold_failure_is_not_hidden_by_an_undecided_ab_test() -> None:
    snapshot = both(served(100, 0.2), served(400))
    decision = decide(ab_rollout(), evidence(snapshot), at(3))
    assert decision.analysis["verdict"] == "fail" and "error_rate 0.2 > 0.01" in decision.reason


def test_online_accuracy_is_compared_where_labels_arrived() -> None:
    analysis = {**AB, "ab_test": {"error_rate_effect": None, "accuracy_effect": 0.03}}
    gated = rollout().model_copy(update={"spec": {"analysis": analysis}})
    worse = both(served(3000, labels=(2400, 3000)), served(12000, labels=(10800, 12000)))
    result = decide(gated, evidence(worse), at(3)).analysis["ab_test"]["metrics"]["accuracy"]
    assert result["decision"] == "worse" and result["effect"] > 0.08
    assert (result["candidate"], result["stable"]) == ({"n": 3000, "count": 600},
                                                       {"n": 12000, "count": 1200})
    waiting = both(served(3000), served(12000))
    result = decide(gated, evidence(waiting), at(3)).analysis["ab_test"]["metrics"]["accuracy"]
    assert result["decision"] == "undecided"
    assert result["reason"].startswith("50 more labels per version")


# ---------------------------------------------------------------- through the controller


class ABWorld(World):
    """The controller's world, recording the windows it asked the Monitor for."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self.windows: list[float] = []
        self.controller._stats = self._windowed

    def _windowed(self, endpoint: str, window_s: float,
                  sample: tuple[str, ...]) -> dict[int, VersionSnapshot]:
        self.windows.append(window_s)
        return self.stats


AB_FAST = {"interval_s": 1, "window_s": 5, "min_samples": 20, "failures_to_rollback": 2,
           "ab_test": {"error_rate_effect": 0.02, "latency_effect": 0.1}}


def test_a_slower_candidate_is_rolled_back_by_the_ab_gate(registry: Registry) -> None:
    world = ABWorld(registry)
    rollout_id = world.start(steps=[20, 100], analysis=AB_FAST, step_duration_s=30)
    world.stats = {1: served(16000, latency_bins=bins(scale=800)),
                   2: served(4000, latency_bins=bins(shift=3, scale=200))}
    world.run(1)  # pending → progressing at 20%
    world.run(2)  # two failing analyses in a row
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.ROLLED_BACK, rollout.reason
    assert "A/B test: latency: worse than stable" in rollout.reason
    failed = [e for e in world.controller.events(rollout_id) if e.kind == "analysis_failed"]
    assert failed and failed[0].data["ab_test"]["metrics"]["latency"]["decision"] == "worse"


def test_a_candidate_like_stable_is_promoted_and_shows_its_ab_record(registry: Registry) -> None:
    world = ABWorld(registry)
    rollout_id = world.start(steps=[20, 100], analysis=AB_FAST, step_duration_s=3)
    world.stats = {1: served(16000, 0.01, latency_bins=bins(scale=800)),
                   2: served(4000, 0.01, latency_bins=bins(scale=200))}
    world.run(5)
    at_full = world.controller.get(rollout_id)
    assert at_full.step_index == 1, at_full.last_analysis
    world.run(5)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.SUCCEEDED, rollout.reason
    steps = [e for e in world.controller.events(rollout_id) if e.kind == "step"]
    assert len(steps) == 2
    assert rollout.ab_test is not None and rollout.ab_test.decision == "not_tested"


def test_a_plan_without_shared_traffic_cannot_take_the_gate(registry: Registry) -> None:
    world = ABWorld(registry)
    with pytest.raises(InvalidInputError) as caught:
        world.controller.start(RolloutCreate(endpoint="iris", model_ref="iris:2",
                                             strategy="blue_green", analysis=AB_FAST), ALICE)
    assert caught.value.detail["field"] == "analysis.ab_test"
    assert "no step of this blue_green plan" in caught.value.message


def test_an_undecided_step_waits_on_evidence_from_its_start(registry: Registry) -> None:
    world = ABWorld(registry)
    rollout_id = world.start(steps=[20, 100], analysis=AB_FAST, step_duration_s=30)
    world.stats = {1: served(400, latency_bins=bins(scale=20)),
                   2: served(100, latency_bins=bins(scale=5))}
    world.run(1)  # pending → progressing at 20%
    world.windows.clear()
    world.run(8)
    rollout = world.controller.get(rollout_id)
    assert rollout.state == RolloutState.PROGRESSING and rollout.step_index == 0
    assert rollout.ab_test is not None and rollout.ab_test.decision == "undecided"
    assert rollout.ab_test.metrics["error_rate"].more_needed
    assert rollout.last_analysis["verdict"] == "inconclusive"
    # Past window_s (5 s) the thresholds read the last 5 s and the A/B gate the whole step.
    assert world.windows[-2:] == [5.0, 8.0] and rollout.ab_test.window_s == 8.0


def test_rollout_watch_shows_each_test_with_its_interval_and_what_it_needs() -> None:
    from rich.console import Console

    from control_plane.cli.rollouts import ab_view

    snapshot = both(served(4000, 0.08, latency_bins=bins(scale=200)),
                    served(16000, 0.01, latency_bins=bins(scale=800)))
    record = decide(ab_rollout(), evidence(snapshot), at(3)).analysis["ab_test"]
    console = Console(record=True, width=200)
    for part in ab_view(ABTestOut.model_validate(record)):
        console.print(part)
    text = console.export_text()
    assert "A/B test worse (alpha 0.05 over the rollout, block 0, round 0, 5s window)" in text
    error_rate = next(line for line in text.splitlines() if line.strip().startswith("error_rate"))
    low, high = record["metrics"]["error_rate"]["ci"]
    assert "worse" in error_rate and f"[{low:.4g}, {high:.4g}]" in error_rate
    assert "latency" in text and "no_worse" in text
    assert ab_view(None) == []
