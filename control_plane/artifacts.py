"""Content-addressed artifact storage: ``sha256/ab/abcdef…``, written atomically, verified on read.

A write streams into a temporary name while hashing, is fsync'd, then renamed to its
digest; a crash at any point leaves at most a temporary file (removed at the next start),
never a partial artifact under a final name. Every read re-hashes what it returns and
raises :class:`IntegrityError` if the bytes no longer match their name.

The default backend is a local folder; any fsspec URI (``s3://bucket/prefix``) works the
same way, with the rename replaced by the backend's move (on object stores the final key
appears whole or not at all).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.errors import (
    ControlPlaneUnavailableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    StorageFullError,
)
from modelplane.durable import fsync_path
from modelplane.process_names import new_process_name, process_is_gone, process_is_here

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
# Ends the writing process's name in a part's name (a name has no "~"), whose ":" are
# "+" there (no file system refuses those; SMB refuses ":").
PART_WRITER_END = "~"
# A local part untouched this long is left over whoever wrote it: an upload writes as its
# bytes come, and one stalled this long is cut off (its process elsewhere, or in a PID
# namespace since gone, as a restarted container's).
STALE_LOCAL_PART_S = 15 * 60
STALE_PART_S = 6 * 3600  # no upload takes this long; a remote part older than it is left over
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ArtifactInfo:
    """What a stored artifact is: its sha256 digest and size in bytes."""

    digest: str
    size: int


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex characters, else raise naming the field."""
    if not _DIGEST.fullmatch(digest):
        raise InvalidInputError(
            f"artifact digest {digest!r} is not a sha256 hex digest (64 characters 0-9a-f)",
            detail={"field": "digest"},
        )
    return digest


class ArtifactStore:
    """Artifacts addressed by sha256, in a local folder or behind an fsspec URI."""

    def __init__(self, uri: str, *, max_bytes: int) -> None:
        import fsspec

        self.uri = uri.rstrip("/")
        self.max_bytes = max_bytes
        protocol = self.uri.split("://", 1)[0] if "://" in self.uri else "file"
        self.is_local = protocol in {"file", "local"}
        # A store of its own, not fsspec's cached instance: credentials and endpoint are
        # read when it is made (AWS_* variables), and must be this store's. No listings
        # cache: other processes (a second control plane, `db check --gc`) write and delete
        # here, and a listing kept would answer "exists" for bytes gone and "missing" for
        # bytes uploaded since.
        self.fs: Any = fsspec.filesystem(protocol, **({} if self.is_local else {
            "skip_instance_cache": True, "use_listings_cache": False}))
        self.root = self.uri.split("://", 1)[1] if "://" in self.uri else self.uri
        if self.is_local:
            self.root = str(Path(self.root).absolute())
            Path(self.root, "tmp").mkdir(parents=True, exist_ok=True)

    def path_of(self, digest: str) -> str:
        """Where an artifact with this digest lives (a local path or a key in the fs)."""
        check_digest(digest)
        return f"{self.root}/sha256/{digest[:2]}/{digest}"

    def local_path(self, digest: str) -> Path:
        """The artifact's file on local disk (local stores only)."""
        if not self.is_local:
            raise InvalidInputError("local_path needs a local artifact store")
        path = Path(self.path_of(digest))
        if not path.exists():
            raise NotFoundError(f"no artifact with digest {digest}", detail={"digest": digest})
        return path

    def exists(self, digest: str) -> bool:
        return bool(self.fs.exists(self.path_of(digest)))

    def info(self, digest: str) -> ArtifactInfo:
        path = self.path_of(digest)
        if not self.fs.exists(path):
            raise NotFoundError(f"no artifact with digest {digest}", detail={"digest": digest})
        return ArtifactInfo(digest=digest, size=int(self.fs.size(path)))

    def writer(self, expected_digest: str | None = None) -> ArtifactWriter:
        """Start a streaming write; call ``write`` per chunk, then ``commit`` or ``abort``."""
        if expected_digest is not None:
            check_digest(expected_digest)
        return ArtifactWriter(self, expected_digest)

    def put(self, chunks: Iterable[bytes], expected_digest: str | None = None) -> ArtifactInfo:
        """Store a stream of bytes and return its digest and size."""
        writer = self.writer(expected_digest)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

    def put_file(self, path: str | os.PathLike[str]) -> ArtifactInfo:
        """Store a local file, streamed in chunks."""
        with open(path, "rb") as handle:
            return self.put(iter(lambda: handle.read(CHUNK_SIZE), b""))

    def iter_verified(self, digest: str) -> Iterator[bytes]:
        """Yield the artifact's bytes; raise IntegrityError at the end if they do not hash to it."""
        path = self.path_of(digest)
        if not self.fs.exists(path):
            raise NotFoundError(f"no artifact with digest {digest}", detail={"digest": digest})
        hasher = hashlib.sha256()
        with self.fs.open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                hasher.update(chunk)
                yield chunk
        if hasher.hexdigest() != digest:
            raise IntegrityError(
                f"artifact {digest} is corrupt: its bytes hash to {hasher.hexdigest()}; "
                "re-upload it or restore the artifact store from a backup",
                detail={"digest": digest, "actual": hasher.hexdigest()},
            )

    def read_bytes(self, digest: str) -> bytes:
        """The whole artifact, verified (for small artifacts such as ONNX models under test)."""
        return b"".join(self.iter_verified(digest))

    def remove_partial_writes(self) -> int:
        """Delete temporary files left by writers that died; returns how many were removed.

        A part's name says which process writes it (``modelplane.process_names``): one of
        this host and PID namespace goes once that process is gone, and only then. Any
        other local part (a folder several control planes share over NFS, or one left by a
        container since restarted) is left alone until it has gone untouched for
        ``STALE_LOCAL_PART_S``. On a remote store, where the writer may be anywhere and
        a part is written at its end, a part is left alone until it is older than any
        upload takes (``STALE_PART_S``); so is an unfinished multipart upload (S3)."""
        if not self.is_local:
            try:
                return self._remove_stale_remote_parts()
            except Exception as error:  # housekeeping: the store's trouble shows on real use
                log.warning("could not look for stale parts in %s/tmp (%s: %s); will look "
                            "again at the next start", self.uri, type(error).__name__, error)
                return 0
        removed = 0
        for leftover in Path(self.root, "tmp").glob("*.part"):
            with contextlib.suppress(FileNotFoundError):  # its write ended meanwhile
                writer = leftover.name.split(PART_WRITER_END, 1)[0].replace("+", ":")
                if (process_is_gone(writer) if process_is_here(writer)
                        else time.time() - leftover.stat().st_mtime > STALE_LOCAL_PART_S):
                    leftover.unlink()
                    removed += 1
        return removed


    def _remove_stale_remote_parts(self) -> int:
        try:
            removed = self._abort_stale_uploads()
        except Exception as error:  # a separate permission (s3:ListBucketMultipartUploads)
            log.warning("could not look for unfinished uploads in %s/tmp (%s: %s); will look "
                        "again at the next start", self.uri, type(error).__name__, error)
            removed = 0
        try:
            parts = self.fs.ls(f"{self.root}/tmp", detail=True, refresh=True)
        except FileNotFoundError:
            return removed
        for part in parts:
            modified = part.get("LastModified") or part.get("mtime")
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else modified
            if (str(part.get("name", "")).endswith(".part") and stamp is not None
                    and time.time() - float(stamp) > STALE_PART_S):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(part["name"])
                    removed += 1
        return removed

    def _abort_stale_uploads(self) -> int:
        """Cancel the multipart uploads of writers killed mid-upload: S3 keeps (and bills)
        an unfinished upload's parts until it is completed or aborted, and no listing of
        the bucket's objects shows them. Only S3's protocol has them."""
        call_s3 = getattr(self.fs, "call_s3", None)
        if call_s3 is None:
            return 0
        bucket, prefix, _ = self.fs.split_path(f"{self.root}/tmp/")
        aborted, markers = 0, {}
        while True:
            page = call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
            for upload in page.get("Uploads", []):
                started = upload.get("Initiated")
                if (str(upload.get("Key", "")).endswith(".part") and started is not None
                        and time.time() - started.timestamp() > STALE_PART_S):
                    with contextlib.suppress(FileNotFoundError):
                        call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"],
                                UploadId=upload["UploadId"])
                        aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            markers = {"KeyMarker": page.get("NextKeyMarker", ""),
                       "UploadIdMarker": page.get("NextUploadIdMarker", "")}


class ArtifactWriter:
    """One streaming write into an :class:`ArtifactStore`, hashed and size-limited as it goes."""

    def __init__(self, store: ArtifactStore, expected_digest: str | None) -> None:
        self._store = store
        self._expected = expected_digest
        self._hasher = hashlib.sha256()
        self._size = 0
        writer = new_process_name().replace(":", "+")
        self._temp = f"{store.root}/tmp/{writer}{PART_WRITER_END}{uuid.uuid4().hex}.part"
        if not store.is_local:
            store.fs.makedirs(f"{store.root}/tmp", exist_ok=True)
        self._handle: Any = store.fs.open(self._temp, "wb")
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def digest(self) -> str:
        """The digest of what was written so far."""
        return self._hasher.hexdigest()

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._store.max_bytes:
            self.abort()
            raise PayloadTooLargeError(
                f"artifact exceeds the {self._store.max_bytes // (1024 * 1024)} MiB limit; "
                "raise MODELPLANE_MAX_ARTIFACT_MB on the control plane to accept it",
                detail={"limit_bytes": self._store.max_bytes},
            )
        self._hasher.update(chunk)
        with self._out_of_space_aborts():
            self._handle.write(chunk)

    def abort(self) -> None:
        """Discard what was written; safe to call twice, and on a full disk."""
        if self._done:
            return
        self._done = True
        # A remote store's handle cancels its multipart upload (closing it would complete
        # the upload with what was buffered, up to gigabytes, only to delete it after).
        discard = getattr(self._handle, "discard", None)
        if discard is not None:
            with contextlib.suppress(Exception):
                discard()
        # Closing flushes the buffer, which fails again on a full disk (or, discarded, has
        # none left to flush); the file goes anyway.
        with contextlib.suppress(Exception if discard is not None else OSError):
            self._handle.close()
        if self._store.fs.exists(self._temp):
            self._store.fs.rm(self._temp)

    @contextlib.contextmanager
    def _out_of_space_aborts(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.abort()
            raise StorageFullError(
                f"the artifact store ({self._store.uri}) has no space left; nothing was "
                "stored. Free space there or point MODELPLANE_ARTIFACT_URI at a larger store, "
                "then retry the upload",
                detail={"artifact_uri": self._store.uri},
            ) from None

    def commit(self) -> ArtifactInfo:
        """Make the bytes durable under their digest; identical content is stored once."""
        self.seal()
        return self.publish()

    def seal(self) -> ArtifactInfo:
        """Check the bytes against the declared digest and make them durable where they
        were written (the slow part of a commit: :meth:`publish` then only renames)."""
        digest = self.digest
        if self._expected is not None and digest != self._expected:
            self.abort()
            raise IntegrityError(
                f"upload hashes to {digest}, not the declared {self._expected}; "
                "the transfer was corrupted, retry the upload",
                detail={"expected": self._expected, "actual": digest},
            )
        with self._out_of_space_aborts():
            if self._store.is_local:
                self._handle.flush()
                os.fsync(self._handle.fileno())
            self._handle.close()
        return ArtifactInfo(digest=digest, size=self._size)

    def publish(self) -> ArtifactInfo:
        """Put the sealed bytes under their digest."""
        digest = self.digest
        final = self._store.path_of(digest)
        fs = self._store.fs
        with self._out_of_space_aborts():
            # Content already stored is replaced all the same, atomically: that refreshes
            # the file's age, which garbage collection reads (an identical upload for a new
            # version must not be removed as an old unreferenced one), and mends a stored
            # copy that went bad (re-uploading is what its IntegrityError says to do).
            try:
                if self._store.is_local:
                    _make_durable_folder(Path(final).parent)
                    os.replace(self._temp, final)
                    fsync_path(Path(final).parent)
                else:
                    fs.mv(self._temp, final)
            except FileNotFoundError:
                # Removed as left over: this upload stalled past STALE_LOCAL_PART_S while
                # another control plane sharing the folder started.
                self._done = True
                raise ControlPlaneUnavailableError(
                    "the upload's bytes were removed as left over while it stalled; nothing "
                    "was stored: upload it again", detail={"field": "body"}) from None
        self._done = True
        return ArtifactInfo(digest=digest, size=self._size)


def _make_durable_folder(folder: Path) -> None:
    """``folder`` and the parents it lacked, each entry flushed to its parent: a folder
    made but not flushed can vanish at a power loss, with the artifact renamed into it."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        fsync_path(made.parent)
