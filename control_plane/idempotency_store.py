"""Keys and kept answers of writes asked again, in the store (control_plane.idempotency),
so every control plane on one store sees the same ones."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exc, func, select, update

from control_plane.errors import IdempotencyKeyReusedError, RequestInProgressError
from control_plane.idempotency import Reply
from control_plane.store import Database
from control_plane.store.models import RequestReplyRow, utcnow

# How long an answer is kept for a caller asking again: far beyond any client's retries.
REPLAY_WINDOW_S = 24 * 3600.0
# How long a call holds its key before another call with it may act: beyond the longest
# write (a registration waits up to 420 s for the model's check).
HOLD_S = 900.0
# Expired answers are deleted at most this often per process.
PRUNE_EVERY_S = 60.0
# What one caller's kept answers may hold (its oldest go past it). Each key is a row, and
# one answer up to a mebibyte: any token could make the store keep a gibibyte a thousand
# calls at a time.
KEPT_BYTES_PER_CALLER = 64 * 1024 * 1024


@dataclass(frozen=True)
class Hold:
    """One call's hold on its key: only this call keeps its answer or frees it, so a call
    that outlived its hold cannot undo the one that took the key over."""

    scope: str
    key: str
    request: str
    holder: str


class IdempotencyStore:
    """The keys and answers of :mod:`control_plane.idempotency`."""

    def __init__(self, db: Database, *, hold_s: float = HOLD_S,
                 window_s: float = REPLAY_WINDOW_S,
                 kept_bytes: int = KEPT_BYTES_PER_CALLER) -> None:
        self._db = db
        self.kept_bytes = kept_bytes
        self.hold = timedelta(seconds=hold_s)
        self.window = timedelta(seconds=window_s)
        self._pruned_at = -PRUNE_EVERY_S
        self._prune_lock = threading.Lock()

    def reserve(self, scope: str, key: str, request: str) -> Hold | Reply:
        """Hold ``key`` for the call with fingerprint ``request``: a :class:`Hold` when this
        call is to act (then :meth:`keep` or :meth:`release` it), or the answer given to
        the first. Raises :class:`IdempotencyKeyReusedError` for a key sent with another
        request and :class:`RequestInProgressError` while the first call is being answered."""
        self._prune_now_and_then()
        hold = Hold(scope, key, request, uuid.uuid4().hex)
        try:
            return self._reserve(hold)
        except exc.IntegrityError:
            # Another control plane inserted the key between our read and our insert.
            return self._reserve(hold)

    def _reserve(self, hold: Hold) -> Hold | Reply:
        now = utcnow()
        with self._db.session() as session:
            row = session.get(RequestReplyRow, (hold.scope, hold.key), with_for_update=True)
            if row is None:
                session.add(RequestReplyRow(scope=hold.scope, key=hold.key, holder=hold.holder,
                                            fingerprint=hold.request, created_at=now,
                                            held_until=now + self.hold))
                session.flush()
                return hold
            if row.created_at <= now - self.window:  # not yet pruned: a key never seen
                row.fingerprint, row.created_at = hold.request, now
                row.status, row.headers, row.body = None, [], None
            elif row.fingerprint != hold.request:
                raise IdempotencyKeyReusedError(
                    f"idempotency key {hold.key!r} was sent before with another request "
                    "(method, path or body); use a new key for a new request",
                    detail={"field": "idempotency-key"})
            elif row.status is not None:
                return Reply(row.status, row.headers, row.body or b"")
            elif row.held_until > now:
                wait = max(1, min(2, round((row.held_until - now).total_seconds())))
                raise RequestInProgressError(
                    f"the call with idempotency key {hold.key!r} is still being answered; "
                    f"ask again in {wait} s for its answer",
                    detail={"field": "idempotency-key", "retry_after_s": wait})
            # else: held by a call that never finished (its process died): this one acts.
            row.holder, row.held_until = hold.holder, now + self.hold
            return hold

    def keep(self, hold: Hold, reply: Reply) -> None:
        """Keep the answer of the call that holds the key. Where the caller's kept
        answers then hold more than ``kept_bytes``, its oldest go (asked again that late,
        such a call acts again): retries come within minutes, and refusing to keep the
        newest would fail a retry of a call that acted."""
        with self._db.session() as session:
            kept = session.execute(update(RequestReplyRow).where(*_held_by(hold)).values(
                status=reply.status, headers=reply.headers, body=reply.body)).rowcount
            if not kept:
                return
            of_caller = (RequestReplyRow.scope == hold.scope,
                         RequestReplyRow.status.is_not(None))
            held = int(session.scalar(select(func.coalesce(func.sum(func.length(
                RequestReplyRow.body)), 0)).where(*of_caller)) or 0)
            if held <= self.kept_bytes:
                return
            oldest = session.execute(
                select(RequestReplyRow.key, func.length(RequestReplyRow.body))
                .where(*of_caller, RequestReplyRow.key != hold.key)
                .order_by(RequestReplyRow.created_at)).all()
            evicted = []
            for key, size in oldest:
                if held <= self.kept_bytes:
                    break
                evicted.append(key)
                held -= int(size or 0)
            if evicted:
                session.execute(delete(RequestReplyRow).where(
                    RequestReplyRow.scope == hold.scope, RequestReplyRow.key.in_(evicted)))

    def release(self, hold: Hold) -> None:
        """Free the key after a call that failed: asked again, it acts again."""
        with self._db.session() as session:
            session.execute(delete(RequestReplyRow).where(*_held_by(hold)))

    def prune(self, now: datetime | None = None) -> int:
        """Delete the answers older than the window; how many went."""
        cutoff = (now or utcnow()) - self.window
        with self._db.session() as session:
            result = session.execute(delete(RequestReplyRow).where(
                RequestReplyRow.created_at <= cutoff))
            return int(getattr(result, "rowcount", 0) or 0)

    def _prune_now_and_then(self) -> None:
        with self._prune_lock:
            if time.monotonic() - self._pruned_at < PRUNE_EVERY_S:
                return
            self._pruned_at = time.monotonic()
        self.prune()


def _held_by(hold: Hold) -> tuple[Any, ...]:
    return (RequestReplyRow.scope == hold.scope, RequestReplyRow.key == hold.key,
            RequestReplyRow.holder == hold.holder, RequestReplyRow.status.is_(None))
