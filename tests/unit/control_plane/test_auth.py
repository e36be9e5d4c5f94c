"""Tokens: hashed storage, roles, expiry, revocation, the first admin token."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from control_plane.auth import TokenService, hash_token
from control_plane.errors import AlreadyExistsError, AuthenticationError, PermissionDeniedError
from control_plane.schemas import Role, TokenCreate
from control_plane.store import Database
from control_plane.store.models import TokenRow
from tests.unit.control_plane.conftest import ADMIN, ALICE
from tests.unit.control_plane.together import start_together


def test_admin_token_bootstraps_once_with_mode_0600(db: Database, tmp_path: Path) -> None:
    tokens = TokenService(db)
    path = tmp_path / "home" / "admin.token"
    secret = tokens.bootstrap_admin(path)
    assert secret is not None and path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tokens.bootstrap_admin(path) is None
    assert tokens.authenticate(secret).role == Role.ADMIN


@pytest.mark.parametrize("revoked_first", [False, True], ids=["fresh-store", "after-revoke"])
def test_control_planes_starting_together_make_one_admin_token_and_the_file_holds_it(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revoked_first: bool) -> None:
    path = tmp_path / "home" / "admin.token"
    if revoked_first:
        TokenService(db).bootstrap_admin(path)
        TokenService(db).revoke("admin", ADMIN)
    results, errors = start_together(monkeypatch, db.url,
                                     lambda store: TokenService(store).bootstrap_admin(path))
    assert errors == []
    [secret] = [result for result in results if result]
    assert results.count(None) == 1
    assert path.read_text().strip() == secret
    assert TokenService(db).authenticate(secret).role == Role.ADMIN
    admins = [t for t in TokenService(db).list() if t.role == Role.ADMIN and t.revoked_at is None]
    assert len(admins) == 1


def test_secrets_are_stored_hashed(db: Database) -> None:
    tokens = TokenService(db)
    created = tokens.create(TokenCreate(name="ci", role=Role.DEPLOYER), ADMIN)
    with db.session(readonly=True) as session:
        row = session.scalar(select(TokenRow).where(TokenRow.name == "ci"))
    assert row.token_hash == hash_token(created.token)
    assert created.token not in (row.token_hash, row.prefix)
    assert tokens.authenticate(created.token).name == "ci"


def test_revoked_expired_and_unknown_tokens_fail(db: Database) -> None:
    tokens = TokenService(db)
    created = tokens.create(TokenCreate(name="temp", role=Role.READER), ADMIN)
    tokens.revoke("temp", ADMIN)
    with pytest.raises(AuthenticationError, match="revoked"):
        tokens.authenticate(created.token)
    expiring = tokens.create(TokenCreate(name="short", role=Role.READER, expires_in_days=1), ADMIN)
    with db.session() as session:
        row = session.scalar(select(TokenRow).where(TokenRow.name == "short"))
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(AuthenticationError, match="expired"):
        tokens.authenticate(expiring.token)
    with pytest.raises(AuthenticationError, match="not known"):
        tokens.authenticate("mp_guess")


def test_only_admins_manage_tokens(db: Database) -> None:
    tokens = TokenService(db)
    with pytest.raises(PermissionDeniedError, match="needs admin"):
        tokens.create(TokenCreate(name="x", role=Role.ADMIN), ALICE)
    tokens.create(TokenCreate(name="x", role=Role.READER), ADMIN)
    with pytest.raises(AlreadyExistsError):
        tokens.create(TokenCreate(name="x", role=Role.READER), ADMIN)


def test_tokens_carry_their_subject_defaulting_to_the_name(db: Database) -> None:
    tokens = TokenService(db)
    named = tokens.create(TokenCreate(name="alice-laptop", role=Role.APPROVER,
                                      subject="alice@example.com"), ADMIN)
    plain = tokens.create(TokenCreate(name="ci", role=Role.DEPLOYER), ADMIN)
    assert named.info.subject == "alice@example.com" and plain.info.subject == "ci"
    principal = tokens.authenticate(named.token)
    assert (principal.name, principal.subject) == ("alice-laptop", "alice@example.com")
    assert tokens.authenticate(plain.token).subject == "ci"
    assert {t.name: t.subject for t in tokens.list()} == {
        "alice-laptop": "alice@example.com", "ci": "ci"}
    with pytest.raises(ValueError, match="subject"):
        TokenCreate(name="x", role=Role.READER, subject="alice smith")


def test_a_training_jobs_token_acts_for_whoever_minted_it(db: Database) -> None:
    """What a job's trainer token registers is its submitter's: one person, one subject."""
    tokens = TokenService(db)
    deployer = tokens.authenticate(tokens.create(TokenCreate(
        name="dana-ci", role=Role.DEPLOYER, subject="dana"), ADMIN).token)
    job = tokens.create(TokenCreate(name="job-1", role=Role.TRAINER, expires_in_minutes=30),
                        deployer)
    assert job.info.subject == "dana" and tokens.authenticate(job.token).subject == "dana"
    with pytest.raises(PermissionDeniedError, match="only an admin issues tokens to another"):
        tokens.create(TokenCreate(name="job-2", role=Role.TRAINER, expires_in_minutes=30,
                                  subject="erin"), deployer)
    admins_job = tokens.create(TokenCreate(name="job-3", role=Role.TRAINER, expires_in_days=1),
                               ADMIN)
    assert admins_job.info.subject == ADMIN.subject


def test_every_bootstrapped_admin_token_is_the_same_operator(db: Database, tmp_path: Path) -> None:
    tokens = TokenService(db)
    first = tokens.bootstrap_admin(tmp_path / "admin.token")
    tokens.revoke("admin", ADMIN)
    second = tokens.bootstrap_admin(tmp_path / "admin.token")
    assert first and second
    again = tokens.authenticate(second)
    assert again.name != "admin" and again.subject == "admin"


def test_a_training_jobs_token_registers_and_points_aliases_of_its_own_model_only(
        registry: Any) -> None:
    """A job's token sits in its runtime environment, where its code and every package it
    installs can read it: it must not register a version of another team's model, nor
    point that model's aliases (an endpoint tracking the alias would roll it out)."""
    from pydantic import ValidationError

    from control_plane.schemas import AliasSet, VersionCreate
    from tests.onnx_models import linear_classifier, linear_classifier_manifest

    info = registry.artifacts.put([linear_classifier(seed=2)])
    create = VersionCreate(artifact_digest=info.digest, manifest=linear_classifier_manifest())
    registry.register_version("fraud", create, ALICE)  # another team's model
    tokens = TokenService(registry.db)
    minted = tokens.create(TokenCreate(name="job-churn", role=Role.TRAINER, expires_in_minutes=60,
                                       model="churn"), ALICE)
    assert minted.info.model == "churn"
    job = tokens.authenticate(minted.token)
    assert job.model == "churn"
    churn = registry.register_version("churn", create, job).version
    registry.set_alias("churn", "challenger", AliasSet(version=churn), job)
    with pytest.raises(PermissionDeniedError, match="for model 'churn'.*not 'fraud'"):
        registry.register_version("fraud", create, job)
    with pytest.raises(PermissionDeniedError, match="for model 'churn'"):
        registry.set_alias("fraud", "challenger", AliasSet(version=1), job)
    assert registry.get_model("fraud").latest_version == 1
    with pytest.raises(ValidationError, match="only a trainer token"):
        TokenCreate(name="x", role=Role.READER, model="churn")


def test_a_token_s_last_use_is_kept_to_the_minute(db: Database) -> None:
    from tests.waiting import wait_for

    tokens = TokenService(db)
    created = tokens.create(TokenCreate(name="ci-reader", role=Role.READER), ADMIN)

    def last_used() -> datetime | None:
        return next(t.last_used_at for t in tokens.list() if t.name == "ci-reader")

    assert last_used() is None
    before = datetime.now(UTC)
    tokens.authenticate(created.token)
    first = wait_for(last_used, 10, "the token's use to be noted")
    assert first >= before - timedelta(seconds=1)
    for _ in range(20):  # within the minute: no more writes, from this process at least
        tokens.authenticate(created.token)
    assert len(tokens._noted) == 1 and last_used() == first
    with db.session() as session:  # another process's note, five minutes ago
        session.scalar(select(TokenRow).where(TokenRow.name == "ci-reader")).last_used_at = \
            datetime.now(UTC) - timedelta(minutes=5)
    tokens._noted.clear()  # a new process
    tokens.authenticate(created.token)
    wait_for(lambda: last_used() >= before, 10, "the token's use to be noted again")
