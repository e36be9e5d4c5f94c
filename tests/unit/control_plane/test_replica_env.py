"""What model replicas get in their environment: no store URL, no person's token; a
read-only token of their own when reads require one, the same one after a restart."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from control_plane.auth import Principal, TokenService
from control_plane.replica_env import link_address, replica_environment, without_secrets
from control_plane.schemas import Role
from control_plane.store import Database
from modelplane.settings import REPLICA_TOKEN_FILE, Settings
from tests.unit.control_plane.together import start_together


def _settings(home: Path, *, reads_require_token: bool) -> Settings:
    return Settings.from_env({"MODELPLANE_HOME": str(home),
                              "MODELPLANE_TOKEN": "mp_operator",
                              "MODELPLANE_READS_REQUIRE_TOKEN": str(reads_require_token)})


def test_open_reads_give_replicas_nothing(db: Database, tmp_path: Path) -> None:
    settings = _settings(tmp_path, reads_require_token=False)
    assert replica_environment(settings, TokenService(db)) == {}
    assert not (tmp_path / REPLICA_TOKEN_FILE).exists()


def test_closed_reads_give_replicas_a_kept_read_only_token(db: Database, tmp_path: Path) -> None:
    tokens = TokenService(db)
    settings = _settings(tmp_path, reads_require_token=True)
    env = replica_environment(settings, tokens)
    assert set(env) == {"MODELPLANE_TOKEN"} and env["MODELPLANE_TOKEN"] != "mp_operator"
    principal = tokens.authenticate(env["MODELPLANE_TOKEN"])
    assert principal.role is Role.READER
    kept = tmp_path / REPLICA_TOKEN_FILE
    assert kept.read_text().strip() == env["MODELPLANE_TOKEN"]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    # A restart keeps it (replicas are not replaced for a new token)...
    assert replica_environment(settings, tokens) == env
    # ...until it is revoked: then a new one, under a new name.
    tokens.revoke(principal.name, Principal("root", Role.ADMIN))
    renewed = replica_environment(settings, tokens)
    assert renewed != env
    assert tokens.authenticate(renewed["MODELPLANE_TOKEN"]).role is Role.READER
    assert kept.read_text().strip() == renewed["MODELPLANE_TOKEN"]


@pytest.mark.parametrize("kept_revoked", [False, True], ids=["first-start", "kept-one-revoked"])
def test_control_planes_starting_together_keep_one_replica_token(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept_revoked: bool) -> None:
    """Both hand replicas the same token, the file holds it, and no second one was minted
    (replicas would be replaced at the next change of leader for a new environment)."""
    settings = _settings(tmp_path, reads_require_token=True)
    if kept_revoked:
        first = replica_environment(settings, TokenService(db))["MODELPLANE_TOKEN"]
        TokenService(db).revoke(TokenService(db).authenticate(first).name, Principal("root", Role.ADMIN))
    results, errors = start_together(
        monkeypatch, db.url, lambda store: replica_environment(settings, TokenService(store)))
    assert errors == []
    assert results[0] == results[1]
    secret = results[0]["MODELPLANE_TOKEN"]
    assert (tmp_path / REPLICA_TOKEN_FILE).read_text().strip() == secret
    active = [t for t in TokenService(db).list() if t.role is Role.READER and t.revoked_at is None]
    assert [t.name for t in active] == [TokenService(db).authenticate(secret).name]


def test_a_tampered_token_file_is_not_trusted(db: Database, tmp_path: Path) -> None:
    """An admin token dropped into the file is not handed to replicas."""
    tokens = TokenService(db)
    from control_plane.schemas import TokenCreate

    admin = tokens.create(TokenCreate(name="ops", role=Role.ADMIN), Principal("root", Role.ADMIN))
    (tmp_path / REPLICA_TOKEN_FILE).write_text(admin.token)
    env = replica_environment(_settings(tmp_path, reads_require_token=True), tokens)
    assert env["MODELPLANE_TOKEN"] != admin.token
    assert tokens.authenticate(env["MODELPLANE_TOKEN"]).role is Role.READER


def test_a_ray_head_inherits_no_secret() -> None:
    environ = {"MODELPLANE_DB_URL": "postgresql+psycopg://u:pw@db/mp", "MODELPLANE_TOKEN": "mp_x",
               "MODELPLANE_HOME": "/srv/mp", "PATH": "/usr/bin"}
    assert without_secrets(environ) == {"MODELPLANE_HOME": "/srv/mp", "PATH": "/usr/bin"}


def test_the_artifact_stores_credentials_go_to_the_control_plane_only() -> None:
    from control_plane.replica_env import artifact_store_environment

    environ = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cret",
               "AWS_SESSION_TOKEN": "tok", "AWS_ENDPOINT_URL": "http://minio:9000",
               "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "", "PATH": "/usr/bin"}
    # A Ray head (so every model replica) keeps where the store is, never how to sign in.
    assert without_secrets(environ) == {"AWS_ENDPOINT_URL": "http://minio:9000",
                                         "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "",
                                         "PATH": "/usr/bin"}
    # The control plane gets all of it that is set.
    assert artifact_store_environment(environ) == {
        "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cret", "AWS_SESSION_TOKEN": "tok",
        "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "eu-west-1"}


def test_isolated_routers_get_the_nodes_ingress_only_where_haproxy_and_the_lean_path_run() -> None:
    haproxy = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    local = Settings.from_env({"MODELPLANE_HTTP_PORT": "8123"})
    assert link_address(local, haproxy) == "127.0.0.1:8123"
    everywhere = Settings.from_env({"MODELPLANE_HTTP_HOST": "0.0.0.0", "MODELPLANE_HTTP_PORT": "9000"})
    assert link_address(everywhere, haproxy) == "127.0.0.1:9000"  # this node's own ingress
    head_only = Settings.from_env({"MODELPLANE_HTTP_HOST": "0.0.0.0",
                                   "MODELPLANE_PROXY_LOCATION": "HeadOnly"})
    assert link_address(head_only, haproxy, lambda: "10.0.0.2") == "10.0.0.2:8000"  # the head's
    private = Settings.from_env({"MODELPLANE_HTTP_HOST": "10.0.0.5"})
    assert link_address(private, haproxy) == "10.0.0.5:8000"
    assert link_address(local, {}) is None  # Serve's proxy alone: the handles
    lean_off = Settings.from_env({"MODELPLANE_LEAN_INGRESS": "false"})
    assert link_address(lean_off, haproxy) is None
