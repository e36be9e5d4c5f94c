"""training.job_token against a real control plane server (no Ray): minting with the
submitter's token, refusal for a reader, self-revocation only of a token named for it,
and revocation once a job is seen ended."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from control_plane.client import Client
from modelplane.settings import reset_settings_cache
from tests.servers import ControlPlaneProcess
from training.errors import JobSubmissionError
from training.job_token import (
    JOB_TOKEN_ENV,
    JOB_TOKEN_METADATA,
    mint_job_token,
    revoke_if_ended,
    revoke_own_token,
)

pytestmark = pytest.mark.no_ray

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("jobtok") / "home").start()
    yield process
    process.stop()


@pytest.fixture
def as_caller(server: ControlPlaneProcess, monkeypatch: pytest.MonkeyPatch, modelplane_home: Path):
    """Point this process's settings at the server with a given token."""
    def use(token: str) -> Client:
        monkeypatch.setenv("MODELPLANE_URL", server.url)
        monkeypatch.setenv("MODELPLANE_TOKEN", token)
        reset_settings_cache()
        return Client(server.url, server.admin_token)
    return use


def _state(admin: Client, name: str) -> object:
    return {t.name: t for t in admin.list_tokens()}[name]


def test_a_deployer_mints_a_job_token_and_the_job_revokes_only_its_own(
        server: ControlPlaneProcess, as_caller, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(server.url, server.admin_token) as admin:
        deployer = admin.create_token("jt-deployer", "deployer").token
    admin = as_caller(deployer)
    token = mint_job_token("exp-a", model="churn", lifetime_minutes=30)
    assert token.name.startswith("job-exp-a-") and token.secret.startswith("mp_")
    minted = _state(admin, token.name)
    assert (minted.role, minted.created_by, minted.model) == ("trainer", "jt-deployer", "churn")
    assert minted.expires_at is not None

    # In the job: its own token in MODELPLANE_TOKEN, its name in JOB_TOKEN_ENV.
    monkeypatch.setenv("MODELPLANE_TOKEN", token.secret)
    reset_settings_cache()
    monkeypatch.delenv(JOB_TOKEN_ENV, raising=False)
    revoke_own_token()  # not told which token is its own: revokes nothing
    assert _state(admin, token.name).revoked_at is None
    monkeypatch.setenv(JOB_TOKEN_ENV, token.name)
    revoke_own_token()
    assert _state(admin, token.name).revoked_at is not None


def test_a_job_seen_ended_has_its_token_revoked(server: ControlPlaneProcess, as_caller) -> None:
    admin = as_caller(server.admin_token)
    token = mint_job_token("exp-b")
    running = SimpleNamespace(status=SimpleNamespace(value="RUNNING"),
                              metadata={JOB_TOKEN_METADATA: token.name})
    revoke_if_ended(running, TERMINAL)
    assert _state(admin, token.name).revoked_at is None
    ended = SimpleNamespace(status=SimpleNamespace(value="STOPPED"),
                            metadata={JOB_TOKEN_METADATA: token.name})
    revoke_if_ended(ended, TERMINAL)
    assert _state(admin, token.name).revoked_at is not None


def test_a_reader_cannot_submit_and_is_told_what_to_do(server: ControlPlaneProcess, as_caller) -> None:
    with Client(server.url, server.admin_token) as admin:
        reader = admin.create_token("jt-reader", "reader").token
    as_caller(reader)
    with pytest.raises(JobSubmissionError, match="deployer or admin token"):
        mint_job_token("exp-c")
