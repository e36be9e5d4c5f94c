"""Gapless version numbers under real contention: 8 processes registering at once.

SQLite serializes writers with ``BEGIN IMMEDIATE``, so the row lock and the retry after a
lost race to create the model are only exercised on PostgreSQL, where this runs.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.artifacts import ArtifactStore
from tests.databases import fresh_postgres_database
from tests.onnx_models import linear_classifier, linear_classifier_manifest

pytestmark = [pytest.mark.postgres, pytest.mark.no_ray]

PROCESSES = 8
PER_PROCESS = 3


def _register_batch(db_url: str, artifact_root: str, digests: list[str],
                    start: Any) -> list[int]:
    from control_plane.auth import Principal
    from control_plane.registry import Registry
    from control_plane.schemas import Role, VersionCreate
    from control_plane.store import Database

    db = Database(db_url, migrate=False)
    registry = Registry(db, ArtifactStore(artifact_root, max_bytes=8 * 1024 * 1024))
    actor = Principal(f"proc-{os.getpid()}", Role.DEPLOYER)
    start.wait(timeout=60)  # every process is connected: the registrations truly overlap
    try:
        return [
            registry.register_version(
                "race", VersionCreate(artifact_digest=digest, manifest=linear_classifier_manifest()),
                actor,
            ).version
            for digest in digests
        ]
    finally:
        db.dispose()


@pytest.fixture
def db_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def test_eight_processes_register_gapless_versions_on_postgres(db_url: str, tmp_path: Path) -> None:
    from control_plane.store import Database

    Database(db_url).dispose()  # migrate once, before the processes start
    artifacts = ArtifactStore(str(tmp_path / "artifacts"), max_bytes=8 * 1024 * 1024)
    payloads = [linear_classifier(seed=500 + i) for i in range(PROCESSES * PER_PROCESS)]
    digests = [artifacts.put([payload]).digest for payload in payloads]

    context = multiprocessing.get_context("spawn")
    start = context.Manager().Barrier(PROCESSES)
    with context.Pool(PROCESSES) as pool:
        batches = pool.starmap(
            _register_batch,
            [(db_url, artifacts.uri, digests[i::PROCESSES], start) for i in range(PROCESSES)],
        )
    versions = sorted(v for batch in batches for v in batch)
    assert versions == list(range(1, PROCESSES * PER_PROCESS + 1))
    for batch in batches:
        assert batch == sorted(batch)  # each process saw its own numbers increase

    from sqlalchemy import select

    from control_plane.store.models import ModelRow, ModelVersionRow

    db = Database(db_url, migrate=False)
    try:
        with db.session(readonly=True) as session:
            assert session.scalars(select(ModelRow.name)).all() == ["race"]
            stored = session.scalars(select(ModelVersionRow.artifact_digest)).all()
    finally:
        db.dispose()
    assert sorted(stored) == sorted(hashlib.sha256(p).hexdigest() for p in payloads)
