"""The store's engine, its sessions and its schema version.

``Database.session()`` is the one way code touches the store: it commits on success,
rolls back on any exception and always closes, so every state change is one transaction.

SQLite gets foreign keys, a busy timeout and WAL. Writers open their transaction with
``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes can fail at once
with SQLITE_BUSY when another writer committed in between (the busy timeout does not
apply to that upgrade), which would surface as random 500s under concurrent registrations.
Read-only sessions use a plain deferred ``BEGIN`` so they never block writers.

A database that cannot be reached (PostgreSQL stopped, the network gone) is a
:class:`StoreUnavailableError` (503) within about a second, never a hang or a 500: the
transaction was not committed, so nothing is half-written, and the caller may retry.

A thread may put its writes behind a fence (:func:`fenced_writes`): a check run first in
every write transaction it opens, in the same transaction, which refuses the whole
transaction (:class:`FencedOut`) when the thread is no longer entitled to write. The
control loops write behind their lease's fence (``control_plane.leadership``): a pass that
outlived its process's lead cannot store a decision its successor may already have made.

Both engines write JSON and text as every backend holds them (``control_plane.storable``):
what SQLite stores and PostgreSQL refuses (a NaN in JSON, a NUL in text) is never sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from control_plane import storable
from control_plane.errors import SchemaOutdatedError, StoreUnavailableError

_SQLITE_BUSY_TIMEOUT_MS = 30_000

WriteFence = Callable[[Session], None]
_write_fence: ContextVar[WriteFence | None] = ContextVar("write_fence", default=None)


class FencedOut(Exception):
    """A write transaction its fence refused: nothing of it was written."""


def store_now(session: Session) -> float:
    """The store's time now, in Unix seconds (PostgreSQL's clock, not its transaction's
    start): times that processes on several machines compare are read on one clock."""
    return float(session.scalar(text("SELECT extract(epoch FROM clock_timestamp())")))


def in_fenced_pass() -> bool:
    """Whether this thread's writes are fenced now (a control loop's pass is running)."""
    return _write_fence.get() is not None


@contextmanager
def fenced_writes(fence: WriteFence) -> Iterator[None]:
    """Run ``fence(session)`` first in every write transaction this thread opens in the
    block; it raises :class:`FencedOut` to refuse the transaction."""
    token = _write_fence.set(fence)
    try:
        yield
    finally:
        _write_fence.reset(token)


class Database:
    """An engine plus transactional sessions; create one per process."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(
            self.engine.execution_options(modelplane_readonly=True), expire_on_commit=False
        )
        if migrate:
            upgrade_schema(self.engine)
        else:
            ensure_schema_current(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """One transaction: committed if the block succeeds, rolled back if it raises."""
        factory = self._reader if readonly else self._writer
        session = factory()
        committing = False
        try:
            fence = None if readonly else _write_fence.get()
            if fence is not None:
                fence(session)
            yield session
            # A read-only session is simply closed: a rollback would expire the rows
            # the caller is about to read, close() detaches them with their values.
            if not readonly:
                committing = True
                session.commit()
        except DBAPIError as error:
            _rollback_quietly(session)
            if store_unreachable(error):
                # Lost while the commit was on its way, the change may be in the store:
                # "nothing was written" would have a careful caller make it twice.
                outcome = ("the change may or may not have been written: look before making "
                           "it again" if committing else "nothing was written, retry when "
                           "it is back")
                raise StoreUnavailableError(
                    f"the store ({self.engine.url.render_as_string(hide_password=True)}) cannot "
                    f"be reached: {str(error.orig).strip().splitlines()[0] if error.orig else error}"
                    f"; {outcome}",
                    detail={"store": self.engine.url.get_backend_name(),
                            "written": "unknown" if committing else "no"},
                ) from None
            raise
        except BaseException:
            _rollback_quietly(session)
            raise
        finally:
            session.close()

    def serialize(self, session: Session, name: str) -> None:
        """Hold ``session``'s transaction until every other one that serialized on ``name``
        has ended: writers that read, decide and then write under one name run one after
        another, across processes.

        PostgreSQL takes a transaction-scoped advisory lock (its default isolation lets two
        transactions read the same "nothing yet" and both act on it). SQLite's writers run
        one at a time already (``BEGIN IMMEDIATE``): the transaction is begun here, so what
        the caller reads next, files included, it reads holding the lock.
        """
        if self.is_sqlite:
            session.connection()  # BEGIN IMMEDIATE now, not at the first statement
            return
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": int.from_bytes(digest, "big", signed=True)})

    def now(self) -> datetime:
        """The time by the clock every control plane on this store shares: PostgreSQL's
        where several machines may lead in turn (a rollout's step started by one is held
        and judged by another, whose own clock may be seconds off), this machine's on
        SQLite (one machine)."""
        if self.is_sqlite:
            return datetime.now(UTC)
        with self.session(readonly=True) as session:
            return datetime.fromtimestamp(store_now(session), UTC)

    def dispose(self) -> None:
        """Close every pooled connection (tests and shutdown)."""
        self.engine.dispose()


def _rollback_quietly(session: Session) -> None:
    # Rolling back on a dead connection raises too; the transaction is gone either way.
    try:
        session.rollback()
    except DBAPIError:
        session.invalidate()


def store_transient(error: DBAPIError) -> bool:
    """Whether the same statement may succeed when tried again: the server is gone, or the
    transaction lost to another (a deadlock, a serialization failure, a lock or statement
    timeout, SQLite's busy database), rather than the statement being refused."""
    if store_unreachable(error):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    return sqlstate.startswith("40") or sqlstate in ("55P03", "57014") or (
        "database is locked" in str(error.orig))


def store_unique_race(error: DBAPIError) -> bool:
    """Whether the statement lost on a unique key: another transaction wrote the same key
    first (both had found it free). Tried again, it finds that row; unlike a check, a
    trigger or a foreign key refusing the write, it says nothing about the write itself."""
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None) or ""
    return sqlstate == "23505" or getattr(orig, "sqlite_errorname", "") in (
        "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")


def store_could_not_take(error: BaseException) -> bool:
    """Whether a write failed because the store could not take it now (unreachable, as
    :meth:`Database.session` reports it, or :func:`store_transient`), not because it
    refused the write: such a write is to be tried again, not given up. A fenced-out write
    is neither: the pass that made it is over (:class:`FencedOut`)."""
    return isinstance(error, StoreUnavailableError) or (
        isinstance(error, DBAPIError) and store_transient(error))


def store_unreachable(error: DBAPIError) -> bool:
    """Whether the error says the server is gone, rather than what the statement did."""
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    # psycopg: class 08 is "connection exception"; 57P0x is an admin or crash shutdown.
    if sqlstate.startswith("08") or sqlstate.startswith("57P0"):
        return True
    name = type(error.orig).__name__
    return name in {"OperationalError", "InterfaceError"} and "sqlite" not in type(error.orig).__module__


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # A stopped server must fail calls in about a second, not after the OS's TCP
        # timeout: connecting is bounded, and pooled connections are checked before use.
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            connect_args = {
                "connect_timeout": 2,
                # A client that froze or vanished inside a transaction (a control plane's
                # host gone mid-write) must not hold its locks for the OS's two-hour TCP
                # timeout: the control loops' lease is one of them (leadership.Lease.fence).
                "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                "keepalives_count": 3,
                "options": " ".join(filter(None, (
                    parsed.query.get("options"),  # the operator's own, kept
                    "-c idle_in_transaction_session_timeout=60000 -c tcp_keepalives_idle=10 "
                    "-c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"))),
            }
        return _storing_text(create_engine(url, pool_pre_ping=True, pool_timeout=2,
                                           future=True, connect_args=connect_args,
                                           json_serializer=storable.dumps))

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        json_serializer=storable.dumps,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so "begin" below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        # Each commit on disk before it is acknowledged: with NORMAL a power cut could take
        # back a registered version, and its number would go to other bytes.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        readonly = connection.get_execution_options().get("modelplane_readonly", False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return _storing_text(engine)


def _storing_text(engine: Engine) -> Engine:
    """``engine`` writing text every backend holds (``storable.parameters``)."""

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _storable(connection: Any, cursor: Any, statement: str, parameters: Any,
                  context: Any, executemany: bool) -> tuple[str, Any]:
        return statement, storable.parameters(parameters)

    return engine


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent.parent / "migrations"))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Apply every pending migration (idempotent; a fresh database gets them all)."""
    from alembic import command

    config = _alembic_config(engine)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def schema_revisions(engine: Engine) -> tuple[str | None, str]:
    """(the database's revision, the newest revision this code knows)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    assert head is not None
    return current, head


def ensure_schema_current(engine: Engine) -> None:
    """Refuse to run against an old schema, naming the command that upgrades it."""
    current, head = schema_revisions(engine)
    if current != head:
        raise SchemaOutdatedError(
            f"the database schema is at revision {current or 'empty'} but this modelplane "
            f"needs {head}; run `modelplane db upgrade` (it backs nothing up: snapshot a "
            "production database first)",
            detail={"current": current, "required": head},
        )
