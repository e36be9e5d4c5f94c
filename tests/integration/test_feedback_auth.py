"""The replica's feedback check against a real control plane over HTTP (no Ray needed):
roles from `GET /api/whoami`, answers cached by token hash for a TTL, closed when the
control plane cannot be reached."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from control_plane.client import Client
from serving.errors import AuthorityUnavailableError, ForbiddenError, UnauthenticatedError
from serving.feedback_auth import FeedbackAuthorizer
from tests.servers import ControlPlaneProcess

pytestmark = pytest.mark.no_ray


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def patient_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica gives up on the control plane after 3 s; a loaded test host's control
    plane may take that long to answer a whoami, which is not what these tests judge."""
    from serving import feedback_auth

    monkeypatch.setattr(feedback_auth, "CHECK_TIMEOUT_S", 30.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("feedback-auth") / "home").start()
    yield process
    process.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_roles_from_labeler_up_may_post_and_the_rest_may_not(server: ControlPlaneProcess) -> None:
    with Client(server.url, server.admin_token) as admin:
        tokens = {role: admin.create_token(f"role-{role}", role).token
                  for role in ("reader", "trainer", "labeler", "deployer", "approver")}
    check = FeedbackAuthorizer(server.url)
    for role in ("labeler", "deployer", "approver"):
        assert asyncio.run(check.check(bearer(tokens[role]), "fraud")) == f"role-{role}"
    assert asyncio.run(check.check(bearer(server.admin_token), "fraud")) == "admin"
    for role in ("reader", "trainer"):
        with pytest.raises(ForbiddenError, match="needs labeler or higher"):
            asyncio.run(check.check(bearer(tokens[role]), "fraud"))
    with pytest.raises(UnauthenticatedError, match="not known"):
        asyncio.run(check.check(bearer("mp_made-up"), "fraud"))


def test_a_labeler_token_limited_to_one_endpoint_posts_to_it_and_no_other(
        server: ControlPlaneProcess) -> None:
    with Client(server.url, server.admin_token) as admin:
        fraud = admin.create_token("fraud-labels", "labeler", endpoint="fraud")
        anywhere = admin.create_token("any-labels", "labeler").token
        refused = httpx.post(f"{server.url}/api/tokens", headers=bearer(server.admin_token),
                             json={"name": "deployer-on-fraud", "role": "deployer",
                                   "endpoint": "fraud"})
        assert refused.status_code == 422
        assert "only a labeler token is limited to one endpoint" in refused.text
        assert [t.endpoint for t in admin.list_tokens() if t.name == "fraud-labels"] == ["fraud"]
    assert fraud.info.endpoint == "fraud"
    with Client(server.url, fraud.token) as labeler:
        assert labeler.whoami() == {"name": "fraud-labels", "role": "labeler", "endpoint": "fraud"}
    check = FeedbackAuthorizer(server.url)
    assert asyncio.run(check.check(bearer(fraud.token), "fraud")) == "fraud-labels"
    for other in ("churn", "fraud-v2", "Fraud"):
        with pytest.raises(ForbiddenError, match="for endpoint 'fraud' only") as refused:
            asyncio.run(check.check(bearer(fraud.token), other))
        assert refused.value.http_status == 403 and refused.value.detail["endpoint"] == "fraud"
    assert check.checks == 1  # the scope comes with the cached answer: refused without asking
    assert asyncio.run(check.check(bearer(anywhere), "churn")) == "any-labels"  # named none: any


def test_answers_are_cached_for_a_ttl_so_a_revoked_token_stops_within_it(
        server: ControlPlaneProcess) -> None:
    with Client(server.url, server.admin_token) as admin:
        token = admin.create_token("short-lived-labeler", "labeler").token
        clock = Clock()
        check = FeedbackAuthorizer(server.url, ttl_s=10, clock=clock)
        for _ in range(5):
            asyncio.run(check.check(bearer(token), "fraud"))
        assert check.checks == 1  # one call to the control plane for five posts
        admin.revoke_token("short-lived-labeler")
    clock.now = 9.0
    asyncio.run(check.check(bearer(token), "fraud"))  # still cached
    clock.now = 10.5
    with pytest.raises(UnauthenticatedError, match="revoked"):
        asyncio.run(check.check(bearer(token), "fraud"))
    assert check.checks == 2


def test_no_token_is_a_401_unless_the_operator_opened_feedback(server: ControlPlaneProcess) -> None:
    with pytest.raises(UnauthenticatedError, match="MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS"):
        asyncio.run(FeedbackAuthorizer(server.url).check({}, "fraud"))
    opened = FeedbackAuthorizer(server.url, allows_anonymous=True)
    assert asyncio.run(opened.check({}, "fraud")) == "anonymous"
    assert asyncio.run(opened.check(bearer("mp_made-up"), "fraud")) == "anonymous"  # open: not checked
    assert opened.checks == 0


def test_a_control_plane_that_cannot_be_reached_fails_closed(tmp_path) -> None:
    process = ControlPlaneProcess(tmp_path / "home").start()
    check = FeedbackAuthorizer(process.url)
    admin_token = process.admin_token
    assert asyncio.run(check.check(bearer(admin_token), "fraud")) == "admin"
    process.stop()
    with pytest.raises(AuthorityUnavailableError) as raised:
        asyncio.run(FeedbackAuthorizer(process.url).check(bearer(admin_token), "fraud"))
    assert raised.value.http_status == 503 and "did not answer" in raised.value.message
    assert raised.value.detail["cause"] == "control plane unreachable"
