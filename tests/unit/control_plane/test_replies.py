"""A client reads a newer control plane's answers: fields added since it was built are
read past, at any depth, while a missing or malformed field it knows is still an error.
The newer control plane here is an HTTP handler answering with real records plus fields
this client has never heard of."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from control_plane.client import Client
from control_plane.pipelines.records import PipelineRunOut
from control_plane.pipelines.service import Pipelines
from control_plane.pipelines.spec import parse_pipeline_spec
from control_plane.replies import read_replies, read_reply
from control_plane.schemas import TokenOut
from control_plane.store import Database
from tests.json_http import JsonHandler, serving
from tests.unit.control_plane.conftest import ALICE
from tests.unit.control_plane.test_pipeline_runner import Clock, all_passing, spec_document

TOKEN = {"name": "ci", "prefix": "mp_abcd", "role": "trainer", "subject": "alice",
         "model": None, "created_by": "alice", "created_at": "2026-12-02T00:00:00Z",
         "expires_at": None, "revoked_at": None, "last_used_at": None}


def newer_run(db: Database) -> dict[str, Any]:
    """A real run's answer, with fields from a future control plane at the top, in a
    nested list of records and in a nested document."""
    pipelines = Pipelines(db, all_passing(), now=Clock())
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    document = pipelines.start_run("bc", ALICE).model_dump(mode="json")
    document["cost_usd"] = 1.5
    document["stages"][0]["attempts"] = [{"at": "2026-12-02T00:00:00Z"}]
    return document


class NewerControlPlane(JsonHandler):
    answers: dict[str, Any] = {}

    def do_GET(self) -> None:
        payload = self.answers.get(self.path.split("?")[0])
        self.answer(200 if payload is not None else 404, payload)


@pytest.fixture
def newer_control_plane() -> Iterator[str]:
    with serving(NewerControlPlane) as url:
        yield url


def test_a_client_reads_past_fields_a_newer_control_plane_added(
        db: Database, newer_control_plane: str) -> None:
    run = newer_run(db)
    NewerControlPlane.answers = {
        "/api/tokens": [{**TOKEN, "scopes": ["models:write"]}, TOKEN],
        "/api/pipelines/bc/runs/latest": run,
        "/api/pipelines/bc/runs": [run],
    }
    with Client(newer_control_plane, "mp_token") as client:
        tokens = client.list_tokens()
        assert [t.subject for t in tokens] == ["alice", "alice"] and tokens[0].role.value == "trainer"
        latest = client.pipeline_run("bc")
        assert latest.pipeline == "bc" and latest.stages[0].name == "validate_data"
        assert [r.number for r in client.pipeline_runs("bc")] == [latest.number]


def test_fields_the_client_knows_are_still_checked(db: Database) -> None:
    with pytest.raises(ValidationError, match="subject"):
        read_reply(TokenOut, {k: v for k, v in TOKEN.items() if k != "subject"} | {"new": 1})
    with pytest.raises(ValidationError, match="role"):
        read_reply(TokenOut, {**TOKEN, "role": "overlord", "new": 1})
    run = newer_run(db)
    run["stages"][1]["state"] = 7
    with pytest.raises(ValidationError, match="state"):
        read_reply(PipelineRunOut, run)
    with pytest.raises(TypeError, match="expected a list of TokenOut"):
        read_replies(TokenOut, TOKEN)


def test_an_answer_is_read_without_changing_it(db: Database) -> None:
    run = newer_run(db)
    before = json.dumps(run, sort_keys=True)
    assert read_reply(PipelineRunOut, run).stages[0].name == "validate_data"
    assert json.dumps(run, sort_keys=True) == before
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PipelineRunOut.model_validate(run)  # requests stay strict: the models themselves forbid


def test_a_union_of_models_is_not_trimmed_into_the_wrong_member() -> None:
    """A field one member of a union knows is "unknown" to another: leaving it out could
    read {"b": 5} as the other member with b lost, so such an answer is refused as before."""
    from pydantic import BaseModel, ConfigDict

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Small(Strict):
        a: int = 0

    class Big(Small):
        b: int = 0

    class Holder(Strict):
        value: Big | Small

    assert read_reply(Holder, {"value": {"a": 1, "b": 5}}).value == Big(a=1, b=5)
    with pytest.raises(ValidationError):
        read_reply(Holder, {"value": {"a": 1, "b": 5, "added_later": True}})
