"""The rollout controller: persisted rollouts advanced by analysis of live statistics.

One pass of the loop (:meth:`RolloutController.tick`) finishes what earlier passes owe,
then for every active rollout gathers the evidence (the Monitor's numbers when an
analysis is due, the candidate's approval gate), asks :func:`decision.decide` what to do,
stores the decision (the analysis and the failure streak it leads to) and acts on it
through :class:`moves.TrafficMoves`; then removes drained versions and follows aliases.

Resumption rule (documented in docs/rollouts.md): after a restart a rollout continues at
its persisted step with its persisted failure streak; the step's hold timer keeps its
stored start, because the Monitor (a detached actor) kept counting while the control
plane was down. The analysis window is the last ``window_s`` seconds, so evidence from
before the restart still counts and a breach that began meanwhile is caught at the first
analysis.

Concepts kept apart: the decision (``decision``), moving traffic (``moves``), people's
actions (``manual``), registry-driven rollouts (``aliases``), approval gating
(``approvals``), a rollback's follow-ups (``followups``) and the inconclusive deadline
(``deadline``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from control_plane.auth import Principal
from control_plane.deployments import (
    Deployments,
    endpoint_row,
    read_routes,
    refuse_during_rollout,
    refuse_shared_requirements,
)
from control_plane.errors import ConflictError, InvalidInputError, NotFoundError
from control_plane.reconciler import incarnation_of
from control_plane.registry import Registry
from control_plane.rollouts import aliases
from control_plane.rollouts.ab_gate import ABWindow, tested
from control_plane.rollouts.analysis import sample_routings, wants_baseline
from control_plane.rollouts.approvals import ApprovalGate, approval_gate
from control_plane.rollouts.deadline import failing_past_deadline
from control_plane.rollouts.decision import (
    BASELINE_MAX_AGE_S,
    BASELINE_WINDOW_S,
    Action,
    Decision,
    Evidence,
    Snapshot,
    ab_window,
    analysis_due,
    analysis_window,
    decide,
    kept_baseline,
    kept_baseline_age_s,
    settings_of,
)
from control_plane.rollouts.followups import AlertSink
from control_plane.rollouts.manual import ManualActions
from control_plane.rollouts.moves import StatsSource
from control_plane.rollouts.records import (
    CONTROLLER,
    event,
    plan,
    replicas,
    rollout_out,
    rollout_row,
    step_json,
    transition,
)
from control_plane.rollouts.schemas import (
    RolloutCreate,
    RolloutEventOut,
    RolloutOut,
    RolloutPolicy,
)
from control_plane.rollouts.states import ACTIVE_STATES, RolloutState
from control_plane.schemas import Role
from control_plane.store import Database
from control_plane.store.database import FencedOut
from control_plane.store.models import (
    EndpointRow,
    ModelRow,
    ModelVersionRow,
    RolloutEventRow,
    RolloutRow,
)
from serving.monitoring import VersionSnapshot
from serving.monitoring.stats import ServedConfig

log = logging.getLogger(__name__)

ALIAS_CHECK_S = 1.0  # how often tracked aliases are compared with what endpoints serve
# The end a decision leads to: the terminal state, and whether the candidate is rejected.
_ENDS = {Action.ROLLBACK: (RolloutState.ROLLED_BACK, True),
         Action.FAIL: (RolloutState.FAILED, False)}


def _rate_while_serving(stable: VersionSnapshot | None, idle_s: float) -> VersionSnapshot | None:
    """Stable's figures from before the step, its requests per second over the seconds it
    served. The Monitor's window ends now, and since the step began stable took (next to)
    nothing: counted over the whole window its rate read low (100 req/s as 57 two minutes
    into the step), the candidate's load looked heavier than stable's ever was, and a
    regressed candidate's relative checks went unjudged as inconclusive."""
    if stable is None or math.isnan(stable.traffic.throughput_rps):
        # Unknown while a replica still sends what it kept for a restarted Monitor: kept,
        # it would leave the step's load check without a baseline; taken at a later look.
        return None
    if idle_s <= 0:
        return stable
    traffic = stable.traffic
    # The newest seconds, idle ones, a replica still catching up has not reached are out
    # of the rate already (serving.monitoring.monitor: MonitorState._version_snapshot).
    serving_s = traffic.observed_s - max(0.0, idle_s - stable.replicas.catching_up_s)
    if traffic.observed_s <= 0 or serving_s <= 0:
        return stable  # not known over what it was counted, or nothing served in it
    return replace(stable, traffic=replace(
        traffic, throughput_rps=traffic.throughput_rps * traffic.observed_s / serving_s))


class RolloutController(ManualActions):
    """Starts, advances, promotes and rolls back rollouts; ``tick`` is the control loop."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        deployments: Deployments,
        *,
        stats: StatsSource,
        served: Callable[[str], ServedConfig | None] = lambda endpoint: None,
        apply: Callable[[], Any] = lambda: None,
        alert: AlertSink | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        leading: Callable[[], bool] = lambda: True,
        fenced: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        super().__init__(db, registry, deployments, stats=stats, apply=apply, alert=alert, now=now,
                         leading=leading, fenced=fenced)
        self._served = served
        self._analysed_at: dict[int, datetime] = {}
        # Per progressing rollout: since when no pass has stored an analysis, every one
        # that tried having failed (deadline.failing_past_deadline).
        self._failing_since: dict[int, datetime] = {}
        # Per rollout: the step found not served yet, then (step, when it was first seen
        # served): its window and hold count from then (:meth:`_as_served`).
        self._unserved_step: dict[int, int] = {}
        self._served_from: dict[int, tuple[int, datetime]] = {}
        self._aliases_checked_at: datetime | None = None
        # (endpoint, model ref) -> why its alias's rollout could not start, last pass
        self._alias_refusals: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------ starting and reading

    def start(self, spec: RolloutCreate, actor: Principal) -> RolloutOut:
        """Record a new rollout of ``spec.model_ref`` on ``spec.endpoint`` (state pending)."""
        actor.require(Role.DEPLOYER)
        candidate = self.registry.resolve(spec.model_ref)
        with self._lock, self.db.session() as session:
            endpoint = endpoint_row(session, spec.endpoint, for_update=True)
            refuse_during_rollout(session, endpoint.name, "start another")
            model = session.get(ModelRow, endpoint.model_id)
            assert model is not None
            if candidate.model != model.name:
                raise InvalidInputError(
                    f"endpoint {endpoint.name!r} serves model {model.name!r}, not "
                    f"{candidate.model!r}", detail={"field": "model_ref"})
            # Read again, locked: a rejection (or a deletion) that lands after the version
            # was resolved, above, must not leave a rollout of a version it cannot route.
            version = session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.model_id == model.id,
                ModelVersionRow.version == candidate.version).with_for_update())
            if version is None:
                raise NotFoundError(f"{candidate.model}:{candidate.version} was deleted",
                                    detail={"field": "model_ref"})
            if version.status == "rejected":
                raise ConflictError(
                    f"{candidate.model}:{candidate.version} was rejected "
                    f"({version.status_reason}); register a new version",
                    detail={"field": "model_ref"})
            # Checked here, not at the first step: there its route write was refused on
            # every tick, and so was every way out (abort, rollback), locking the endpoint.
            refuse_shared_requirements(endpoint, model.name, version, field="model_ref")
            routes = read_routes(session, endpoint)
            stable = routes.stable
            if stable is None or routes.weights[stable] <= 0:
                raise ConflictError(f"endpoint {endpoint.name!r} serves no version yet; "
                                    "deploy one first", detail={"field": "endpoint"})
            others = sorted(v for v, w in routes.weights.items()
                            if v not in (stable, candidate.version) and w > 0)
            shadows = sorted(v for v in routes.shadows if v != candidate.version)
            if others or shadows:
                # Every step writes the stable version and the candidate alone: the rest
                # of the table was dropped at the first step, and a rollback did not bring
                # it back.
                held = ", ".join([*(f"v{v} {routes.weights[v]:g}%" for v in others),
                                  *(f"v{v} shadow" for v in shadows)])
                raise ConflictError(
                    f"endpoint {endpoint.name!r} also routes to {held} beside its stable "
                    f"v{stable}: a rollout moves traffic between the stable version and the "
                    f"candidate alone; set the traffic to v{stable} first (`modelplane "
                    f"traffic {endpoint.name} {stable}=100`)",
                    detail={"field": "endpoint", "versions": [*others, *shadows]})
            if stable == candidate.version:
                raise ConflictError(
                    f"{model.name}:{candidate.version} already takes the most traffic on "
                    f"{endpoint.name!r}; roll out a different version",
                    detail={"field": "model_ref"})
            refuse_gates_without_evidence(spec, candidate.manifest.task, candidate.version,
                                          profiled=candidate.manifest.reference_profile
                                          is not None)
            steps = plan(spec, replicas(endpoint, routes, stable))
            if spec.analysis.ab_test is not None and not any(map(tested, steps)):
                raise InvalidInputError(
                    "the A/B gate compares versions that share traffic, and no step of this "
                    f"{spec.strategy.value} plan gives both some; add a canary step below "
                    "100 or set analysis.ab_test to null", detail={"field": "analysis.ab_test"})
            row = RolloutRow(
                endpoint=endpoint.name, model_id=model.id, candidate_version=candidate.version,
                stable_version=stable, strategy=spec.strategy.value,
                state=RolloutState.PENDING.value,
                spec={**spec.model_dump(mode="json", exclude={"endpoint", "model_ref"}),
                      "plan": [step_json(s) for s in steps]},
                created_by=actor.name, last_analysis={},
            )
            session.add(row)
            session.flush()
            gate = approval_gate(session, row)
            event(session, row, "created", actor.name,
                  f"{spec.strategy.value} of v{candidate.version} over v{stable}",
                  {"plan": row.spec["plan"],
                   "approval": {"required": gate.required, "limit": gate.limit}})
            return rollout_out(session, row)

    def latest(self, endpoint: str) -> RolloutOut:
        """The endpoint's most recent rollout."""
        found = self.list(endpoint=endpoint, limit=1)
        if not found:
            raise NotFoundError(f"endpoint {endpoint!r} has had no rollout",
                                detail={"field": "endpoint"})
        return found[0]

    def list(self, *, endpoint: str | None = None, active: bool | None = None,
             limit: int = 50) -> list[RolloutOut]:
        query = select(RolloutRow).order_by(RolloutRow.id.desc()).limit(limit)
        if endpoint is not None:
            query = query.where(RolloutRow.endpoint == endpoint)
        if active is not None:
            in_active = RolloutRow.state.in_(ACTIVE_STATES)
            query = query.where(in_active if active else ~in_active)
        with self.db.session(readonly=True) as session:
            return [rollout_out(session, row) for row in session.scalars(query).all()]

    def events(self, rollout_id: int) -> list[RolloutEventOut]:
        with self.db.session(readonly=True) as session:
            rollout_row(session, rollout_id)
            rows = session.scalars(select(RolloutEventRow).where(
                RolloutEventRow.rollout_id == rollout_id).order_by(RolloutEventRow.id)).all()
            return [RolloutEventOut.model_validate(row, from_attributes=True) for row in rows]

    # ------------------------------------------------------------ registry-driven rollouts

    def set_policy(self, endpoint: str, policy: RolloutPolicy | None, actor: Principal) -> None:
        """Opt ``endpoint`` in (or out, with None) of rollouts started by moving an alias."""
        actor.require(Role.DEPLOYER)
        aliases.store_policy(self.db, endpoint, policy)

    def get_policy(self, endpoint: str) -> RolloutPolicy | None:
        return aliases.read_policy(self.db, endpoint)

    # ------------------------------------------------------------ the control loop

    def tick(self) -> None:
        """One pass: advance every active rollout, remove drained versions, follow aliases."""
        try:
            self._tick()
        except FencedOut:
            # Led again later, this process must not count another lead's time as failing.
            self._failing_since.clear()
            raise

    def _tick(self) -> None:
        changed = False
        # A write refused by the control loops' lease (FencedOut) ends the pass: another
        # control plane leads now, every later write would be refused too, and its
        # takeover applies to Serve what this one stored.
        with self._lock:
            try:  # first what an earlier pass owes (it may have crashed mid-rollback)
                changed |= self._followups.finish_all()
            except FencedOut:
                raise
            except Exception:
                log.exception("finishing rollout follow-ups failed")
            active = self.list(active=True, limit=1000)
            # A rollout's failing passes count while it progresses (paused, awaiting an
            # approval or ended, it is waiting for no evidence).
            for stale in self._failing_since.keys() - {
                    r.id for r in active if r.state == RolloutState.PROGRESSING}:
                del self._failing_since[stale]
            for rollout in active:
                try:
                    changed |= self._advance(rollout)
                except FencedOut:
                    raise
                except Exception as error:  # one broken rollout must not stall the others
                    log.exception("advancing rollout #%d failed", rollout.id)
                    changed |= self._end_if_failing_too_long(rollout, error)
            try:
                changed |= self._retire_drained()
                now = self._now()
                if self._aliases_checked_at is None or \
                        (now - self._aliases_checked_at).total_seconds() >= ALIAS_CHECK_S:
                    self._aliases_checked_at = now
                    changed |= self._follow_aliases()
            except FencedOut:
                raise
            except Exception:
                log.exception("rollout housekeeping failed")
        if changed or self._ended:
            self._settle()

    def _advance(self, rollout: RolloutOut) -> bool:
        """Decide once for ``rollout``, store the decision, act on it; True if traffic moved."""
        rejected = self._rejected_meanwhile(rollout)
        if rejected is not None:
            # Rejected by another rollout of it (on another endpoint) or a pipeline's gate:
            # the version can take no traffic, so this rollout can only end.
            self._end(rollout, RolloutState.FAILED, CONTROLLER.name,
                      f"v{rollout.candidate_version} was rejected meanwhile ({rejected}); "
                      "traffic is back on the stable version", {}, reject=False)
            return True
        now = self._now()
        snapshot = None
        due = analysis_due(rollout, self._analysed_at.get(rollout.id), now)
        if not due and self._unserved_step.get(rollout.id) == rollout.step_index:
            # Looked at every pass while it waits, so its hold counts from when it was
            # served, not from the next analysis.
            self._unserved(rollout, now)
        if due:
            self._analysed_at[rollout.id] = now
            try:
                unserved = self._unserved(rollout, now)
                rollout = self._as_served(rollout)
                window = analysis_window(rollout, now)
                snapshot = (Snapshot(window, None, None, no_evidence=unserved) if unserved
                            else self._evidence(rollout, window, now))
            except FencedOut:
                raise
            except Exception as error:
                # Recorded as an inconclusive analysis, so the deadline for evidence runs:
                # raised, it stalled the rollout at its step with nothing recorded.
                log.exception("reading the statistics of rollout #%d failed", rollout.id)
                snapshot = Snapshot(analysis_window(rollout, now), None, None, no_evidence=(
                    f"the Monitor's statistics could not be read: {type(error).__name__}: "
                    f"{error}"[:500]))
        rollout = self._as_served(rollout)
        with self.db.session(readonly=True) as session:
            gate = approval_gate(session, rollout_row(session, rollout.id))
        decision = decide(rollout, Evidence(gate, snapshot), now)
        # The analysis and its streak are stored before anything is done about them: a
        # process that dies in between finds the streak at its limit and rolls back.
        if decision.analysed:
            if not self._record(rollout, decision, now):
                return False
            # Passes between analyses decide on the stored one and cannot fail at storing
            # it: only a stored analysis ends a run of failing passes.
            self._failing_since.pop(rollout.id, None)
        if decision.action in _ENDS:
            state, reject = _ENDS[decision.action]
            self._end(rollout, state, CONTROLLER.name, decision.reason, decision.data,
                      reject=reject and decision.rejects)
            return True
        if decision.action == Action.PROMOTE:
            if not self._gate_unchanged(rollout, gate):
                return False
            self._promote(rollout, CONTROLLER.name, decision.reason)
            return True
        if decision.action in (Action.ADVANCE, Action.AWAIT_APPROVAL, Action.RESUME):
            return self._move(rollout, decision, gate, now)
        return False  # hold, or wait for evidence

    def _end_if_failing_too_long(self, rollout: RolloutOut, error: Exception) -> bool:
        """Fail ``rollout`` once every pass has failed for its inconclusive deadline
        (``deadline.failing_past_deadline``); True if it ended."""
        now = self._now()
        reason = failing_past_deadline(self._failing_since.setdefault(rollout.id, now), now,
                                       settings_of(rollout), rollout.state, error)
        if reason is None:
            return False
        try:
            self._end(rollout, RolloutState.FAILED, CONTROLLER.name, reason,
                      {"error": type(error).__name__}, reject=False)
        except FencedOut:
            raise
        except Exception:
            log.exception("failing rollout #%d after its passes failed, failed too", rollout.id)
            return False
        self._failing_since.pop(rollout.id, None)
        return True

    def _unserved(self, rollout: RolloutOut, now: datetime) -> str | None:
        """Why the step's traffic is known not to be served yet (None: it is, or nothing is
        known either way). The step's routes are committed before they are applied to
        Serve: a control plane killed in between, or Serve refusing them, left the old
        split serving while the step held and its analyses judged that split."""
        seen = self._served(rollout.endpoint)
        if seen is None:
            return None
        with self.db.session(readonly=True) as session:
            endpoint = session.scalar(select(EndpointRow).where(
                EndpointRow.name == rollout.endpoint))
            if endpoint is None or seen.incarnation != incarnation_of(endpoint):
                return None
            written = endpoint.generation
        if seen.generation >= written:
            if self._unserved_step.pop(rollout.id, None) == rollout.step_index:
                self._served_from[rollout.id] = (rollout.step_index, now)
            return None
        self._unserved_step[rollout.id] = rollout.step_index
        return (f"the step's traffic is not served yet: the endpoint's replicas report its "
                f"configuration {seen.generation}, the control plane wrote {written}")

    def _as_served(self, rollout: RolloutOut) -> RolloutOut:
        """``rollout`` with its step started when its traffic was first seen served, where
        that was later than the step's start (its window and hold count from then)."""
        served = self._served_from.get(rollout.id)
        if (served is None or served[0] != rollout.step_index or rollout.step_started_at is None
                or served[1] <= rollout.step_started_at):
            return rollout
        return rollout.model_copy(update={"step_started_at": served[1]})

    def _evidence(self, rollout: RolloutOut, window: float, now: datetime) -> Snapshot:
        """The Monitor's numbers for an analysis of ``rollout`` over ``window`` seconds."""
        config = settings_of(rollout).to_config()
        routings = sample_routings(config)
        stats = self._stats(rollout.endpoint, window, routings)
        snapshot = Snapshot(window, *self._versions(rollout, stats), read_at=self._now())
        if wants_baseline(config, snapshot.stable, shadow=rollout.current_step.shadow):
            # Stable takes (next to) nothing at this step: the candidate is compared with
            # stable's figures from before it, as far back as the Monitor keeps, and then
            # with those the analyses kept (the step may outlast them there).
            kept = kept_baseline(rollout)
            age = kept_baseline_age_s(rollout, now)
            if kept is not None and age is not None and age > BASELINE_MAX_AGE_S:
                snapshot = replace(snapshot, baseline_expired=True)
            elif kept is not None:
                snapshot = replace(snapshot, baseline=kept, baseline_kept=True)
            elif window < BASELINE_WINDOW_S:
                earlier = self._stats(rollout.endpoint, BASELINE_WINDOW_S, routings)
                idle_s = ((now - rollout.step_started_at).total_seconds()
                          if rollout.step_started_at is not None else 0.0)
                snapshot = replace(snapshot, baseline=_rate_while_serving(
                    self._versions(rollout, earlier)[1], idle_s))
        block = ab_window(rollout, now)
        if block is not None:  # the A/B gate's window runs from its block's start
            ab_stats = stats if block[1] == window else self._stats(rollout.endpoint,
                                                                     block[1], routings)
            snapshot = replace(snapshot, ab=ABWindow(block[1], block[0],
                                                     *self._versions(rollout, ab_stats)))
        return snapshot

    def _rejected_meanwhile(self, rollout: RolloutOut) -> str | None:
        """Why the rollout's candidate was rejected since it started; None if it was not."""
        with self.db.session(readonly=True) as session:
            found = session.execute(select(ModelVersionRow.status, ModelVersionRow.status_reason)
                                    .join(RolloutRow, RolloutRow.model_id == ModelVersionRow.model_id)
                                    .where(RolloutRow.id == rollout.id,
                                           ModelVersionRow.version == rollout.candidate_version)
                                    ).first()
        if found is None or found.status != "rejected":
            return None
        return found.status_reason or "no reason given"

    @staticmethod
    def _versions(rollout: RolloutOut, stats: dict[int, VersionSnapshot]
                  ) -> tuple[VersionSnapshot | None, VersionSnapshot | None]:
        """The candidate's and the stable version's statistics in ``stats``."""
        return (stats.get(rollout.candidate_version),
                stats.get(rollout.stable_version) if rollout.stable_version else None)

    def _record(self, rollout: RolloutOut, decision: Decision, now: datetime) -> bool:
        """Store the decision's analysis and streak; False if the rollout changed meanwhile."""
        with self.db.session() as session:
            row = rollout_row(session, rollout.id, for_update=True)
            if row.state != rollout.state:
                return False
            if decision.failed_analysis:
                event(session, row, "analysis_failed", CONTROLLER.name,
                      decision.analysis["reason"], decision.analysis)
            row.failures = decision.streak
            row.last_analysis = decision.analysis
            row.updated_at = now
        return True

    def _move(self, rollout: RolloutOut, decision: Decision, gate: ApprovalGate,
              now: datetime) -> bool:
        """Take a step or wait for an approval, in one transaction with the state it was
        decided on and the same approval gate; True if the candidate's traffic changed."""
        with self.db.session() as session:
            row = rollout_row(session, rollout.id, for_update=True)
            if row.state != rollout.state or approval_gate(session, row) != gate:
                return False  # decided on what is no longer so: decide again next pass
            if decision.action == Action.AWAIT_APPROVAL:
                transition(session, row, RolloutState.AWAITING_APPROVAL, CONTROLLER.name,
                           decision.reason, decision.data)
                return False
            if row.state != RolloutState.PROGRESSING:  # pending (first step) or approved
                transition(session, row, RolloutState.PROGRESSING, CONTROLLER.name,
                           decision.reason)
            if decision.step_index is not None:
                self._set_step(session, row, decision.step_index, now)
            return True

    def _gate_unchanged(self, rollout: RolloutOut, gate: ApprovalGate) -> bool:
        with self.db.session(readonly=True) as session:
            return approval_gate(session, rollout_row(session, rollout.id)) == gate

    def _follow_aliases(self) -> bool:
        """Start a rollout where an opted-in endpoint's tracked alias names a new version."""
        started, refused = False, {}
        for spec, actor, moved_at in aliases.due(self.db):
            key = (spec.endpoint, spec.model_ref)
            try:
                self.start(spec, actor)
                started = True
                aliases.acted_on(self.db, spec.endpoint, moved_at)
            except FencedOut:
                raise
            except Exception as error:  # one endpoint's refusal must not stall the others'
                refused[key] = why = f"{type(error).__name__}: {error}"
                if self._alias_refusals.get(key) != why:  # said once, not every second
                    log.warning("endpoint %s tracks %s, whose rollout cannot start: %s",
                                spec.endpoint, spec.model_ref, why)
        self._alias_refusals = refused
        return started


def refuse_gates_without_evidence(spec: RolloutCreate, task: str, version: int, *,
                                  profiled: bool = True) -> None:
    """Refuse a gate the candidate never gives evidence for (a feedback gate its kind of
    model has no figure for; drift without a reference profile, ``profiled``): it would
    wait out the inconclusive deadline, or never judge."""
    if spec.analysis.fail_on_drift and not profiled:
        raise InvalidInputError(
            f"analysis.fail_on_drift: v{version} has no reference profile to judge drift "
            "against (its manifest's reference_profile; training jobs record one); set it "
            "to false or register the version with a profile",
            detail={"field": "analysis.fail_on_drift"})
    wants = {"min_accuracy": ("classification", "online accuracy", "max_mae"),
             "max_mae": ("regression", "the mean absolute error", "min_accuracy"),
             # Agreement is on the top class: a regressor's shadow was judged on its errors
             # alone, the check skipped without a word.
             "min_shadow_agreement": ("classification", "shadow agreement (on the top class)",
                                      "max_shadow_mae")}
    for name, (needs, figure, instead) in wants.items():
        if getattr(spec.analysis, name) is not None and task != needs:
            raise InvalidInputError(
                f"analysis.{name}: {figure} needs a {needs} model, and v{version} is a "
                f"{task} one (its manifest's task); set it to null or use {instead}",
                detail={"field": f"analysis.{name}", "task": task})
    ab_test = spec.analysis.ab_test
    if ab_test is not None and ab_test.accuracy_effect is not None and \
            task not in ("classification", "regression"):
        # A regressor's accuracy test is skipped, said so; another kind's never gets a
        # label joined, so the test would hold every step to the inconclusive deadline.
        raise InvalidInputError(
            f"analysis.ab_test.accuracy_effect: the A/B accuracy test needs a classification "
            f"model, and v{version}'s manifest says task {task!r}; set it to null",
            detail={"field": "analysis.ab_test.accuracy_effect", "task": task})
