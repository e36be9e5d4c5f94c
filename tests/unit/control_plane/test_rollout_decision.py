"""``decide`` as a pure function: a rollout and its evidence in, a Decision out.

No store, no Ray, no clock: each test builds the rollout as the store would hand it over,
the approval gate and the Monitor's snapshot, and reads the Decision.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from control_plane.rollouts.approvals import ApprovalGate
from control_plane.rollouts.decision import (
    Action,
    Decision,
    Evidence,
    Snapshot,
    analysis_due,
    analysis_window,
    decide,
)
from control_plane.rollouts.schemas import RolloutOut, StepOut
from serving.monitoring import ShadowComparison
from tests.snapshots import served

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ANALYSIS = {"interval_s": 1, "window_s": 5, "min_samples": 20, "failures_to_rollback": 2,
            "inconclusive_deadline_s": 30}


def rollout(state: str = "progressing", *, weights: tuple[float, ...] = (10, 50, 100),
            step_index: int = 0, started: datetime | None = T0, failures: int = 0,
            last_analysis: dict[str, Any] | None = None, hold_s: float = 10,
            shadow_first: bool = False) -> RolloutOut:
    """A rollout as the controller reads it from the store."""
    steps = [StepOut(candidate_weight=w, shadow=shadow_first and i == 0, hold_s=hold_s)
             for i, w in enumerate(weights)]
    return RolloutOut(
        id=7, endpoint="iris", model="iris", candidate_version=2, stable_version=1,
        strategy="canary", state=state, step_index=step_index, steps=steps,
        step_started_at=started, failures=failures, last_analysis=last_analysis or {},
        reason="", spec={"analysis": ANALYSIS}, created_by="alice", created_at=T0,
        updated_at=T0, finished_at=None)


def gate(*, required: bool = False, decision: str | None = None,
         limit: float = 50.0) -> ApprovalGate:
    return ApprovalGate(required=required, limit=limit, decision=decision, model="iris",
                        version=2, registrant="alice")


HEALTHY = Snapshot(5.0, served(), served())
FAILING = Snapshot(5.0, served(error_rate=0.2), served())
SPARSE = Snapshot(5.0, served(requests=3), served())


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def evidence(snapshot: Snapshot | None = None, **gate_fields: Any) -> Evidence:
    return Evidence(gate(**gate_fields), snapshot)


# ---------------------------------------------------------------- walking the steps


def test_pending_takes_the_first_step() -> None:
    decision = decide(rollout("pending", started=None), evidence(), T0)
    assert decision == Decision(Action.ADVANCE, "first step", 0, {}, step_index=0)


def test_a_healthy_step_holds_for_its_time_then_advances() -> None:
    early = decide(rollout(), evidence(HEALTHY), at(3))
    assert early.action == Action.HOLD and early.analysed
    assert early.analysis["verdict"] == "pass" and early.streak == 0
    assert early.reason == "the step has held 3s of 10s"

    # The stored pass is enough once the hold is over, with no new analysis due.
    stored = rollout(last_analysis=early.analysis)
    later = decide(stored, evidence(), at(10))
    assert (later.action, later.step_index, later.analysed) == (Action.ADVANCE, 1, False)
    assert later.analysis == early.analysis
    # ... and a fresh healthy analysis at the end of the hold advances too.
    assert decide(rollout(), evidence(HEALTHY), at(10)).step_index == 1


def test_a_step_without_a_passing_analysis_never_advances() -> None:
    decision = decide(rollout(), evidence(), at(60))
    assert (decision.action, decision.reason) == (Action.HOLD, "no analysis of this step yet")


def test_the_last_step_promotes() -> None:
    last = rollout(step_index=2)
    decision = decide(last, evidence(HEALTHY), at(10))
    assert (decision.action, decision.reason) == (Action.PROMOTE, "every step passed its analysis")
    assert decide(last, evidence(HEALTHY, required=True, decision="approved"),
                  at(10)).action == Action.PROMOTE


# ---------------------------------------------------------------- the failure streak


def test_failures_below_the_threshold_hold() -> None:
    decision = decide(rollout(), evidence(FAILING), at(10))
    assert (decision.action, decision.streak) == (Action.HOLD, 1)
    assert decision.failed_analysis and decision.reason.startswith("1 of 2 failing analyses")
    assert "error_rate 0.2 > 0.01" in decision.reason


def test_each_failure_of_a_streak_is_judged_on_requests_the_one_before_did_not_see() -> None:
    """Windows overlap: one burst of errors, held by every window that covers it, failed
    analysis after analysis, and a streak of two asked for no more than one failure."""
    first = decide(rollout(), evidence(FAILING), at(10))
    assert first.analysis["failed_at"] == at(10).isoformat()
    failing = rollout(failures=1, last_analysis=first.analysis)
    assert [analysis_window(failing, at(t)) for t in (10.2, 11, 13, 30)] == [1.0, 1.0, 3.0, 5.0]
    # Too few requests since the failure: the streak and where its window begins stand.
    thin = decide(failing, evidence(SPARSE), at(11))
    assert (thin.analysis["verdict"], thin.streak) == ("inconclusive", 1)
    assert thin.analysis["failed_at"] == first.analysis["failed_at"]
    assert analysis_window(rollout(failures=1, last_analysis=thin.analysis), at(13)) == 3.0
    again = decide(rollout(failures=1, last_analysis=thin.analysis), evidence(FAILING), at(13))
    assert (again.action, again.streak) == (Action.ROLLBACK, 2)
    # A pass ends the streak, and the next window is whole again.
    passed = decide(failing, evidence(HEALTHY), at(12))
    assert (passed.streak, passed.analysis["failed_at"]) == (0, None)
    assert analysis_window(rollout(last_analysis=passed.analysis), at(13)) == 5.0
    # A failure of an earlier step does not cut this step's window.
    other_step = rollout(step_index=1, failures=1, last_analysis=first.analysis)
    assert analysis_window(other_step, at(13)) == 5.0


def test_a_streaks_next_window_begins_after_the_failing_read_not_before_it() -> None:
    """The Monitor answered 0.9 s after the analysis began: what it counted up to then was
    judged, so the next window begins when the answer came back."""
    late = decide(rollout(), evidence(replace(FAILING, read_at=at(10.9))), at(10))
    assert late.analysis["failed_at"] == at(10.9).isoformat()
    failing = rollout(failures=1, last_analysis=late.analysis)
    assert [analysis_window(failing, at(t)) for t in (11, 13.9, 30)] == [1.0, 3.0, 5.0]
    # A read stamped before the analysis began (a clock stepped back) counts from its start.
    early = decide(rollout(), evidence(replace(FAILING, read_at=at(9))), at(10))
    assert early.analysis["failed_at"] == at(10).isoformat()


def test_inconclusive_keeps_the_streak_and_a_pass_breaks_it() -> None:
    assert decide(rollout(failures=1), evidence(SPARSE), at(3)).streak == 1
    passed = decide(rollout(failures=1), evidence(HEALTHY), at(3))
    assert (passed.action, passed.streak, passed.failed_analysis) == (Action.HOLD, 0, False)


def test_reaching_the_threshold_rolls_back_on_the_streak_it_computed() -> None:
    decision = decide(rollout(failures=1), evidence(FAILING), at(3))
    assert (decision.action, decision.streak) == (Action.ROLLBACK, 2)
    assert decision.reason.startswith("automatic rollback: error_rate 0.2 > 0.01 (95% lower bound")
    assert decision.data == {"analysis": decision.analysis} and decision.analysed
    assert decision.analysis["checks"]["error_rate"]["value"] == 0.2


def test_a_rollback_rejects_where_any_failure_of_its_streak_was_the_candidates_own() -> None:
    """At a 100% step (stable takes nothing; its earlier figures stand in) a streak of
    refusals caller traffic can cause rolls back without rejecting; one begun on an absolute
    gate rejects, whatever its last window failed on (a caller must not turn it)."""
    def refusing(snapshot: Any, refused: int) -> Any:
        routing = {"random": replace(snapshot.traffic.routing["random"], refused=refused)}
        return replace(snapshot, traffic=replace(snapshot.traffic, routing=routing))

    at_full = {"weights": (50, 100), "step_index": 1}
    movable = Snapshot(5.0, refusing(served(), 20), served(requests=0),
                       baseline=served(requests=500))
    first = decide(rollout(**at_full), evidence(movable), at(10))
    assert first.analysis["streak_rejects"] is False and first.analysis["rejects"] is False
    second = decide(rollout(**at_full, failures=1, last_analysis=first.analysis),
                    evidence(movable), at(12))
    assert (second.action, second.rejects) == (Action.ROLLBACK, False)
    assert "the version is not rejected" in second.reason
    absolute = Snapshot(5.0, served(error_rate=0.2), served(requests=0),
                        baseline=served(requests=500))
    begun = decide(rollout(**at_full), evidence(absolute), at(10))
    assert begun.analysis["streak_rejects"] is True
    turned = decide(rollout(**at_full, failures=1, last_analysis=begun.analysis),
                    evidence(movable), at(12))
    assert (turned.action, turned.rejects) == (Action.ROLLBACK, True)
    assert "not rejected" not in turned.reason


def test_a_streak_stored_at_its_limit_rolls_back_whatever_the_new_window_shows() -> None:
    """The process died after storing the streak and before rolling back."""
    stored = decide(rollout(failures=1), evidence(FAILING), at(3)).analysis
    decision = decide(rollout(failures=2, last_analysis=stored), evidence(HEALTHY), at(5))
    assert decision.action == Action.ROLLBACK and not decision.analysed
    assert decision.reason.startswith("automatic rollback: error_rate 0.2 > 0.01 (95% lower bound")
    assert decision.streak == 2 and decision.analysis == stored


def test_an_awaiting_rollout_is_still_judged_and_rolled_back() -> None:
    decision = decide(rollout("awaiting_approval", failures=1), evidence(FAILING, required=True),
                      at(3))
    assert decision.action == Action.ROLLBACK


# ---------------------------------------------------------------- missing evidence


def test_inconclusive_evidence_waits_then_hits_the_deadline() -> None:
    first = decide(rollout(), evidence(SPARSE), at(5))
    assert first.action == Action.WAIT_INCONCLUSIVE
    assert "3 randomly routed requests" in first.reason
    assert first.analysis["inconclusive_since"] == at(5).isoformat()

    within = decide(rollout(last_analysis=first.analysis), evidence(SPARSE), at(34))
    assert within.action == Action.WAIT_INCONCLUSIVE
    assert within.analysis["inconclusive_since"] == at(5).isoformat()

    overdue = decide(rollout(last_analysis=within.analysis), evidence(SPARSE), at(35))
    assert overdue.action == Action.FAIL
    assert "analysis inconclusive for 30s, past inconclusive_deadline_s=30" in overdue.reason
    assert overdue.data == {"analysis": overdue.analysis}

    # One window with evidence restarts the clock.
    passed = decide(rollout(last_analysis=within.analysis), evidence(HEALTHY), at(35))
    assert passed.analysis["inconclusive_since"] is None and passed.action == Action.ADVANCE


def test_waiting_for_an_approval_is_not_waiting_for_evidence() -> None:
    old = {**decide(rollout(), evidence(SPARSE), at(1)).analysis}
    decision = decide(rollout("awaiting_approval", last_analysis=old),
                      evidence(SPARSE, required=True), at(600))
    assert decision.action == Action.HOLD and decision.analysis["inconclusive_since"] is None


# ---------------------------------------------------------------- approvals


def test_an_unapproved_candidate_waits_before_a_step_above_the_limit() -> None:
    decision = decide(rollout(), evidence(HEALTHY, required=True, limit=10), at(10))
    assert decision.action == Action.AWAIT_APPROVAL
    assert decision.data == {"limit": 10, "next_step": 1}
    assert "before the candidate takes more than 10%" in decision.reason
    pending = decide(rollout("pending", started=None), evidence(required=True, limit=0), T0)
    assert (pending.action, pending.data) == (Action.AWAIT_APPROVAL, {"limit": 0, "next_step": 0})


def test_the_last_step_waits_for_an_approval_before_promoting() -> None:
    decision = decide(rollout(step_index=2), evidence(HEALTHY, required=True), at(10))
    assert decision.action == Action.AWAIT_APPROVAL and decision.data == {"limit": 50.0}
    assert decision.reason.startswith("every step passed its analysis; waiting for an approval")


def test_awaiting_approval_holds_resumes_or_rolls_back() -> None:
    waiting = rollout("awaiting_approval", step_index=1)
    held = decide(waiting, evidence(required=True), at(60))
    assert held.action == Action.HOLD and "waiting for an approval" in held.reason
    resumed = decide(waiting, evidence(required=True, decision="approved"), at(60))
    assert (resumed.action, resumed.reason, resumed.step_index) == (Action.RESUME, "approved", None)
    lifted = decide(waiting, evidence(), at(60))
    assert lifted.reason == "the model's policy no longer requires an approval"
    rejected = decide(waiting, evidence(required=True, decision="rejected"), at(60))
    assert (rejected.action, rejected.reason) == (Action.ROLLBACK,
                                                  "the approver rejected the candidate")
    before_first = rollout("awaiting_approval", started=None)
    assert decide(before_first, evidence(decision="approved"), T0).step_index == 0


# ---------------------------------------------------------------- the rest


def test_paused_holds_whatever_the_evidence() -> None:
    decision = decide(rollout("paused", failures=5), evidence(FAILING), at(60))
    assert (decision.action, decision.analysed) == (Action.HOLD, False)


def test_a_shadow_step_is_judged_on_mirrored_comparisons() -> None:
    mirrored = served(requests=0, shadow=ShadowComparison(compared=50, agreement=0.98))
    decision = decide(rollout(shadow_first=True), evidence(Snapshot(5.0, mirrored, served())),
                      at(10))
    assert decision.analysis["reason"] == "shadow checks passed"
    assert decision.action == Action.ADVANCE


def test_decide_is_pure() -> None:
    before = rollout(failures=1)
    frozen = before.model_dump()
    first = decide(before, evidence(FAILING), at(3))
    assert decide(before, evidence(FAILING), at(3)) == first
    assert before.model_dump() == frozen


def test_when_an_analysis_is_due_and_over_what_window() -> None:
    assert analysis_due(rollout(), None, at(1))
    assert analysis_due(rollout("awaiting_approval"), at(0), at(1))
    assert not analysis_due(rollout(), at(0.5), at(1))  # every interval_s
    assert not analysis_due(rollout("pending", started=None), None, T0)
    assert not analysis_due(rollout("paused"), None, T0)
    assert not analysis_due(rollout("awaiting_approval", started=None), None, T0)
    assert not analysis_due(rollout(failures=2), None, T0)  # decided as stored
    # A control plane that just took over knows no analysis of its own: the stored one's
    # time counts, or it judged again at once over nearly the same window (a second
    # failure of one, a rollback after an upgrade).
    stored = rollout(failures=1, last_analysis={"at": at(0.5).isoformat(), "verdict": "fail"})
    assert not analysis_due(stored, None, at(1))
    assert analysis_due(stored, None, at(1.6))
    assert not analysis_due(stored, at(0.2), at(1))  # the later of the two
    # Stamped ahead by another host's clock: no reason to wait past the interval.
    ahead = rollout(failures=1, last_analysis={"at": at(30).isoformat(), "verdict": "fail"})
    assert analysis_due(ahead, at(0.5), at(1.6))
    assert analysis_window(rollout(), at(3)) == 3.0
    assert analysis_window(rollout(), at(60)) == 5.0  # window_s
    assert analysis_window(rollout(), at(0.2)) == 1.0
