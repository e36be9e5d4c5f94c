"""A change the store committed is answered as made, whatever Serve says at that moment:
the reconciler's next pass applies it. Answered 5xx, its caller would take it for undone,
and a retry would be refused (the rollback already made)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.auth import Principal
from control_plane.schemas import Role, TokenCreate, VersionCreate
from modelplane.settings import Settings
from tests.onnx_models import linear_classifier, linear_classifier_manifest


class UnreachableServe:
    """A reconciler whose Serve controller does not answer, until ``back``."""

    def __init__(self) -> None:
        self.back = False
        self.applied: list[str | None] = []

    def reconcile(self, endpoint: str | None = None) -> None:
        if not self.back:
            raise ConnectionError("Serve's controller did not answer")
        self.applied.append(endpoint)

    def reconcile_pending(self) -> None:
        return None

    def states(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[SimpleNamespace]:
    from control_plane.api import build_api
    from control_plane.service import ControlPlane

    cp = ControlPlane.start(Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")}))
    serve = UnreachableServe()
    cp.reconciler = serve
    root = Principal("root", Role.ADMIN)
    token = cp.tokens.create(TokenCreate(name="deployer", role=Role.DEPLOYER), root).token
    for seed in range(2):
        digest = cp.registry.artifacts.put([linear_classifier(seed=seed)]).digest
        cp.registry.register_version("iris", VersionCreate(
            artifact_digest=digest, manifest=linear_classifier_manifest()), root)
    client = TestClient(build_api(cp), raise_server_exceptions=False,
                        headers={"authorization": f"Bearer {token}"})
    try:
        yield SimpleNamespace(cp=cp, serve=serve, client=client)
    finally:
        client.close()
        cp.close()


def test_endpoint_and_rollout_changes_are_answered_as_made_while_serve_is_unreachable(
        plane: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    client, cp = plane.client, plane.cp
    deployed = client.post("/endpoints", json={"endpoint": "iris", "model_ref": "iris:1"})
    assert deployed.status_code == 201, deployed.text
    added = client.post("/endpoints", json={"endpoint": "iris", "model_ref": "iris:2"})
    assert added.status_code == 201, added.text
    traffic = client.put("/endpoints/iris/traffic", json={"weights": {"1": 100}})
    assert traffic.status_code == 200, traffic.text

    started = client.post("/rollouts", json={"endpoint": "iris", "model_ref": "iris:2"})
    assert started.status_code == 201, started.text
    rollout = started.json()["id"]
    aborted = client.post(f"/rollouts/{rollout}/abort", json={"reason": "by hand"})
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["state"] == "failed"
    # Aborted before its first step: the candidate never had a route, and is not given one.
    assert {r.version: r.weight for r in cp.deployments.get("iris").routes} == {1: 100.0}
    assert "the reconciler's next pass applies it" in caplog.text

    undeployed = client.delete("/endpoints/iris")
    assert undeployed.status_code == 204, undeployed.text
    assert client.get("/endpoints/iris").status_code == 404

    plane.serve.back = True  # and the reconciler's pass applies what was stored
    cp.apply()
    assert plane.serve.applied == [None]


def test_an_alias_move_asked_again_with_its_key_is_not_made_again(plane: SimpleNamespace) -> None:
    """A training job's move whose answer was lost, tried again after another job moved
    the alias on: with one key for its tries it is answered again, not made again."""
    first = plane.client.put("/models/iris/aliases/staging", json={"version": 1},
                             headers={"idempotency-key": "job-one-alias"})
    assert first.status_code == 200, first.text
    moved_on = plane.client.put("/models/iris/aliases/staging", json={"version": 2})
    assert moved_on.status_code == 200, moved_on.text
    again = plane.client.put("/models/iris/aliases/staging", json={"version": 1},
                             headers={"idempotency-key": "job-one-alias"})
    assert again.status_code == 200 and again.json()["version"] == 1
    aliases = plane.client.get("/models/iris").json()["aliases"]
    assert aliases["staging"] == 2, aliases


def test_an_answer_is_kept_before_its_caller_has_it(plane: SimpleNamespace) -> None:
    """A caller that has its answer and asks again at once is replayed it: the answer was
    kept only after it went out, so a quick caller was told the call was still running."""
    from sqlalchemy import select

    from control_plane.api import build_api
    from control_plane.store.models import RequestReplyRow

    kept_when_sent: list[int | None] = []
    api = build_api(plane.cp)

    async def looking_at_the_store(scope: Any, receive: Any, send: Any) -> None:
        async def sent(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                with plane.cp.db.session() as session:
                    kept_when_sent.append(session.scalar(
                        select(RequestReplyRow.status).where(RequestReplyRow.key == "quick-one")))
            await send(message)
        await api(scope, receive, sent)

    with TestClient(looking_at_the_store, raise_server_exceptions=False,
                    headers=dict(plane.client.headers)) as client:
        put = client.put("/models/iris/aliases/staging", json={"version": 1},
                         headers={"idempotency-key": "quick-one"})
        assert put.status_code == 200, put.text
    assert kept_when_sent == [200]


def test_a_change_applied_as_the_lead_passes_is_answered_as_made_and_left_to_the_holder(
        plane: SimpleNamespace) -> None:
    """The reconciler now refuses to touch Serve once the lead has passed; on an API call's
    thread that refusal reached the caller as a 500 for a change the store had made."""
    from control_plane.leadership import take_apply_requests
    from control_plane.store.database import FencedOut

    class LeadPassed(UnreachableServe):
        def reconcile(self, endpoint: str | None = None) -> None:
            raise FencedOut("this process no longer holds the control loops' lease")

    plane.cp.reconciler = LeadPassed()
    deployed = plane.client.post("/endpoints", json={"endpoint": "iris", "model_ref": "iris:1"})
    assert deployed.status_code == 201, deployed.text
    assert take_apply_requests(plane.cp.db) == {"iris"}  # asked of the holder instead
