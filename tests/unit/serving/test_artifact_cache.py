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


def test_a_cache_folder_others_may_write_to_is_refused_before_anything_is_read(
        tmp_path: Path, artifact_url: str) -> None:
    """Another local user who made the folder first (a fixed name in /tmp) could put an
    unpacked model's code in it, which a replica would import."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    planted = shared / "sha256" / DIGEST[:2]
    planted.mkdir(parents=True)
    with pytest.raises(ArtifactFetchError, match="MODELPLANE_CACHE_DIR") as refused:
        fetch_artifact(artifact_url, DIGEST, cache_dir=shared)
    assert refused.value.detail["field"] == "MODELPLANE_CACHE_DIR"
    assert not (planted / DIGEST).exists()


def test_a_cache_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ArtifactFetchError, match="not this user's alone"):
        private_folder(tmp_path / "link")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
