"""Content-addressed artifacts: atomic writes, verification on read, limits, crash cleanup."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from control_plane.artifacts import ArtifactStore
from control_plane.errors import (
    ControlPlaneUnavailableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
)


def test_put_and_read_round_trip(artifacts: ArtifactStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    info = artifacts.put([data[:1000], data[1000:]])
    assert info.digest == hashlib.sha256(data).hexdigest()
    assert info.size == len(data)
    assert artifacts.read_bytes(info.digest) == data
    path = Path(artifacts.path_of(info.digest))
    assert path.parts[-3:] == ("sha256", info.digest[:2], info.digest)
    assert list(Path(artifacts.root, "tmp").iterdir()) == []


def test_the_folders_an_artifact_is_renamed_into_are_flushed_where_they_were_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power loss keeps a renamed file only where its folder's own entry was flushed
    to disk too: the first artifact under a new prefix made that folder just before."""
    import control_plane.artifacts as artifacts_module

    flushed: list[Path] = []
    real = artifacts_module.fsync_path
    monkeypatch.setattr(artifacts_module, "fsync_path",
                        lambda path: (flushed.append(Path(path)), real(path)))
    store = ArtifactStore(str(tmp_path / "store"), max_bytes=1 << 20)
    info = store.put([b"first bytes"])
    final = Path(store.path_of(info.digest))
    assert final.parent.parent in flushed and final.parent in flushed  # prefix made, flushed
    flushed.clear()
    store.put([b"other bytes"])
    assert flushed  # the rename itself, always


def test_identical_content_is_stored_once(artifacts: ArtifactStore) -> None:
    first = artifacts.put([b"same bytes"])
    second = artifacts.put([b"same ", b"bytes"])
    assert first == second
    assert len(list(Path(artifacts.root, "sha256").rglob("*"))) == 2  # one folder, one file


def test_corruption_is_detected_on_read(artifacts: ArtifactStore) -> None:
    info = artifacts.put([b"precious model"])
    Path(artifacts.path_of(info.digest)).write_bytes(b"tampered model")
    with pytest.raises(IntegrityError, match="corrupt") as caught:
        artifacts.read_bytes(info.digest)
    assert caught.value.detail["actual"] == hashlib.sha256(b"tampered model").hexdigest()


def test_uploading_the_content_again_mends_a_stored_copy_gone_bad(artifacts: ArtifactStore) -> None:
    info = artifacts.put([b"precious model"])
    Path(artifacts.path_of(info.digest)).write_bytes(b"tampered model")
    assert artifacts.put([b"precious model"]) == info
    assert artifacts.read_bytes(info.digest) == b"precious model"


def test_declared_digest_must_match(artifacts: ArtifactStore) -> None:
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(IntegrityError, match="not the declared"):
        artifacts.put([b"payload"], expected_digest=wrong)
    assert not artifacts.exists(hashlib.sha256(b"payload").hexdigest())


def test_size_limit_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "a"), max_bytes=1024)
    with pytest.raises(PayloadTooLargeError, match="MODELPLANE_MAX_ARTIFACT_MB"):
        store.put([b"x" * 600, b"y" * 600])
    assert list(Path(store.root, "tmp").iterdir()) == []
    assert not Path(store.root, "sha256").exists()


def test_bad_and_unknown_digests(artifacts: ArtifactStore) -> None:
    with pytest.raises(InvalidInputError, match="not a sha256"):
        artifacts.path_of("../../etc/passwd")
    with pytest.raises(NotFoundError):
        artifacts.read_bytes("0" * 64)


def test_partial_writes_of_dead_processes_are_removed(artifacts: ArtifactStore) -> None:
    from control_plane.artifacts import PART_WRITER_END, STALE_LOCAL_PART_S
    from modelplane.process_names import new_process_name

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    here = new_process_name().replace(":", "+")
    dead_writer = here.replace(f"+{os.getpid()}+", f"+{int(dead.stdout)}+")
    tmp = Path(artifacts.root, "tmp")
    (tmp / f"{dead_writer}{PART_WRITER_END}abc.part").write_bytes(b"half an upload")
    # A folder shared over NFS: another host's writer, alive as far as anyone here knows,
    # whose pid may be free here. Its part is left until it is older than any upload.
    elsewhere = f"other-host{here[here.index('+'):]}".replace(f"+{os.getpid()}+",
                                                             f"+{int(dead.stdout)}+")
    (tmp / f"{elsewhere}{PART_WRITER_END}def.part").write_bytes(b"an upload elsewhere")
    stale = tmp / f"{elsewhere}{PART_WRITER_END}old.part"
    stale.write_bytes(b"untouched for long")
    os.utime(stale, (time.time() - STALE_LOCAL_PART_S - 60,) * 2)
    # Named as before writers were: its own untouched time decides.
    older = tmp / "4242-abc.part"
    older.write_bytes(b"before the upgrade")
    os.utime(older, (time.time() - STALE_LOCAL_PART_S - 60,) * 2)
    (tmp / "4243-abc.part").write_bytes(b"before the upgrade, touched now")
    # This host's live writer, untouched for long: a stalled upload, not a left-over one.
    stalled = tmp / f"{here}{PART_WRITER_END}stalled.part"
    stalled.write_bytes(b"stalled, alive")
    os.utime(stalled, (time.time() - STALE_LOCAL_PART_S - 60,) * 2)
    live = artifacts.writer()
    live.write(b"in progress")
    assert ":" not in live._temp
    assert artifacts.remove_partial_writes() == 3
    assert sorted(p.name.split(PART_WRITER_END)[-1] for p in tmp.iterdir()) == sorted(
        ["4243-abc.part", "def.part", "stalled.part",
         Path(live._temp).name.split(PART_WRITER_END)[1]])
    # A part removed as left over under an upload that stalled: a clear error to retry.
    Path(live._temp).unlink()
    live.seal()
    with pytest.raises(ControlPlaneUnavailableError, match="upload it again"):
        live.publish()


def test_an_fsspec_store_behaves_the_same() -> None:
    """The remote path (fsspec, no local rename) on fsspec's in-memory filesystem."""
    import uuid

    store = ArtifactStore(f"memory://bucket-{uuid.uuid4().hex}/models", max_bytes=1024 * 1024)
    assert not store.is_local
    data = os.urandom(300_000)
    info = store.put([data[:100_000], data[100_000:]])
    assert store.exists(info.digest)
    assert store.read_bytes(info.digest) == data
    assert store.fs.ls(f"{store.root}/tmp") == []
    with store.fs.open(store.path_of(info.digest), "wb") as handle:
        handle.write(b"bit rot")
    with pytest.raises(IntegrityError):
        store.read_bytes(info.digest)
    with pytest.raises(PayloadTooLargeError):
        store.put([b"z" * (1024 * 1024 + 1)])
