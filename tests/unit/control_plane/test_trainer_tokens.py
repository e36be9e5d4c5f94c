"""The ``trainer`` role: a training job's own token, minted per job, narrow and short-lived."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.auth import Principal, TokenService
from control_plane.errors import AuthenticationError, PermissionDeniedError
from control_plane.registry import Registry
from control_plane.schemas import (
    AliasSet,
    DeployRequest,
    ExperimentCreate,
    MetricBatch,
    Role,
    RunCreate,
    TokenCreate,
    VersionCreate,
)
from control_plane.store import Database
from control_plane.tracking import Tracker
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.unit.control_plane.conftest import ADMIN, ALICE, READER


def _trainer(tokens: TokenService, minter: Principal = ALICE, name: str = "job-1") -> Principal:
    created = tokens.create(TokenCreate(name=name, role=Role.TRAINER, expires_in_minutes=30), minter)
    return tokens.authenticate(created.token)


def test_a_deployer_mints_an_expiring_trainer_token_and_nothing_else(db: Database) -> None:
    tokens = TokenService(db)
    before = datetime.now(UTC)
    created = tokens.create(TokenCreate(name="job-1", role=Role.TRAINER, expires_in_minutes=30), ALICE)
    expires = created.info.expires_at
    assert expires is not None
    assert before + timedelta(minutes=29) < expires <= datetime.now(UTC) + timedelta(minutes=30)
    assert created.info.created_by == "alice"
    # Without an expiry, or any other role, minting stays an admin's.
    for spec in (TokenCreate(name="job-2", role=Role.TRAINER),
                 TokenCreate(name="job-3", role=Role.DEPLOYER, expires_in_minutes=5),
                 TokenCreate(name="job-4", role=Role.READER, expires_in_minutes=5)):
        with pytest.raises(PermissionDeniedError, match="needs admin"):
            tokens.create(spec, ALICE)
    with pytest.raises(PermissionDeniedError, match="needs deployer"):
        tokens.create(TokenCreate(name="job-5", role=Role.TRAINER, expires_in_minutes=5), READER)


def test_one_lifetime_only() -> None:
    with pytest.raises(ValueError, match="not both"):
        TokenCreate(name="x", role=Role.TRAINER, expires_in_days=1, expires_in_minutes=5)


def test_a_trainer_tracks_registers_and_moves_aliases(db: Database, registry: Registry,
                                                      tracker: Tracker) -> None:
    job = _trainer(TokenService(db))
    tracker.create_experiment(ExperimentCreate(name="exp"), job)
    run = tracker.start_run(RunCreate(experiment="exp"), job)
    assert tracker.log_metrics(run.id, MetricBatch.model_validate(
        {"metrics": [{"key": "loss", "value": 0.5, "step": 1}]}), job) == 1
    info = registry.artifacts.put([linear_classifier(seed=0)])
    version = registry.register_version("iris", VersionCreate(artifact_digest=info.digest,
                                                           manifest=linear_classifier_manifest()), job)
    moved = registry.set_alias("iris", "challenger", AliasSet(version=version.version), job)
    assert "challenger" in moved.aliases


def test_a_trainer_cannot_deploy_approve_stage_or_manage_tokens(db: Database, registry: Registry) -> None:
    from control_plane.deployments import Deployments

    tokens = TokenService(db)
    job = _trainer(tokens)
    info = registry.artifacts.put([linear_classifier(seed=0)])
    registry.register_version("iris", VersionCreate(artifact_digest=info.digest,
                                                           manifest=linear_classifier_manifest()), ALICE)
    deployments = Deployments(db, registry, base_url="http://127.0.0.1:8000")
    with pytest.raises(PermissionDeniedError):
        deployments.deploy(DeployRequest(endpoint="iris", model_ref="iris:1"), job)
    from control_plane.schemas import StageChange

    with pytest.raises(PermissionDeniedError):
        registry.transition_stage("iris", 1, StageChange(stage="production"), job)
    with pytest.raises(PermissionDeniedError):
        tokens.create(TokenCreate(name="job-2", role=Role.TRAINER, expires_in_minutes=5), job)
    with pytest.raises(PermissionDeniedError):
        tokens.revoke("admin", job)


def test_revocation_by_the_job_its_minter_or_an_admin(db: Database) -> None:
    tokens = TokenService(db)
    for name, revoker in (("job-self", None), ("job-minter", ALICE), ("job-admin", ADMIN)):
        created = tokens.create(TokenCreate(name=name, role=Role.TRAINER, expires_in_minutes=30),
                                ALICE)
        job = tokens.authenticate(created.token)
        assert tokens.revoke(name, revoker or job).revoked_at is not None
        with pytest.raises(AuthenticationError, match="revoked"):
            tokens.authenticate(created.token)
    # Another deployer revokes neither someone else's job token nor a deployer's token.
    _trainer(tokens, ALICE, "job-alices")
    carol = Principal("carol", Role.DEPLOYER)
    with pytest.raises(PermissionDeniedError, match="needs admin"):
        tokens.revoke("job-alices", carol)
    tokens.create(TokenCreate(name="ci", role=Role.DEPLOYER), ADMIN)
    with pytest.raises(PermissionDeniedError, match="needs admin"):
        tokens.revoke("ci", ALICE)


def test_a_trainer_writes_only_its_own_runs(db: Database, tracker: Tracker) -> None:
    """A job's token is readable by whoever lists the cluster's jobs: with it, another
    job's run (its params, its end, the model file a fine-tune starts from) stays as is."""
    from control_plane.schemas import ParamsUpdate, RunArtifactCreate, RunStatus, RunUpdate

    tokens = TokenService(db)
    job, other = _trainer(tokens, name="job-1"), _trainer(tokens, name="job-2")
    theirs = tracker.start_run(RunCreate(experiment="exp"), other)
    digest = tracker.artifacts.put([b"weights"]).digest
    writes = {
        "params": lambda actor: tracker.log_params(
            theirs.id, ParamsUpdate(params={"failure_reason": "x"}), actor),
        "metrics": lambda actor: tracker.log_metrics(theirs.id, MetricBatch.model_validate(
            {"metrics": [{"key": "loss", "value": 9.0, "step": 1}]}), actor),
        "artifact": lambda actor: tracker.log_artifact(
            theirs.id, RunArtifactCreate(path="model/model.pt", digest=digest), actor),
        "end": lambda actor: tracker.update_run(theirs.id, RunUpdate(status=RunStatus.FINISHED),
                                                actor),
    }
    for name, write in writes.items():
        with pytest.raises(PermissionDeniedError, match="only the runs it started") as refused:
            write(job)
        assert refused.value.detail == {"field": "run_id"}, name
    run = tracker.get_run(theirs.id)
    assert run.status == "running" and "failure_reason" not in run.params
    for write in writes.values():  # its own token, and a deployer, may
        write(other)
    assert tracker.get_run(theirs.id).status == "finished"
    mine = tracker.start_run(RunCreate(experiment="exp"), job)
    tracker.log_params(mine.id, ParamsUpdate(params={"lr": 0.1}), ALICE)


def test_a_trainer_points_aliases_only_at_its_own_versions_and_never_champion(
        db: Database, registry: Registry) -> None:
    tokens = TokenService(db)
    job = _trainer(tokens, name="job-1")

    def register(actor: Principal, seed: int) -> int:
        info = registry.artifacts.put([linear_classifier(seed=seed)])
        return registry.register_version("iris", VersionCreate(
            artifact_digest=info.digest, manifest=linear_classifier_manifest()), actor).version

    someone_elses, its_own = register(ALICE, 0), register(job, 1)
    with pytest.raises(PermissionDeniedError, match="registered by 'alice'") as refused:
        registry.set_alias("iris", "challenger", AliasSet(version=someone_elses), job)
    assert refused.value.detail == {"field": "version"}
    with pytest.raises(PermissionDeniedError, match="never 'champion'") as refused:
        registry.set_alias("iris", "champion", AliasSet(version=its_own), job)
    assert refused.value.detail == {"field": "alias"}
    assert registry.get_model("iris").aliases == {}
    registry.set_alias("iris", "challenger", AliasSet(version=its_own), job)
    registry.set_alias("iris", "champion", AliasSet(version=someone_elses), ALICE)
    assert registry.get_model("iris").aliases == {"challenger": its_own, "champion": someone_elses}


@pytest.mark.parametrize("name", ["..", "a b", "x@y", "-lead", "ü", "a" * 129])
def test_a_version_cannot_create_a_model_under_a_name_no_model_may_have(
        registry: Registry, name: str) -> None:
    from control_plane.errors import InvalidInputError

    info = registry.artifacts.put([linear_classifier(seed=0)])
    with pytest.raises(InvalidInputError, match="is not one a model may have") as refused:
        registry.register_version(name, VersionCreate(artifact_digest=info.digest,
                                                      manifest=linear_classifier_manifest()), ALICE)
    assert refused.value.detail == {"field": "name"}


def test_a_job_that_would_crown_its_own_version_is_refused_before_it_trains() -> None:
    """Refused as the job starts, not by the spec's schema: a pipeline stored with such a
    spec still reads (its triggers and runs go on; the run fails at its training stage)."""
    import yaml

    from control_plane.pipelines.spec import parse_pipeline_spec
    from training.errors import InvalidJobSpecError
    from training.runner import refuse_crowning
    from training.spec import parse_job_spec

    example = Path(__file__).parents[3] / "examples" / "breast_cancer.yaml"
    document = yaml.safe_load(example.read_text())
    document["registration"]["alias"] = "champion"
    spec = parse_job_spec(document)
    parse_pipeline_spec({"name": "bc", "training": {"job": document}, "deploy": {"endpoint": "bc"}})
    with pytest.raises(InvalidJobSpecError, match="alias a promotion moves") as refused:
        refuse_crowning(spec)
    assert refused.value.detail["field"] == "registration.alias"


def test_revoking_a_deployer_token_ends_the_job_tokens_it_minted(db: Database) -> None:
    tokens = TokenService(db)
    deployer = tokens.authenticate(tokens.create(TokenCreate(name="ci", role=Role.DEPLOYER),
                                                 ADMIN).token)
    minted = tokens.create(TokenCreate(name="job-long", role=Role.TRAINER, expires_in_days=3650),
                           deployer)
    other = tokens.create(TokenCreate(name="job-other", role=Role.TRAINER, expires_in_days=1),
                          ALICE)
    assert tokens.authenticate(minted.token).name == "job-long"
    tokens.revoke("ci", ADMIN)
    with pytest.raises(AuthenticationError, match="minted by token 'ci', which was revoked"):
        tokens.authenticate(minted.token)
    assert tokens.authenticate(other.token).name == "job-other"  # minted by someone else
    # A trainer token an admin issued to another subject (CI's) is that subject's.
    admin = tokens.authenticate(tokens.create(TokenCreate(name="ops", role=Role.ADMIN),
                                              ADMIN).token)
    for_ci = tokens.create(TokenCreate(name="ci-trainer", role=Role.TRAINER, subject="ci-bot",
                                       expires_in_days=30), admin)
    own = tokens.create(TokenCreate(name="job-ops", role=Role.TRAINER, expires_in_days=1), admin)
    tokens.revoke("ops", ADMIN)
    assert tokens.authenticate(for_ci.token).subject == "ci-bot"
    with pytest.raises(AuthenticationError, match="minted by token 'ops'"):
        tokens.authenticate(own.token)


def test_a_job_token_lives_no_longer_than_the_deployer_token_that_minted_it(db: Database) -> None:
    from sqlalchemy import select

    from control_plane.store.models import TokenRow

    tokens = TokenService(db)
    deployer = tokens.authenticate(tokens.create(
        TokenCreate(name="ci", role=Role.DEPLOYER, expires_in_days=2), ADMIN).token)
    minted = tokens.create(TokenCreate(name="job-long", role=Role.TRAINER, expires_in_days=3650),
                           deployer)
    assert minted.info.expires_at <= datetime.now(UTC) + timedelta(days=2)  # capped at ci's
    assert tokens.authenticate(minted.token).name == "job-long"
    with db.session() as session:  # ci expires; the job token's row still says later
        session.scalar(select(TokenRow).where(TokenRow.name == "ci")).expires_at = \
            datetime.now(UTC) - timedelta(seconds=1)
        session.scalar(select(TokenRow).where(TokenRow.name == "job-long")).expires_at = \
            datetime.now(UTC) + timedelta(days=3650)
    with pytest.raises(AuthenticationError, match="minted by token 'ci', which expired"):
        tokens.authenticate(minted.token)


def test_a_labeler_token_may_name_its_one_endpoint_and_no_other_role_may(db: Database) -> None:
    tokens = TokenService(db)
    created = tokens.create(TokenCreate(name="fraud-labels", role=Role.LABELER,
                                        endpoint="fraud"), ADMIN)
    assert created.info.endpoint == "fraud"
    principal = tokens.authenticate(created.token)
    assert (principal.role, principal.endpoint) == (Role.LABELER, "fraud")
    assert [t.endpoint for t in tokens.list() if t.name == "fraud-labels"] == ["fraud"]
    assert tokens.authenticate(tokens.create(
        TokenCreate(name="any-labels", role=Role.LABELER), ADMIN).token).endpoint is None
    for role in (Role.READER, Role.TRAINER, Role.DEPLOYER, Role.ADMIN):
        with pytest.raises(ValueError, match="only a labeler token is limited to one endpoint"):
            TokenCreate(name="x", role=role, endpoint="fraud")
    with pytest.raises(ValueError, match="endpoint"):
        TokenCreate(name="x", role=Role.LABELER, endpoint="../fraud")
