"""The artifact store on an S3-protocol server (moto's, in its own process), as on AWS S3
or MinIO: streamed multipart uploads, keys by digest, verification on read, nothing left
in ``tmp/``, limits, and parts left by a writer that died removed once stale."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest

from control_plane import artifacts as artifacts_module
from control_plane.artifacts import ArtifactStore
from control_plane.errors import IntegrityError, PayloadTooLargeError
from tests.s3_server import S3Server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def store(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return ArtifactStore(s3.uri(f"test-{uuid.uuid4().hex[:8]}"), max_bytes=64 * 1024 * 1024)


def prefix_of(store: ArtifactStore) -> str:
    return store.root.split("/", 1)[1]


def test_uploads_stream_to_keys_named_by_digest_and_read_back_verified(
        store: ArtifactStore, s3: S3Server) -> None:
    # Three multipart parts' worth, written in 1 MiB chunks as the API streams them.
    data = os.urandom(12 * 1024 * 1024 + 5)
    info = store.put(data[i:i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024))
    assert info.digest == hashlib.sha256(data).hexdigest() and info.size == len(data)
    prefix = prefix_of(store)
    assert s3.keys(prefix) == [f"{prefix}/sha256/{info.digest[:2]}/{info.digest}"]
    assert store.exists(info.digest) and store.info(info.digest).size == len(data)
    assert store.read_bytes(info.digest) == data
    assert store.put([data]) == info  # the same content again: stored once
    assert s3.keys(prefix) == [f"{prefix}/sha256/{info.digest[:2]}/{info.digest}"]


def test_a_changed_object_fails_verification(store: ArtifactStore, s3: S3Server) -> None:
    info = store.put([b"weights" * 1000])
    s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix_of(store)}/sha256/"
                           f"{info.digest[:2]}/{info.digest}", Body=b"bit rot")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.read_bytes(info.digest)


def test_a_refused_upload_leaves_nothing(store: ArtifactStore, s3: S3Server) -> None:
    with pytest.raises(IntegrityError, match="not the declared"):
        store.put([b"payload"], expected_digest="0" * 64)
    small = ArtifactStore(store.uri, max_bytes=1024 * 1024)
    with pytest.raises(PayloadTooLargeError):
        small.put([b"z" * (512 * 1024)] * 3)
    # Refused once its multipart upload had begun: the upload is cancelled, not completed
    # with what was buffered only to be deleted after.
    larger = ArtifactStore(store.uri, max_bytes=8 * 1024 * 1024)
    with pytest.raises(PayloadTooLargeError):
        larger.put([os.urandom(1024 * 1024)] * 12)
    assert s3.keys(prefix_of(store)) == []
    uploads = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix_of(store))
    assert uploads.get("Uploads", []) == []


def test_parts_left_by_a_dead_writer_are_removed_once_stale(
        store: ArtifactStore, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    left = f"{prefix_of(store)}/tmp/4242-{uuid.uuid4().hex}.part"
    s3.client().put_object(Bucket=s3.bucket, Key=left, Body=b"half an upload")
    # Its writer may be on another machine: a fresh part may be an upload under way.
    assert store.remove_partial_writes() == 0 and left in s3.keys(prefix_of(store))
    monkeypatch.setattr(artifacts_module, "STALE_PART_S", -1)

    def denied() -> int:  # listing unfinished uploads is a permission of its own
        raise PermissionError("Access Denied: s3:ListBucketMultipartUploads")

    monkeypatch.setattr(store, "_abort_stale_uploads", denied)
    assert store.remove_partial_writes() == 1
    assert s3.keys(prefix_of(store)) == []


def test_an_upload_cut_off_by_its_writers_death_is_cancelled_once_stale(
        store: ArtifactStore, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer killed mid-upload leaves no object, only its open multipart upload, whose
    parts S3 keeps (and bills) until someone completes or aborts it."""
    from control_plane.artifacts import ArtifactWriter

    writer = ArtifactWriter(store, None)
    for _ in range(51):  # past one part (s3fs's 50 MiB): the multipart upload has begun
        writer.write(bytes(1024 * 1024))

    def open_uploads() -> list[str]:
        answer = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix_of(store))
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    assert open_uploads() and s3.keys(prefix_of(store)) == []
    # Younger than any upload takes, it may be under way. (moto dates every upload in
    # 2010: "younger" is told here by a staleness longer than that.)
    monkeypatch.setattr(artifacts_module, "STALE_PART_S", 100 * 365 * 86400)
    assert store.remove_partial_writes() == 0 and open_uploads()
    monkeypatch.setattr(artifacts_module, "STALE_PART_S", -1)
    assert store.remove_partial_writes() == 1
    assert open_uploads() == [] and s3.keys(prefix_of(store)) == []
    del writer  # its handle, held until here so that nothing completes the upload


def test_what_another_process_writes_or_deletes_is_seen_after_a_listing(
        store: ArtifactStore, s3: S3Server) -> None:
    """s3fs kept every listing for ever: after an integrity check had listed the store, an
    upload through another control plane read as missing ("upload it first") and an
    artifact a garbage collection in another process deleted read as present, so a
    registration could be committed naming bytes that were gone."""
    kept = store.put([b"kept" * 1000])
    deleted = store.put([b"deleted" * 1000])
    store.fs.find(f"{store.root}/sha256")  # what an integrity check does first
    other = ArtifactStore(store.uri, max_bytes=store.max_bytes)
    uploaded = other.put([b"uploaded elsewhere" * 1000])
    s3.client().delete_object(Bucket=s3.bucket, Key=f"{prefix_of(store)}/sha256/"
                              f"{deleted.digest[:2]}/{deleted.digest}")
    assert store.exists(kept.digest) and store.info(kept.digest).size == kept.size
    assert store.exists(uploaded.digest) and store.info(uploaded.digest).size == uploaded.size
    assert not store.exists(deleted.digest)
