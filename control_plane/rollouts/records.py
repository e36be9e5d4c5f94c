"""Rollout rows in the store: reading one, its transitions and audit events, its API view,
and the plan and traffic of its steps. Each function works inside the caller's session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from control_plane.auth import Principal
from control_plane.deployments import Routes
from control_plane.errors import ConflictError, NotFoundError
from control_plane.notifications.sources import rollout_transition
from control_plane.rollouts.plan import Step, Strategy, plan_steps
from control_plane.rollouts.schemas import RolloutCreate, RolloutOut, StepOut
from control_plane.rollouts.states import RolloutState, can_transition
from control_plane.schemas import Role
from control_plane.storable import json_safe
from control_plane.store.models import EndpointRow, ModelRow, RolloutEventRow, RolloutRow

CONTROLLER = Principal(name="rollout-controller", role=Role.ADMIN)


def rollout_row(session: Session, rollout_id: int, *, for_update: bool = False) -> RolloutRow:
    """The stored rollout ``rollout_id``; a 404 where there is none. ``for_update``: in a
    transaction that changes the rollout, locked until it ends, so that a change decided on
    its state cannot interleave with another control plane's (a rollback by hand on one
    replica while the leader takes a step). SQLite serializes write transactions whole."""
    row = session.get(RolloutRow, rollout_id, with_for_update=for_update,
                      populate_existing=for_update)
    if row is None:
        raise NotFoundError(f"no rollout #{rollout_id}", detail={"field": "rollout"})
    return row


def transition(session: Session, row: RolloutRow, target: RolloutState, actor: str,
               reason: str, data: dict[str, Any] | None = None) -> None:
    """Move ``row`` to ``target`` with its audit event; a move the lifecycle forbids is a 409."""
    current = RolloutState(row.state)
    if not can_transition(current, target):
        raise ConflictError(f"rollout #{row.id} is {current} and cannot become {target}",
                            detail={"field": "state"})
    event(session, row, "transition", actor, reason, data or {}, from_state=current, to_state=target)
    row.state, row.reason, row.updated_at = target.value, reason, datetime.now(UTC)
    rollout_transition(session, row, current, target, actor, reason)  # notified on commit


def event(session: Session, row: RolloutRow, kind: str, actor: str, reason: str,
          data: dict[str, Any] | None = None, *, from_state: str = "", to_state: str = "") -> None:
    """Add one audit event for ``row`` at its current step."""
    session.add(RolloutEventRow(
        rollout_id=row.id, kind=kind, from_state=str(from_state), to_state=str(to_state),
        step_index=row.step_index or 0, actor=actor, reason=reason, data=json_safe(data or {})))


def rollout_out(session: Session, row: RolloutRow) -> RolloutOut:
    """``row`` as the API shows it, and as :func:`decision.decide` reads it."""
    model = session.get(ModelRow, row.model_id)
    assert model is not None
    return RolloutOut(
        id=row.id, endpoint=row.endpoint, model=model.name,
        candidate_version=row.candidate_version, stable_version=row.stable_version,
        strategy=Strategy(row.strategy), state=RolloutState(row.state),
        step_index=row.step_index, steps=[StepOut(**s) for s in row.spec["plan"]],
        step_started_at=row.step_started_at, failures=row.failures,
        last_analysis=row.last_analysis, reason=row.reason,
        ab_test=(row.last_analysis or {}).get("ab_test"),
        spec={k: v for k, v in row.spec.items() if k != "plan"},
        created_by=row.created_by, created_at=row.created_at, updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


# ---------------------------------------------------------------- plans and step traffic


def plan(spec: RolloutCreate, replicas: int) -> list[Step]:
    """The steps ``spec`` walks; the last one is held at least ``keep_warm_s``."""
    steps = plan_steps(spec.strategy, steps=spec.steps, step_duration_s=spec.step_duration_s,
                       replicas=replicas, shadow_then=spec.shadow_then)
    final = steps[-1]
    steps[-1] = Step(final.candidate_weight, final.shadow, max(final.hold_s, spec.keep_warm_s))
    return steps


def replicas(endpoint: EndpointRow, routes: Routes, stable: int) -> int:
    """How many replicas the stable version may run: a rolling plan moves one share at a time."""
    if endpoint.placement == "isolated":
        route = routes.get(stable)
        config = (route.settings if route else {}).get("scaling", {})
    else:
        config = endpoint.config.get("scaling", {})
    autoscaling = config.get("autoscaling")
    return int(autoscaling["max_replicas"] if autoscaling else config.get("replicas", 1))


def step_json(step: Step) -> dict[str, Any]:
    """``step`` as stored in the rollout's ``spec["plan"]``."""
    return {"candidate_weight": step.candidate_weight, "shadow": step.shadow, "hold_s": step.hold_s}


def steps(row: RolloutRow) -> list[Step]:
    """The plan stored with ``row``."""
    return [Step(**s) for s in row.spec["plan"]]


def step_traffic(row: RolloutRow, step: Step) -> tuple[dict[int, float], list[int]]:
    """The route table of ``step``: weights by version, and the mirrored versions."""
    stable = row.stable_version
    if step.shadow:
        return ({stable: 100.0} if stable else {}), [row.candidate_version]
    weights = {row.candidate_version: step.candidate_weight}
    if stable is not None:
        weights[stable] = step.stable_weight  # kept loaded at 0% until promotion: instant switch back
    return weights, []
