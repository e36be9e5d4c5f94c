"""`train submit` against a control plane from before token models: the job's token is
minted without one rather than the submission failing. The control plane here is an HTTP
handler answering as such a control plane does (its schema refuses the unknown field)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from modelplane.settings import reset_settings_cache
from tests.json_http import JsonHandler, serving
from training.job_token import mint_job_token

TOKEN_INFO = {"name": "", "prefix": "mp_abcd", "role": "trainer", "subject": "alice",
              "created_by": "alice", "created_at": "2026-12-02T00:00:00Z", "expires_at": None,
              "revoked_at": None, "last_used_at": None}


class OlderControlPlane(JsonHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        if "model" in body:
            self.answer(422, {"error": "model: Extra inputs are not permitted",
                              "code": "validation_error", "request_id": "r1",
                              "detail": {"fields": ["model"]}})
        else:
            self.answer(201, {"token": "mp_secret", "info": {**TOKEN_INFO, "name": body["name"]}})


@pytest.fixture
def older_control_plane(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[OlderControlPlane]]:
    OlderControlPlane.bodies = []
    with serving(OlderControlPlane) as url:
        monkeypatch.setenv("MODELPLANE_URL", url)
        monkeypatch.setenv("MODELPLANE_TOKEN", "mp_deployer")
        reset_settings_cache()
        try:
            yield OlderControlPlane
        finally:
            reset_settings_cache()


def test_a_control_plane_from_before_token_models_still_gets_the_job_its_token(
        older_control_plane: type[OlderControlPlane]) -> None:
    token = mint_job_token("churn-exp", model="churn", lifetime_minutes=30)
    assert token.secret == "mp_secret"
    asked = older_control_plane.bodies
    assert [body.get("model") for body in asked] == ["churn", None] and len(asked) == 2
    assert asked[1]["role"] == "trainer" and asked[1]["expires_in_minutes"] == 30
