"""The replicas' artifact cache is this user's alone: what is unpacked there runs as code."""

from __future__ import annotations

import hashlib
import http.server
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.artifact_cache import ArtifactFetchError, fetch_artifact, private_folder

PAYLOAD = b"onnx bytes, as far as the cache knows"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def artifact_url() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/artifact"
    finally:
        server.shutdown()
        thread.join(5)


def test_a_new_cache_is_made_this_user_s_alone_and_holds_the_verified_artifact(
        tmp_path: Path, artifact_url: str) -> None:
    cache = tmp_path / "cache"
    path = fetch_artifact(artifact_url, DIGEST, cache_dir=cache)
    assert path.read_bytes() == PAYLOAD
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 & ~_umask()
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize(("mode", "group_alone"), [(0o777, True), (0o775, False), (0o2775, False)],
                         ids=["anyone", "a-group", "a-setgid-group"])
def test_a_cache_folder_others_may_write_to_is_refused_before_anything_is_read(
        tmp_path: Path, artifact_url: str, monkeypatch: pytest.MonkeyPatch, mode: int,
        group_alone: bool) -> None:
    """Another local user who made the folder first (a fixed name in /tmp), or a group
    member, could put an unpacked model's code in it, which a replica would import."""
    monkeypatch.setattr("serving.artifact_cache.group_of_this_user_alone", lambda gid: group_alone)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    planted = shared / "sha256" / DIGEST[:2]
    planted.mkdir(parents=True)
    with pytest.raises(ArtifactFetchError, match="MODELPLANE_CACHE_DIR") as refused:
        fetch_artifact(artifact_url, DIGEST, cache_dir=shared)
    assert refused.value.detail["field"] == "MODELPLANE_CACHE_DIR"
    assert not (planted / DIGEST).exists()


def test_a_folder_writable_by_a_group_of_this_user_alone_is_used(
        tmp_path: Path, artifact_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A umask of 002 with user-private groups makes folders group-writable: no one else's."""
    monkeypatch.setattr("serving.artifact_cache.group_of_this_user_alone", lambda gid: True)
    mine = tmp_path / "mine"
    mine.mkdir()
    mine.chmod(0o775)
    assert fetch_artifact(artifact_url, DIGEST, cache_dir=mine).read_bytes() == PAYLOAD


def test_a_cache_that_is_one_s_own_link_to_one_s_own_folder_is_used(
        tmp_path: Path, artifact_url: str) -> None:
    real = tmp_path / "bigger-disk"
    real.mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(real)
    assert fetch_artifact(artifact_url, DIGEST, cache_dir=tmp_path / "cache").read_bytes() == PAYLOAD
    open_one = tmp_path / "open"
    open_one.mkdir()
    open_one.chmod(0o777)
    (tmp_path / "to-open").symlink_to(open_one)
    with pytest.raises(ArtifactFetchError, match="not this user's alone"):
        private_folder(tmp_path / "to-open")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _dead_pid() -> int:
    import subprocess

    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


def test_what_replicas_killed_mid_download_or_unpacking_left_is_removed(
        tmp_path: Path, artifact_url: str) -> None:
    """Each replica killed mid-download (or mid-unpacking) left its part behind, named by
    its pid; the next one left its own, and the node's disk filled until loads failed."""
    from serving.runners.archive import unpack

    cache = tmp_path / "cache"
    folder = private_folder(cache) / "sha256" / DIGEST[:2]
    folder.mkdir(parents=True)
    import subprocess

    dead = _dead_pid()
    downloading = subprocess.Popen(["sleep", "30"])  # another replica, still downloading
    try:
        (folder / f".{DIGEST}.{dead}.part").write_bytes(b"x" * 1000)
        (folder / f".{DIGEST}.{downloading.pid}.part").write_bytes(b"x" * 10)
        (folder / f".{DIGEST}.lock").touch()
        assert fetch_artifact(artifact_url, DIGEST, cache_dir=cache).read_bytes() == PAYLOAD
        left = sorted(p.name for p in folder.iterdir())
        assert f".{DIGEST}.{dead}.part" not in left and f".{DIGEST}.lock" in left
        assert f".{DIGEST}.{downloading.pid}.part" in left  # a live writer's is its own
    finally:
        downloading.kill()
        downloading.wait()

    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.py", "X = 1\n")
    archive_path = tmp_path / "archive" / "model.zip"
    archive_path.parent.mkdir()
    archive_path.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    (archive_path.parent / f".{digest}.{dead}.unpacking" / "big").mkdir(parents=True)
    (archive_path.parent / f".{digest}.d.{dead}.broken").mkdir()
    unpacked = unpack(archive_path, digest)
    assert (unpacked / "model.py").read_text() == "X = 1\n"
    assert sorted(p.name for p in archive_path.parent.iterdir()
                  if p.name.startswith(".") and not p.name.endswith(".lock")) == []
