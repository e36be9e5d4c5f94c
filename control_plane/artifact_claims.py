"""An artifact stored, named by a new row, and removed as garbage, one at a time.

An upload is stored before the version (or run artifact) that names it is registered, and
``modelplane db check --gc`` removes stored artifacts nothing names. Each decides on what
it reads, so each holds the artifact's lock (``Database.serialize``) from its look to its
commit: a registration waits for a removal in progress and then finds the artifact gone
(upload it again), or the removal waits and then finds it named (kept). Without it, a
version registered on an old artifact as the collector reached it named bytes that no
longer existed. An upload of bytes already stored refreshes the file's age under the same
lock, so the collector either sees it new (kept) or has removed it before the upload
stores it again: an upload answered 201 is never removed as the old copy's garbage.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.artifacts import ArtifactInfo, ArtifactStore, ArtifactWriter
from control_plane.errors import NotFoundError
from control_plane.store import Database
from control_plane.store.models import ModelVersionRow, RunArtifactRow


def store_upload(db: Database, artifacts: ArtifactStore, writer: ArtifactWriter) -> ArtifactInfo:
    """Make ``writer``'s bytes durable under their digest; where that refreshes a stored
    copy, holding the artifact's lock (only a stored copy can be the collector's: a new one
    is younger than any grace). Sealed first, outside it: on SQLite the lock is the whole
    store's, and a large upload's flush to disk would hold every other writer."""
    info = writer.seal()
    if not artifacts.exists(info.digest):
        return writer.publish()
    with db.session() as session:
        db.serialize(session, _key(info.digest))
        return writer.publish()


def claim_artifact(db: Database, session: Session, artifacts: ArtifactStore, digest: str, *,
                   field: str) -> None:
    """In the transaction that will name ``digest``: wait for its removal in progress, if
    any, and refuse (``field`` named) when it is gone."""
    db.serialize(session, _key(digest))
    if not artifacts.exists(digest):
        raise NotFoundError(f"no artifact with digest {digest}; upload it first "
                            "(POST /api/artifacts)", detail={"field": field})


def remove_if_unnamed(db: Database, artifacts: ArtifactStore, digest: str, *,
                      older_than: Callable[[], bool] = lambda: True) -> bool:
    """Remove ``digest`` unless a version or run artifact names it now, or ``older_than()``
    (asked under the lock) says it was stored again since the collector looked; whether
    removed."""
    with db.session() as session:
        db.serialize(session, _key(digest))
        try:
            # The same bytes uploaded again (a retrain with the same result) refresh the
            # file's time; its registration follows, and must find it.
            if not older_than():
                return False
        except FileNotFoundError:
            return False
        named = session.scalar(select(ModelVersionRow.id).where(
            ModelVersionRow.artifact_digest == digest).limit(1)) or session.scalar(
            select(RunArtifactRow.id).where(RunArtifactRow.digest == digest).limit(1))
        if named is not None:
            return False
        artifacts.fs.rm(artifacts.path_of(digest))
        return True


def _key(digest: str) -> str:
    return f"artifact:{digest}"
