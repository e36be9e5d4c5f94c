"""The rollout controller: persisted rollouts advanced by analysis of live statistics.

Every decision is one store transaction that writes the rollout's new state, its audit
event and, where traffic moves, the endpoint's route table together; the reconciler then
makes Serve match. So the store always describes the traffic a rollout set, and a
restarted control plane resumes from what is stored.

Resumption rule (documented in docs/rollouts.md): after a restart a rollout continues at
its persisted step with its persisted failure streak; the step's hold timer keeps its
stored start, because the Monitor (a detached actor) kept counting while the control
plane was down. The analysis window is the last ``window_s`` seconds, so evidence from
before the restart still counts and a breach that began meanwhile is caught at the first
analysis.

Concepts kept apart: approval gating (``approvals``: an unapproved candidate waits at its
limit), a rollback's follow-ups (``followups``: stored with the terminal state, finished
once by the next pass) and the inconclusive deadline (``deadline``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.auth import Principal
from control_plane.deployments import Deployments, endpoint_row, refuse_during_rollout
from control_plane.errors import ConflictError, InvalidInputError, NotFoundError
from control_plane.observability import json_safe
from control_plane.registry import Registry
from control_plane.rollouts.analysis import CheckResult, Verdict, analyse
from control_plane.rollouts.approvals import approval_gate
from control_plane.rollouts.deadline import inconclusive_for, past_deadline
from control_plane.rollouts.followups import AlertSink, FollowUps, owe, owe_archive
from control_plane.rollouts.plan import Step, Strategy, plan_steps
from control_plane.rollouts.schemas import (
    AnalysisSettings,
    RolloutCreate,
    RolloutEventOut,
    RolloutOut,
    RolloutPolicy,
    StepOut,
)
from control_plane.rollouts.states import ACTIVE_STATES, RolloutState, can_transition
from control_plane.schemas import AliasSet, Role, Stage, StageChange
from control_plane.store import Database
from control_plane.store.models import (
    AliasRow,
    EndpointRouteRow,
    EndpointRow,
    ModelRow,
    ModelVersionRow,
    RolloutEventRow,
    RolloutRow,
)

log = logging.getLogger(__name__)

CONTROLLER = Principal(name="rollout-controller", role=Role.ADMIN)
CHAMPION = "champion"
ALIAS_CHECK_S = 1.0  # how often tracked aliases are compared with what endpoints serve
StatsSource = Callable[[str, float], dict[int, dict[str, Any]]]


class RolloutController:
    """Starts, advances, promotes and rolls back rollouts; ``tick`` is the control loop."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        deployments: Deployments,
        *,
        stats: StatsSource,
        apply: Callable[[], Any] = lambda: None,
        alert: AlertSink | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db, self.registry, self.deployments = db, registry, deployments
        self._stats, self._apply, self._now = stats, apply, now
        self._followups = FollowUps(db, alert, registry)
        self._analysed_at: dict[int, datetime] = {}
        self._aliases_checked_at: datetime | None = None
        # One decision at a time in this process: the loop and API calls share rollouts.
        self._lock = threading.RLock()

    # ------------------------------------------------------------ starting and reading

    def start(self, spec: RolloutCreate, actor: Principal) -> RolloutOut:
        """Record a new rollout of ``spec.model_ref`` on ``spec.endpoint`` (state pending)."""
        actor.require(Role.DEPLOYER)
        candidate = self.registry.resolve(spec.model_ref)
        with self._lock, self.db.session() as session:
            endpoint = endpoint_row(session, spec.endpoint)
            refuse_during_rollout(session, endpoint.name, "start another")
            model = session.get(ModelRow, endpoint.model_id)
            assert model is not None
            if candidate.model != model.name:
                raise InvalidInputError(
                    f"endpoint {endpoint.name!r} serves model {model.name!r}, not "
                    f"{candidate.model!r}", detail={"field": "model_ref"})
            if candidate.status == "rejected":
                raise ConflictError(
                    f"{candidate.model}:{candidate.version} was rejected "
                    f"({candidate.status_reason}); register a new version",
                    detail={"field": "model_ref"})
            weights = _weights(session, endpoint)
            stable = max(weights, key=lambda v: weights[v]) if weights else None
            if stable is None or weights[stable] <= 0:
                raise ConflictError(f"endpoint {endpoint.name!r} serves no version yet; "
                                    "deploy one first", detail={"field": "endpoint"})
            if stable == candidate.version:
                raise ConflictError(
                    f"{model.name}:{candidate.version} already takes the most traffic on "
                    f"{endpoint.name!r}; roll out a different version",
                    detail={"field": "model_ref"})
            steps = _plan(spec, _replicas(session, endpoint, stable))
            row = RolloutRow(
                endpoint=endpoint.name, model_id=model.id, candidate_version=candidate.version,
                stable_version=stable, strategy=spec.strategy.value,
                state=RolloutState.PENDING.value,
                spec={**spec.model_dump(mode="json", exclude={"endpoint", "model_ref"}),
                      "plan": [_step_json(s) for s in steps]},
                created_by=actor.name, last_analysis={},
            )
            session.add(row)
            session.flush()
            gate = approval_gate(session, row)
            _event(session, row, "created", actor.name,
                   f"{spec.strategy.value} of v{candidate.version} over v{stable}",
                   {"plan": row.spec["plan"],
                    "approval": {"required": gate.required, "limit": gate.limit}})
            return _out(session, row)

    def get(self, rollout_id: int) -> RolloutOut:
        with self.db.session(readonly=True) as session:
            return _out(session, _rollout(session, rollout_id))

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
            return [_out(session, row) for row in session.scalars(query).all()]

    def events(self, rollout_id: int) -> list[RolloutEventOut]:
        with self.db.session(readonly=True) as session:
            _rollout(session, rollout_id)
            rows = session.scalars(select(RolloutEventRow).where(
                RolloutEventRow.rollout_id == rollout_id).order_by(RolloutEventRow.id)).all()
            return [RolloutEventOut.model_validate(row, from_attributes=True) for row in rows]

    # ------------------------------------------------------------ people's actions

    def pause(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Hold traffic where it is and stop analysing until resumed."""
        actor.require(Role.DEPLOYER)
        with self._lock, self.db.session() as session:
            row = _rollout(session, rollout_id)
            _transition(session, row, RolloutState.PAUSED, actor.name, reason or "paused")
            return _out(session, row)

    def resume(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Continue a paused rollout; the current step's hold starts again."""
        actor.require(Role.DEPLOYER)
        with self._lock, self.db.session() as session:
            row = _rollout(session, rollout_id)
            if row.state != RolloutState.PAUSED:
                raise ConflictError(f"rollout #{row.id} is {row.state}, not paused",
                                    detail={"field": "state"})
            _transition(session, row, RolloutState.PROGRESSING, actor.name, reason or "resumed")
            row.step_started_at = self._now()
            return _out(session, row)

    def promote(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Skip the remaining steps: the candidate takes 100% and is promoted (approval permitting)."""
        actor.require(Role.DEPLOYER)
        with self._lock:
            current = self.get(rollout_id)
            if current.state not in (RolloutState.PROGRESSING, RolloutState.AWAITING_APPROVAL):
                raise ConflictError(
                    f"rollout #{current.id} is {current.state}; only a progressing or "
                    "approval-waiting rollout can be promoted (resume it first if paused)",
                    detail={"field": "state"})
            with self.db.session(readonly=True) as session:
                approval_gate(session, _rollout(session, rollout_id)).refuse_promotion(rollout_id)
            self._finish_steps(current, actor.name, reason or f"promoted by {actor.name}")
        self._apply()
        return self.get(rollout_id)

    def rollback(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Stable back to 100% now; the candidate is rejected in the registry."""
        actor.require(Role.DEPLOYER)
        why = f"rolled back by {actor.name}" + (f": {reason}" if reason else "")
        with self._lock:
            self._end(self.get(rollout_id), RolloutState.ROLLED_BACK, actor.name, why, {},
                      reject=True)
        self._apply()
        return self.get(rollout_id)

    def abort(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Stop the rollout and restore the stable version, without judging the candidate."""
        actor.require(Role.DEPLOYER)
        why = f"aborted by {actor.name}" + (f": {reason}" if reason else "")
        with self._lock:
            self._end(self.get(rollout_id), RolloutState.FAILED, actor.name, why, {},
                      reject=False)
        self._apply()
        return self.get(rollout_id)

    # ------------------------------------------------------------ registry-driven rollouts

    def set_policy(self, endpoint: str, policy: RolloutPolicy | None, actor: Principal) -> None:
        """Opt ``endpoint`` in (or out, with None) of rollouts started by moving an alias."""
        actor.require(Role.DEPLOYER)
        with self.db.session() as session:
            row = endpoint_row(session, endpoint)
            config = {k: v for k, v in row.config.items() if k != "rollout_policy"}
            if policy is not None:
                config["rollout_policy"] = policy.model_dump(mode="json")
            row.config = config

    def get_policy(self, endpoint: str) -> RolloutPolicy | None:
        with self.db.session(readonly=True) as session:
            stored = endpoint_row(session, endpoint).config.get("rollout_policy")
            return RolloutPolicy.model_validate(stored) if stored else None

    # ------------------------------------------------------------ the control loop

    def tick(self) -> None:
        """One pass: advance every active rollout, remove drained versions, follow aliases."""
        changed = False
        with self._lock:
            try:  # first what an earlier pass owes (it may have crashed mid-rollback)
                changed |= self._followups.finish_all()
            except Exception:
                log.exception("finishing rollout follow-ups failed")
            for rollout in self.list(active=True, limit=1000):
                try:
                    changed |= self._advance(rollout)
                except Exception:  # one broken rollout must not stall the others
                    log.exception("advancing rollout #%d failed", rollout.id)
            try:
                changed |= self._retire_drained()
                now = self._now()
                if self._aliases_checked_at is None or \
                        (now - self._aliases_checked_at).total_seconds() >= ALIAS_CHECK_S:
                    self._aliases_checked_at = now
                    changed |= self._follow_aliases()
            except Exception:
                log.exception("rollout housekeeping failed")
        if changed:
            self._apply()

    def _advance(self, rollout: RolloutOut) -> bool:
        now = self._now()
        if rollout.state == RolloutState.PENDING:
            return self._next_step(rollout.id, 0, now)
        if rollout.state == RolloutState.PAUSED:
            return False
        settings = AnalysisSettings.model_validate(rollout.spec["analysis"])
        if rollout.failures >= settings.failures_to_rollback:
            # The streak reached its limit and was stored, but the process died before the
            # rollback committed: the decision stands, whatever the next window shows.
            self._end(rollout, RolloutState.ROLLED_BACK, CONTROLLER.name,
                      f"automatic rollback: {rollout.last_analysis.get('reason', '')}",
                      {"analysis": rollout.last_analysis}, reject=True)
            return True
        last = self._analysed_at.get(rollout.id)
        # A rollout waiting for approval before its first step has no traffic to judge.
        if rollout.step_started_at is not None and \
                (last is None or (now - last).total_seconds() >= settings.interval_s):
            self._analysed_at[rollout.id] = now
            analysed = self._analyse(rollout, settings, now)
            if analysed is not None and analysed[0].verdict == Verdict.FAIL and \
                    rollout.failures + 1 >= settings.failures_to_rollback:
                result, record = analysed
                self._end(rollout, RolloutState.ROLLED_BACK, CONTROLLER.name,
                          f"automatic rollback: {result.reason}", {"analysis": record},
                          reject=True)
                return True
            rollout = self.get(rollout.id)
            overdue = past_deadline(rollout.last_analysis, settings, rollout.state)
            if overdue:
                self._end(rollout, RolloutState.FAILED, CONTROLLER.name, overdue,
                          {"analysis": rollout.last_analysis}, reject=False)
                return True
        if rollout.state == RolloutState.AWAITING_APPROVAL:
            return self._check_approval(rollout)
        step = rollout.current_step
        held = (now - (rollout.step_started_at or now)).total_seconds()
        if held < step.hold_s or rollout.last_analysis.get("verdict") != Verdict.PASS:
            return False
        if rollout.step_index + 1 < len(rollout.steps):
            return self._next_step(rollout.id, rollout.step_index + 1, now)
        self._finish_steps(rollout, CONTROLLER.name, "every step passed its analysis")
        return True

    def _next_step(self, rollout_id: int, index: int, now: datetime) -> bool:
        """Move to step ``index``, or wait for an approval if that step would exceed the limit."""
        with self.db.session() as session:
            row = _rollout(session, rollout_id)
            if row.state not in (RolloutState.PENDING, RolloutState.PROGRESSING):
                return False
            gate = approval_gate(session, row)
            if gate.blocks(_steps(row)[index].candidate_weight):
                _transition(session, row, RolloutState.AWAITING_APPROVAL, CONTROLLER.name,
                            gate.waiting_reason(), {"limit": gate.limit, "next_step": index})
                return False
            if row.state == RolloutState.PENDING:
                _transition(session, row, RolloutState.PROGRESSING, CONTROLLER.name,
                            "first step")
            self._set_step(session, row, index, now)
        return True

    def _analyse(self, rollout: RolloutOut, settings: AnalysisSettings,
                 now: datetime) -> tuple[CheckResult, dict[str, Any]] | None:
        """Judge the current step, store the verdict; None when the rollout moved on meanwhile."""
        started = rollout.step_started_at or now
        window = min(settings.window_s, max(1.0, (now - started).total_seconds()))
        snapshot = self._stats(rollout.endpoint, window)
        candidate = snapshot.get(rollout.candidate_version)
        stable = snapshot.get(rollout.stable_version) if rollout.stable_version else None
        result = analyse(settings.to_config(), candidate, stable,
                         shadow=rollout.current_step.shadow)
        record = json_safe({
            "verdict": result.verdict.value, "reason": result.reason, "checks": result.checks,
            "at": now.isoformat(), "window_s": window, "step_index": rollout.step_index,
            "candidate": _summary(candidate), "stable": _summary(stable),
            "inconclusive_since": inconclusive_for(rollout.last_analysis, result.verdict, now,
                                                   started, rollout.state),
        })
        with self.db.session() as session:
            row = _rollout(session, rollout.id)
            if row.state not in (RolloutState.PROGRESSING, RolloutState.AWAITING_APPROVAL):
                return None
            if result.verdict == Verdict.FAIL:
                row.failures += 1
                _event(session, row, "analysis_failed", CONTROLLER.name, result.reason, record)
            elif result.verdict == Verdict.PASS:
                row.failures = 0
            row.last_analysis = record
            row.updated_at = now
        return result, record

    def _set_step(self, session: Session, row: RolloutRow, index: int, now: datetime) -> None:
        step = _steps(row)[index]
        endpoint = endpoint_row(session, row.endpoint)
        weights, shadows = _step_traffic(row, step)
        self.deployments.write_routes(session, endpoint, weights, shadows)
        row.step_index, row.step_started_at, row.updated_at = index, now, now
        # A new step is judged on its own evidence.
        row.last_analysis = {}
        _event(session, row, "step", CONTROLLER.name,
               f"step {index + 1}/{len(_steps(row))}: "
               + ("candidate mirrored" if step.shadow else f"candidate at {step.candidate_weight:g}%"),
               {"weights": {str(k): v for k, v in weights.items()}, "shadows": shadows})

    def _finish_steps(self, rollout: RolloutOut, actor: str, reason: str) -> None:
        """After the last step (or a manual promote): wait for approval, or promote."""
        with self.db.session() as session:
            row = _rollout(session, rollout.id)
            gate = approval_gate(session, row)
            if gate.required and not gate.approved:
                if row.state != RolloutState.AWAITING_APPROVAL:
                    _transition(session, row, RolloutState.AWAITING_APPROVAL, actor,
                                f"{reason}; {gate.waiting_reason()}", {"limit": gate.limit})
                return
        self._promote(rollout, actor, reason)

    def _check_approval(self, rollout: RolloutOut) -> bool:
        """An approval resumes the walk (at the step it waited before); a rejection rolls back."""
        with self.db.session() as session:
            row = _rollout(session, rollout.id)
            if row.state != RolloutState.AWAITING_APPROVAL:
                return False
            gate = approval_gate(session, row)
            if gate.decision != "rejected":
                if gate.required and not gate.approved:
                    return False
                _transition(session, row, RolloutState.PROGRESSING, CONTROLLER.name,
                            "approved" if gate.approved
                            else "the model's policy no longer requires an approval")
                if row.step_started_at is None:  # it waited before its first step
                    self._set_step(session, row, 0, self._now())
                return True
        self._end(rollout, RolloutState.ROLLED_BACK, CONTROLLER.name,
                  "the approver rejected the candidate", {}, reject=True)
        return True

    def _promote(self, rollout: RolloutOut, actor: str, reason: str) -> None:
        # The registry steps are idempotent: after a crash between them and the final
        # transaction, the next tick repeats them and then finishes. One that fails ends
        # the rollout failed (traffic back on stable), never an error every tick.
        name, version = rollout.model, rollout.candidate_version
        note = f"rollout #{rollout.id} on {rollout.endpoint}"
        step = f"moving the {CHAMPION} alias to v{version}"
        try:
            self.registry.set_alias(name, CHAMPION, AliasSet(version=version), CONTROLLER)
            if self.registry.get_version(name, version).stage in (Stage.NONE, Stage.ARCHIVED):
                step = f"moving v{version} to staging"
                self.registry.transition_stage(name, version, StageChange(
                    stage=Stage.STAGING, reason=note), CONTROLLER)
            step = f"moving v{version} to production"
            self.registry.transition_stage(name, version, StageChange(
                stage=Stage.PRODUCTION, reason=note), CONTROLLER)
        except Exception as error:
            log.warning("promotion of rollout #%d failed at %s: %s", rollout.id, step, error)
            self._end(self.get(rollout.id), RolloutState.FAILED, CONTROLLER.name,
                      f"promotion failed {step}: {error}; traffic restored to the stable "
                      "version", {"error": type(error).__name__}, reject=False)
            return
        with self.db.session() as session:
            row = _rollout(session, rollout.id)
            if RolloutState(row.state).terminal:
                return
            now = self._now()
            endpoint = endpoint_row(session, row.endpoint)
            weights = {row.candidate_version: 100.0}
            if row.stable_version is not None:
                weights[row.stable_version] = 0.0  # drains, then is removed and archived
                row.retire_version = row.stable_version
                row.retire_at = now + timedelta(seconds=float(row.spec.get("drain_s", 5.0)))
            self.deployments.write_routes(session, endpoint, weights, [])
            _transition(session, row, RolloutState.SUCCEEDED, actor, reason,
                        {"weights": {str(k): v for k, v in weights.items()},
                         "alias": CHAMPION, "stage": Stage.PRODUCTION.value})
            row.finished_at = now

    def _end(self, rollout: RolloutOut, state: RolloutState, actor: str, reason: str,
             data: dict[str, Any], *, reject: bool) -> None:
        """Roll back or abort: stable to 100% first, the candidate drained, then removed."""
        if not can_transition(rollout.state, state):
            raise ConflictError(f"rollout #{rollout.id} is {rollout.state} and cannot become "
                                f"{state}", detail={"field": "state"})
        with self.db.session() as session:
            row = _rollout(session, rollout.id)
            if not can_transition(RolloutState(row.state), state):
                return
            now = self._now()
            endpoint = endpoint_row(session, row.endpoint)
            weights: dict[int, float] = {row.candidate_version: 0.0}
            if row.stable_version is not None:
                weights[row.stable_version] = 100.0
            self.deployments.write_routes(session, endpoint, weights, [], allow_rejected=True)
            if not row.spec.get("keep_candidate"):
                row.retire_version = row.candidate_version
                row.retire_at = now + timedelta(seconds=float(row.spec.get("drain_s", 5.0)))
            _transition(session, row, state, actor, reason,
                        {**data, "weights": {str(k): v for k, v in weights.items()}})
            row.finished_at = now
            # What is still owed commits with the state, so a crash cannot lose it.
            owe(row, reject=reason if reject else None,
                alert=_rollback_alert(rollout, reason, data)
                if state == RolloutState.ROLLED_BACK else None)
        self._apply()  # traffic first: the registry and the alert can wait a moment
        self._followups.finish(rollout.id)

    def _retire_drained(self) -> bool:
        """Remove versions whose drain time is over; archive a replaced stable version."""
        now = self._now()
        with self.db.session() as session:
            due = session.scalars(select(RolloutRow).where(
                RolloutRow.retire_at.is_not(None), RolloutRow.retire_at <= now)).all()
            archive: list[int] = []
            for row in due:
                version = row.retire_version
                row.retire_version, row.retire_at = None, None
                endpoint = session.scalar(select(EndpointRow).where(
                    EndpointRow.name == row.endpoint))
                if endpoint is None or version is None:
                    continue
                weights = _weights(session, endpoint)
                if weights.get(version) != 0.0 or any(
                        r.state in ACTIVE_STATES for r in session.scalars(select(RolloutRow).where(
                            RolloutRow.endpoint == row.endpoint, RolloutRow.id != row.id))):
                    continue  # taken back into service, or a newer rollout owns the table
                del weights[version]
                self.deployments.write_routes(session, endpoint, weights, _shadows(session, endpoint),
                                              allow_rejected=True)
                _event(session, row, "retired", CONTROLLER.name,
                       f"v{version} drained and removed from {row.endpoint}")
                if row.state == RolloutState.SUCCEEDED and version == row.stable_version:
                    # Owed with the removal: a crash before the archive cannot lose it.
                    owe_archive(row, version)
                    archive.append(row.id)
        for rollout_id in archive:
            self._followups.finish(rollout_id)
        return bool(due)

    def _follow_aliases(self) -> bool:
        """Start a rollout where an opted-in endpoint's tracked alias names a new version."""
        started = False
        with self.db.session(readonly=True) as session:
            wanted: list[tuple[str, str, int, dict[str, Any]]] = []
            for endpoint in session.scalars(select(EndpointRow)).all():
                policy = endpoint.config.get("rollout_policy")
                if not policy:
                    continue
                model = session.get(ModelRow, endpoint.model_id)
                alias = session.scalar(select(AliasRow).where(
                    AliasRow.model_id == endpoint.model_id, AliasRow.alias == policy["track_alias"]))
                if model is None or alias is None:
                    continue
                weights = _weights(session, endpoint)
                if weights and max(weights, key=lambda v: weights[v]) == alias.version:
                    continue
                seen = session.scalar(select(RolloutRow.id).where(
                    RolloutRow.endpoint == endpoint.name,
                    RolloutRow.candidate_version == alias.version))
                version = session.scalar(select(ModelVersionRow).where(
                    ModelVersionRow.model_id == model.id, ModelVersionRow.version == alias.version))
                busy = session.scalar(select(RolloutRow.id).where(
                    RolloutRow.endpoint == endpoint.name, RolloutRow.state.in_(ACTIVE_STATES)))
                if seen is None and busy is None and version is not None and version.status != "rejected":
                    wanted.append((endpoint.name, model.name, alias.version, policy))
        for endpoint_name, model_name, version, policy in wanted:
            spec = RolloutCreate(endpoint=endpoint_name, model_ref=f"{model_name}:{version}",
                                 **policy.get("template", {}))
            actor = Principal(name=f"alias:{policy['track_alias']}", role=Role.DEPLOYER)
            self.start(spec, actor)
            started = True
        return started


# ---------------------------------------------------------------- store helpers


def _rollout(session: Session, rollout_id: int) -> RolloutRow:
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        raise NotFoundError(f"no rollout #{rollout_id}", detail={"field": "rollout"})
    return row


def _transition(session: Session, row: RolloutRow, target: RolloutState, actor: str,
                reason: str, data: dict[str, Any] | None = None) -> None:
    current = RolloutState(row.state)
    if not can_transition(current, target):
        raise ConflictError(f"rollout #{row.id} is {current} and cannot become {target}",
                            detail={"field": "state"})
    _event(session, row, "transition", actor, reason, data or {}, from_state=current, to_state=target)
    row.state, row.reason, row.updated_at = target.value, reason, datetime.now(UTC)


def _event(session: Session, row: RolloutRow, kind: str, actor: str, reason: str,
           data: dict[str, Any] | None = None, *, from_state: str = "", to_state: str = "") -> None:
    session.add(RolloutEventRow(
        rollout_id=row.id, kind=kind, from_state=str(from_state), to_state=str(to_state),
        step_index=row.step_index or 0, actor=actor, reason=reason, data=json_safe(data or {})))


def _routes(session: Session, endpoint: EndpointRow) -> list[tuple[int, EndpointRouteRow]]:
    rows = session.execute(
        select(ModelVersionRow.version, EndpointRouteRow)
        .join(ModelVersionRow, ModelVersionRow.id == EndpointRouteRow.version_id)
        .where(EndpointRouteRow.endpoint_id == endpoint.id)).all()
    return [(version, route) for version, route in rows]


def _weights(session: Session, endpoint: EndpointRow) -> dict[int, float]:
    return {v: r.weight for v, r in _routes(session, endpoint) if not r.shadow}


def _shadows(session: Session, endpoint: EndpointRow) -> list[int]:
    return [v for v, r in _routes(session, endpoint) if r.shadow]


def _replicas(session: Session, endpoint: EndpointRow, stable: int) -> int:
    if endpoint.placement == "isolated":
        scaling = dict(_routes(session, endpoint)).get(stable)
        config = (scaling.settings if scaling else {}).get("scaling", {})
    else:
        config = endpoint.config.get("scaling", {})
    autoscaling = config.get("autoscaling")
    return int(autoscaling["max_replicas"] if autoscaling else config.get("replicas", 1))


def _plan(spec: RolloutCreate, replicas: int) -> list[Step]:
    steps = plan_steps(spec.strategy, steps=spec.steps, step_duration_s=spec.step_duration_s,
                       replicas=replicas, shadow_then=spec.shadow_then)
    final = steps[-1]
    steps[-1] = Step(final.candidate_weight, final.shadow, max(final.hold_s, spec.keep_warm_s))
    return steps


def _step_json(step: Step) -> dict[str, Any]:
    return {"candidate_weight": step.candidate_weight, "shadow": step.shadow, "hold_s": step.hold_s}


def _steps(row: RolloutRow) -> list[Step]:
    return [Step(**s) for s in row.spec["plan"]]


def _step_traffic(row: RolloutRow, step: Step) -> tuple[dict[int, float], list[int]]:
    stable = row.stable_version
    if step.shadow:
        return ({stable: 100.0} if stable else {}), [row.candidate_version]
    weights = {row.candidate_version: step.candidate_weight}
    if stable is not None:
        weights[stable] = step.stable_weight  # kept loaded at 0% until promotion: instant switch back
    return weights, []


def _rollback_alert(rollout: RolloutOut, reason: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"name": "RolloutRolledBack", "severity": "critical",
            "labels": {"endpoint": rollout.endpoint, "model": rollout.model,
                       "version": str(rollout.candidate_version)},
            "summary": f"rollout #{rollout.id} of {rollout.model}:{rollout.candidate_version} "
                       f"on {rollout.endpoint}: {reason}",
            "data": {"rollout": rollout.id, **data}}


def _summary(stats: dict[str, Any] | None) -> dict[str, Any]:
    if not stats:
        return {}
    keys = ("requests", "error_rate", "p50_ms", "p95_ms", "p99_ms", "throughput_rps")
    summary = {k: stats.get(k) for k in keys}
    if stats.get("shadow", {}).get("compared"):
        summary["shadow"] = stats["shadow"]
    if stats.get("drift"):
        summary["drift"] = {k: stats["drift"].get(k) for k in ("verdict", "drifted_features")}
    if stats.get("accuracy"):
        summary["accuracy"] = stats["accuracy"]
    return summary


def _out(session: Session, row: RolloutRow) -> RolloutOut:
    model = session.get(ModelRow, row.model_id)
    assert model is not None
    return RolloutOut(
        id=row.id, endpoint=row.endpoint, model=model.name,
        candidate_version=row.candidate_version, stable_version=row.stable_version,
        strategy=Strategy(row.strategy), state=RolloutState(row.state),
        step_index=row.step_index, steps=[StepOut(**s) for s in row.spec["plan"]],
        step_started_at=row.step_started_at, failures=row.failures,
        last_analysis=row.last_analysis, reason=row.reason,
        spec={k: v for k, v in row.spec.items() if k != "plan"},
        created_by=row.created_by, created_at=row.created_at, updated_at=row.updated_at,
        finished_at=row.finished_at,
    )
