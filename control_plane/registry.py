"""The model registry: models, versions, aliases, stages, approvals.

Transport-free: the REST routes and tests call these methods directly. Each method that
changes state runs in one transaction, and every check happens before anything is
written, so a refused call leaves the store as it was.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from control_plane.artifact_claims import claim_artifact
from control_plane.artifacts import ArtifactStore
from control_plane.auth import TRAINING, Principal, refuse_past_job_allowance
from control_plane.errors import (
    AlreadyExistsError,
    ConflictError,
    ControlPlaneUnavailableError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StageTransitionError,
)
from control_plane.listings import LISTING_ROWS_AT_ONCE, within_listing_bytes
from control_plane.model_check import check_version
from control_plane.notifications import sources as events
from control_plane.notifications.service import notify_on_commit
from control_plane.schemas import (
    CHAMPION_ALIAS,
    NAME_PATTERN,
    RUN_ID_CHARS,
    AliasSet,
    ApprovalCreate,
    ApprovalOut,
    ModelCreate,
    ModelManifest,
    ModelOut,
    ModelPolicy,
    ModelUpdate,
    Page,
    Role,
    Stage,
    StageChange,
    VersionCreate,
    VersionOut,
)
from control_plane.store import Database
from control_plane.store.models import (
    AliasRow,
    ApprovalRow,
    EndpointRouteRow,
    ModelRow,
    ModelVersionRow,
    RunRow,
    StageEventRow,
)

ALLOWED_TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.NONE: frozenset({Stage.STAGING, Stage.ARCHIVED}),
    Stage.STAGING: frozenset({Stage.NONE, Stage.PRODUCTION, Stage.ARCHIVED}),
    Stage.PRODUCTION: frozenset({Stage.STAGING, Stage.ARCHIVED}),
    Stage.ARCHIVED: frozenset({Stage.STAGING}),
}

# Registrations checked at once: each holds its artifact (up to the artifact bound, 2 GiB
# by default) and ONNX Runtime's copy of it in this process, so a burst of them could take
# the control plane's memory. The rest wait a little for their turn, then are told to try
# again (503, which a job's registration does): each waiting holds one of the API's threads.
MAX_CONCURRENT_CHECKS = 2
CHECK_WAIT_S = 5.0
_checking = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)

# Every alias of a model is in each of its listings (ModelOut, VersionOut): unbounded, a
# job's token could make every listing of the model as large as it pleased.
MAX_ALIASES = 1000
# New aliases one trainer token (a training job's) may make of a model: a job names its
# version with one or two; a leaked token made the model's whole allowance.
MAX_TRAINER_ALIASES = 20
# Versions one trainer token may register: a job registers one (a sweep's, one a trial); a
# leaked token registered megabytes of manifest at a time, without end.
MAX_TRAINER_VERSIONS = 100

# A listing of versions leaves out what makes a manifest large (a drift reference may be
# megabytes), and stops short of its page's limit past LISTING_MAX_BYTES
# (control_plane.listings): each listing is open to anonymous readers where reads are, and
# was up to 500 whole manifests.
ABRIDGED_MANIFEST_FIELDS = ("reference_profile", "example_inputs")

# ASCII digits, at most ten: \d also takes other scripts' digits, and an unbounded number
# overflows the store's INTEGER (a 500, not the 400 it is).
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})(?::(?P<version>[0-9]{1,10})|@(?P<alias>[A-Za-z][A-Za-z0-9_-]{0,63}))?$")


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``name``, ``name:3`` or ``name@alias`` into (name, version, alias)."""
    match = _REF.fullmatch(ref)
    if match is None or int(match.group("version") or 0) > 2**31 - 1:
        raise InvalidInputError(
            f"model reference {ref!r} is not valid; use NAME, NAME:VERSION or NAME@ALIAS",
            detail={"field": "model_ref"},
        )
    version = match.group("version")
    return match.group("name"), int(version) if version else None, match.group("alias")


class Registry:
    """Models and their versions, with aliases, stages, approvals and lineage."""

    def __init__(self, db: Database, artifacts: ArtifactStore, *,
                 model_code: str = "deployer") -> None:
        self.db = db
        self.artifacts = artifacts
        # Who may register a version that runs code: deployer, admin or off (MODELPLANE_MODEL_CODE).
        self.model_code = model_code

    # ------------------------------------------------------------ models

    def create_model(self, spec: ModelCreate, actor: Principal) -> ModelOut:
        actor.require(Role.DEPLOYER)
        with self.db.session() as session:
            if session.scalar(select(ModelRow.id).where(ModelRow.name == spec.name)):
                raise AlreadyExistsError(
                    f"model {spec.name!r} already exists", detail={"field": "name"}
                )
            row = ModelRow(
                name=spec.name,
                description=spec.description,
                owner=actor.name,
                tags=dict(spec.tags),
                policy=spec.policy.model_dump(),
            )
            session.add(row)
            session.flush()
            return self._model_out(session, row)

    def update_model(self, name: str, spec: ModelUpdate, actor: Principal) -> ModelOut:
        actor.require(Role.DEPLOYER)
        with self.db.session() as session:
            row = _model(session, name)
            if spec.description is not None:
                row.description = spec.description
            if spec.tags is not None:
                row.tags = dict(spec.tags)
            if spec.policy is not None:
                actor.require(Role.ADMIN)
                row.policy = spec.policy.model_dump()
            row.updated_at = datetime.now(UTC)
            return self._model_out(session, row)

    def get_model(self, name: str) -> ModelOut:
        with self.db.session(readonly=True) as session:
            return self._model_out(session, _model(session, name))

    def list_models(self, *, limit: int = 50, offset: int = 0) -> Page[ModelOut]:
        with self.db.session(readonly=True) as session:
            total = session.scalar(select(func.count(ModelRow.id))) or 0
            rows = session.scalars(
                select(ModelRow).order_by(ModelRow.name).limit(limit).offset(offset)
            ).all()
            items, limit = within_listing_bytes(
                (self._model_out(session, row) for row in rows), limit)
        return Page[ModelOut](items=items, total=total, limit=limit, offset=offset)

    # ------------------------------------------------------------ versions

    def register_version(self, name: str, spec: VersionCreate, actor: Principal) -> VersionOut:
        """Register an uploaded ONNX artifact as the model's next version.

        The model is created (owned by ``actor``) if it does not exist. The artifact must
        load in ONNX Runtime and match the manifest's signature.
        """
        if spec.manifest.runs_code:
            # Code of the registrant's own (a python model, steps from its archive, a torch
            # program) runs on every replica that serves it, as the platform's OS user.
            if self.model_code == "off":
                raise PermissionDeniedError(
                    f"this platform does not serve {spec.manifest.kind} models or steps of "
                    "their own (MODELPLANE_MODEL_CODE=off); register an ONNX graph, with "
                    "builtin: steps if it needs them",
                    detail={"field": "manifest.kind", "model_code": "off"})
            actor.require(Role.ADMIN if self.model_code == "admin" else Role.DEPLOYER)
        else:
            actor.require(Role.DEPLOYER, also=TRAINING)
        refuse_other_model(actor, name, "registers versions of")
        run_id = spec.manifest.lineage.run_id if spec.manifest.lineage else None
        if run_id is not None and len(run_id) > RUN_ID_CHARS:  # the store holds no longer
            raise InvalidInputError(
                f"manifest.lineage.run_id is {len(run_id)} characters; a run's id is at most "
                f"{RUN_ID_CHARS}", detail={"field": "manifest.lineage.run_id"})
        if not self.artifacts.exists(spec.artifact_digest):
            raise NotFoundError(
                f"no artifact with digest {spec.artifact_digest}; upload it first "
                "(POST /api/artifacts)",
                detail={"field": "artifact_digest"},
            )
        if spec.idempotency_key is not None:  # a retry answered without a second check
            with self.db.session(readonly=True) as session:
                model = session.scalar(select(ModelRow).where(ModelRow.name == name))
                earlier = model and _registered_before(session, model, spec, actor)
                if earlier:
                    return _version_out(session, model, earlier)
        # The expensive checks run before the transaction so the write lock is held briefly.
        if not _checking.acquire(timeout=CHECK_WAIT_S):
            raise ControlPlaneUnavailableError(
                f"{MAX_CONCURRENT_CHECKS} registrations are being checked and this one waited "
                f"{CHECK_WAIT_S:g} s for its turn; try again shortly",
                detail={"field": "artifact_digest", "retry_after_s": 5})
        try:
            check_version(spec.manifest, spec.artifact_digest,
                          self.artifacts.read_bytes(spec.artifact_digest))
        finally:
            _checking.release()
        size = self.artifacts.info(spec.artifact_digest).size
        for attempt in range(2):
            try:
                return self._insert_version(name, spec, size, actor)
            except SAIntegrityError:
                # Two first registrations raced to create the model; the loser retries once.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _insert_version(
        self, name: str, spec: VersionCreate, size: int, actor: Principal
    ) -> VersionOut:
        with self.db.session() as session:
            # Locked first: registrations of one model are serialized (gapless numbers),
            # and a repeat of a keyed one finds the version its first try registered.
            model = session.scalar(select(ModelRow).where(ModelRow.name == name)
                                   .with_for_update(key_share=True))
            claim_artifact(self.db, session, self.artifacts, spec.artifact_digest,
                           field="artifact_digest")
            if model is not None and spec.idempotency_key is not None:
                earlier = _registered_before(session, model, spec, actor)
                if earlier is not None:
                    return _version_out(session, model, earlier)
            if model is None:
                if not re.fullmatch(NAME_PATTERN, name):  # the path's name, not a field's
                    raise InvalidInputError(
                        f"model name {name[:140]!r} is not one a model may have: letters, "
                        "digits, '.', '_' and '-', starting with a letter or digit, at most 128",
                        detail={"field": "name"})
                model = ModelRow(name=name, owner=actor.name, description="", tags={}, policy={})
                session.add(model)
                session.flush()
            parent = spec.manifest.lineage.parent_version
            if parent is not None and _version(session, model, parent, missing_ok=True) is None:
                raise NotFoundError(
                    f"lineage.parent_version {parent} does not exist for model {name!r}",
                    detail={"field": "manifest.lineage.parent_version"},
                )
            _check_lineage_run(session, spec.manifest.lineage.run_id, actor)
            refuse_past_job_allowance(session, actor, ModelVersionRow.created_by,
                                      MAX_TRAINER_VERSIONS, "versions")
            # The UPDATE takes the row's write lock until commit, so concurrent
            # registrations are serialized and numbers are gapless.
            session.execute(
                update(ModelRow)
                .where(ModelRow.id == model.id)
                .values(last_version=ModelRow.last_version + 1, updated_at=datetime.now(UTC))
            )
            session.refresh(model)
            row = ModelVersionRow(
                model_id=model.id,
                version=model.last_version,
                artifact_digest=spec.artifact_digest,
                artifact_size=size,
                manifest=spec.manifest.model_dump(mode="json"),
                description=spec.description,
                parent_version=parent,
                run_id=spec.manifest.lineage.run_id,
                created_by=actor.name,
                created_by_subject=actor.subject,
                idempotency_key=spec.idempotency_key,
            )
            session.add(row)
            session.flush()
            # Sent once this transaction commits (never for a registration rolled back).
            notify_on_commit(session, events.version_registered(
                name, row.version, actor=actor.name, run_id=row.run_id,
                description=spec.description))
            if ModelPolicy.model_validate(model.policy).require_approval_for_production:
                notify_on_commit(session, events.approval_needed(
                    name, row.version, why=f"model {name!r} requires an approval before production"))
            return _version_out(session, model, row)

    def get_version(self, name: str, version: int) -> VersionOut:
        with self.db.session(readonly=True) as session:
            model = _model(session, name)
            return _version_out(session, model, _version(session, model, version))

    def resolve(self, ref: str) -> VersionOut:
        """The version a reference names: ``name:3``, ``name@champion`` or ``name`` (latest)."""
        name, version, alias = parse_ref(ref)
        with self.db.session(readonly=True) as session:
            model = _model(session, name)
            if alias is not None:
                version = session.scalar(
                    select(AliasRow.version).where(
                        AliasRow.model_id == model.id, AliasRow.alias == alias
                    )
                )
                if version is None:
                    raise NotFoundError(
                        f"model {name!r} has no alias {alias!r}", detail={"field": "alias"}
                    )
            elif version is None:
                version = session.scalar(
                    select(func.max(ModelVersionRow.version)).where(
                        ModelVersionRow.model_id == model.id
                    )
                )
                if version is None:
                    raise NotFoundError(
                        f"model {name!r} has no versions yet", detail={"field": "model_ref"}
                    )
            return _version_out(session, model, _version(session, model, version))

    def list_versions(self, name: str, *, limit: int = 50, offset: int = 0) -> Page[VersionOut]:
        with self.db.session(readonly=True) as session:
            model = _model(session, name)
            query = select(ModelVersionRow).where(ModelVersionRow.model_id == model.id)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(ModelVersionRow.version.desc()).limit(limit).offset(offset)
                .execution_options(yield_per=LISTING_ROWS_AT_ONCE))

            def abridged() -> Iterator[VersionOut]:
                for row in rows:
                    item = _version_out(session, model, row, abridged=True)
                    session.expunge(row)  # its whole manifest, let go once abridged
                    yield item

            items, limit = within_listing_bytes(abridged(), limit)
            rows.close()
        return Page[VersionOut](items=items, total=total, limit=limit, offset=offset)

    def delete_version(self, name: str, version: int, actor: Principal) -> None:
        """Delete a version's record (its number is never reused); refused while deployed."""
        actor.require(Role.ADMIN)
        with self.db.session() as session:
            model = _model(session, name)
            row = _version(session, model, version, for_update=True)
            _refuse_if_deployed(session, model, row, "deleted")
            refuse_if_rolling_out(session, model, row, "deleted")
            session.execute(
                AliasRow.__table__.delete().where(
                    AliasRow.model_id == model.id, AliasRow.version == version
                )
            )
            session.delete(row)

    def reject_version(self, name: str, version: int, reason: str, actor: Principal) -> VersionOut:
        """Mark a version rejected (a failed rollout); it can no longer reach production."""
        actor.require(Role.DEPLOYER)
        with self.db.session() as session:
            model = _model(session, name)
            row = _version(session, model, version, for_update=True)
            refuse_if_rolling_out(session, model, row, "rejected")
            if row.stage == Stage.PRODUCTION.value:
                # Rejected, it would still serve what it serves, and be in production while
                # the registry says it may never reach it.
                raise ConflictError(
                    f"{name}:{version} is in production and cannot be rejected; roll out a "
                    "replacement (or move it to staging) first", detail={"field": "version"})
            mark_rejected(row, reason)
            notify_on_commit(session, events.version_rejected(name, version, reason=reason,
                                                              actor=actor.name))
            return _version_out(session, model, row)

    # ------------------------------------------------------------ aliases

    def set_alias(self, name: str, alias: str, spec: AliasSet, actor: Principal) -> VersionOut:
        """Point ``alias`` at a version, creating or moving it in one statement."""
        actor.require(Role.DEPLOYER, also=TRAINING)  # before the store is touched
        with self.db.session() as session:
            return self.point_alias(session, name, alias, spec.version, actor, moved_by_user=True)

    def point_alias(self, session: Session, name: str, alias: str, version: int,
                    actor: Principal, *, moved_by_user: bool = False) -> VersionOut:
        """:meth:`set_alias` inside the caller's transaction, which decides whether it lands.

        A training job's token points aliases at the versions it registered, and never
        ``champion`` (a promotion's, or a deployer's): endpoints that track an alias roll
        out what it names, and ``name@champion`` is what deployers deploy. No alias is moved
        onto a rejected version, nor by a user onto an archived one (a promotion moves
        champion onto its candidate and brings it out of the archive in one transaction)."""
        actor.require(Role.DEPLOYER, also=TRAINING)
        refuse_other_model(actor, name, "points aliases of")
        parse_ref(f"{name}@{alias}")
        model = _model(session, name)
        # Writers of one alias queue here, before any row lock: on PostgreSQL two that both
        # found it missing both inserted it, and the later lost on the unique key (a
        # promotion took that for a refusal and failed the rollout). Queued, the later one
        # finds the alias and moves it.
        self.db.serialize(session, f"alias {model.id} {alias}")
        # Locked: a deletion of the version waits for this alias (and deletes it), or this
        # finds the version gone; never an alias left naming no version. Exclusively (but
        # letting rows that refer to it be written): two aliases pointed at one version
        # queue here, where shared locks deadlocked a promotion, which then changes the
        # version's stage, against a user pointing champion at the same version.
        target = _version(session, model, version, for_no_key_update=True)
        if actor.role is Role.TRAINER and (alias == CHAMPION_ALIAS or target.created_by != actor.name):
            raise PermissionDeniedError(
                f"a training job's token points an alias only at a version it registered, and "
                f"never {CHAMPION_ALIAS!r}; {name}:{version} was registered by "
                f"{target.created_by!r}", detail={"field": "alias" if alias == CHAMPION_ALIAS
                                                  else "version"})
        if target.status == "rejected" or (moved_by_user and target.stage == Stage.ARCHIVED.value):
            state = ("rejected (" + target.status_reason + ")" if target.status == "rejected"
                     else "archived (move it to staging first)")
            raise ConflictError(f"{name}:{version} is {state}; an alias names a version to "
                                "deploy", detail={"field": "version"})
        row = _alias(session, model, alias)
        if row is None:
            # New aliases of one model are counted one at a time (last of this method's
            # locks, so no cycle): counted side by side, each under the cap, they passed it.
            self.db.serialize(session, f"new alias {model.id}")
            # Champion is never refused for the count: a promotion that could not crown its
            # candidate failed, and a trainer's token filling the cap stopped every first
            # promotion of its model. A trainer's aliases are counted on their own.
            if alias != CHAMPION_ALIAS and session.scalar(select(func.count()).select_from(
                    AliasRow).where(AliasRow.model_id == model.id)) >= MAX_ALIASES:
                raise ConflictError(f"model {name!r} has {MAX_ALIASES} aliases, the most one "
                                    "may have; delete one first", detail={"field": "alias"})
            if actor.role is Role.TRAINER and session.scalar(select(func.count()).select_from(
                    AliasRow).where(AliasRow.model_id == model.id,
                                    AliasRow.updated_by == actor.name)) >= MAX_TRAINER_ALIASES:
                raise ConflictError(
                    f"a training job's token points at most {MAX_TRAINER_ALIASES} aliases of a "
                    f"model; {actor.name!r} points that many of {name!r}",
                    detail={"field": "alias", "limit": MAX_TRAINER_ALIASES})
            session.add(
                AliasRow(model_id=model.id, alias=alias, version=version, updated_by=actor.name)
            )
        else:
            row.version = version
            row.updated_by = actor.name
            row.updated_at = datetime.now(UTC)
        session.flush()
        return _version_out(session, model, target)

    def delete_alias(self, name: str, alias: str, actor: Principal) -> None:
        actor.require(Role.DEPLOYER)
        with self.db.session() as session:
            model = _model(session, name)
            # Queued with the alias's other writers (point_alias): on PostgreSQL a deletion
            # between a promotion's read of champion and its update failed the promotion.
            self.db.serialize(session, f"alias {model.id} {alias}")
            row = _alias(session, model, alias)
            if row is None:
                raise NotFoundError(f"model {name!r} has no alias {alias!r}", detail={"field": "alias"})
            session.delete(row)

    # ------------------------------------------------------------ stages and approvals

    def transition_stage(
        self, name: str, version: int, spec: StageChange, actor: Principal
    ) -> VersionOut:
        """Move a version to another stage, enforcing the allowed transitions and policy."""
        actor.require(Role.DEPLOYER)
        with self.db.session() as session:
            return self.move_stage(session, name, version, spec, actor)

    def move_stage(self, session: Session, name: str, version: int, spec: StageChange,
                   actor: Principal) -> VersionOut:
        """:meth:`transition_stage` inside the caller's transaction."""
        actor.require(Role.DEPLOYER)
        model = _model(session, name)
        # Locked as a rejection locks it: a move to production that read the version ready
        # while a rejection was being written would otherwise land on a rejected version.
        row = _version(session, model, version, for_no_key_update=True)
        current = Stage(row.stage)
        if spec.stage == current:
            return _version_out(session, model, row)
        if spec.stage not in ALLOWED_TRANSITIONS[current]:
            allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[current]))
            raise StageTransitionError(
                f"{name}:{version} cannot move from {current.value} to {spec.stage.value}; "
                f"from {current.value} it may move to: {allowed}",
                detail={"field": "stage", "from": current.value, "to": spec.stage.value},
            )
        if spec.stage == Stage.ARCHIVED:
            _refuse_if_deployed(session, model, row, "archived")
            _refuse_if_aliased(session, model, row)
            # One waiting for its approval has no route yet, and would take traffic archived.
            refuse_if_rolling_out(session, model, row, "archived")
        if spec.stage == Stage.PRODUCTION:
            _check_production_allowed(session, model, row)
        session.add(
            StageEventRow(
                version_id=row.id,
                from_stage=current.value,
                to_stage=spec.stage.value,
                actor=actor.name,
                reason=spec.reason,
            )
        )
        row.stage = spec.stage.value
        notify_on_commit(session, events.stage_changed(
            name, version, from_stage=current.value, to_stage=spec.stage.value,
            actor=actor.name, reason=spec.reason or ""))
        session.flush()  # the store's refusal surfaces here, not at the caller's commit
        return _version_out(session, model, row)

    def approve(
        self, name: str, version: int, spec: ApprovalCreate, actor: Principal
    ) -> ApprovalOut:
        """Record an approval decision; the approver must not be the version's registrant.

        People are compared by subject, not by token: a second token of the registrant's
        subject cannot approve either.
        """
        actor.require(Role.APPROVER)
        with self.db.session() as session:
            model = _model(session, name)
            row = _version(session, model, version)
            if registrant_subject(row) == actor.subject:
                raise PermissionDeniedError(
                    f"{actor.subject!r} registered {name}:{version} (token {row.created_by!r}) "
                    f"and cannot approve it, with token {actor.name!r} or any other of theirs; "
                    "an approver issued to another subject must decide",
                    detail={"field": "approver", "subject": actor.subject},
                )
            approval = ApprovalRow(
                version_id=row.id, approver=actor.name, approver_subject=actor.subject,
                decision=spec.decision, comment=spec.comment,
            )
            session.add(approval)
            session.flush()
            notify_on_commit(session, events.approval_decided(
                name, version, decision=spec.decision, approver=actor.name,
                comment=spec.comment or ""))
            return _approval_out(model, row, approval)

    def list_approvals(self, name: str, version: int) -> list[ApprovalOut]:
        with self.db.session(readonly=True) as session:
            model = _model(session, name)
            row = _version(session, model, version)
            return [_approval_out(model, row, a) for a in _approvals(session, row)]

    # ------------------------------------------------------------ helpers

    def _model_out(self, session: Session, row: ModelRow) -> ModelOut:
        aliases = session.execute(
            select(AliasRow.alias, AliasRow.version).where(AliasRow.model_id == row.id)
        ).all()
        latest = session.scalar(
            select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == row.id)
        )
        return ModelOut(
            name=row.name,
            description=row.description,
            owner=row.owner,
            tags=row.tags,
            policy=ModelPolicy.model_validate(row.policy),
            latest_version=latest,
            aliases={alias: version for alias, version in aliases},
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def _model(session: Session, name: str) -> ModelRow:
    row = session.scalar(select(ModelRow).where(ModelRow.name == name))
    if row is None:
        raise NotFoundError(f"no model named {name!r}", detail={"field": "model"})
    return row


def _version(
    session: Session, model: ModelRow, version: int, *, missing_ok: bool = False,
    for_update: bool = False, for_no_key_update: bool = False,
) -> ModelVersionRow:
    query = select(ModelVersionRow).where(
        ModelVersionRow.model_id == model.id, ModelVersionRow.version == version)
    if for_update or for_no_key_update:
        query = query.with_for_update(key_share=not for_update)
    row = session.scalar(query)
    if row is None and not missing_ok:
        raise NotFoundError(
            f"model {model.name!r} has no version {version}", detail={"field": "version"}
        )
    return row  # type: ignore[return-value]


def _alias(session: Session, model: ModelRow, alias: str) -> AliasRow | None:
    return session.scalar(
        select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.alias == alias)
    )


def _refuse_if_aliased(session: Session, model: ModelRow, row: ModelVersionRow) -> None:
    named = session.scalars(select(AliasRow.alias).where(
        AliasRow.model_id == model.id, AliasRow.version == row.version)).all()
    if named:
        raise ConflictError(
            f"{model.name}:{row.version} cannot be archived while aliases name it "
            f"({', '.join(sorted(named))}): deploying {model.name}@{sorted(named)[0]} would "
            "deploy an archived version; move or delete them first",
            detail={"field": "stage", "aliases": sorted(named)})


def mark_rejected(row: ModelVersionRow, reason: str) -> None:
    """Reject ``row`` inside the caller's transaction (a rollback's follow-up uses this so the
    rejection and the record that it is done commit together)."""
    row.status = "rejected"
    row.status_reason = reason


def registrant_subject(row: ModelVersionRow) -> str:
    """Who registered ``row``: the subject, or the token's name for rows from before subjects."""
    return row.created_by_subject or row.created_by


def latest_decision(session: Session, row: ModelVersionRow) -> str | None:
    """The version's latest approval decision (``approved``/``rejected``), None if none."""
    return session.scalar(select(ApprovalRow.decision).where(
        ApprovalRow.version_id == row.id).order_by(ApprovalRow.id.desc()).limit(1))


def _approvals(session: Session, row: ModelVersionRow) -> list[ApprovalRow]:
    return list(
        session.scalars(
            select(ApprovalRow).where(ApprovalRow.version_id == row.id).order_by(ApprovalRow.id)
        ).all()
    )


def refuse_other_model(actor: Principal, name: str, what: str) -> None:
    """A training job's token acts on the model it trains only: one leaked from a job (its
    code and every package it installs can read it) must not register, or point an alias
    at, a version of another team's model, which an endpoint tracking that alias would
    roll out."""
    if actor.model is not None and actor.model != name:
        raise PermissionDeniedError(
            f"token {actor.name!r} is a training job's for model {actor.model!r} and "
            f"{what} that model only, not {name!r}",
            detail={"field": "model", "token_model": actor.model})


def refuse_if_rolling_out(session: Session, model: ModelRow, row: ModelVersionRow,
                          verb: str) -> None:
    """Refuse (409) to change a version an active rollout is rolling out: the rollout
    would be left moving traffic to a version it can no longer route (call it with the
    version's row locked, as :meth:`RolloutController.start` locks it)."""
    from control_plane.rollouts.states import ACTIVE_STATES
    from control_plane.store.models import RolloutRow

    rollout = session.scalar(select(RolloutRow.id).where(
        RolloutRow.model_id == model.id, RolloutRow.candidate_version == row.version,
        RolloutRow.state.in_(ACTIVE_STATES)))
    if rollout is not None:
        raise ConflictError(
            f"rollout #{rollout} is rolling out {model.name}:{row.version}, which cannot be "
            f"{verb} meanwhile; end it first (`modelplane rollout abort {rollout}`; once it "
            f"has taken traffic, `modelplane rollout rollback {rollout}` also rejects it)",
            detail={"field": "version", "rollout": rollout})


def _refuse_if_deployed(session: Session, model: ModelRow, row: ModelVersionRow, verb: str) -> None:
    routed = session.scalar(
        select(func.count(EndpointRouteRow.id)).where(EndpointRouteRow.version_id == row.id)
    )
    if routed:
        raise ConflictError(
            f"{model.name}:{row.version} is deployed and cannot be {verb}; remove it from "
            "its endpoints first (`modelplane undeploy` or a rollout)",
            detail={"field": "version"},
        )


def _check_production_allowed(session: Session, model: ModelRow, row: ModelVersionRow) -> None:
    if row.status == "rejected":
        raise StageTransitionError(
            f"{model.name}:{row.version} was rejected ({row.status_reason}) and cannot go to "
            "production; register a new version",
            detail={"field": "stage"},
        )
    if not ModelPolicy.model_validate(model.policy).require_approval_for_production:
        return
    decisions = _approvals(session, row)
    latest = decisions[-1].decision if decisions else None
    if latest != "approved":
        raise PermissionDeniedError(
            f"model {model.name!r} requires an approval before production and "
            f"{model.name}:{row.version} has "
            + ("none" if latest is None else "a rejection as its latest decision")
            + f"; an approver other than {registrant_subject(row)!r} must run "
            f"`modelplane models approve {model.name}:{row.version}`",
            detail={"field": "stage", "reason": "approval_required"},
        )



def _check_lineage_run(session: Session, run_id: str | None, actor: Principal) -> None:
    """A version's lineage names a run of this store, and a training job's token names only
    a run it started: the lineage route answers the run as the version's provenance (its
    parameters, data and metrics), and sweeps read a job's registrations from it."""
    if run_id is None:
        return
    run = session.get(RunRow, run_id)
    if run is None:
        raise NotFoundError(
            f"manifest.lineage.run_id {run_id!r} names no run in this store; leave it out "
            "for a model trained elsewhere", detail={"field": "manifest.lineage.run_id"})
    if actor.role is Role.TRAINER and run.created_by != actor.name:
        raise PermissionDeniedError(
            f"a training job's token names as lineage only a run it started; run {run_id} "
            f"was started by {run.created_by!r}", detail={"field": "manifest.lineage.run_id"})


def _registered_before(session: Session, model: ModelRow, spec: VersionCreate,
                       actor: Principal) -> ModelVersionRow | None:
    """The version registered earlier under ``spec``'s idempotency key, if any; a key
    already used by another registrant or for another artifact is refused (409), never
    answered with a version that is not the caller's."""
    row = session.scalar(select(ModelVersionRow).where(
        ModelVersionRow.model_id == model.id,
        ModelVersionRow.idempotency_key == spec.idempotency_key))
    if row is None:
        return None
    if (row.created_by, row.artifact_digest) != (actor.name, spec.artifact_digest):
        raise ConflictError(
            f"idempotency key {spec.idempotency_key!r} registered {model.name}:{row.version} "
            "for another registrant or artifact; use a new key for a new registration",
            detail={"field": "idempotency_key", "version": row.version})
    if (row.manifest, row.description) != (spec.manifest.model_dump(mode="json"),
                                           spec.description):
        # A retry that corrects the manifest (its signature, its lineage) would otherwise
        # be answered with the first try's version, the correction silently dropped.
        raise ConflictError(
            f"idempotency key {spec.idempotency_key!r} registered {model.name}:{row.version} "
            "with another manifest or description; use a new key for a new registration",
            detail={"field": "idempotency_key", "version": row.version})
    return row


def _version_out(session: Session, model: ModelRow, row: ModelVersionRow, *,
                 abridged: bool = False) -> VersionOut:
    aliases = session.scalars(
        select(AliasRow.alias).where(AliasRow.model_id == model.id, AliasRow.version == row.version)
    ).all()
    manifest = row.manifest
    if abridged:
        manifest = {k: v for k, v in manifest.items() if k not in ABRIDGED_MANIFEST_FIELDS}
    return VersionOut(
        model=model.name,
        version=row.version,
        stage=Stage(row.stage),
        status=row.status,  # type: ignore[arg-type]
        status_reason=row.status_reason,
        description=row.description,
        aliases=sorted(aliases),
        artifact_digest=row.artifact_digest,
        artifact_size=row.artifact_size,
        manifest=ModelManifest.model_validate(manifest),
        created_by=row.created_by,
        created_by_subject=registrant_subject(row),
        created_at=row.created_at,
        abridged=abridged,
    )


def _approval_out(model: ModelRow, row: ModelVersionRow, approval: ApprovalRow) -> ApprovalOut:
    return ApprovalOut(
        model=model.name,
        version=row.version,
        approver=approval.approver,
        approver_subject=approval.approver_subject or approval.approver,
        decision=approval.decision,
        comment=approval.comment,
        created_at=approval.created_at,
    )
