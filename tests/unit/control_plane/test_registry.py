"""The registry against a real database: versions, aliases, stages, approvals, lineage."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from control_plane.artifacts import ArtifactStore
from control_plane.auth import TokenService
from control_plane.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArtifactError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StageTransitionError,
)
from control_plane.lineage import version_lineage
from control_plane.registry import Registry, parse_ref
from control_plane.schemas import (
    AliasSet,
    ApprovalCreate,
    ModelCreate,
    ModelPolicy,
    Role,
    Stage,
    StageChange,
    TokenCreate,
    VersionCreate,
)
from control_plane.store import Database
from control_plane.store.models import (
    AliasRow,
    EndpointRouteRow,
    EndpointRow,
    ModelRow,
    ModelVersionRow,
)
from control_plane.tracking import Tracker
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.unit.control_plane.conftest import ADMIN, ALICE, BOB, READER
from tests.unit.control_plane.together import meanwhile, selects_from


def _register(registry: Registry, name: str = "iris", seed: int = 0, **manifest: object):
    info = registry.artifacts.put([linear_classifier(seed=seed)])
    spec = VersionCreate(
        artifact_digest=info.digest, manifest=linear_classifier_manifest(**manifest)
    )
    return registry.register_version(name, spec, ALICE)


def _row_count(registry: Registry, table: type) -> int:
    with registry.db.session(readonly=True) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def test_versions_start_at_one_and_increase(registry: Registry) -> None:
    assert [_register(registry, seed=i).version for i in range(3)] == [1, 2, 3]
    model = registry.get_model("iris")
    assert model.owner == "alice"
    assert model.latest_version == 3


def test_version_numbers_are_never_reused(registry: Registry) -> None:
    _register(registry, seed=1)
    _register(registry, seed=2)
    registry.delete_version("iris", 2, ADMIN)
    assert _register(registry, seed=3).version == 3


def test_a_registration_asked_again_with_its_key_answers_the_version_it_registered(
        registry: Registry) -> None:
    """A registrant whose answer was lost (a timeout, a restart after the commit) asks
    again with the same key: it gets the version it registered, not a second one."""
    info = registry.artifacts.put([linear_classifier(seed=4)])
    spec = VersionCreate(artifact_digest=info.digest, manifest=linear_classifier_manifest(),
                         idempotency_key="job-0f3a9c")
    first = registry.register_version("iris", spec, ALICE)
    again = registry.register_version("iris", spec, ALICE)
    assert (first.version, again.version) == (1, 1) and again == first
    assert _row_count(registry, ModelVersionRow) == 1
    assert registry.get_model("iris").latest_version == 1
    keyless = spec.model_copy(update={"idempotency_key": None})
    assert [registry.register_version("iris", keyless, ALICE).version for _ in range(2)] == [2, 3]
    other_artifact = registry.artifacts.put([linear_classifier(seed=5)]).digest
    with pytest.raises(ConflictError, match="another registrant or artifact") as refused:
        registry.register_version("iris", spec.model_copy(
            update={"artifact_digest": other_artifact}), ALICE)
    assert refused.value.detail["field"] == "idempotency_key"
    with pytest.raises(ConflictError, match="another registrant or artifact"):
        registry.register_version("iris", spec, BOB)  # never someone else's version
    corrected = VersionCreate(artifact_digest=info.digest, idempotency_key="job-0f3a9c",
                              manifest=linear_classifier_manifest(
                                  lineage={"dataset_uri": "sklearn://iris"}))
    with pytest.raises(ConflictError, match="another manifest or description"):
        registry.register_version("iris", corrected, ALICE)  # never silently the first one
    with pytest.raises(ConflictError, match="another manifest or description"):
        registry.register_version("iris", spec.model_copy(update={"description": "v2"}), ALICE)
    assert registry.register_version("other", spec, ALICE).version == 1  # keys are per model
    assert registry.get_model("iris").latest_version == 3


def test_concurrent_tries_of_one_keyed_registration_register_one_version(
        registry: Registry) -> None:
    import concurrent.futures

    info = registry.artifacts.put([linear_classifier(seed=6)])
    _register(registry, seed=1)  # the model exists: its row serializes the tries
    spec = VersionCreate(artifact_digest=info.digest, manifest=linear_classifier_manifest(),
                         idempotency_key="job-race-1")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: registry.register_version("iris", spec, ALICE),
                                range(4)))
    assert {answer.version for answer in answers} == {2}
    assert registry.get_model("iris").latest_version == 2


@pytest.mark.parametrize("key", ["short", "x" * 65, "has space", "semi;colon"])
def test_an_idempotency_key_out_of_shape_is_refused(key: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="idempotency_key"):
        VersionCreate(artifact_digest="a" * 64, manifest=linear_classifier_manifest(),
                      idempotency_key=key)


def test_refs_resolve(registry: Registry) -> None:
    for seed in range(3):
        _register(registry, seed=seed)
    registry.set_alias("iris", "champion", AliasSet(version=2), ALICE)
    assert registry.resolve("iris").version == 3
    assert registry.resolve("iris:1").version == 1
    assert registry.resolve("iris@champion").version == 2
    assert registry.resolve("iris@champion").aliases == ["champion"]
    with pytest.raises(NotFoundError, match="no alias 'challenger'"):
        registry.resolve("iris@challenger")
    with pytest.raises(NotFoundError, match="no version 9"):
        registry.resolve("iris:9")
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        registry.resolve("nope")
    with pytest.raises(InvalidInputError, match="NAME:VERSION"):
        parse_ref("iris:latest")


def test_alias_moves_atomically(registry: Registry) -> None:
    _register(registry, seed=1)
    _register(registry, seed=2)
    registry.set_alias("iris", "champion", AliasSet(version=1), ALICE)
    registry.set_alias("iris", "champion", AliasSet(version=2), ALICE)
    assert registry.get_model("iris").aliases == {"champion": 2}
    assert registry.get_version("iris", 1).aliases == []
    with pytest.raises(NotFoundError):
        registry.set_alias("iris", "champion", AliasSet(version=7), ALICE)
    assert registry.get_model("iris").aliases == {"champion": 2}


def test_bad_onnx_is_refused_and_nothing_is_written(registry: Registry) -> None:
    info = registry.artifacts.put([b"this is not an onnx file"])
    spec = VersionCreate(artifact_digest=info.digest, manifest=linear_classifier_manifest())
    with pytest.raises(InvalidArtifactError, match="ONNX Runtime can load"):
        registry.register_version("iris", spec, ALICE)
    assert _row_count(registry, ModelVersionRow) == 0
    assert _row_count(registry, ModelRow) == 0


def test_signature_mismatch_names_the_field(registry: Registry) -> None:
    info = registry.artifacts.put([linear_classifier()])
    manifest = linear_classifier_manifest()
    manifest["signature"]["outputs"][0]["dtype"] = "float64"
    spec = VersionCreate(artifact_digest=info.digest, manifest=manifest)
    with pytest.raises(InvalidArtifactError, match="declares dtype float64") as caught:
        registry.register_version("iris", spec, ALICE)
    assert caught.value.detail["field"] == "manifest.signature.outputs[0].dtype"
    manifest = linear_classifier_manifest()
    manifest["signature"]["inputs"][0]["name"] = "features"
    with pytest.raises(InvalidArtifactError, match="names \\['features'\\]"):
        registry.register_version(
            "iris", VersionCreate(artifact_digest=info.digest, manifest=manifest), ALICE
        )
    assert _row_count(registry, ModelVersionRow) == 0


def test_unknown_artifact_is_refused(registry: Registry) -> None:
    spec = VersionCreate(artifact_digest="a" * 64, manifest=linear_classifier_manifest())
    with pytest.raises(NotFoundError, match="upload it first"):
        registry.register_version("iris", spec, ALICE)


def test_stage_transitions_are_enforced(registry: Registry) -> None:
    _register(registry)
    with pytest.raises(StageTransitionError, match="cannot move from none to production"):
        registry.transition_stage("iris", 1, StageChange(stage=Stage.PRODUCTION), ALICE)
    for stage in (Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED):
        assert registry.transition_stage("iris", 1, StageChange(stage=stage), ALICE).stage == stage
    with pytest.raises(StageTransitionError, match="from archived it may move to: staging$"):
        registry.transition_stage("iris", 1, StageChange(stage=Stage.PRODUCTION), ALICE)
    restored = registry.transition_stage("iris", 1, StageChange(stage=Stage.STAGING), ALICE)
    assert restored.stage == Stage.STAGING


def test_deployed_versions_cannot_be_archived_or_deleted(registry: Registry) -> None:
    _register(registry)
    with registry.db.session() as session:
        model = session.scalar(select(ModelRow))
        version = session.scalar(select(ModelVersionRow))
        endpoint = EndpointRow(name="iris-prod", model_id=model.id, config={})
        session.add(endpoint)
        session.flush()
        session.add(EndpointRouteRow(endpoint_id=endpoint.id, version_id=version.id, weight=100))
    with pytest.raises(ConflictError, match="is deployed and cannot be archived"):
        registry.transition_stage("iris", 1, StageChange(stage=Stage.ARCHIVED), ALICE)
    with pytest.raises(ConflictError, match="cannot be deleted"):
        registry.delete_version("iris", 1, ADMIN)
    assert registry.get_version("iris", 1).stage == Stage.NONE


def test_production_needs_approval_from_someone_else(registry: Registry) -> None:
    registry.create_model(
        ModelCreate(name="fraud", policy=ModelPolicy(require_approval_for_production=True)), ALICE
    )
    _register(registry, name="fraud")
    registry.transition_stage("fraud", 1, StageChange(stage=Stage.STAGING), ALICE)
    with pytest.raises(PermissionDeniedError, match="requires an approval"):
        registry.transition_stage("fraud", 1, StageChange(stage=Stage.PRODUCTION), ALICE)
    self_approver = type(ALICE)("alice", BOB.role)
    with pytest.raises(PermissionDeniedError, match="cannot approve it"):
        registry.approve("fraud", 1, ApprovalCreate(decision="approved"), self_approver)
    with pytest.raises(PermissionDeniedError, match="needs approver"):
        registry.approve("fraud", 1, ApprovalCreate(decision="approved"), ALICE)
    approval = registry.approve(
        "fraud", 1, ApprovalCreate(decision="approved", comment="metrics ok"), BOB
    )
    assert (approval.approver, approval.decision, approval.comment) == ("bob", "approved", "metrics ok")
    promoted = registry.transition_stage("fraud", 1, StageChange(stage=Stage.PRODUCTION), ALICE)
    assert promoted.stage == Stage.PRODUCTION


def test_a_later_rejection_blocks_production(registry: Registry) -> None:
    registry.create_model(
        ModelCreate(name="fraud", policy=ModelPolicy(require_approval_for_production=True)), ALICE
    )
    _register(registry, name="fraud")
    registry.transition_stage("fraud", 1, StageChange(stage=Stage.STAGING), ALICE)
    registry.approve("fraud", 1, ApprovalCreate(decision="approved"), BOB)
    registry.approve("fraud", 1, ApprovalCreate(decision="rejected", comment="bias"), BOB)
    with pytest.raises(PermissionDeniedError, match="rejection"):
        registry.transition_stage("fraud", 1, StageChange(stage=Stage.PRODUCTION), ALICE)


def test_rejected_versions_cannot_reach_production(registry: Registry) -> None:
    _register(registry)
    registry.transition_stage("iris", 1, StageChange(stage=Stage.STAGING), ALICE)
    registry.reject_version("iris", 1, "p95 latency 80 ms > 50 ms", ALICE)
    with pytest.raises(StageTransitionError, match="p95 latency"):
        registry.transition_stage("iris", 1, StageChange(stage=Stage.PRODUCTION), ALICE)


def test_a_version_in_production_cannot_be_rejected(registry: Registry) -> None:
    _register(registry)
    registry.transition_stage("iris", 1, StageChange(stage=Stage.STAGING), ALICE)
    registry.transition_stage("iris", 1, StageChange(stage=Stage.PRODUCTION), ALICE)
    with pytest.raises(ConflictError, match="in production and cannot be rejected") as refused:
        registry.reject_version("iris", 1, "looks off", ALICE)
    assert refused.value.detail["field"] == "version"
    version = registry.get_version("iris", 1)
    assert (version.stage, version.status) == (Stage.PRODUCTION, "ready")


def test_no_alias_names_a_rejected_version_nor_a_user_an_archived_one(registry: Registry) -> None:
    for seed in range(3):
        _register(registry, seed=seed)
    registry.reject_version("iris", 1, "p95 latency 80 ms > 50 ms", ALICE)
    with pytest.raises(ConflictError, match="iris:1 is rejected \\(p95 latency") as refused:
        registry.set_alias("iris", "champion", AliasSet(version=1), ALICE)
    assert refused.value.detail["field"] == "version"
    registry.transition_stage("iris", 2, StageChange(stage=Stage.ARCHIVED), ALICE)
    with pytest.raises(ConflictError, match="iris:2 is archived"):
        registry.set_alias("iris", "champion", AliasSet(version=2), ALICE)
    assert registry.get_model("iris").aliases == {}
    # An alias may not be left on a version being archived either.
    registry.set_alias("iris", "challenger", AliasSet(version=3), ALICE)
    with pytest.raises(ConflictError, match="while aliases name it \\(challenger\\)") as refused:
        registry.transition_stage("iris", 3, StageChange(stage=Stage.ARCHIVED), ALICE)
    assert refused.value.detail["aliases"] == ["challenger"]
    assert registry.get_version("iris", 3).stage == Stage.NONE
    registry.delete_alias("iris", "challenger", ALICE)
    assert registry.transition_stage("iris", 3, StageChange(stage=Stage.ARCHIVED),
                                     ALICE).stage == Stage.ARCHIVED


def test_a_model_holds_a_bounded_number_of_aliases(registry: Registry,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import control_plane.registry as registry_module

    monkeypatch.setattr(registry_module, "MAX_ALIASES", 3)
    _register(registry)
    for alias in ("a", "b", "c"):
        registry.set_alias("iris", alias, AliasSet(version=1), ALICE)
    with pytest.raises(ConflictError, match="has 3 aliases, the most one may have"):
        registry.set_alias("iris", "d", AliasSet(version=1), ALICE)
    registry.set_alias("iris", "c", AliasSet(version=1), ALICE)  # moving one is not adding


def test_a_trainers_aliases_are_bounded_and_champion_is_never_refused_for_the_count(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leaked job token filled the model's aliases, and every first promotion then
    failed to crown its candidate."""
    import control_plane.registry as registry_module
    from control_plane.auth import Principal
    from control_plane.schemas import Role

    monkeypatch.setattr(registry_module, "MAX_ALIASES", 4)
    monkeypatch.setattr(registry_module, "MAX_TRAINER_ALIASES", 2)
    job = Principal("job-iris-1", Role.TRAINER, model="iris")
    info = registry.artifacts.put([linear_classifier(seed=3)])
    registry.register_version("iris", VersionCreate(
        artifact_digest=info.digest, manifest=linear_classifier_manifest()), job)
    for alias in ("j1", "j2"):
        registry.set_alias("iris", alias, AliasSet(version=1), job)
    with pytest.raises(ConflictError, match="points at most 2 aliases") as refused:
        registry.set_alias("iris", "j3", AliasSet(version=1), job)
    assert refused.value.detail["field"] == "alias"
    registry.set_alias("iris", "j2", AliasSet(version=1), job)  # moving one is not adding
    for alias in ("a", "b"):
        registry.set_alias("iris", alias, AliasSet(version=1), ALICE)
    with pytest.raises(ConflictError, match="has 4 aliases"):
        registry.set_alias("iris", "c", AliasSet(version=1), ALICE)
    registry.set_alias("iris", "champion", AliasSet(version=1), ALICE)
    assert registry.resolve("iris@champion").version == 1


def test_listings_leave_out_what_makes_a_manifest_large_and_stop_at_a_size(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane import listings
    from tests.unit.serving.monitoring_helpers import reference_profile

    profile = reference_profile()
    for seed in range(5):
        _register(registry, seed=seed, reference_profile=profile,
                  example_inputs={"input": [[0.5, 0.1, 0.2, 0.3]]}, metrics={"accuracy": 0.9})
    listed = registry.list_versions("iris")
    assert [v.version for v in listed.items] == [5, 4, 3, 2, 1]
    for version in listed.items:
        assert version.abridged and version.manifest.reference_profile is None
        assert version.manifest.example_inputs is None
        assert version.manifest.metrics == {"accuracy": 0.9}  # what listings show stays
    whole = registry.get_version("iris", 3)
    assert not whole.abridged and whole.manifest.reference_profile == profile
    assert whole.manifest.example_inputs == {"input": [[0.5, 0.1, 0.2, 0.3]]}
    # Past the byte bound a page is cut short, and says where the next one starts.
    one = len(listed.items[0].model_dump_json())
    monkeypatch.setattr(listings, "LISTING_MAX_BYTES", 2 * one + one // 2)
    pages, limits, offset = [], [], 0
    while offset < 5:
        page = registry.list_versions("iris", limit=50, offset=offset)
        assert page.total == 5
        pages.append([v.version for v in page.items])
        limits.append(page.limit)
        offset += page.limit
    assert pages == [[5, 4], [3, 2], [1]] and limits == [2, 2, 50]
    monkeypatch.setattr(listings, "LISTING_MAX_BYTES", 1)
    assert [v.version for v in registry.list_versions("iris").items] == [5]  # never empty


def test_registrations_are_checked_a_few_at_a_time_and_a_keyed_retry_is_not_checked_again(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import control_plane.registry as registry_module
    from control_plane.errors import ControlPlaneUnavailableError

    info = registry.artifacts.put([linear_classifier(seed=0)])
    spec = VersionCreate(artifact_digest=info.digest, manifest=linear_classifier_manifest(),
                         idempotency_key="job-7-register")
    first = registry.register_version("iris", spec, ALICE)
    checked: list[str] = []
    monkeypatch.setattr(registry_module, "check_version",
                        lambda manifest, digest, artifact: checked.append(digest))
    assert registry.register_version("iris", spec, ALICE).version == first.version
    assert checked == []  # the first try's version, answered without loading it again
    busy = threading.BoundedSemaphore(1)
    busy.acquire()  # every turn taken
    monkeypatch.setattr(registry_module, "_checking", busy)
    monkeypatch.setattr(registry_module, "CHECK_WAIT_S", 0.2)
    with pytest.raises(ControlPlaneUnavailableError, match="waited 0.2 s for its turn"):
        registry.register_version("iris", VersionCreate(
            artifact_digest=info.digest, manifest=linear_classifier_manifest()), ALICE)
    assert checked == [] and [v.version for v in registry.list_versions("iris").items] == [1]
    busy.release()
    assert registry.register_version("iris", VersionCreate(
        artifact_digest=info.digest, manifest=linear_classifier_manifest()), ALICE).version == 2
    assert checked == [info.digest]


def test_roles_are_enforced(registry: Registry) -> None:
    with pytest.raises(PermissionDeniedError, match="role reader"):
        registry.create_model(ModelCreate(name="x"), READER)
    registry.create_model(ModelCreate(name="x"), ALICE)
    with pytest.raises(AlreadyExistsError):
        registry.create_model(ModelCreate(name="x"), ALICE)


def test_a_lineage_run_is_one_of_the_store_and_a_jobs_token_names_only_its_own(
        registry: Registry, tracker: Tracker) -> None:
    """The lineage route answers the run as the version's provenance: a job's token
    claimed another's run (its data, parameters and metrics), or one that never was."""
    from control_plane.auth import Principal
    from control_plane.errors import PermissionDeniedError
    from control_plane.schemas import Role, RunCreate

    job = Principal("job-iris-1", Role.TRAINER, model="iris")
    theirs = tracker.start_run(RunCreate(experiment="iris-exp"), ALICE)
    own = tracker.start_run(RunCreate(experiment="iris-exp"), job)

    def register(actor: Principal, run_id: str) -> int:
        info = registry.artifacts.put([linear_classifier(seed=len(run_id))])
        return registry.register_version("iris", VersionCreate(
            artifact_digest=info.digest,
            manifest=linear_classifier_manifest(lineage={"run_id": run_id})), actor).version

    with pytest.raises(PermissionDeniedError, match="started by 'alice'") as refused:
        register(job, theirs.id)
    assert refused.value.detail == {"field": "manifest.lineage.run_id"}
    with pytest.raises(NotFoundError, match="names no run in this store"):
        register(ALICE, "f" * 32)
    assert register(job, own.id) == 1 and register(ALICE, theirs.id) == 2


def test_lineage_follows_parents_and_runs(registry: Registry, tracker: Tracker) -> None:
    from control_plane.schemas import RunCreate

    run = tracker.start_run(RunCreate(experiment="iris-exp", params={"lr": 0.1}), ALICE)
    _register(registry, seed=1, lineage={"dataset_uri": "sklearn://iris", "run_id": run.id})
    _register(registry, seed=2, lineage={"parent_version": 1})
    _register(registry, seed=3, lineage={"parent_version": 2, "code_commit": "abc123"})
    lineage = version_lineage(registry, tracker, "iris", 3)
    assert lineage.parents == [2, 1]
    assert lineage.lineage.code_commit == "abc123"
    first = version_lineage(registry, tracker, "iris", 1)
    assert first.run is not None and first.run.params == {"lr": 0.1}
    assert first.lineage.dataset_uri == "sklearn://iris"
    with pytest.raises(NotFoundError, match="parent_version 9"):
        _register(registry, seed=4, lineage={"parent_version": 9})


def test_registry_artifacts_are_the_uploaded_bytes(registry: Registry, artifacts: ArtifactStore) -> None:
    version = _register(registry, seed=5)
    assert artifacts.read_bytes(version.artifact_digest) == linear_classifier(seed=5)
    assert version.artifact_size == len(linear_classifier(seed=5))


def test_one_subject_with_two_tokens_cannot_approve_its_own_version(
        registry: Registry, db: Database) -> None:
    """Registered with alice's deployer token; her approver token (another name) is refused."""
    tokens = TokenService(db)
    deployer = tokens.create(TokenCreate(name="alice-ci", role=Role.DEPLOYER, subject="alice"), ADMIN)
    approver = tokens.create(TokenCreate(name="alice-review", role=Role.APPROVER, subject="alice"),
                             ADMIN)
    other = tokens.create(TokenCreate(name="bob-review", role=Role.APPROVER, subject="bob"), ADMIN)
    registry.create_model(
        ModelCreate(name="fraud", policy=ModelPolicy(require_approval_for_production=True)), ADMIN)
    info = registry.artifacts.put([linear_classifier(seed=0)])
    registry.register_version("fraud", VersionCreate(
        artifact_digest=info.digest, manifest=linear_classifier_manifest()),
        tokens.authenticate(deployer.token))
    version = registry.get_version("fraud", 1)
    assert (version.created_by, version.created_by_subject) == ("alice-ci", "alice")
    with pytest.raises(PermissionDeniedError, match="'alice' registered fraud:1") as refused:
        registry.approve("fraud", 1, ApprovalCreate(decision="approved"),
                         tokens.authenticate(approver.token))
    assert refused.value.detail["field"] == "approver"
    assert registry.list_approvals("fraud", 1) == []
    approval = registry.approve("fraud", 1, ApprovalCreate(decision="approved"),
                                tokens.authenticate(other.token))
    assert (approval.approver, approval.approver_subject) == ("bob-review", "bob")


def test_new_aliases_made_at_once_never_pass_the_cap(registry: Registry,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two control planes each add an alias to a model one short of the cap: the second
    counts after the first has added its own, and is refused."""
    import control_plane.registry as registry_module

    monkeypatch.setattr(registry_module, "MAX_ALIASES", 2)
    _register(registry, seed=1)
    _register(registry, seed=2)
    registry.set_alias("iris", "a", AliasSet(version=1), ALICE)
    other = Database(registry.db.url, migrate=False)

    def counts_aliases(statement: str) -> bool:
        return "count(" in statement.lower() and "model_aliases" in statement

    try:
        with meanwhile(registry.db.engine, counts_aliases, lambda: Registry(
                other, registry.artifacts).set_alias("iris", "c", AliasSet(version=2), ALICE)
                       ) as added:
            registry.set_alias("iris", "b", AliasSet(version=1), ALICE)
    finally:
        other.dispose()
    assert isinstance(added[0], ConflictError), added
    assert sorted(registry.get_model("iris").aliases) == ["a", "b"]


def test_an_alias_pointed_while_its_version_is_deleted_never_names_a_missing_version(
        registry: Registry) -> None:
    """Another control plane deletes v2 while this one points an alias at it: the deletion
    waits for the alias and deletes it too (or the alias finds v2 gone), never an alias left
    naming no version (``m@alias`` a 404, endpoints tracking it silently stuck)."""
    _register(registry, seed=1)
    _register(registry, seed=2)
    other = Database(registry.db.url, migrate=False)
    try:
        with meanwhile(registry.db.engine, selects_from("model_versions"),
                       lambda: Registry(other, registry.artifacts).delete_version("iris", 2, ADMIN)
                       ) as deleted:
            registry.set_alias("iris", "candidate", AliasSet(version=2), ALICE)
    finally:
        other.dispose()
    assert deleted == [None]
    with registry.db.session(readonly=True) as session:
        aliases = session.execute(select(AliasRow.alias, AliasRow.version)).all()
    assert aliases == []
    with pytest.raises(NotFoundError):
        registry.get_version("iris", 2)


def test_what_a_writer_gives_anyone_to_read_is_bounded(registry: Registry,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployer's text is read by every caller (models and versions listed to anyone):
    megabytes of it made one listing of gigabytes."""
    from pydantic import ValidationError

    from control_plane import listings
    from control_plane.schemas import (
        ApprovalCreate,
        ModelCreate,
        ModelUpdate,
        RejectVersion,
        StageChange,
    )

    refusals = [
        (ModelCreate, {"name": "m", "description": "x" * 10_001}, "description"),
        (ModelUpdate, {"tags": {f"k{i}": "v" for i in range(65)}}, "tags"),
        (ModelUpdate, {"tags": {"k": "v" * 1_025}}, "tags.k"),
        (StageChange, {"stage": "staging", "reason": "r" * 2_001}, "reason"),
        (RejectVersion, {"reason": "r" * 2_001}, "reason"),
        (ApprovalCreate, {"decision": "approved", "comment": "c" * 2_001}, "comment"),
    ]
    for model, fields, where in refusals:
        with pytest.raises(ValidationError) as refused:
            model(**fields)
        assert ".".join(map(str, refused.value.errors()[0]["loc"])) == where
    for index in range(3):
        registry.create_model(ModelCreate(name=f"m{index}", description="d" * 10_000), ALICE)
    whole = registry.list_models()
    assert [m.name for m in whole.items] == ["m0", "m1", "m2"] and whole.limit == 50
    one = len(whole.items[0].model_dump_json())
    monkeypatch.setattr(listings, "LISTING_MAX_BYTES", 2 * one + one // 2)
    first = registry.list_models(limit=50)
    assert [m.name for m in first.items] == ["m0", "m1"] and first.limit == 2
    assert [m.name for m in registry.list_models(offset=2).items] == ["m2"]


def test_a_training_job_s_token_starts_and_registers_a_bounded_number(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job starts one run and registers one version; a leaked job token (readable by
    every package the job installs) started runs and registered versions without end."""
    from control_plane import registry as registry_module
    from control_plane import tracking as tracking_module
    from control_plane.auth import Principal
    from control_plane.schemas import Role, RunCreate

    monkeypatch.setattr(tracking_module, "MAX_TRAINER_RUNS", 2)
    monkeypatch.setattr(registry_module, "MAX_TRAINER_VERSIONS", 2)
    job = Principal("job-exp-1", Role.TRAINER, model="iris")
    tracker = Tracker(registry.db, registry.artifacts)
    runs = [tracker.start_run(RunCreate(experiment="exp"), job).id for _ in range(2)]
    with pytest.raises(ConflictError, match="makes at most 2 runs") as refused:
        tracker.start_run(RunCreate(experiment="exp"), job)
    assert refused.value.detail == {"field": "token", "limit": 2}
    tracker.start_run(RunCreate(experiment="exp"), ALICE)  # a person's token is not a job's

    def register(actor: Principal, run_id: str | None, seed: int) -> int:
        digest = registry.artifacts.put([linear_classifier(seed=seed)]).digest
        lineage = {"run_id": run_id} if run_id else {}
        return registry.register_version("iris", VersionCreate(
            artifact_digest=digest, manifest=linear_classifier_manifest(lineage=lineage)),
            actor).version

    assert [register(job, runs[index], index) for index in range(2)] == [1, 2]
    with pytest.raises(ConflictError, match="makes at most 2 versions"):
        register(job, runs[0], 3)
    assert register(ALICE, None, 4) == 3


def test_a_training_job_s_token_makes_a_bounded_number_of_experiments_and_metric_points(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted on the token's row: a leaked job token's 500 runs of a million points each
    were half a billion rows, and its experiments had no bound at all."""
    from control_plane import tracking as tracking_module
    from control_plane.auth import Principal, TokenService
    from control_plane.schemas import (
        ExperimentCreate,
        MetricBatch,
        MetricPoint,
        Role,
        RunCreate,
        TokenCreate,
    )

    monkeypatch.setattr(tracking_module, "MAX_TRAINER_EXPERIMENTS", 2)
    monkeypatch.setattr(tracking_module, "MAX_TRAINER_METRIC_POINTS", 5)
    TokenService(registry.db).create(TokenCreate(name="job-exp-2", role=Role.TRAINER,
                                                 expires_in_days=1), ALICE)
    job = Principal("job-exp-2", Role.TRAINER)
    tracker = Tracker(registry.db, registry.artifacts)
    for name in ("a", "b"):
        tracker.create_experiment(ExperimentCreate(name=name), job)
    with pytest.raises(ConflictError, match="makes at most 2 experiments"):
        tracker.create_experiment(ExperimentCreate(name="c"), job)
    tracker.create_experiment(ExperimentCreate(name="c"), ALICE)

    def points(count: int) -> MetricBatch:
        return MetricBatch(metrics=[MetricPoint(key="loss", value=1.0, step=step)
                                    for step in range(count)])

    first, second = (tracker.start_run(RunCreate(experiment="a"), job).id for _ in range(2))
    assert tracker.log_metrics(first, points(3), job) == 3
    assert tracker.log_metrics(second, points(2), job) == 2  # five, over both runs
    with pytest.raises(ConflictError, match="makes at most 5 metric points") as refused:
        tracker.log_metrics(second, points(1), job)
    assert refused.value.detail == {"field": "token", "limit": 5}
    assert len(tracker.metric_history(second, "loss")) == 2  # the refused batch left nothing
    person = tracker.start_run(RunCreate(experiment="a"), ALICE).id
    assert tracker.log_metrics(person, points(10), ALICE) == 10  # a person's token is not a job's
