"""`up` on a machine others use: another OS user's Ray is never joined on a guess, a head
it starts keeps its sessions in a folder of its own user's, and it refuses to start where
its ports are taken (the platform answering there would pass for its own)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from control_plane import platform

OTHER_UID = 65534  # nobody


@pytest.fixture
def ray_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("TMPDIR", raising=False)
    folder = tmp_path / "ray"
    folder.mkdir()
    (folder / "ray_current_cluster").write_text("127.0.0.1:6379\n")
    return folder


def _give_away(path: Path) -> None:
    try:
        os.chown(path, OTHER_UID, -1)
    except PermissionError:
        pytest.skip("giving a file to another user needs root")


def test_this_users_newest_cluster_is_found(ray_temp: Path) -> None:
    assert platform._resolve("auto") == "127.0.0.1:6379"
    assert platform._own_ray_temp() is None


def test_another_users_cluster_is_not_and_a_new_head_gets_a_folder_of_its_own(
        ray_temp: Path) -> None:
    _give_away(ray_temp / "ray_current_cluster")
    assert platform._resolve("auto") is None
    _give_away(ray_temp)
    own = ray_temp.parent / f"ray-{os.getuid()}"
    assert platform._own_ray_temp() == own
    assert own.stat().st_mode & 0o777 == 0o700
    assert platform._resolve("10.0.0.5:6379") == "10.0.0.5:6379"  # named: always


def test_a_folder_someone_else_made_for_this_users_sessions_is_refused(ray_temp: Path) -> None:
    from modelplane.errors import ConfigurationError

    _give_away(ray_temp)
    squatted = ray_temp.parent / f"ray-{os.getuid()}"
    squatted.mkdir(mode=0o777)
    squatted.chmod(0o777)
    with pytest.raises(ConfigurationError, match="not a folder of this user's alone"):
        platform._own_ray_temp()


def test_a_new_head_is_refused_where_its_ports_are_taken(tmp_path: Path) -> None:
    import socket

    from modelplane.errors import ConfigurationError
    from modelplane.ports import free_ports
    from modelplane.settings import Settings

    http, grpc = free_ports(2, "127.0.0.1")
    settings = Settings(home=tmp_path, http_port=http, grpc_port=grpc)
    platform._refuse_taken_ports(settings)  # both free
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", grpc))
        listener.listen()
        with pytest.raises(ConfigurationError, match=f"port {grpc} .* MODELPLANE_GRPC_PORT"):
            platform._refuse_taken_ports(settings)
    with pytest.raises(ValueError, match="needs a port of its own"):
        Settings(home=tmp_path, http_port=http, grpc_port=http)
