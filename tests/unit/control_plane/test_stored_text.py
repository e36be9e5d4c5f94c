"""Text and times a request writes into the store, on a real control plane behind its REST
app: what no store can hold (a NUL, which PostgreSQL refuses; a lone surrogate, which no
driver encodes; a time without its zone, or out of range in UTC) is a 422 naming the field,
where it was stored on SQLite, refused on PostgreSQL without a field, or a 500. Nothing is
written, and the API keeps answering."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.auth import Principal
from control_plane.schemas import Role, TokenCreate

ROOT = Principal("text-root", Role.ADMIN)


@pytest.fixture
def api(served_api: Any) -> Any:
    client, cp = served_api()
    token = cp.tokens.create(TokenCreate(name="writer", role=Role.ADMIN), ROOT).token
    client.headers["authorization"] = f"Bearer {token}"
    return client, cp


def post(client: Any, path: str, body: dict[str, Any], method: str = "POST") -> Any:
    """``body`` sent as JSON escapes every non-ASCII character: a lone surrogate goes as
    ``\\ud800``, as any JSON library may send it (it cannot be sent as UTF-8)."""
    return client.request(method, path, content=json.dumps(body).encode(),
                          headers={"content-type": "application/json"})


def refused(answer: Any, field: str, words: str) -> None:
    """A 422 naming ``field``, saying ``words`` (a lone surrogate is refused in pydantic's
    words where the field has a length, in ours elsewhere)."""
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert field in body["error"] and words in body["error"], body


@pytest.mark.parametrize(("text", "words"), [("a\x00b", "a NUL character"),
                                             ("half \ud800 a pair", "")])
def test_text_no_store_can_hold_is_refused_naming_the_field(api: Any, text: str,
                                                            words: str) -> None:
    client, _ = api
    refused(post(client, "/models", {"name": "m", "description": text}), "description", words)
    refused(post(client, "/experiments", {"name": "e", "description": text}), "description", words)
    refused(post(client, "/runs", {"experiment": "e", "name": text}), "name", words)
    refused(post(client, "/alerts/events", {"name": "note", "summary": text}), "summary", words)
    refused(post(client, "/alerts/events", {"name": "note", "labels": {"endpoint": text}}),
            "labels", words)
    refused(post(client, "/alerts/rules/r", {"name": "r", "metric": "error_rate", "threshold": 1,
                                             "summary": text}, method="PUT"), "summary", words)
    assert client.get("/models").json()["items"] == []
    assert client.get("/experiments").json()["items"] == []
    # A pair of surrogates is one character sent escaped, not a lone one: it is text.
    kept = post(client, "/models", {"name": "m", "description": "ok \U0001F600 \u00e9"})
    assert kept.status_code == 201, kept.text
    assert client.get("/models/m").json()["description"] == "ok \U0001F600 \u00e9"


def test_a_metric_s_time_needs_its_zone_and_must_fit_in_utc(api: Any) -> None:
    client, _ = api
    run = client.post("/runs", json={"experiment": "e"})
    assert run.status_code == 201, run.text
    metrics = f"/runs/{run.json()['id']}/metrics"

    def log(timestamp: str) -> Any:
        return client.post(metrics, json={"metrics": [{"key": "loss", "value": 0.5,
                                                       "timestamp": timestamp}]})

    refused(log("2026-01-01T00:00:00"), "timestamp", "timezone")
    refused(log("0001-01-01T00:00:00+05:00"), "timestamp", "out of range")
    refused(client.post(metrics, json={"metrics": [{"key": "lo\x00ss", "value": 0.5}]}),
            "key", "a NUL character")
    assert log("2026-01-01T05:00:00+05:00").status_code == 201
    points = client.get(f"/runs/{run.json()['id']}/metrics/loss").json()
    assert [p["timestamp"] for p in points] == ["2026-01-01T00:00:00Z"], points
