"""Fixtures for the control plane's store-level tests: real database files, real artifacts.

``db_url`` runs each store test on SQLite and, when ``MODELPLANE_TEST_PG_URL`` names a
PostgreSQL server, again on a fresh PostgreSQL database. Each is a copy of a store this
process migrated once: migrating one afresh per test took 0.07 s on SQLite and 0.3 s on
PostgreSQL, for hundreds of tests. ``empty_db_url`` gives an empty one, for migration.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy.engine import make_url

from control_plane.artifacts import ArtifactStore
from control_plane.auth import Principal
from control_plane.registry import Registry
from control_plane.schemas import Role
from control_plane.store import Database
from control_plane.tracking import Tracker
from tests.databases import fresh_postgres_database

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from control_plane.service import ControlPlane


STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty store (SQLite, then PostgreSQL where one is configured)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'modelplane.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store at the schema's head, to copy (never to open)."""
    path = tmp_path_factory.mktemp("migrated") / "modelplane.db"
    Database(f"sqlite:///{path}").dispose()  # its last connection closed: no WAL left over
    return path


@pytest.fixture(scope="session")
def migrated_postgres_database() -> Iterator[str]:
    """The name of a PostgreSQL database at the schema's head, to copy (never to connect
    to: a template with a session connected cannot be copied). One per pytest-xdist worker."""
    with fresh_postgres_database() as url:
        Database(url).dispose()
        yield str(make_url(url).database)


@pytest.fixture(params=STORES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new store at the schema's head (SQLite, then PostgreSQL where one is configured)."""
    if request.param == "sqlite":
        path = tmp_path / "modelplane.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_file"), path)
        yield f"sqlite:///{path}"
        return
    with fresh_postgres_database(template=request.getfixturevalue("migrated_postgres_database")) as url:
        yield url


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


@pytest.fixture
def served_api(tmp_path: Path) -> Iterator[Callable[..., tuple[TestClient, ControlPlane]]]:
    """A real control plane (SQLite file, artifact folder in a fresh home) behind its REST
    app: ``served_api(**env)`` with ``MODELPLANE_`` settings of its own, closed after."""
    from fastapi.testclient import TestClient

    from control_plane.api import build_api
    from control_plane.service import ControlPlane
    from modelplane.settings import Settings

    opened: list[tuple[TestClient, ControlPlane]] = []

    def serve(**env: str) -> tuple[TestClient, ControlPlane]:
        cp = ControlPlane.start(Settings.from_env({
            "MODELPLANE_HOME": str(tmp_path / f"home-{len(opened)}"), **env}))
        opened.append((TestClient(build_api(cp), raise_server_exceptions=False), cp))
        return opened[-1]

    yield serve
    for client, cp in opened:
        client.close()
        cp.close()
