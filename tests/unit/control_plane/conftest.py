"""Fixtures for the control plane's store-level tests: real database files, real artifacts.

``db_url`` runs each store test on SQLite and, when ``MODELPLANE_TEST_PG_URL`` names a
PostgreSQL server, again on a fresh PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'modelplane.db'}"
        return
    with fresh_postgres_database() as url:
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
