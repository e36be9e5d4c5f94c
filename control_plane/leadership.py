"""Leadership of the control loops: a lease in the store, held by one control plane at a time.

The reconciler, the rollout controller, the pipelines and the alert evaluator act on the
world (Serve's applications, traffic, notifications). Two control planes acting at once
would decide a rollout's step twice, count one failed analysis as two and send every
alert twice. Two run whenever Serve starts a new control-plane replica before the old one
has stopped (a second ``up`` with other settings, an upgrade, a replica that hangs without
dying) and wherever an operator runs several for availability. So every control plane
serves the API, and only the holder of the ``control-loops`` lease runs the loops.

- **Taking and renewing** (:meth:`Lease.hold`): one transaction reads the lease row with
  a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write transactions are
  serialized) and renews it when this process holds it, takes it when it has expired (one
  more ``term``) or leaves it. Holders renew every third of the lease's length.
- **Acting only while sure**: a holder treats the lease as its own for two thirds of its
  length from the moment it asked for the renewal (a monotonic clock, so a paused process
  or a stepped wall clock cannot stretch it); the others take it over only once the whole
  length has passed since the renewal, by the store's clock on PostgreSQL (the machine's
  own on SQLite, which serves one). The third between is the margin for a renewal's
  round trip, and for a pass that began while sure to end. A store that cannot be reached renews nothing, so a holder cut off from it
  stops acting before anyone else starts.
- **Writing only while holding** (:meth:`Lease.fence`): a pass that began while sure may
  outlast the margin (a stalled store call, a long pause). Every write transaction of the
  loops first reads the lease row, locked against a takeover until it ends, and is refused
  (:class:`LeaseLost`) unless this process still holds the lease under its term: a pass
  that outlived its lead stores nothing, so no decision is made twice, nor an older one
  stored over its successor's.
- **Handing over**: a control plane that shuts down gracefully gives the lease up
  (:meth:`Lease.release`), so its successor takes over at its next renewal, not a lease
  length later; a renewal in flight on the lease loop's thread as it releases is given up
  too, and never makes the process act as the holder again. A holder whose process is gone from this machine (same host and PID
  namespace, named in its holder id) is taken over at once too: a killed control plane
  that Serve restarts on the same node does not leave the loops idle for a lease length.
- **Changes made elsewhere**: a control plane that does not lead and changed an endpoint
  (a deploy, a traffic change) asks the leader to apply it (:func:`request_apply`); the
  leader takes the requests every half second (:func:`take_apply_requests`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.store import Database
from control_plane.store.database import FencedOut, store_now
from control_plane.store.models import ApplyRequestRow, LeaseRow
from modelplane.process_names import new_process_name, process_is_gone

log = logging.getLogger(__name__)

CONTROL_LOOPS = "control-loops"
LEASE_S = 10.0
SURE_SHARE = 2 / 3  # of the lease's length, how long a holder acts after asking to renew
RENEW_SHARE = 1 / 3  # of the lease's length, how often a holder renews


class LeaseLost(FencedOut):
    """A write of the control loops by a process that no longer holds their lease."""


@dataclass(frozen=True)
class LeaseState:
    """A lease as the store has it (times in Unix seconds)."""

    name: str
    holder: str
    term: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    cluster: str | None = None  # the holder's Ray cluster (its session); None: outside Ray


class Lease:
    """One process's claim on the lease ``name`` in ``db``."""

    def __init__(self, db: Database, *, name: str = CONTROL_LOOPS, holder: str | None = None,
                 length_s: float = LEASE_S, clock: Callable[[], float] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 store_clock: bool | None = None, cluster: str | None = None) -> None:
        if length_s <= 0:
            raise ValueError(f"a lease's length must be positive, got {length_s!r}")
        self.db = db
        self.name = name
        self.holder = holder or new_process_name()
        self.cluster = cluster
        self.length_s = length_s
        self._clock = clock or time.time
        # Where several machines share the store (PostgreSQL), a lease's times are the
        # store's: each host's own clock, a few seconds off or stepped by NTP, would let
        # one take the lease while its holder still acts. A clock given (tests) is used
        # unless ``store_clock`` says otherwise.
        self._store_clock = (clock is None if store_clock is None else store_clock) \
            and not db.is_sqlite
        self._monotonic = monotonic
        self._sure_until = float("-inf")  # on the monotonic clock
        self._released = False
        self.term: int | None = None  # this holder's term while it holds the lease
        # A release (a shutdown, on another thread) may come while a renewal is in flight:
        # the renewal's outcome and the release are recorded one at a time.
        self._state = threading.Lock()

    @property
    def renew_every_s(self) -> float:
        return self.length_s * RENEW_SHARE

    @property
    def held(self) -> bool:
        """Whether this process may act as the lease's holder now."""
        return self._monotonic() < self._sure_until

    def hold(self) -> bool:
        """Renew the lease if this process holds it, take it if it is free or has expired;
        whether this process holds it now. A store error keeps what was held until it runs
        out (it is logged, and the next call tries again). After :meth:`release`, False:
        a process that gave the lease up is on its way out."""
        if self._released:
            return False
        asked = self._monotonic()
        now = self._clock()
        try:
            term = self._claim(now)
        except IntegrityError:  # another process created the row first: it holds it
            term = None
        except Exception as error:
            log.warning("could not renew the %s lease (held: %s): %s", self.name,
                        self.held, error)
            return self.held
        with self._state:
            if not self._released:
                was_held = self.held
                if term is None:
                    self._sure_until, self.term = float("-inf"), None
                    if was_held:
                        log.warning("lost the %s lease to another holder", self.name)
                    return False
                # The term first: a pass that finds the lease held finds its term too.
                self.term = term
                self._sure_until = asked + self.length_s * SURE_SHARE
                if not was_held:
                    log.info("holding the %s lease as %s (term %d)", self.name, self.holder, term)
                return True
        # Released while this renewal was in flight: it may have renewed the lease after the
        # release gave it up, so it is given up again, and this process never acts on it.
        if term is not None:
            self._give_up(term)
        return False

    def _claim(self, now: float) -> int | None:
        with self.db.session() as session:
            if not self.db.is_sqlite:
                # A holder's write in flight keeps the row share-locked (:meth:`fence`): one
                # that stalls must cost this renewal, not hang the lease's thread for good.
                session.execute(text("SET LOCAL lock_timeout = '2s'"))
            row = session.scalar(select(LeaseRow).where(LeaseRow.name == self.name)
                                 .with_for_update())
            if self._store_clock:
                now = store_now(session)
            if row is None:
                session.add(LeaseRow(name=self.name, holder=self.holder, term=1, acquired_at=now,
                                     renewed_at=now, expires_at=now + self.length_s,
                                     cluster=self.cluster))
                return 1
            if row.holder != self.holder:
                if row.expires_at > now:
                    if not process_is_gone(row.holder):
                        return None
                    log.warning("taking the %s lease over from %s, whose process is gone",
                                self.name, row.holder)
                row.holder, row.term, row.acquired_at = self.holder, row.term + 1, now
            row.renewed_at, row.expires_at = now, now + self.length_s
            row.cluster = self.cluster
            return row.term

    def fence(self, session: Session, *, term: int | None = None) -> None:
        """Refuse the transaction in ``session`` (:class:`LeaseLost`) unless this process
        holds the lease under ``term`` (the one a pass began under; by default its current
        one), as the store says too; the row stays locked against a takeover until the
        transaction ends (SQLite's write transactions are serialized already). A pass that
        began under an earlier term is refused even where this process holds the lease
        again. A process found to have lost the lease stops acting at once."""
        term = self.term if term is None else term
        if term is None or self.term != term:
            raise LeaseLost(f"this process does not hold the {self.name} lease "
                            f"{'' if term is None else f'in term {term} '}any more")
        row = session.execute(select(LeaseRow.holder, LeaseRow.term)
                              .where(LeaseRow.name == self.name)
                              .with_for_update(read=True)).one_or_none()
        if row is not None and row.holder == self.holder and row.term == term:
            return
        with self._state:
            if self.term == term:
                self._sure_until, self.term = float("-inf"), None
        raise LeaseLost(f"the {self.name} lease passed to "
                        f"{row.holder if row is not None else 'no one'} "
                        f"(term {row.term if row is not None else '-'}) while this process, "
                        f"holder in term {term}, was acting; nothing of this write was stored")

    def release(self) -> None:
        """Give the lease up now, if this process holds it, and for good (the store may
        be gone: then it runs out on its own)."""
        with self._state:
            self._released = True
            self._sure_until, term, self.term = float("-inf"), self.term, None
        if term is not None:
            self._give_up(term)

    def _give_up(self, term: int) -> None:
        try:
            with self.db.session() as session:
                now = store_now(session) if self._store_clock else self._clock()
                session.execute(update(LeaseRow).where(
                    LeaseRow.name == self.name, LeaseRow.holder == self.holder,
                    LeaseRow.term == term).values(expires_at=now))
        except Exception as error:
            log.warning("could not give the %s lease up; it runs out in %.0f s: %s",
                        self.name, self.length_s, error)


def read_lease(db: Database, name: str = CONTROL_LOOPS) -> LeaseState | None:
    """The lease as stored, or None if no one ever held it."""
    with db.session(readonly=True) as session:
        row = session.get(LeaseRow, name)
        if row is None:
            return None
        return LeaseState(row.name, row.holder, row.term, row.acquired_at, row.renewed_at,
                          row.expires_at, row.cluster)


def this_ray_cluster() -> str | None:
    """This process's Ray cluster, named by its session (a cluster started again is
    another one); None outside Ray."""
    try:
        import ray
    except ImportError:
        return None
    return ray.get_runtime_context().get_session_name() if ray.is_initialized() else None


def leader_elsewhere(db: Database, cluster: str, name: str = CONTROL_LOOPS, *,
                     sleep: Callable[[float], None] = time.sleep,
                     poll_s: float = 0.5) -> LeaseState | None:
    """The lease as held by a live holder on another Ray cluster than ``cluster``, or None.

    One is live if it renews the lease before the lease runs out, watched until then: a
    holder of a cluster since stopped or restarted (another session) is not, and costs
    no wait once its lease has run out. A renewal is watched for whole, not for a part of
    the lease: one late by a lock wait or a pause is still a live holder's."""
    first = read_lease(db, name)
    while True:
        current = read_lease(db, name)
        if first is None or current is None or current.cluster in (None, cluster):
            return None
        if current.renewed_at > first.renewed_at:
            return current
        with db.session(readonly=True) as session:
            now = time.time() if db.is_sqlite else store_now(session)
        if current.expires_at <= now:
            return None
        sleep(min(poll_s, current.expires_at - now))


ALL_ENDPOINTS = None


def request_apply(db: Database, endpoint: str | None) -> None:
    """Ask the leader to apply ``endpoint`` (None: every endpoint) to Serve."""
    with db.session() as session:
        session.add(ApplyRequestRow(endpoint=endpoint, requested_at=time.time()))


def take_apply_requests(db: Database) -> set[str | None]:
    """The endpoints asked for since the last call (None among them: every endpoint),
    removed from the store in the same transaction. Nothing queued (the usual case, and
    always with one control plane) costs a read, not a write lock twice a second."""
    with db.session(readonly=True) as session:
        if session.scalar(select(ApplyRequestRow.id).limit(1)) is None:
            return set()
    with db.session() as session:
        rows = session.execute(select(ApplyRequestRow.id, ApplyRequestRow.endpoint)
                               .with_for_update()).all()
        if not rows:
            return set()
        session.execute(delete(ApplyRequestRow).where(
            ApplyRequestRow.id.in_([row.id for row in rows])))
        return {row.endpoint for row in rows}
