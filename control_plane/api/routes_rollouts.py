"""REST routes for rollouts: start, inspect, act on, and the audit history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from control_plane.api.deps import CP, Limit, Reader, Writer
from control_plane.rollouts.schemas import (
    RolloutAction,
    RolloutCreate,
    RolloutEventOut,
    RolloutOut,
    RolloutPolicy,
)
from control_plane.schemas import MAX_INT

router = APIRouter(tags=["rollouts"])
RolloutId = Annotated[int, Path(ge=1, le=MAX_INT, description="The rollout's number.")]


@router.post("/rollouts", response_model=RolloutOut, status_code=201)
def start_rollout(body: RolloutCreate, cp: CP, actor: Writer) -> RolloutOut:
    """Start a rollout; the controller takes it from ``pending`` within a moment."""
    return cp.rollouts.start(body, actor)


@router.get("/rollouts", response_model=list[RolloutOut])
def list_rollouts(
    cp: CP, _: Reader, limit: Limit = 50,
    endpoint: Annotated[str | None, Query(description="Only this endpoint's rollouts.")] = None,
    active: Annotated[bool | None, Query(description="Only active (or only finished) ones.")] = None,
) -> list[RolloutOut]:
    """Newest first."""
    return cp.rollouts.list(endpoint=endpoint, active=active, limit=limit)


@router.get("/rollouts/{rollout_id}", response_model=RolloutOut)
def get_rollout(rollout_id: RolloutId, cp: CP, _: Reader) -> RolloutOut:
    return cp.rollouts.get(rollout_id)


@router.get("/rollouts/{rollout_id}/events", response_model=list[RolloutEventOut])
def rollout_events(rollout_id: RolloutId, cp: CP, _: Reader) -> list[RolloutEventOut]:
    """The audit log: every transition, step and failing analysis, oldest first."""
    return cp.rollouts.events(rollout_id)


def _action(name: str, doc: str) -> None:
    def act(rollout_id: RolloutId, cp: CP, actor: Writer, body: RolloutAction | None = None) -> RolloutOut:
        return getattr(cp.rollouts, name)(rollout_id, actor, (body or RolloutAction()).reason)

    act.__name__ = f"{name}_rollout"
    act.__doc__ = doc
    router.post(f"/rollouts/{{rollout_id}}/{name}", response_model=RolloutOut)(act)


_action("pause", "Hold traffic at the current step and stop analysing.")
_action("resume", "Continue a paused rollout; the current step's hold starts again.")
_action("promote", "Skip the remaining steps and promote (waits for approval where required).")
_action("rollback", "Stable back to 100% now; the candidate is rejected with the reason.")
_action("abort", "Stop and restore the stable version without rejecting the candidate.")


@router.get("/endpoints/{name}/rollout-policy", response_model=RolloutPolicy | None)
def get_rollout_policy(name: str, cp: CP, _: Reader) -> RolloutPolicy | None:
    return cp.rollouts.get_policy(name)


@router.put("/endpoints/{name}/rollout-policy", response_model=RolloutPolicy)
def set_rollout_policy(name: str, body: RolloutPolicy, cp: CP, actor: Writer) -> RolloutPolicy:
    """Opt in: moving the tracked alias onto a version starts a rollout with the template."""
    cp.rollouts.set_policy(name, body, actor)
    return body


@router.delete("/endpoints/{name}/rollout-policy", status_code=204)
def delete_rollout_policy(name: str, cp: CP, actor: Writer) -> Response:
    cp.rollouts.set_policy(name, None, actor)
    return Response(status_code=204)
