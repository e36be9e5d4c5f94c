"""What a training job's token may upload to the artifact store, counted in the store.

Every other writer of artifacts is a person or service trusted with the store. A job's
token is readable by every package the job installs, and a leaked one uploaded without
end, until the disk that also holds the embedded store was full. A trainer token's
uploads are counted on its row (``api_tokens.uploaded_bytes``) as they stream, in blocks
each taken by one conditional update, so uploads running at once on any control plane
cannot pass the allowance together. What an upload did not keep (refused, cut off) is
given back; a control plane killed mid-upload leaves its blocks counted, which errs
toward refusing a token that is one job's anyway.
"""

from __future__ import annotations

import logging

from sqlalchemy import update

from control_plane.auth import Principal, count_on_token
from control_plane.errors import ConflictError
from control_plane.schemas import Role
from control_plane.store import Database
from control_plane.store.models import TokenRow

log = logging.getLogger(__name__)

# Counted ahead of the bytes: one update per 8 MiB streamed, not per chunk.
BLOCK_BYTES = 8 * 1024 * 1024


class UploadAllowance:
    """One upload's share of its trainer token's allowance: :meth:`cover` before storing
    bytes past what is covered, :meth:`settle` once with what the upload kept."""

    def __init__(self, db: Database, actor: Principal, limit_bytes: int) -> None:
        self._db = db
        self._actor = actor
        self._limit = limit_bytes
        self._taken = 0

    @classmethod
    def of(cls, db: Database, actor: Principal, limit_bytes: int) -> UploadAllowance | None:
        """The allowance an upload by ``actor`` draws on; None where uploads are not
        counted (any role but a training job's)."""
        return cls(db, actor, limit_bytes) if actor.role is Role.TRAINER else None

    def covers(self, size: int) -> bool:
        return size <= self._taken

    def cover(self, size: int) -> None:
        """Take from the allowance until ``size`` bytes of this upload are covered: a
        block ahead where it fits, else just what is missing; 409 naming the token and its
        limit where not even that fits."""
        missing = size - self._taken
        if missing <= 0:
            return
        if not self._take(max(missing, BLOCK_BYTES)) and not self._take(missing):
            raise ConflictError(
                f"a training job's token uploads at most {self._limit // (1024 * 1024)} MiB; "
                f"{self._actor.name!r} has uploaded that much: mint a token per job "
                "(`modelplane train submit` does), or raise MODELPLANE_TRAINER_UPLOAD_MB on "
                "the control plane",
                detail={"field": "token", "limit_bytes": self._limit})

    def settle(self, kept: int) -> None:
        """Give back what was taken past the ``kept`` bytes the upload stored (all of it
        for one refused or cut off); once."""
        surplus, self._taken = self._taken - kept, kept
        if surplus <= 0:
            return
        try:
            with self._db.session() as session:
                session.execute(update(TokenRow).where(TokenRow.name == self._actor.name)
                                .values(uploaded_bytes=TokenRow.uploaded_bytes - surplus))
        except Exception:  # the upload's answer stands; the token is left counted higher
            log.warning("could not give %d bytes back to token %r's upload allowance",
                        surplus, self._actor.name, exc_info=True)

    def _take(self, amount: int) -> bool:
        with self._db.session() as session:
            taken = count_on_token(session, self._actor.name, TokenRow.uploaded_bytes, amount,
                                   self._limit)
        if taken:
            self._taken += amount
        return taken
