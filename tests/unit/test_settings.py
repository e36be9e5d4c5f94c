"""The settings object reads every variable and rejects bad values by name."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import pytest

from modelplane.errors import ConfigurationError
from modelplane.settings import Settings


def test_defaults_are_rooted_in_the_home_folder(tmp_path: Path) -> None:
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path)})
    assert settings.home == tmp_path
    assert settings.db_url == f"sqlite:///{tmp_path / 'modelplane.db'}"
    assert settings.artifact_uri == str(tmp_path / "artifacts")
    assert settings.http_port == 8000
    assert settings.url == "http://127.0.0.1:8000"
    assert settings.token is None
    assert settings.reads_require_token is False
    assert settings.admin_token_path == tmp_path / "admin.token"


def test_home_defaults_to_dot_modelplane_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).home == tmp_path / ".modelplane"


def test_every_variable_is_read(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "MODELPLANE_HOME": str(tmp_path),
            "MODELPLANE_DB_URL": "postgresql+psycopg://u:p@db:5432/mp",
            "MODELPLANE_ARTIFACT_URI": "s3://bucket/prefix",
            "MODELPLANE_HTTP_HOST": "0.0.0.0",
            "MODELPLANE_HTTP_PORT": "9100",
            "MODELPLANE_URL": "https://mp.example:443/",
            "MODELPLANE_TOKEN": "mp_secret",
            "MODELPLANE_MAX_ARTIFACT_MB": "16",
            "MODELPLANE_READS_REQUIRE_TOKEN": "yes",
            "MODELPLANE_CACHE_DIR": str(tmp_path / "cache"),
        }
    )
    assert settings.db_url == "postgresql+psycopg://u:p@db:5432/mp"
    assert settings.artifact_uri == "s3://bucket/prefix"
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == 9100
    assert settings.url == "https://mp.example:443"
    assert settings.token == "mp_secret"
    assert settings.max_artifact_bytes == 16 * 1024 * 1024
    assert settings.trainer_upload_bytes == 8 * 16 * 1024 * 1024  # follows the artifact limit
    assert settings.reads_require_token is True
    assert settings.cache_dir == tmp_path / "cache"
    assert "mp_secret" not in repr(settings)


def test_the_artifact_cache_defaults_to_the_user_s_own_folder_in_the_temp_folder(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path), "MODELPLANE_CACHE_DIR": ""})
    assert settings.cache_dir == Path(tempfile.gettempdir()) / f"modelplane-cache-{os.getuid()}"


def test_url_follows_the_port_when_unset(tmp_path: Path) -> None:
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path), "MODELPLANE_HTTP_PORT": "8123"})
    assert settings.url == "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODELPLANE_HTTP_PORT", "eighty", "TCP port|positive integer"),
        ("MODELPLANE_HTTP_PORT", "70000", "TCP port"),
        ("MODELPLANE_HTTP_PORT", "0", "positive integer"),
        ("MODELPLANE_MAX_ARTIFACT_MB", "-5", "positive integer"),
        ("MODELPLANE_READS_REQUIRE_TOKEN", "maybe", "true/false"),
        ("MODELPLANE_URL", "localhost:8000", "http:// or https://"),
        ("MODELPLANE_DB_URL", "modelplane.db", "SQLAlchemy URL"),
    ],
)
def test_a_bad_value_is_rejected_naming_the_variable(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        Settings.from_env({"MODELPLANE_HOME": str(tmp_path), variable: value})
    assert variable in caught.value.message
    assert repr(value) in caught.value.message
    assert caught.value.detail["variable"] == variable
    assert caught.value.code == "configuration_error"


def test_resolved_token_falls_back_to_the_admin_token_file(tmp_path: Path) -> None:
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path)})
    assert settings.resolved_token() is None
    settings.admin_token_path.write_text("mp_admin\n")
    assert settings.resolved_token() == "mp_admin"
    explicit = Settings.from_env({"MODELPLANE_HOME": str(tmp_path), "MODELPLANE_TOKEN": "mp_x"})
    assert explicit.resolved_token() == "mp_x"


def test_configuration_errors_pickle_with_their_detail() -> None:
    error = ConfigurationError("bad", detail={"variable": "X"})
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ConfigurationError
    assert copy.message == "bad"
    assert copy.detail == {"variable": "X"}


def test_to_env_round_trips(tmp_path: Path) -> None:
    original = Settings.from_env(
        {
            "MODELPLANE_HOME": str(tmp_path),
            "MODELPLANE_HTTP_PORT": "9001",
            "MODELPLANE_TOKEN": "mp_t",
            "MODELPLANE_MAX_ARTIFACT_MB": "7",
            "MODELPLANE_READS_REQUIRE_TOKEN": "1",
        }
    )
    assert Settings.from_env(original.to_env()) == original


def test_described_hides_every_secret(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "MODELPLANE_HOME": str(tmp_path), "MODELPLANE_TOKEN": "mp_secret",
        "MODELPLANE_DB_URL": "postgresql+psycopg://u:pa55@db:5432/mp",
        "MODELPLANE_CACHE_DIR": str(tmp_path / "cache"),
    })
    shown = settings.described()
    assert shown["token"] == "set" and shown["replica_token"] == "unset"
    assert shown["db_url"] == "postgresql+psycopg://u:***@db:5432/mp"
    assert shown["cache_dir"] == str(tmp_path / "cache")
    settings.replica_token_path.write_text("mp_replica\n")
    shown = settings.described()
    assert shown["replica_token"] == "set"
    assert not any(secret in value for value in shown.values()
                   for secret in ("mp_secret", "pa55", "mp_replica"))


def test_the_grpc_port_follows_the_http_port_unless_set(tmp_path: Path) -> None:
    home = {"MODELPLANE_HOME": str(tmp_path)}
    assert Settings.from_env(home).grpc_port == 8001  # Triton's 8000 and 8001
    assert Settings.from_env({**home, "MODELPLANE_HTTP_PORT": "9100"}).grpc_port == 9101
    assert Settings.from_env({**home, "MODELPLANE_GRPC_PORT": "7001"}).grpc_port == 7001
    assert Settings.from_env({**home, "MODELPLANE_GRPC_PORT": "0"}).grpc_port == 0  # off
    with pytest.raises(ConfigurationError, match="MODELPLANE_GRPC_PORT='70000' is invalid"):
        Settings.from_env({**home, "MODELPLANE_GRPC_PORT": "70000"})


def test_several_control_planes_need_a_store_they_all_reach() -> None:
    with pytest.raises(ConfigurationError, match="MODELPLANE_CONTROL_PLANE_REPLICAS.*PostgreSQL"):
        Settings.from_env({"MODELPLANE_CONTROL_PLANE_REPLICAS": "2"})  # SQLite by default
    with pytest.raises(ConfigurationError, match="MODELPLANE_CONTROL_PLANE_REPLICAS"):
        Settings.from_env({"MODELPLANE_CONTROL_PLANE_REPLICAS": "0"})
    settings = Settings.from_env({"MODELPLANE_CONTROL_PLANE_REPLICAS": "3",
                                  "MODELPLANE_DB_URL": "postgresql+psycopg://mp@db/modelplane"})
    assert settings.control_plane_replicas == 3
    assert Settings.from_env({}).control_plane_replicas == 1


def test_the_home_is_made_and_kept_its_owner_s_alone(tmp_path: Path) -> None:
    """It holds the store, whose receivers' webhook URLs the API shows admins only."""
    import stat

    from control_plane.service import ControlPlane

    home = tmp_path / "home"
    cp = ControlPlane.start(Settings.from_env({"MODELPLANE_HOME": str(home)}))
    cp.close()
    assert stat.S_IMODE(home.stat().st_mode) & 0o077 == 0
    home.chmod(0o755)  # opened by hand, or made before this rule
    cp = ControlPlane.start(Settings.from_env({"MODELPLANE_HOME": str(home)}))
    cp.close()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
