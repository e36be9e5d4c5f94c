"""Alert summary templates: only named fields, refused when saved, rendered without raising."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from control_plane.alerts import AlertService
from control_plane.alerts.schemas import AlertRuleSpec
from control_plane.alerts.templates import render_template, template_problem
from control_plane.store import Database
from serving.monitoring import VersionSnapshot
from tests.snapshots import drifting

BOMBS = ["{endpoint:>999999999}", "{endpoint.x}", "{endpoint!r}", "{0}", "{endpoint[0]}", "{}",
         "{endpoint:{version}}", "{__class__}", "unclosed {endpoint", "stray } brace"]


def rule(**overrides: Any) -> dict[str, Any]:
    return {"name": "input-drift", "metric": "drift", "comparison": "==", "threshold": 1,
            "every_s": 1, **overrides}


@pytest.mark.parametrize("template", BOMBS)
def test_a_template_beyond_named_fields_is_refused_naming_the_field(template: str) -> None:
    with pytest.raises(ValidationError) as raised:
        AlertRuleSpec(**rule(summary=template))
    [error] = raised.value.errors()
    assert error["loc"] == ("summary",)
    assert template_problem(template) in error["msg"]


def test_named_fields_and_literal_braces_are_accepted_and_rendered() -> None:
    template = "{endpoint} v{version}: {metric}={value} {comparison} {threshold} {{raw}} {details}"
    assert template_problem(template) is None
    spec = AlertRuleSpec(**rule(summary=template))
    fields = {"endpoint": "churn", "version": "2", "metric": "drift", "value": "1",
              "comparison": "==", "threshold": "1", "details": "income"}
    assert render_template(spec.summary, fields) == "churn v2: drift=1 == 1 {raw} income"


@pytest.mark.parametrize("template", BOMBS)
def test_rendering_a_bad_template_never_raises(template: str) -> None:
    assert render_template(template, {"endpoint": "churn", "version": "1"}) is None


def test_rendering_is_bounded_in_size() -> None:
    rendered = render_template("{details}" * 250, {"details": "x" * 1000})
    assert rendered is not None and len(rendered) == 2000


class Drifting:
    def __call__(self, endpoint: str, window_s: float) -> dict[int, VersionSnapshot]:
        return {1: drifting("drift", ["income"])}


@pytest.mark.parametrize("template", ["{endpoint:>999999999}", "{endpoint.x}", "{0}"])
def test_a_stored_rule_with_a_bad_template_still_evaluates_with_the_default_summary(
        db: Database, template: str) -> None:
    # As a rule saved before templates were checked: stored without validation.
    service = AlertService(db)
    try:
        service.store.put_rule(AlertRuleSpec.model_construct(**AlertRuleSpec(**rule()).model_dump()
                                                             | {"summary": template}), "alice")
        assert [r.summary for r in service.rules()] == [template]  # still listed, not a 500
        assert service.evaluate(Drifting(), lambda: ["churn"], now=0.0) == 1
        [alert] = service.active()
        assert alert.state == "firing"
        assert alert.summary == "churn v1: drift = 1 (== 1); drifted: income"
    finally:
        service.stop()


@pytest.fixture
def api(settings) -> Any:
    from control_plane.api import build_standalone_app
    from control_plane.service import ControlPlane

    cp = ControlPlane.start(settings)
    with TestClient(build_standalone_app(cp),
                    headers={"authorization": f"Bearer {cp.new_admin_token}"}) as client:
        yield client
    cp.close()


@pytest.mark.parametrize("template", ["{endpoint:>999999999}", "{endpoint.x}", "{endpoint!r}",
                                      "{0}", "{endpoint[0]}"])
def test_the_api_answers_a_template_bomb_with_a_4xx_naming_the_field(api, template) -> None:
    response = api.put("/api/alerts/rules/bomb", json=rule(name="bomb", summary=template))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"]["fields"] == ["summary"] and body["error"].startswith("summary: ")
    assert api.get("/api/alerts/rules").json() == []
    assert api.get("/api/health").status_code == 200
