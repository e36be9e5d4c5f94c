"""Registry-driven rollouts: an endpoint that opts in follows one of its model's aliases.

An endpoint's ``rollout_policy`` (stored in its config) names the alias it tracks and the
template of the rollouts it starts. When that alias is *moved* (after the policy was set,
or since the move last acted on) onto a version the endpoint does not mainly serve, and
no rollout of that version was ever started there, nor is any rollout active on the
endpoint, the controller starts one (:func:`due`). The alias's value alone starts
nothing: one left on a version that reached the endpoint otherwise (a direct deploy, a
traffic change) would roll it back in once another replaced it. A version rolled back
once is not tried again by the alias: moving the alias to a new version is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.auth import Principal
from control_plane.deployments import endpoint_row, read_routes
from control_plane.rollouts.schemas import RolloutCreate, RolloutPolicy
from control_plane.rollouts.states import ACTIVE_STATES
from control_plane.schemas import Role
from control_plane.store import Database
from control_plane.store.models import AliasRow, EndpointRow, ModelRow, ModelVersionRow, RolloutRow

POLICY_KEY = "rollout_policy"
# When the tracked alias last moved as far as the endpoint has acted on it (its AliasRow's
# updated_at, ISO 8601; None: not there yet, so its first pointing is a move).
SEEN_KEY = "rollout_policy_alias_seen_at"


def store_policy(db: Database, endpoint: str, policy: RolloutPolicy | None) -> None:
    """Opt ``endpoint`` in (or out, with None) of rollouts started by moving an alias; the
    alias where it is now is no move."""
    with db.session() as session:
        row = endpoint_row(session, endpoint, for_update=True)  # beside a deploy's config change
        config = {k: v for k, v in row.config.items() if k not in (POLICY_KEY, SEEN_KEY)}
        if policy is not None:
            config[POLICY_KEY] = policy.model_dump(mode="json")
            alias = _tracked_alias(session, row.model_id, policy.track_alias)
            config[SEEN_KEY] = alias.updated_at.isoformat() if alias is not None else None
        row.config = config


def acted_on(db: Database, endpoint: str, moved_at: datetime) -> None:
    """Record that ``endpoint`` has acted on its tracked alias's move at ``moved_at``."""
    with db.session() as session:
        row = endpoint_row(session, endpoint, for_update=True)
        seen = _seen_at(row.config)
        if row.config.get(POLICY_KEY) and (seen is None or moved_at > seen):
            row.config = {**row.config, SEEN_KEY: moved_at.isoformat()}


def _tracked_alias(session: Session, model_id: int, alias: str) -> AliasRow | None:
    return session.scalar(select(AliasRow).where(AliasRow.model_id == model_id,
                                                 AliasRow.alias == alias))


def _seen_at(config: dict[str, Any]) -> datetime | None:
    raw = config.get(SEEN_KEY)
    try:
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def read_policy(db: Database, endpoint: str) -> RolloutPolicy | None:
    with db.session(readonly=True) as session:
        stored = endpoint_row(session, endpoint).config.get(POLICY_KEY)
        return RolloutPolicy.model_validate(stored) if stored else None


def due(db: Database) -> list[tuple[RolloutCreate, Principal, datetime]]:
    """The rollouts tracked aliases ask for now, each with the actor that starts it and
    the move it acts on (given to :func:`acted_on` once started). A move onto the version
    the endpoint already serves is acted on here."""
    wanted: list[tuple[str, str, int, dict[str, Any], datetime]] = []
    served: list[tuple[str, datetime]] = []
    with db.session(readonly=True) as session:
        for endpoint in session.scalars(select(EndpointRow)).all():
            policy = endpoint.config.get(POLICY_KEY)
            if not policy:
                continue
            model = session.get(ModelRow, endpoint.model_id)
            alias = _tracked_alias(session, endpoint.model_id, policy["track_alias"])
            if model is None or alias is None:
                continue
            seen_at = _seen_at(endpoint.config)
            if seen_at is not None and alias.updated_at <= seen_at:
                continue  # not moved since the endpoint last acted on it
            if read_routes(session, endpoint).stable == alias.version:
                served.append((endpoint.name, alias.updated_at))
                continue
            seen = session.scalar(select(RolloutRow.id).where(
                RolloutRow.endpoint == endpoint.name, RolloutRow.model_id == model.id,
                RolloutRow.candidate_version == alias.version))
            version = session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.model_id == model.id, ModelVersionRow.version == alias.version))
            busy = session.scalar(select(RolloutRow.id).where(
                RolloutRow.endpoint == endpoint.name, RolloutRow.state.in_(ACTIVE_STATES)))
            if seen is None and busy is None and version is not None and version.status != "rejected":
                wanted.append((endpoint.name, model.name, alias.version, policy, alias.updated_at))
    for endpoint_name, moved_at in served:
        acted_on(db, endpoint_name, moved_at)
    return [(RolloutCreate(endpoint=endpoint, model_ref=f"{model}:{version}",
                           **policy.get("template", {})),
             Principal(name=f"alias:{policy['track_alias']}", role=Role.DEPLOYER), moved_at)
            for endpoint, model, version, policy, moved_at in wanted]
