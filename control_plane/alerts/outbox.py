"""The receivers' outbox: notifications a receiver has not acknowledged, kept in the store.

A receiver that was down held its notifications in the control plane's memory, retried
with backoff; a control plane killed or replaced meanwhile (Serve restarting it, an
upgrade, a second ``up``) lost them all, and the page for a rollback never came. So a
notification is written here for each receiver by the thread that raises it, before
that returns (queued in memory for the receiver's thread only while the store cannot take
it), and removed once the receiver acknowledged it, refused it, or did not answer in
``max_attempts`` tries. What a dead control plane left is sent by whichever control plane runs a thread for
that receiver, oldest first.

Sending is claimed (:meth:`Outbox.claim`) for longer than a delivery can take, so two
control planes never send one notification at once; one that dies while sending leaves
it to be sent again once its claim runs out. Only a thread whose receiver settings are the
stored ones claims: a control plane that has not yet read a changed URL (or a disabled
receiver) never sends to the old one, nor drops what it refuses. Delivery is therefore at least once, never
at most once, and every try of a notification carries the same ``Idempotency-Key``
header, by which a receiver drops repeats.

A receiver keeps at most ``limit`` notifications waiting (more are dropped and counted,
as before) and none older than ``MAX_AGE_S``: a receiver re-enabled after a week does
not get a week of stale pages.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update

from control_plane.store import Database
from control_plane.store.database import store_now
from control_plane.store.models import AlertReceiverRow, OutboxRow

MAX_AGE_S = 24 * 3600.0
CLAIM_MARGIN_S = 10.0  # a claim outlasts the longest send to the receiver by this much


@dataclass(frozen=True)
class Waiting:
    """A notification taken from the outbox to be sent (its ``attempts`` so far)."""

    key: str
    description: str
    body: dict[str, Any]
    attempts: int


class Outbox:
    """The store's outbox, as one control plane's receiver threads use it."""

    def __init__(self, db: Database, *, spec: dict[str, Any] | None = None,
                 holder: str | None = None, clock: Callable[[], float] | None = None,
                 store_clock: bool | None = None) -> None:
        self.db = db
        self.spec = spec  # the receiver's settings this thread sends with (None: any)
        self.holder = holder or uuid.uuid4().hex
        self._clock = clock or time.time
        # Claims are compared across control planes on other machines: on PostgreSQL they
        # run on the store's clock, or a host some seconds ahead took another's claim while
        # it was still sending (a second page). A clock given (tests) is used unless
        # ``store_clock`` says otherwise.
        self._store_clock = (clock is None if store_clock is None else store_clock) \
            and not db.is_sqlite

    def _now(self, session: Any) -> float:
        return store_now(session) if self._store_clock else self._clock()

    def put(self, receiver: str, description: str, body: dict[str, Any], *,
            limit: int, key: str | None = None) -> str | None:
        """Keep ``body`` for ``receiver``; its key, or None where ``limit`` fresh ones wait
        already (expired ones do not count: :meth:`claim` drops them)."""
        with self.db.session() as session:
            return self.put_in(session, receiver, description, body, limit=limit, key=key)

    def put_in(self, session: Any, receiver: str, description: str, body: dict[str, Any], *,
               limit: int, key: str | None = None) -> str | None:
        """:meth:`put` within ``session``, the transaction of the change it tells of: the two
        are kept, or lost, together."""
        now = self._now(session)
        if key is not None and session.scalar(
                select(OutboxRow.id).where(OutboxRow.key == key)) is not None:
            return key  # the same notification waits already (raised again)
        waiting = session.scalar(select(func.count()).select_from(OutboxRow).where(
            OutboxRow.receiver == receiver, OutboxRow.created_at >= now - MAX_AGE_S))
        if waiting >= limit:
            return None
        key = key or uuid.uuid4().hex
        # Two leaders raising one alert's change at once write one key: the second write is
        # no error (it failed the alert's whole transaction, its history row lost with it).
        if session.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        session.execute(insert(OutboxRow).values(
            key=key, receiver=receiver, description=description[:500], body=body,
            created_at=now, attempts=0, next_at=now, claimed_by=None, claimed_until=0.0,
        ).on_conflict_do_nothing(index_elements=["key"]))
        return key

    def claim(self, receiver: str, *, for_s: float) -> tuple[Waiting | None, int]:
        """The oldest notification for ``receiver``, claimed by this process for ``for_s``
        seconds, if it is due and no one else's claim holds it (None otherwise: the next
        one waits behind it, so a receiver hears in order); and how many expired ones were
        dropped. Costs a read, not a write lock, when nothing is due."""
        with self.db.session(readonly=True) as session:
            now = self._now(session)
            if self.spec is not None and _as_current(session.scalar(select(
                    AlertReceiverRow.spec).where(AlertReceiverRow.name == receiver))) != self.spec:
                return None, 0  # settings out of date here: the current ones send it
            head = session.execute(select(OutboxRow.next_at, OutboxRow.claimed_by,
                                          OutboxRow.claimed_until, OutboxRow.created_at)
                                   .where(OutboxRow.receiver == receiver)
                                   .order_by(OutboxRow.id).limit(1)).one_or_none()
        if head is None or (head.created_at >= now - MAX_AGE_S and not _free(head, now, self.holder)):
            return None, 0
        with self.db.session() as session:
            now = self._now(session)
            expired = session.execute(delete(OutboxRow).where(
                OutboxRow.receiver == receiver,
                OutboxRow.created_at < now - MAX_AGE_S)).rowcount or 0
            row = session.scalar(select(OutboxRow).where(OutboxRow.receiver == receiver)
                                 .order_by(OutboxRow.id).limit(1).with_for_update())
            if row is None or not _free(row, now, self.holder):
                return None, expired
            row.claimed_by, row.claimed_until = self.holder, now + for_s
            return Waiting(row.key, row.description, dict(row.body), row.attempts), expired

    def done(self, key: str) -> None:
        """The notification was delivered, or given up: it waits no more (unless this
        process's claim ran out meanwhile and another holds it: that one settles it)."""
        with self.db.session() as session:
            session.execute(delete(OutboxRow).where(OutboxRow.key == key,
                                                    OutboxRow.claimed_by == self.holder))

    def later(self, key: str, *, attempts: int, after_s: float) -> None:
        """Tried ``attempts`` times so far: free it to be tried again in ``after_s``."""
        with self.db.session() as session:
            session.execute(update(OutboxRow).where(
                OutboxRow.key == key, OutboxRow.claimed_by == self.holder).values(
                attempts=attempts, next_at=self._now(session) + after_s, claimed_by=None,
                claimed_until=0.0))

    def count(self, receiver: str) -> int:
        with self.db.session(readonly=True) as session:
            return session.scalar(select(func.count()).select_from(OutboxRow)
                                  .where(OutboxRow.receiver == receiver)) or 0


def forget(session: Any, receiver: str) -> None:
    """Drop what waits for ``receiver`` (in the transaction that deletes the receiver)."""
    session.execute(delete(OutboxRow).where(OutboxRow.receiver == receiver))


def _free(row: Any, now: float, holder: str) -> bool:
    """Due, and claimed by no one but ``holder`` (or their claim has run out)."""
    return row.next_at <= now and (row.claimed_by in (None, holder)
                                   or row.claimed_until <= now)


def _as_current(stored: Any) -> dict[str, Any] | None:
    """A receiver's stored settings as this version writes them: a row written before a
    setting existed lacks it (its default), and must not read as other settings for good
    (nothing would ever be sent to it). None where the row is none, or cannot be read."""
    from pydantic import ValidationError

    from control_plane.alerts.schemas import ReceiverSpec

    if not isinstance(stored, dict):
        return None
    try:
        return ReceiverSpec.model_validate(stored).model_dump(mode="json")
    except ValidationError:
        return None
