"""The store: migrations, pragmas, transactions, refusal on an old schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from control_plane.errors import SchemaOutdatedError
from control_plane.store import Database
from control_plane.store.database import schema_revisions
from control_plane.store.models import Base, ModelRow


def test_migrated_schema_matches_the_models(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


MIGRATIONS = Path(__file__).parents[3] / "control_plane" / "migrations" / "versions"


def test_migration_is_idempotent_and_records_head(empty_db_url: str) -> None:
    Database(empty_db_url).dispose()
    database = Database(empty_db_url)  # second start: nothing to apply
    current, head = schema_revisions(database.engine)
    newest = max(path.name[:4] for path in MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert current == head == newest
    database.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'm.db'}")
    with database.session(readonly=True) as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        # FULL (2): a commit is on disk before it is acknowledged, power cut or not.
        assert session.execute(text("PRAGMA synchronous")).scalar() == 2
    database.dispose()


def test_refuses_an_old_schema_naming_the_upgrade_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    create_engine(url).dispose()
    with pytest.raises(SchemaOutdatedError, match="modelplane db upgrade") as caught:
        Database(url, migrate=False)
    assert caught.value.detail["current"] is None
    assert caught.value.http_status == 503


def test_a_failing_block_writes_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as session:
        session.add(ModelRow(name="half", owner="x", tags={}, policy={}))
        session.flush()
        raise RuntimeError("crash after the insert, before the commit")
    with db.session(readonly=True) as session:
        assert session.scalar(select(ModelRow).where(ModelRow.name == "half")) is None


def test_numbers_that_are_not_finite_are_stored_as_null_on_every_backend(db: Database) -> None:
    """PostgreSQL's json refuses NaN, SQLite's text takes it: one rule for both, however
    deep the number sits (a dataclass's pair arrives as a tuple)."""
    tags = {"bounds": (1.5, float("nan")), "rates": [float("inf"), -float("inf"), 0.25],
            "nested": {"p99": float("nan")}}
    with db.session() as session:
        session.add(ModelRow(name="odd", owner="x", tags=tags, policy={}))
    with db.session(readonly=True) as session:
        stored = session.scalar(select(ModelRow).where(ModelRow.name == "odd"))
        raw = session.execute(text("SELECT tags FROM models WHERE name = 'odd'")).scalar_one()
    assert stored is not None
    assert stored.tags == {"bounds": [1.5, None], "rates": [None, None, 0.25],
                           "nested": {"p99": None}}
    assert "NaN" not in str(raw) and "Infinity" not in str(raw)


def test_text_the_platform_writes_is_stored_on_every_backend(db: Database) -> None:
    """A NUL (PostgreSQL's text refuses it) and a lone surrogate (no driver encodes it) in
    text the platform writes itself, such as a failed job's last log line, become U+FFFD:
    the write failed, and left what it recorded under way for good."""
    from sqlalchemy import update

    with db.session() as session:
        session.add(ModelRow(name="odd-text", owner="x", tags={"line": "a\x00b"}, policy={},
                             description="the job said: \x00\ud800 done"))
    with db.session() as session:
        session.execute(update(ModelRow).where(ModelRow.name == "odd-text")
                        .values(owner="o\x00wner"))
    with db.session(readonly=True) as session:
        stored = session.scalar(select(ModelRow).where(ModelRow.name == "odd-text"))
    assert stored is not None
    assert stored.description == "the job said: \ufffd\ufffd done"
    assert stored.owner == "o\ufffdwner"
    assert stored.tags == {"line": "a\x00b"}  # JSON escapes it, and every backend holds that


def test_an_upgraded_database_ends_identical_to_a_fresh_one(tmp_path: Path) -> None:
    """Upgrade step by step from the first revision; compare with a fresh head schema."""
    from alembic import command
    from sqlalchemy import inspect

    from control_plane.store.database import _alembic_config

    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(old_url)
    config = _alembic_config(engine)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    engine.dispose()
    upgraded = Database(old_url)
    fresh = Database(f"sqlite:///{tmp_path / 'fresh.db'}")

    def describe(database: Database) -> dict:
        inspector = inspect(database.engine)
        return {
            table: sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table))
            for table in inspector.get_table_names()
        }

    assert describe(upgraded) == describe(fresh)
    upgraded.dispose()
    fresh.dispose()


def _store_at(tmp_path: Path, revision: str) -> tuple[str, Any]:
    """A SQLite store migrated up to ``revision`` only: (its URL, an engine on it)."""
    from alembic import command

    from control_plane.store.database import _alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = _alembic_config(engine)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return url, engine


def test_migration_0006_gives_old_versions_and_approvals_their_subjects(tmp_path: Path) -> None:
    """Rows from before subjects: the subject of the token of that name, else the name."""
    url, engine = _store_at(tmp_path, "0005")
    with engine.begin() as connection:
        now = "2026-01-01 00:00:00"
        connection.execute(text(
            "INSERT INTO api_tokens (name, token_hash, prefix, role, subject, created_by, "
            f"created_at) VALUES ('alice-ci', 'h1', 'mp_x', 'deployer', 'alice', 'admin', '{now}')"))
        connection.execute(text(
            "INSERT INTO models (name, description, owner, tags, policy, last_version, "
            f"created_at, updated_at) VALUES ('m', '', 'alice-ci', '{{}}', '{{}}', 1, '{now}', '{now}')"))
        connection.execute(text(
            "INSERT INTO model_versions (model_id, version, stage, status, status_reason, "
            "description, artifact_digest, artifact_size, manifest, created_by, created_at) "
            f"VALUES (1, 1, 'none', 'ready', '', '', 'd', 1, '{{}}', 'alice-ci', '{now}')"))
        connection.execute(text(
            "INSERT INTO approvals (version_id, approver, decision, comment, created_at) "
            f"VALUES (1, 'gone-token', 'approved', '', '{now}')"))
    engine.dispose()
    database = Database(url)
    with database.engine.connect() as connection:
        assert connection.execute(text(
            "SELECT created_by_subject FROM model_versions")).scalar() == "alice"
        assert connection.execute(text(
            "SELECT approver_subject FROM approvals")).scalar() == "gone-token"
        assert connection.execute(text("SELECT followups FROM rollouts")).all() == []
    database.dispose()


def test_migration_0013_makes_an_old_pipeline_s_creator_its_author(tmp_path: Path) -> None:
    """Pipelines from before authors: the subject of the token that created them (else its
    name), so their runs stop acting as `pipeline:<name>`, whom nobody approves as."""
    url, engine = _store_at(tmp_path, "0012")
    with engine.begin() as connection:
        now = "2026-01-01 00:00:00"
        connection.execute(text(
            "INSERT INTO api_tokens (name, token_hash, prefix, role, subject, created_by, "
            f"created_at) VALUES ('alice-ci', 'h1', 'mp_x', 'approver', 'alice', 'admin', '{now}')"))
        for name, creator in (("bc", "alice-ci"), ("old", "gone-token")):
            connection.execute(text(
                "INSERT INTO pipelines (name, spec, state, created_by, created_at, updated_at) "
                f"VALUES ('{name}', '{{}}', '{{}}', '{creator}', '{now}', '{now}')"))
        connection.execute(text(
            "INSERT INTO pipeline_runs (pipeline, number, state, trigger, trigger_detail, spec, "
            "stages, reason, created_by, created_at, updated_at, revision) VALUES ('bc', 1, "
            f"'running', 'manual', '{{}}', '{{}}', '[]', '', 'alice-ci', '{now}', '{now}', 1)"))
    engine.dispose()
    database = Database(url)
    with database.engine.connect() as connection:
        assert dict(connection.execute(text(
            "SELECT name, author_subject FROM pipelines")).all()) == {"bc": "alice",
                                                                     "old": "gone-token"}
        assert connection.execute(text(
            "SELECT author_subject FROM pipeline_runs")).scalar() == "alice"
    database.dispose()


def test_a_write_lost_on_a_unique_key_is_told_from_a_refused_one(db: Database) -> None:
    """Another writer taking the key first is a race (tried again, the write finds its row);
    a column the schema refuses is not."""
    from sqlalchemy.exc import DBAPIError

    from control_plane.store.database import store_unique_race

    with db.session() as session:
        session.add(ModelRow(name="iris", owner="alice", tags={}, policy={}))
    with pytest.raises(DBAPIError) as taken, db.session() as session:
        session.add(ModelRow(name="iris", owner="bob", tags={}, policy={}))
    assert store_unique_race(taken.value)
    with pytest.raises(DBAPIError) as refused, db.session() as session:
        session.add(ModelRow(name="other", owner=None, tags={}, policy={}))
    assert not store_unique_race(refused.value)


def test_a_store_lost_during_the_commit_is_not_said_to_have_written_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection lost while COMMIT was on its way may have committed: answered "nothing
    was written, retry", a careful caller registered the version twice."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    from control_plane.errors import StoreUnavailableError

    database = Database(f"sqlite:///{tmp_path / 'm.db'}")
    lost = OperationalError("COMMIT", {}, ConnectionError("server closed the connection"),
                            connection_invalidated=True)
    with pytest.raises(StoreUnavailableError) as before, database.session() as session:
        session.execute(text("SELECT 1"))
        raise lost
    assert "nothing was written" in str(before.value) and before.value.detail["written"] == "no"

    def commit_lost(self: Session) -> None:
        raise lost

    monkeypatch.setattr(Session, "commit", commit_lost)
    with pytest.raises(StoreUnavailableError) as during, database.session() as session:
        session.execute(text("SELECT 1"))
    assert "may or may not have been written" in str(during.value)
    assert during.value.detail["written"] == "unknown"
    monkeypatch.undo()
    database.dispose()


def test_rollouts_keep_time_by_the_stores_clock(db: Database, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """A step started by one leader is held and judged by the next: on PostgreSQL each
    host's own clock (seconds off) ended holds early and reached into the previous step's
    split; the store's clock is the one they share."""
    from datetime import UTC, datetime

    import control_plane.store.database as database

    class HostClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return datetime(2001, 1, 1, tzinfo=UTC)

    monkeypatch.setattr(database, "datetime", HostClock)
    read = db.now()
    if db.is_sqlite:  # one machine: its own clock
        assert read.year == 2001
    else:
        assert read.year >= 2026 and read.tzinfo is not None
    from control_plane.service import ControlPlane
    from modelplane.settings import Settings

    plane = ControlPlane.start(Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home"),
                                                  "MODELPLANE_DB_URL": str(db.url)}))
    try:
        assert plane.rollouts._now == plane.db.now
    finally:
        plane.close()
