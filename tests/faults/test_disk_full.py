"""A full artifact store: the upload fails with a clear error, nothing partial remains.

The artifact store sits on a 2 MiB tmpfs mounted by the test (CI runs as root; elsewhere
the test is skipped, saying why). The control plane is a real server process.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.client import Client
from control_plane.errors import StorageFullError
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.servers import ControlPlaneProcess

pytestmark = pytest.mark.no_ray


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "artifacts"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _stored(root: Path) -> list[Path]:
    return sorted(p for p in (root / "sha256").rglob("*") if p.is_file()) if (root / "sha256").exists() else []


def test_upload_to_a_full_store_fails_cleanly(small_disk: Path, tmp_path: Path) -> None:
    server = ControlPlaneProcess(
        tmp_path / "home", extra_env={"MODELPLANE_ARTIFACT_URI": str(small_disk)}
    ).start()
    try:
        with Client(server.url, server.admin_token) as client:
            first = client.register_version("disk", linear_classifier(seed=1),
                                            linear_classifier_manifest())
            before = _stored(small_disk)

            too_big = os.urandom(3 * 1024 * 1024)
            with pytest.raises(StorageFullError, match="no space left") as raised:
                client.upload_artifact(too_big)
            assert raised.value.detail["status"] == 507
            # A version whose artifact does not fit is refused the same way, and no row is written.
            with pytest.raises(StorageFullError):
                client.register_version("disk", too_big, linear_classifier_manifest())
            assert [v.version for v in client.list_versions("disk").items] == [first.version]

            assert _stored(small_disk) == before
            assert list((small_disk / "tmp").iterdir()) == []
            # The space the failed upload took is back: a small artifact still fits.
            assert client.register_version("disk", linear_classifier(seed=2),
                                           linear_classifier_manifest()).version == 2
        answer = httpx.get(f"{server.url}/api/integrity", params={"verify": "true"},
                           headers={"authorization": f"Bearer {server.admin_token}"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["problems"] == []
    finally:
        server.stop()
