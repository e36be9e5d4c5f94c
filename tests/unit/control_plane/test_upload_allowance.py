"""A training job's token uploads at most MODELPLANE_TRAINER_UPLOAD_MB, counted in the store.

A real control plane (SQLite file, artifact folder) behind its REST app: the allowance is
drawn as bytes stream, refused uploads give theirs back, other roles are not counted, and
uploads racing for the last of an allowance cannot pass it together.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from control_plane.auth import Principal
from control_plane.errors import ConflictError
from control_plane.schemas import Role, TokenCreate
from control_plane.store.models import TokenRow
from control_plane.upload_allowance import UploadAllowance

KIB = 1024
MIB = 1024 * KIB
ROOT = Principal("allowance-root", Role.ADMIN)


@pytest.fixture
def api(served_api):
    return served_api(MODELPLANE_TRAINER_UPLOAD_MB="2")


def _token(cp: object, name: str, role: Role) -> dict[str, str]:
    created = cp.tokens.create(TokenCreate(name=name, role=role, expires_in_days=1), ROOT)  # type: ignore[attr-defined]
    return {"authorization": f"Bearer {created.token}",
            "content-type": "application/octet-stream"}


def _uploaded(cp: object, name: str) -> int:
    with cp.db.session(readonly=True) as session:  # type: ignore[attr-defined]
        return session.scalar(select(TokenRow.uploaded_bytes).where(TokenRow.name == name))


def _streamed(size: int, fill: bytes) -> Iterator[bytes]:
    """A body without Content-Length: only the count as it streams can stop it."""
    for start in range(0, size, 64 * KIB):
        yield fill * min(64 * KIB, size - start)


def test_a_job_token_s_uploads_stop_at_its_allowance_declared_or_streamed(api) -> None:
    client, cp = api
    job = _token(cp, "job-1", Role.TRAINER)
    assert client.post("/artifacts", content=b"\x01" * MIB, headers=job).status_code == 201
    streamed = client.post("/artifacts", content=_streamed(600 * KIB, b"\x02"), headers=job)
    assert streamed.status_code == 201, streamed.text
    assert _uploaded(cp, "job-1") == MIB + 600 * KIB

    declared = client.post("/artifacts", content=b"\x03" * 600 * KIB, headers=job)
    assert declared.status_code == 409, declared.text
    assert declared.json()["detail"] == {"field": "token", "limit_bytes": 2 * MIB}
    assert "job-1" in declared.json()["error"] and "MODELPLANE_TRAINER_UPLOAD_MB" in \
        declared.json()["error"]
    cut = client.post("/artifacts", content=_streamed(600 * KIB, b"\x04"), headers=job)
    assert cut.status_code == 409, cut.text
    # The refused uploads gave back what they drew, and stored nothing.
    assert _uploaded(cp, "job-1") == MIB + 600 * KIB
    stored = [path for path in Path(cp.artifacts.root).rglob("*") if path.is_file()]
    assert len(stored) == 2, stored
    assert client.post("/artifacts", content=b"\x05" * 400 * KIB, headers=job).status_code == 201

    # Another job's token has its own allowance; a deployer's uploads are not counted.
    assert client.post("/artifacts", content=b"\x06" * MIB, headers=_token(
        cp, "job-2", Role.TRAINER)).status_code == 201
    deployer = _token(cp, "deployer", Role.DEPLOYER)
    for fill in (b"\x07", b"\x08", b"\x09"):
        assert client.post("/artifacts", content=fill * MIB, headers=deployer).status_code == 201
    assert (_uploaded(cp, "job-2"), _uploaded(cp, "deployer")) == (MIB, 0)


def test_an_upload_refused_for_its_digest_gives_back_what_it_drew(api) -> None:
    client, cp = api
    job = _token(cp, "job-1", Role.TRAINER)
    answer = client.post("/artifacts", content=b"\x01" * MIB,
                         headers={**job, "x-artifact-digest": "0" * 64})
    assert answer.json()["code"] == "artifact_corrupt", answer.text  # refused for its digest
    assert _uploaded(cp, "job-1") == 0


def test_uploads_racing_for_the_last_of_an_allowance_cannot_pass_it_together(api) -> None:
    _, cp = api
    _token(cp, "job-1", Role.TRAINER)
    job = Principal("job-1", Role.TRAINER)
    outcomes: list[bool] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def upload() -> None:
        allowance = UploadAllowance(cp.db, job, 2 * MIB)
        start.wait()
        try:
            allowance.cover(600 * KIB)
            outcomes.append(True)
        except ConflictError:
            outcomes.append(False)
        except BaseException as error:  # a racer that died fails the test
            failures.append(error)

    racers = [threading.Thread(target=upload) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
    assert not failures and not any(racer.is_alive() for racer in racers)
    assert sorted(outcomes) == [False] * 5 + [True] * 3
    assert _uploaded(cp, "job-1") == 3 * 600 * KIB
