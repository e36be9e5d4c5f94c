"""Where a rollout decides: one pure function from a rollout and its evidence to a Decision.

``decide`` reads nothing and writes nothing. The controller gathers the evidence (the
Monitor's numbers when an analysis is due, the candidate's approval gate), calls it,
stores what it returns (a new analysis with the failure streak it leads to) and then acts
on it (moves traffic, promotes, rolls back). So every branch is tested with plain values.

The rules, in the order they apply:

1. pending: take the first step, or wait for an approval if it would exceed the limit;
2. paused: hold;
3. a failure streak stored at its limit rolls back: the process died between the analysis
   that reached it and the rollback, and the decision stands whatever the next window
   shows (docs/rollouts.md, "resumption");
4. a new analysis (the threshold gates and, where the rollout has one, the A/B gate of
   :mod:`ab_gate`: ``worse`` fails, ``undecided`` is inconclusive) updates the streak
   (:class:`FailureStreak`): reaching the limit rolls
   back; inconclusive evidence past ``inconclusive_deadline_s`` fails back to stable
   (:mod:`deadline`);
5. awaiting approval: a rejection rolls back, an approval (or a policy that no longer
   asks for one) resumes, anything else holds (:mod:`approvals`);
6. progressing: hold until the step has been held ``hold_s`` and its latest analysis
   passed; then the next step (approval permitting) or, after the last, promote (or wait
   for an approval first).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from control_plane.rollouts import ab_gate
from control_plane.rollouts.ab_gate import ABWindow
from control_plane.rollouts.analysis import (
    CheckResult,
    FailureStreak,
    Verdict,
    analyse,
    baseline_in_use,
)
from control_plane.rollouts.approvals import ApprovalGate
from control_plane.rollouts.deadline import inconclusive_for, past_deadline
from control_plane.rollouts.schemas import AnalysisSettings, RolloutOut
from control_plane.rollouts.states import RolloutState
from control_plane.stamps import parse_stamp
from control_plane.storable import json_safe
from serving.monitoring import VersionSnapshot
from serving.monitoring.snapshot import Latency, Quantiles, RoutedRequests, Traffic

ANALYSED_STATES = (RolloutState.PROGRESSING, RolloutState.AWAITING_APPROVAL)
# Stable's figures a step without its traffic compares with: the Monitor's whole memory
# (serving.monitoring.monitor.SLOTS one-second slots).
BASELINE_WINDOW_S = 300.0
# How long a kept baseline stands for stable at a step without its traffic: the world moves
# (a day's traffic grows, the mix changes), and stable's figures of hours ago say little of
# what it would do now. Past this the relative checks are not judged (the absolute go on).
BASELINE_MAX_AGE_S = 3600.0


class Action(StrEnum):
    """What the controller does with a rollout after a decision."""

    HOLD = "hold"  # stay at the current step
    WAIT_INCONCLUSIVE = "wait_inconclusive"  # stay: too little evidence (the deadline runs)
    ADVANCE = "advance"  # move to ``Decision.step_index`` (from pending: the first step)
    AWAIT_APPROVAL = "await_approval"  # wait at the approval limit for an approval
    RESUME = "resume"  # approved while waiting: progressing again
    PROMOTE = "promote"  # the candidate takes 100% and the champion alias
    ROLLBACK = "rollback"  # stable back to 100%, the candidate rejected (Decision.rejects)
    FAIL = "fail"  # stable back to 100%, the candidate not judged (no evidence in time)


@dataclass(frozen=True)
class Snapshot:
    """The Monitor's numbers for one analysis: each version's statistics over the window,
    and over the A/B gate's window where the rollout has one (:func:`ab_window`)."""

    window_s: float
    candidate: VersionSnapshot | None
    stable: VersionSnapshot | None
    ab: ABWindow | None = None
    # Stable's figures over BASELINE_WINDOW_S, where it answered too little in the window
    # (analysis.baseline_in_use): what the candidate is compared with then.
    baseline: VersionSnapshot | None = None
    # Whether ``baseline`` is the one an earlier analysis of the rollout kept
    # (:func:`kept_baseline`) rather than a new read.
    baseline_kept: bool = False
    # Why there are no numbers to judge (the step's traffic not served yet, the Monitor's
    # answer unreadable): the analysis is inconclusive.
    no_evidence: str | None = None
    # The kept baseline is older than BASELINE_MAX_AGE_S: nothing stands for stable.
    baseline_expired: bool = False
    # When the Monitor's answer came back (the control plane's clock): a failure streak's
    # next window begins here, after everything this read judged. The analysis's ``now``
    # comes before the read, by however long the Monitor took to answer, and the second
    # the read fell in lay inside the next window whenever that second came after ``now``.
    read_at: datetime | None = None


@dataclass(frozen=True)
class Evidence:
    """What a decision reads besides the rollout: the approval gate as it is now and, when
    an analysis is due (:func:`analysis_due`), the Monitor's snapshot."""

    gate: ApprovalGate
    snapshot: Snapshot | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`: what to do, why, and what to store."""

    action: Action
    reason: str
    streak: int  # consecutive failing analyses after this decision (the rollout's failures)
    analysis: dict[str, Any]  # the analysis record the decision rests on ({} when none yet)
    analysed: bool = False  # ``analysis`` is this decision's own, to be stored with ``streak``
    step_index: int | None = None  # ADVANCE, or RESUME before the first step: the step to take
    data: dict[str, Any] = field(default_factory=dict)  # for the transition's audit event
    rejects: bool = True  # ROLLBACK: the candidate is rejected too (evidence against it)

    @property
    def failed_analysis(self) -> bool:
        """Whether this decision took an analysis that failed (it gets an audit event)."""
        return self.analysed and self.analysis.get("verdict") == Verdict.FAIL


def settings_of(rollout: RolloutOut) -> AnalysisSettings:
    """The analysis gates ``rollout`` was started with."""
    return AnalysisSettings.model_validate(rollout.spec["analysis"])


def analysis_due(rollout: RolloutOut, last: datetime | None, now: datetime) -> bool:
    """Whether to read the Monitor for ``rollout`` now (``last``: its previous analysis in
    this process, or, where later, the stored one's: a control plane that just took over
    must not judge again at once, over nearly the same window, and make a second failure
    of one). Only a step with traffic is judged, every ``interval_s``; a rollout waiting
    for approval before its first step has none, and a streak already at its limit is
    decided without new evidence."""
    if rollout.state not in ANALYSED_STATES or rollout.step_started_at is None:
        return False
    settings = settings_of(rollout)
    if rollout.failures >= settings.failures_to_rollback:
        return False
    stored = _analysed_at(rollout.last_analysis)
    if stored is not None and stored <= now and (last is None or stored > last):
        last = stored  # (one stamped ahead by another host's clock is no reason to wait)
    return last is None or (now - last).total_seconds() >= settings.interval_s


def _analysed_at(analysis: dict[str, Any] | None) -> datetime | None:
    return _stamp(analysis, "at")


def _stamp(analysis: dict[str, Any] | None, key: str) -> datetime | None:
    """The time an analysis record keeps under ``key`` (None: none, or unreadable)."""
    try:
        return parse_stamp((analysis or {}).get(key))
    except ValueError:
        return None


def analysis_window(rollout: RolloutOut, now: datetime) -> float:
    """Seconds of statistics to judge: the last ``window_s``, but never from before the step,
    nor, while a failure streak runs, from before its latest failing analysis: each failure
    of a streak is judged on requests the one before it did not see. Windows overlap (10 s
    apart, 60 s long by default), so one burst of errors failed six analyses in a row, and
    ``failures_to_rollback`` asked for nothing more than one failure."""
    start = rollout.step_started_at or now
    failed_at = _failed_at(rollout) if rollout.failures else None
    if failed_at is not None:  # (one stamped ahead by another host's clock: from now)
        start = max(start, min(failed_at, now))
    return min(settings_of(rollout).window_s, max(1.0, (now - start).total_seconds()))


def _failed_at(rollout: RolloutOut) -> datetime | None:
    """When the latest failing analysis of the current step was made (None: none, or a
    record from before this was kept)."""
    last = rollout.last_analysis or {}
    return _stamp(last, "failed_at") if last.get("step_index") == rollout.step_index else None


def ab_window(rollout: RolloutOut, now: datetime) -> tuple[int, float] | None:
    """(block, seconds) of statistics the A/B gate judges now (see :mod:`ab_gate`): the
    current step's evidence since its block began; None where the gate is off or the step
    is not tested."""
    if settings_of(rollout).ab_test is None or not ab_gate.tested(rollout.current_step):
        return None
    return ab_gate.block_window(rollout.step_started_at or now, now)


def decide(rollout: RolloutOut, evidence: Evidence, now: datetime) -> Decision:
    """Decide what ``rollout`` does next, on ``evidence``, at ``now``. Pure."""
    settings = settings_of(rollout)
    state, gate = rollout.state, evidence.gate
    streak = FailureStreak(settings.failures_to_rollback, rollout.failures)
    record, analysed = rollout.last_analysis, False
    # A streak stored at its limit is decided as stored (rule 3), not on new evidence.
    if evidence.snapshot is not None and state in ANALYSED_STATES and not streak.reached:
        judged, record = _judge(rollout, settings, evidence.snapshot, now)
        streak, analysed = streak.after(judged), True

    def outcome(action: Action, reason: str, **details: Any) -> Decision:
        return Decision(action, reason, streak.count, record, analysed, **details)

    if state == RolloutState.PENDING:
        return _next_step(rollout, 0, gate, outcome)
    if state not in ANALYSED_STATES:
        return outcome(Action.HOLD, f"the rollout is {state}")
    if streak.reached:
        # Rejected only where a failure of the streak was evidence against the candidate
        # itself (CheckResult.rejects); a record from before this was kept rejects.
        rejects = bool(record.get("streak_rejects", record.get("rejects", True)))
        return outcome(Action.ROLLBACK, f"automatic rollback: {record.get('reason', '')}"
                       + ("" if rejects else "; the version is not rejected: no failure of "
                          "the streak is the candidate's own (beside stable's share of the "
                          "same requests, or on a gate callers cannot move)"),
                       data={"analysis": record}, rejects=rejects)
    overdue = past_deadline(record, settings, state) if analysed else None
    if overdue:
        return outcome(Action.FAIL, overdue, data={"analysis": record})

    if state == RolloutState.AWAITING_APPROVAL:
        if gate.decision == "rejected":
            return outcome(Action.ROLLBACK, "the approver rejected the candidate")
        if gate.required and not gate.approved:
            return outcome(Action.HOLD, gate.waiting_reason())
        return outcome(Action.RESUME, "approved" if gate.approved
                       else "the model's policy no longer requires an approval",
                       step_index=0 if rollout.step_started_at is None else None)

    verdict = record.get("verdict")
    if verdict == Verdict.INCONCLUSIVE:
        return outcome(Action.WAIT_INCONCLUSIVE, record.get("reason", ""))
    if verdict == Verdict.FAIL:
        return outcome(Action.HOLD, f"{streak.count} of {streak.needed} failing analyses in a "
                                    f"row: {record.get('reason', '')}")
    if verdict != Verdict.PASS:
        return outcome(Action.HOLD, "no analysis of this step yet")
    hold_s = rollout.current_step.hold_s
    held = (now - (rollout.step_started_at or now)).total_seconds()
    if held < hold_s:
        return outcome(Action.HOLD, f"the step has held {held:g}s of {hold_s:g}s")
    if rollout.step_index + 1 < len(rollout.steps):
        return _next_step(rollout, rollout.step_index + 1, gate, outcome)
    reason = "every step passed its analysis"
    if gate.required and not gate.approved:
        return outcome(Action.AWAIT_APPROVAL, f"{reason}; {gate.waiting_reason()}",
                       data={"limit": gate.limit})
    return outcome(Action.PROMOTE, reason)


def _next_step(rollout: RolloutOut, index: int, gate: ApprovalGate,
               outcome: Callable[..., Decision]) -> Decision:
    """Take step ``index``, or wait for an approval if that step would exceed the limit."""
    if gate.blocks(rollout.steps[index].candidate_weight):
        return outcome(Action.AWAIT_APPROVAL, gate.waiting_reason(),
                       data={"limit": gate.limit, "next_step": index})
    reason = "first step" if rollout.state == RolloutState.PENDING else \
        f"step {rollout.step_index + 1} held its time and passed its analysis"
    return outcome(Action.ADVANCE, reason, step_index=index)


def _judge(rollout: RolloutOut, settings: AnalysisSettings, snapshot: Snapshot,
           now: datetime) -> tuple[Verdict, dict[str, Any]]:
    """Analyse the current step on ``snapshot``: the verdict and the record to store."""
    config = settings.to_config()
    result = (CheckResult(Verdict.INCONCLUSIVE, reason=snapshot.no_evidence)
              if snapshot.no_evidence else
              analyse(config, snapshot.candidate, snapshot.stable,
                      shadow=rollout.current_step.shadow, baseline=snapshot.baseline,
                      has_stable=rollout.stable_version is not None
                      and not snapshot.baseline_expired,
                      stable_routed=rollout.current_step.candidate_weight < 100,
                      holds_end=settings.inconclusive_deadline_s is not None))
    previous = rollout.last_analysis
    same_step = previous.get("step_index") == rollout.step_index
    baseline: dict[str, Any] = {}
    if baseline_in_use(config, snapshot.stable, snapshot.baseline):
        assert snapshot.baseline is not None
        # Kept with every analysis that uses it, for the next to compare with: a step
        # without stable's traffic may be held past the Monitor's memory.
        baseline = {"stable_baseline": previous["stable_baseline"]
                    if snapshot.baseline_kept else {
                        "window_s": BASELINE_WINDOW_S, "taken_at": now.isoformat(),
                        **_summary(snapshot.baseline),
                        "figures": _baseline_figures(snapshot.baseline)}}
    elif previous.get("stable_baseline") and (snapshot.no_evidence or snapshot.baseline_expired):
        # Kept through an analysis that read nothing, and said to be spent once it is.
        baseline = {"stable_baseline": {**previous["stable_baseline"],
                                        **({"expired": True} if snapshot.baseline_expired
                                           else {})}}
    ab: dict[str, Any] = {}
    if settings.ab_test is not None and snapshot.no_evidence and same_step \
            and previous.get("ab_test"):
        # Nothing was read: the test's state (its decisions, the rounds it has looked at)
        # stands as it was, rather than starting over and spending its alpha again.
        ab = {"ab_test": previous["ab_test"]}
    elif settings.ab_test is not None:
        judged = ab_gate.judge(settings.ab_test, config, snapshot.ab, step=rollout.current_step,
                               steps=ab_gate.tested_steps(rollout.steps),
                               previous=previous.get("ab_test") if same_step else None, now=now,
                               step_started=rollout.step_started_at)
        result = _with_ab_test(result, judged.decision, judged.reason)
        ab = {"ab_test": judged.model_dump(mode="json")}
    started = rollout.step_started_at or now
    # Whether the failure streak this analysis is part of holds evidence against the
    # candidate itself: any one of its failures that does rejects (a caller must not turn a
    # streak begun on an absolute gate into one that does not, with its last window).
    prior = (previous.get("streak_rejects", previous.get("rejects", True))
             if same_step and rollout.failures > 0 else None)
    streak_rejects = (result.rejects or bool(prior)) if result.verdict == Verdict.FAIL else \
        None if result.verdict == Verdict.PASS else prior
    return result.verdict, json_safe({
        "verdict": result.verdict.value, "reason": result.reason, "checks": result.checks,
        **({} if result.rejects else {"rejects": False}),
        **({} if streak_rejects is None else {"streak_rejects": streak_rejects}),
        "at": now.isoformat(), "window_s": snapshot.window_s, "step_index": rollout.step_index,
        "candidate": _summary(snapshot.candidate), "stable": _summary(snapshot.stable),
        **baseline,
        "inconclusive_since": inconclusive_for(rollout.last_analysis, result.verdict, now,
                                               started, rollout.state),
        # Where the next window of a failure streak begins (analysis_window).
        "failed_at": (max(now, snapshot.read_at or now).isoformat()
                      if result.verdict == Verdict.FAIL else
                      previous.get("failed_at") if same_step
                      and result.verdict == Verdict.INCONCLUSIVE else None),
        **ab,
    })


def _with_ab_test(result: CheckResult, decision: str, reason: str) -> CheckResult:
    """The threshold gates' result with the A/B gate's decision folded in: ``worse``
    fails, ``undecided`` holds (inconclusive, never a failure), ``no_worse`` passes; a
    threshold failure or too few requests stays as it is. A check past its limit without
    the evidence to fail yet, or a replica gone silent, is no reason to ignore the A/B
    test's ``worse``."""
    if decision == "not_tested" or (result.verdict == Verdict.INCONCLUSIVE
                                    and not (result.worse_decides and decision == "worse")):
        return result
    if decision == "worse":
        reason = f"A/B test: {reason}"
        joined = f"{result.reason}; {reason}" if result.verdict == Verdict.FAIL else reason
        # Both versions' samples from the same window: evidence against the candidate.
        return replace(result, verdict=Verdict.FAIL, reason=joined, rejects=True)
    if result.verdict == Verdict.FAIL:
        return result
    if decision == "undecided":
        return replace(result, verdict=Verdict.INCONCLUSIVE, reason=f"A/B test {reason}")
    return replace(result, reason=f"{result.reason}; A/B test: {reason}")


def kept_baseline_age_s(rollout: RolloutOut, now: datetime) -> float | None:
    """Seconds since the rollout's kept baseline was taken (None: none, or no time)."""
    try:
        taken = parse_stamp((rollout.last_analysis or {}).get("stable_baseline", {})
                            .get("taken_at"))
    except (ValueError, AttributeError):
        return None
    return None if taken is None else (now - taken).total_seconds()


def kept_baseline(rollout: RolloutOut) -> VersionSnapshot | None:
    """Stable's baseline that the rollout's last analysis compared with, as the relative
    checks read it; None where it used none (or one this version cannot read)."""
    figures = (rollout.last_analysis or {}).get("stable_baseline", {}).get("figures")
    if not isinstance(figures, dict):
        return None
    try:
        return VersionSnapshot(
            traffic=Traffic(requests=int(figures["requests"]),
                            throughput_rps=_number(figures["throughput_rps"]),
                            routing={kind: RoutedRequests(**counts)
                                     for kind, counts in figures["routing"].items()}),
            latency=Latency(sample=_quantiles(figures["sample_latency"]),
                            all_requests=_quantiles(figures["latency"])))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _baseline_figures(stats: VersionSnapshot) -> dict[str, Any]:
    """What the relative checks read of stable's baseline (:func:`kept_baseline`)."""
    traffic = stats.traffic
    return {"requests": traffic.requests, "throughput_rps": traffic.throughput_rps,
            "routing": {kind: asdict(counts) for kind, counts in traffic.routing.items()},
            "sample_latency": asdict(stats.latency.sample),
            "latency": asdict(stats.latency.all_requests)}


def _quantiles(stored: dict[str, Any]) -> Quantiles:
    """Quantiles as stored (JSON: a NaN is null, a pair a list). Stored before paired
    bounds were, the p95's own bounds stand in for them."""
    stored = {"p95_paired_bounds_ms": stored["p95_bounds_ms"], **stored}
    return Quantiles(count=int(stored["count"]),
                     **{name: _number(stored[name]) for name in ("p50_ms", "p95_ms", "p99_ms")},
                     **{name: (_number(stored[name][0]), _number(stored[name][1]))
                        for name in ("p95_bounds_ms", "p99_bounds_ms", "p95_paired_bounds_ms")})


def _number(stored: Any) -> float:
    return math.nan if stored is None else float(stored)


def _summary(stats: VersionSnapshot | None) -> dict[str, Any]:
    """The numbers of one version's statistics kept with an analysis."""
    if stats is None:
        return {}
    traffic, latency = stats.traffic, stats.latency.all_requests
    summary: dict[str, Any] = {
        "requests": traffic.requests, "error_rate": traffic.error_rate,
        "p50_ms": latency.p50_ms, "p95_ms": latency.p95_ms, "p99_ms": latency.p99_ms,
        "throughput_rps": traffic.throughput_rps}
    if stats.shadow.compared:
        summary["shadow"] = asdict(stats.shadow)
    summary["drift"] = {"verdict": stats.drift.verdict.value,
                        "drifted_features": list(stats.drift.drifted_features)}
    summary["accuracy"] = stats.accuracy.to_json()
    return summary
