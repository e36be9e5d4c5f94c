"""Desired serving state: which versions each endpoint serves, with what weights.

The store is the source of truth; every change here is one transaction and bumps the
endpoint's generation, then the reconciler makes Ray Serve match.

An endpoint's route table is read in one place, :func:`read_routes`: this module, the
rollout controller and the reconciler all see the same :class:`Routes`, so "the stable
version", "the weights" and "the shadows" mean one thing everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_plane.auth import Principal
from control_plane.errors import ConflictError, InvalidInputError, NotFoundError
from control_plane.registry import Registry, latest_decision, parse_ref, registrant_subject
from control_plane.schemas import (
    BatchSettings,
    DeployRequest,
    EndpointOut,
    ModelPolicy,
    Role,
    RouteOut,
    ScaleSettings,
    TrafficUpdate,
)
from control_plane.store import Database
from control_plane.store.models import (
    EndpointRouteRow,
    EndpointRow,
    ModelRow,
    ModelVersionRow,
    RolloutRow,
)
from serving.names import endpoint_url, version_app_parts

# Without a configured max_unapproved_weight, a manual change may give an unapproved
# version as much as the default canary's last step below 100% (a rollout uses its own).
DEFAULT_UNAPPROVED_WEIGHT = 50.0


@dataclass(frozen=True)
class Route:
    """One version's place in an endpoint's route table: the stored rows, read together."""

    row: EndpointRouteRow  # weight, shadow and the version's serving settings
    version_row: ModelVersionRow  # the version served: number, manifest, artifact

    @property
    def version(self) -> int:
        """The version's number."""
        return self.version_row.version

    @property
    def weight(self) -> float:
        return self.row.weight

    @property
    def shadow(self) -> bool:
        return self.row.shadow

    @property
    def settings(self) -> dict[str, Any]:
        return self.row.settings


@dataclass(frozen=True)
class Routes:
    """An endpoint's route table as stored, in version order (see :func:`read_routes`)."""

    entries: tuple[Route, ...]

    def __iter__(self) -> Iterator[Route]:
        return iter(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def weights(self) -> dict[int, float]:
        """Traffic (percent) by version number, for the versions that take traffic; a
        shadow only receives copies, so it is not among them."""
        return {r.version: r.weight for r in self.entries if not r.shadow}

    @property
    def shadows(self) -> list[int]:
        """The versions that receive mirrored copies of the traffic."""
        return [r.version for r in self.entries if r.shadow]

    @property
    def stable(self) -> int | None:
        """The version taking the most traffic (the lowest on a tie), None without any."""
        weights = self.weights
        return max(weights, key=lambda v: weights[v]) if weights else None

    def get(self, version: int) -> Route | None:
        """``version``'s route, None where the endpoint does not route to it."""
        return next((r for r in self.entries if r.version == version), None)


def read_routes(session: Session, endpoint: EndpointRow) -> Routes:
    """``endpoint``'s route table: the one query that reads traffic weights.

    The rows are the session's own, so a caller inside a transaction may change them.
    Version order makes everything built from the table (the reconciler's documents, the
    settings a new route copies) the same on every read.
    """
    rows = session.execute(
        select(EndpointRouteRow, ModelVersionRow)
        .join(ModelVersionRow, ModelVersionRow.id == EndpointRouteRow.version_id)
        .where(EndpointRouteRow.endpoint_id == endpoint.id)
        .order_by(ModelVersionRow.version)).all()
    return Routes(tuple(Route(route, version) for route, version in rows))


class Deployments:
    """Endpoints and their route tables, as stored."""

    def __init__(self, db: Database, registry: Registry, *, base_url: str) -> None:
        self.db = db
        self.registry = registry
        self.base_url = base_url.rstrip("/")

    def deploy(self, spec: DeployRequest, actor: Principal) -> EndpointOut:
        """Create the endpoint serving ``spec.model_ref``, or add that version to it."""
        actor.require(Role.DEPLOYER)
        name, _, _ = parse_ref(spec.model_ref)
        version = self.registry.resolve(spec.model_ref).version
        with self.db.session() as session:
            model = session.scalar(select(ModelRow).where(ModelRow.name == name))
            assert model is not None
            row = _version_row(session, model, version)
            endpoint = session.scalar(select(EndpointRow).where(
                EndpointRow.name == spec.endpoint).with_for_update())
            before = read_routes(session, endpoint).weights if endpoint is not None else {}
            if endpoint is None:
                if (parts := version_app_parts(spec.endpoint)) is not None:
                    stem, number = parts
                    raise InvalidInputError(
                        f"endpoint name {spec.endpoint!r} ends in -v<number>, as the Serve "
                        "applications of isolated endpoints' versions do: its application "
                        f"would be version {number} of endpoint {stem!r}; choose another name, "
                        f"such as {stem}-{number}", detail={"field": "endpoint"})
                endpoint = EndpointRow(
                    name=spec.endpoint, model_id=model.id,
                    placement=spec.placement or "colocated",
                    config={"scaling": (spec.scaling or ScaleSettings()).model_dump()},
                )
                session.add(endpoint)
                session.flush()
                weight = 100.0 if spec.weight is None else spec.weight
                if weight != 100.0:
                    raise InvalidInputError(
                        "the first version of a new endpoint takes all traffic; omit weight",
                        detail={"field": "weight"},
                    )
            else:
                refuse_during_rollout(session, endpoint.name, "deploy to it")
                if endpoint.model_id != model.id:
                    other = session.get(ModelRow, endpoint.model_id)
                    raise ConflictError(
                        f"endpoint {spec.endpoint!r} serves model {other.name if other else '?'!r}, "
                        f"not {name!r}; pick another endpoint name",
                        detail={"field": "endpoint"},
                    )
                if spec.placement and spec.placement != endpoint.placement:
                    raise ConflictError(
                        f"endpoint {spec.endpoint!r} is {endpoint.placement}; placement cannot "
                        "change in place (undeploy and deploy again)",
                        detail={"field": "placement"},
                    )
                if spec.scaling is not None and endpoint.placement == "colocated":
                    endpoint.config = {**endpoint.config, "scaling": spec.scaling.model_dump()}
                weight = 0.0 if spec.weight is None else spec.weight
            if row.status == "rejected" and weight > 0:
                raise ConflictError(
                    f"{name}:{version} was rejected ({row.status_reason}); it cannot take traffic",
                    detail={"field": "model_ref"},
                )
            refuse_shared_requirements(endpoint, model.name, row, field="model_ref")
            settings = {"batching": spec.batching.model_dump()}
            if endpoint.placement == "isolated":
                settings["scaling"] = (spec.scaling or ScaleSettings()).model_dump()
            existing = read_routes(session, endpoint).get(version)
            route = existing.row if existing is not None else None
            if route is None:
                session.add(EndpointRouteRow(endpoint_id=endpoint.id, version_id=row.id,
                                             weight=weight, shadow=False, settings=settings))
                if weight > 0:
                    _rescale_others(session, endpoint, row.id, weight)
            else:
                route.settings = settings
                if spec.weight is not None:
                    route.weight, route.shadow = weight, False
                    _rescale_others(session, endpoint, row.id, weight)
            session.flush()
            refuse_unapproved_traffic(session, model, before,
                                      read_routes(session, endpoint).weights, field="weight")
            _touch(endpoint)
            session.flush()
            return self._endpoint_out(session, endpoint)

    def set_traffic(self, endpoint_name: str, spec: TrafficUpdate, actor: Principal) -> EndpointOut:
        """Replace the route table; versions not named are removed from the endpoint."""
        actor.require(Role.DEPLOYER)
        total = sum(spec.weights.values())
        if any(w < 0 for w in spec.weights.values()) or not math.isclose(total, 100.0, abs_tol=1e-6):
            raise InvalidInputError(
                f"weights must be non-negative and sum to 100, got {total:g}",
                detail={"field": "weights"},
            )
        overlap = set(spec.shadows) & {v for v, w in spec.weights.items() if w > 0}
        if overlap:
            raise InvalidInputError(
                f"version(s) {sorted(overlap)} cannot both take traffic and shadow it",
                detail={"field": "shadows"},
            )
        with self.db.session() as session:
            endpoint = endpoint_row(session, endpoint_name, for_update=True)
            refuse_during_rollout(session, endpoint.name, "change its traffic")
            model = session.get(ModelRow, endpoint.model_id)
            assert model is not None
            refuse_unapproved_traffic(session, model, read_routes(session, endpoint).weights,
                                      spec.weights, field="weights")
            self.write_routes(session, endpoint, spec.weights, spec.shadows)
            return self._endpoint_out(session, endpoint)

    def write_routes(self, session: Session, endpoint: EndpointRow, weights: dict[int, float],
                     shadows: list[int], *, allow_rejected: bool = False) -> None:
        """Replace ``endpoint``'s route table inside the caller's transaction.

        The rollout controller calls this in the same transaction that records the
        rollout's step, so the store never describes traffic the rollout did not set.
        """
        model = session.get(ModelRow, endpoint.model_id)
        assert model is not None
        wanted = {**{v: (w, False) for v, w in weights.items()},
                  **{v: (0.0, True) for v in shadows}}
        existing = {r.row.version_id: r.row for r in read_routes(session, endpoint)}
        keep: set[int] = set()
        template = next(iter(existing.values()), None)
        for number, (weight, shadow) in wanted.items():
            row = _version_row(session, model, number)
            before = existing.get(row.id)
            # A rejected version gains no traffic; what it has it may keep or give up (a
            # stable version rejected later must still give way to a rollout's candidate).
            if weight > 0:
                gains = before is None or before.shadow or weight > before.weight
            else:
                gains = shadow and (before is None or not before.shadow)
            if row.status == "rejected" and gains and not allow_rejected:
                raise ConflictError(
                    f"{model.name}:{number} was rejected ({row.status_reason}); it cannot "
                    "serve traffic",
                    detail={"field": "weights"},
                )
            route = existing.get(row.id)
            if route is None:
                refuse_shared_requirements(endpoint, model.name, row, field="weights")
                # A new version gets the settings of one already serving: a blue-green
                # candidate runs at the same size as the version it replaces.
                settings = dict(template.settings) if template is not None else {
                    "batching": BatchSettings().model_dump()}
                if endpoint.placement == "isolated":
                    settings.setdefault("scaling", ScaleSettings().model_dump())
                route = EndpointRouteRow(endpoint_id=endpoint.id, version_id=row.id,
                                         settings=settings)
                session.add(route)
            route.weight, route.shadow = weight, shadow
            keep.add(row.id)
        for version_id, route in existing.items():
            if version_id not in keep:
                session.delete(route)
        _touch(endpoint)
        session.flush()
        session.expire_all()

    def undeploy(self, endpoint_name: str, actor: Principal) -> None:
        actor.require(Role.DEPLOYER)
        with self.db.session() as session:
            endpoint = endpoint_row(session, endpoint_name, for_update=True)
            refuse_during_rollout(session, endpoint.name, "undeploy it")
            # A version an ended rollout still drains is gone with the endpoint: left owed,
            # its removal found an endpoint made again under the name and took its version.
            session.execute(update(RolloutRow).where(
                RolloutRow.endpoint == endpoint.name, RolloutRow.retire_at.is_not(None))
                .values(retire_version=None, retire_at=None))
            session.delete(endpoint)

    def get(self, endpoint_name: str) -> EndpointOut:
        with self.db.session(readonly=True) as session:
            return self._endpoint_out(session, endpoint_row(session, endpoint_name))

    def list(self) -> list[EndpointOut]:
        with self.db.session(readonly=True) as session:
            rows = session.scalars(select(EndpointRow).order_by(EndpointRow.name)).all()
            return [self._endpoint_out(session, row) for row in rows]

    def _endpoint_out(self, session: Session, endpoint: EndpointRow) -> EndpointOut:
        model = session.get(ModelRow, endpoint.model_id)
        assert model is not None
        routes = []
        for route in read_routes(session, endpoint):
            scaling = route.settings.get("scaling")
            routes.append(RouteOut(
                version=route.version, weight=route.weight, shadow=route.shadow,
                batching=BatchSettings.model_validate(route.settings.get("batching", {})),
                scaling=ScaleSettings.model_validate(scaling) if scaling else None,
            ))
        return EndpointOut(
            name=endpoint.name, model=model.name, placement=endpoint.placement,
            scaling=ScaleSettings.model_validate(endpoint.config.get("scaling", {})),
            generation=endpoint.generation,
            routes=sorted(routes, key=lambda r: r.version),
            url=endpoint_url(self.base_url, endpoint.name),
            created_at=endpoint.created_at, updated_at=endpoint.updated_at,
        )


def refuse_during_rollout(session: Session, endpoint: str, verb: str) -> None:
    """A rollout owns its endpoint's route table until it ends; others must not move it.
    The caller holds the endpoint's row lock (``endpoint_row(..., for_update=True)``)."""
    from control_plane.rollouts.states import ACTIVE_STATES

    active = session.scalar(select(RolloutRow).where(
        RolloutRow.endpoint == endpoint, RolloutRow.state.in_(ACTIVE_STATES)))
    if active is not None:
        raise ConflictError(
            f"endpoint {endpoint!r} has an active rollout (#{active.id}, {active.state}); "
            f"to {verb} now, abort it first (`modelplane rollout abort {endpoint}`)",
            detail={"field": "endpoint", "rollout": active.id},
        )


def refuse_unapproved_traffic(session: Session, model: ModelRow, before: dict[int, float],
                              after: dict[int, float], *, field: str) -> None:
    """Where ``model``'s policy requires approval, no unapproved version may gain traffic
    beyond the policy's limit: a manual change must not do what a rollout may not."""
    policy = ModelPolicy.model_validate(model.policy)
    if not policy.require_approval_for_production:
        return
    limit = policy.max_unapproved_weight
    limit = DEFAULT_UNAPPROVED_WEIGHT if limit is None else limit
    rows: dict[int, ModelVersionRow | None] = {}

    def unapproved(version: int) -> ModelVersionRow | None:
        """The version's row where it is not approved; a version in production passed the
        policy's gate (or predates the policy)."""
        if version not in rows:
            row = _version_row(session, model, version)
            approved = row.stage == "production" or latest_decision(session, row) == "approved"
            rows[version] = None if approved else row
        return rows[version]

    for version, weight in sorted(after.items()):
        # Only a gain is refused: an unapproved version already above the limit (the
        # policy changed later) may still be turned down.
        if weight <= limit or weight <= before.get(version, 0.0):
            continue
        row = unapproved(version)
        if row is None:
            continue
        raise _needs_approval(
            model, f"{model.name}:{version} is not approved and may take at most {limit:g}% of "
            f"traffic, not {weight:g}%; an approver other than {registrant_subject(row)!r} "
            f"must run `modelplane models approve {model.name}:{version}` first, or roll it "
            "out (`modelplane rollout start`), which waits for the approval at the limit",
            field=field, limit=limit, version=version)
    # Together too: two unapproved versions at 50% each are all of the traffic.
    together = sorted(v for v, w in after.items() if w > 0 and unapproved(v) is not None)
    total = sum(after[v] for v in together)
    held = sum(w for v, w in before.items() if w > 0 and unapproved(v) is not None)
    if total > limit and total > held:
        named = ", ".join(f"{model.name}:{v}" for v in together)
        raise _needs_approval(
            model, f"{named} are not approved and together may take at most {limit:g}% of "
            f"traffic, not {total:g}%; an approver must approve them (`modelplane models "
            "approve`) first, or roll one out (`modelplane rollout start`)",
            field=field, limit=limit, versions=together)


def _needs_approval(model: ModelRow, why: str, *, field: str, limit: float,
                    **named: Any) -> ConflictError:
    return ConflictError(
        f"model {model.name!r} requires approval (policy require_approval_for_production): {why}",
        detail={"field": field, "policy": "require_approval_for_production", **named,
                "limit": limit})


def refuse_shared_requirements(endpoint: EndpointRow, model: str, row: ModelVersionRow, *,
                               field: str) -> None:
    """A version with pip requirements of its own is served only in a process of its own:
    colocated versions share one, and one version's packages would change the others'."""
    requirements = ((row.manifest or {}).get("code") or {}).get("requirements") or []
    if requirements and endpoint.placement != "isolated":
        raise ConflictError(
            f"{model}:{row.version} needs {requirements}, installed for it alone: serve it on an "
            f"endpoint with placement isolated (`modelplane deploy ... --placement isolated`); "
            f"{endpoint.name!r} is {endpoint.placement}",
            detail={"field": field, "placement": endpoint.placement})


def endpoint_row(session: Session, name: str, *, for_update: bool = False) -> EndpointRow:
    """The endpoint ``name``; a 404 where there is none. ``for_update``: locked until the
    transaction ends, for a change that checks the endpoint first (no active rollout), so
    two control planes cannot both pass the check (SQLite serializes write transactions
    whole)."""
    query = select(EndpointRow).where(EndpointRow.name == name)
    row = session.scalar(query.with_for_update() if for_update else query)
    if row is None:
        raise NotFoundError(f"no endpoint named {name!r}", detail={"field": "endpoint"})
    return row


def _version_row(session: Session, model: ModelRow, version: int) -> ModelVersionRow:
    row = session.scalar(select(ModelVersionRow).where(
        ModelVersionRow.model_id == model.id, ModelVersionRow.version == version))
    if row is None:
        raise NotFoundError(f"model {model.name!r} has no version {version}",
                            detail={"field": "version"})
    return row


def _rescale_others(session: Session, endpoint: EndpointRow, version_id: int, weight: float) -> None:
    """Give the other weighted versions the remaining share, in their current proportions."""
    others = [r.row for r in read_routes(session, endpoint)
              if r.row.version_id != version_id and not r.shadow]
    total = sum(r.weight for r in others)
    for route in others:
        route.weight = (100.0 - weight) * (route.weight / total) if total > 0 else 0.0


def _touch(endpoint: EndpointRow) -> None:
    endpoint.generation += 1
    endpoint.updated_at = datetime.now(UTC)
