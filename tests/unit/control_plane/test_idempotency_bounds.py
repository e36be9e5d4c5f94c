"""What a caller can make the store keep through idempotency keys, on a real control plane
behind its REST app: refusals for want of a right leave nothing, and one caller's kept
answers are bounded (past the bound its oldest go, and a retry of a recent call is still
replayed its answer)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from control_plane.auth import Principal
from control_plane.schemas import Role, TokenCreate
from control_plane.store.models import RequestReplyRow

ROOT = Principal("bounds-root", Role.ADMIN)


@pytest.fixture
def api(served_api):
    return served_api()


def _bearer(cp: object, name: str, role: Role) -> dict[str, str]:
    created = cp.tokens.create(TokenCreate(name=name, role=role), ROOT)  # type: ignore[attr-defined]
    return {"authorization": f"Bearer {created.token}"}


def _kept(cp: object, caller: str) -> int:
    with cp.db.session(readonly=True) as session:  # type: ignore[attr-defined]
        return session.scalar(select(func.count()).select_from(RequestReplyRow).where(
            RequestReplyRow.scope == caller))


def test_a_refusal_for_want_of_a_right_keeps_nothing_however_many_keys(api) -> None:
    client, cp = api
    reader = _bearer(cp, "curious", Role.READER)
    for n in range(30):
        answer = client.request("DELETE", "/tokens/someone", headers={
            **reader, "idempotency-key": f"flood-{n:04d}"})
        assert answer.status_code == 403, answer.text
    assert _kept(cp, "curious") == 0
    # A caller with the right still has its refusal kept, and replayed.
    admin = _bearer(cp, "keeper", Role.ADMIN)
    first = client.request("DELETE", "/tokens/ghost", headers={**admin, "idempotency-key": "gone-0001"})
    again = client.request("DELETE", "/tokens/ghost", headers={**admin, "idempotency-key": "gone-0001"})
    assert first.status_code == 404 and again.status_code == 404
    assert again.headers["idempotent-replayed"] == "true" and _kept(cp, "keeper") == 1


def test_past_its_bound_a_caller_s_oldest_answers_go_and_a_retry_of_the_newest_is_replayed(
        api) -> None:
    client, cp = api
    cp.idempotency.kept_bytes = 2000
    writer = _bearer(cp, "busy", Role.DEPLOYER)

    def make(name: str, key: str):
        return client.post("/experiments", json={"name": name, "description": "d" * 300},
                           headers={**writer, "idempotency-key": key})

    answers = [make(f"exp-{n}", f"make-{n:04d}") for n in range(12)]
    assert [a.status_code for a in answers] == [201] * 12
    with cp.db.session(readonly=True) as session:
        held = session.scalar(select(func.sum(func.length(RequestReplyRow.body))).where(
            RequestReplyRow.scope == "busy"))
    assert held <= 2000
    # A retry of a recent call is replayed its answer (a client whose answer was lost).
    again = make("exp-11", "make-0011")
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == answers[11].json()
    # The oldest answer went: asked again that late, the call is judged again.
    late = make("exp-0", "make-0000")
    assert late.status_code == 409 and late.json()["code"] == "already_exists"
