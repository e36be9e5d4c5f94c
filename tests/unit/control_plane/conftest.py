"""Fixtures for the control plane's store-level tests: real database files, real artifacts.

``db_url`` runs each store test on SQLite and, when ``MODELPLANE_TEST_PG_URL`` names a
PostgreSQL server, again on a fresh PostgreSQL database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.artifacts import ArtifactStore
from control_plane.auth import Principal
from control_plane.registry import Registry
from control_plane.schemas import Role
from control_plane.store import Database
from control_plane.tracking import Tracker

PG_URL_VARIABLE = "MODELPLANE_TEST_PG_URL"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'modelplane.db'}"
        return
    admin_url = os.environ.get(PG_URL_VARIABLE)
    if not admin_url:
        pytest.skip(f"{PG_URL_VARIABLE} is unset; .ci/run starts PostgreSQL and sets it")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"), max_bytes=8 * 1024 * 1024)


@pytest.fixture
def registry(db: Database, artifacts: ArtifactStore) -> Registry:
    return Registry(db, artifacts)


@pytest.fixture
def tracker(db: Database, artifacts: ArtifactStore) -> Tracker:
    return Tracker(db, artifacts)


ALICE = Principal("alice", Role.DEPLOYER)
BOB = Principal("bob", Role.APPROVER)
ADMIN = Principal("root", Role.ADMIN)
READER = Principal("viewer", Role.READER)
