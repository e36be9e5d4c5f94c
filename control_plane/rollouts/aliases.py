"""Registry-driven rollouts: an endpoint that opts in follows one of its model's aliases.

An endpoint's ``rollout_policy`` (stored in its config) names the alias it tracks and the
template of the rollouts it starts. When that alias names a version the endpoint does not
mainly serve, and no rollout of that version was ever started there, nor is any rollout
active on the endpoint, the controller starts one (:func:`due`). A version rolled back once
is not tried again by the alias: moving the alias to a new version is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from control_plane.auth import Principal
from control_plane.deployments import endpoint_row, read_routes
from control_plane.rollouts.schemas import RolloutCreate, RolloutPolicy
from control_plane.rollouts.states import ACTIVE_STATES
from control_plane.schemas import Role
from control_plane.store import Database
from control_plane.store.models import AliasRow, EndpointRow, ModelRow, ModelVersionRow, RolloutRow

POLICY_KEY = "rollout_policy"


def store_policy(db: Database, endpoint: str, policy: RolloutPolicy | None) -> None:
    """Opt ``endpoint`` in (or out, with None) of rollouts started by moving an alias."""
    with db.session() as session:
        row = endpoint_row(session, endpoint, for_update=True)  # beside a deploy's config change
        config = {k: v for k, v in row.config.items() if k != POLICY_KEY}
        if policy is not None:
            config[POLICY_KEY] = policy.model_dump(mode="json")
        row.config = config


def read_policy(db: Database, endpoint: str) -> RolloutPolicy | None:
    with db.session(readonly=True) as session:
        stored = endpoint_row(session, endpoint).config.get(POLICY_KEY)
        return RolloutPolicy.model_validate(stored) if stored else None


def due(db: Database) -> list[tuple[RolloutCreate, Principal]]:
    """The rollouts tracked aliases ask for now, each with the actor that starts it."""
    wanted: list[tuple[str, str, int, dict[str, Any]]] = []
    with db.session(readonly=True) as session:
        for endpoint in session.scalars(select(EndpointRow)).all():
            policy = endpoint.config.get(POLICY_KEY)
            if not policy:
                continue
            model = session.get(ModelRow, endpoint.model_id)
            alias = session.scalar(select(AliasRow).where(
                AliasRow.model_id == endpoint.model_id, AliasRow.alias == policy["track_alias"]))
            if model is None or alias is None:
                continue
            if read_routes(session, endpoint).stable == alias.version:
                continue
            seen = session.scalar(select(RolloutRow.id).where(
                RolloutRow.endpoint == endpoint.name, RolloutRow.model_id == model.id,
                RolloutRow.candidate_version == alias.version))
            version = session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.model_id == model.id, ModelVersionRow.version == alias.version))
            busy = session.scalar(select(RolloutRow.id).where(
                RolloutRow.endpoint == endpoint.name, RolloutRow.state.in_(ACTIVE_STATES)))
            if seen is None and busy is None and version is not None and version.status != "rejected":
                wanted.append((endpoint.name, model.name, alias.version, policy))
    return [(RolloutCreate(endpoint=endpoint, model_ref=f"{model}:{version}",
                           **policy.get("template", {})),
             Principal(name=f"alias:{policy['track_alias']}", role=Role.DEPLOYER))
            for endpoint, model, version, policy in wanted]
