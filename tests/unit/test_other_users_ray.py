"""Another OS user's Ray on the same machine is never joined on a guess, and a head that
`up` starts there keeps its sessions in a folder of its own user's."""

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
    assert platform._own_ray_temp() == ray_temp.parent / f"ray-{os.getuid()}"
    assert platform._resolve("10.0.0.5:6379") == "10.0.0.5:6379"  # named: always
