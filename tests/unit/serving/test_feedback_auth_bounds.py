"""Made-up tokens cannot make a replica hammer the control plane, nor crowd out a label
source: checks of unknown tokens are bounded in flight, shared per token, and their
refusals are cached apart from accepted tokens. The control plane's `GET /api/whoami` is
an HTTP handler here that answers when the test lets it (a slow control plane)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from serving.errors import OverloadedError, UnauthenticatedError
from serving.feedback_auth import MAX_CACHED_TOKENS, MAX_UNKNOWN_CHECKS, FeedbackAuthorizer
from tests.unit.serving.monitoring_helpers import make_core

LABELER = "mp_labeler-secret"
FRAUD_LABELER = "mp_fraud-labeler-secret"  # limited to endpoint "fraud"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowAuthority:
    """whoami: the labeler is known, every other token is not; answers wait for ``open``."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.asked: list[str] = []
        self.waiting = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        self.asked.append(token)
        self.waiting += 1
        await self.open.wait()
        self.waiting -= 1
        if token == LABELER:
            return httpx.Response(200, json={"name": "labels", "role": "labeler"})
        if token == FRAUD_LABELER:
            return httpx.Response(200, json={"name": "fraud-labels", "role": "labeler",
                                             "endpoint": "fraud"})
        return httpx.Response(401, json={"error": "token not known"})


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _settle(authority: SlowAuthority, waiting: int) -> None:
    for _ in range(1000):  # up to 10 s: a loaded machine is slow to start the calls
        if authority.waiting >= waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{authority.waiting} checks reached the control plane, expected {waiting}")


def _authorizer(authority: SlowAuthority, clock: Clock) -> FeedbackAuthorizer:
    return FeedbackAuthorizer("http://control-plane", clock=clock, ttl_s=10,
                              transport=httpx.MockTransport(authority))


def test_made_up_tokens_are_checked_a_few_at_a_time_and_a_known_labeler_never_waits() -> None:
    async def scenario() -> None:
        authority, clock = SlowAuthority(), Clock()
        check = _authorizer(authority, clock)
        authority.open.set()
        assert await check.check(bearer(LABELER), "fraud") == "labels"
        authority.open.clear()
        clock.now = 11.0  # the labeler's answer has expired: it must be checked again
        flood = [asyncio.ensure_future(check.check(bearer(f"mp_made-up-{i}"), "fraud")) for i in range(40)]
        await _settle(authority, MAX_UNKNOWN_CHECKS)
        labeler = asyncio.ensure_future(check.check(bearer(LABELER), "fraud"))
        await _settle(authority, MAX_UNKNOWN_CHECKS + 1)  # asked at once, past the bound
        authority.open.set()
        outcomes = await asyncio.gather(*flood, return_exceptions=True)
        assert await labeler == "labels"
        overloaded = [o for o in outcomes if isinstance(o, OverloadedError)]
        refused = [o for o in outcomes if isinstance(o, UnauthenticatedError)]
        assert len(refused) == MAX_UNKNOWN_CHECKS and len(overloaded) == 40 - MAX_UNKNOWN_CHECKS
        assert overloaded[0].http_status == 503 and overloaded[0].detail["retry_after_s"] == 1
        assert len(authority.asked) == 1 + MAX_UNKNOWN_CHECKS + 1

    asyncio.run(scenario())


def test_callers_with_one_token_share_one_check() -> None:
    async def scenario() -> None:
        authority = SlowAuthority()
        check = _authorizer(authority, Clock())
        callers = [asyncio.ensure_future(check.check(bearer("mp_made-up"), "fraud")) for _ in range(30)]
        await _settle(authority, 1)
        authority.open.set()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(o, UnauthenticatedError) for o in outcomes)
        assert authority.asked == ["mp_made-up"]

    asyncio.run(scenario())


async def _sharing_one_check(authority: SlowAuthority) -> tuple[asyncio.Future[str], ...]:
    """Two callers with the labeler's token, the second waiting on the first's check."""
    check = _authorizer(authority, Clock())
    first = asyncio.ensure_future(check.check(bearer(LABELER), "fraud"))
    await _settle(authority, 1)
    second = asyncio.ensure_future(check.check(bearer(LABELER), "fraud"))
    await asyncio.sleep(0.05)
    return first, second


def test_a_cancelled_check_lets_the_callers_sharing_it_ask_again() -> None:
    async def scenario() -> None:
        authority = SlowAuthority()
        first, second = await _sharing_one_check(authority)
        first.cancel()  # its client went away mid-check
        await asyncio.sleep(0.05)
        authority.open.set()
        assert await second == "labels"
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(scenario())


def test_callers_cancelled_together_stay_cancelled_and_ask_nothing_more() -> None:
    async def scenario() -> None:
        authority = SlowAuthority()
        first, second = await _sharing_one_check(authority)
        first.cancel()
        second.cancel()  # in the same tick: the server is stopping
        for caller in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(caller, 5)  # not a fresh check of its own
        assert authority.asked == [LABELER]

    asyncio.run(scenario())


def test_a_flood_of_refusals_never_evicts_an_accepted_token() -> None:
    async def scenario() -> None:
        authority, clock = SlowAuthority(), Clock()
        authority.open.set()
        check = _authorizer(authority, clock)
        assert await check.check(bearer(LABELER), "fraud") == "labels"
        for index in range(MAX_CACHED_TOKENS + 500):
            with pytest.raises(UnauthenticatedError):
                await check.check(bearer(f"mp_made-up-{index}"), "fraud")
        asked = len(authority.asked)
        assert await check.check(bearer(LABELER), "fraud") == "labels"  # still cached: no call
        assert len(authority.asked) == asked

    asyncio.run(scenario())


def test_past_the_bound_the_feedback_route_answers_503_with_retry_after() -> None:
    async def scenario() -> list[Any]:
        authority = SlowAuthority()
        core = make_core(feedback_authorizer=_authorizer(authority, Clock()),
                         feedback_sink=lambda endpoint, items: None)
        body = json.dumps({"feedback": [{"request_id": "r", "label": 1}]}).encode()
        calls = [asyncio.ensure_future(core.handle("POST", "/feedback", bearer(f"mp_x{i}"), body))
                 for i in range(MAX_UNKNOWN_CHECKS + 1)]
        await _settle(authority, MAX_UNKNOWN_CHECKS)
        try:  # refused at once, not held until the control plane answers the others
            late = await asyncio.wait_for(asyncio.shield(calls[-1]), 5)
        finally:
            authority.open.set()
        return [late, *await asyncio.gather(*calls[:-1])]

    late, *refused = asyncio.run(scenario())
    assert late.status == 503 and late.headers.get("retry-after") == "1"
    assert "retry in 1s" in json.loads(late.body)["error"]
    assert {answer.status for answer in refused} == {401}


def test_a_label_source_of_another_endpoint_is_refused_and_its_labels_never_reach_the_monitor() -> None:
    received: list[tuple[str, Any]] = []

    async def scenario() -> list[Any]:
        authority = SlowAuthority()
        authority.open.set()

        async def sink(endpoint: str, items: Any) -> dict[str, Any]:
            received.append((endpoint, items))
            return {"accepted": len(items)}

        core = make_core(feedback_authorizer=_authorizer(authority, Clock()), feedback_sink=sink)
        body = json.dumps({"feedback": [{"request_id": "r", "label": 1}]}).encode()
        return [await core.handle("POST", "/feedback", bearer(token), body)
                for token in (FRAUD_LABELER, LABELER)]

    other, own = asyncio.run(scenario())  # the core serves endpoint "churn"
    assert other.status == 403
    assert "'fraud-labels' posts labels for endpoint 'fraud' only, not 'churn'" in \
        json.loads(other.body)["error"]
    assert own.status == 200
    assert [endpoint for endpoint, _ in received] == ["churn"]  # only the labeler for any


@pytest.mark.parametrize("token", ["é", "mp_\u00ff", "mp_a\tb"])
def test_a_token_of_other_characters_is_refused_without_asking(token: str) -> None:
    """A header byte past ASCII (read as latin-1) could not be sent on to the control
    plane: it answered 500 with a logged traceback, to anyone."""
    async def scenario() -> None:
        authority = SlowAuthority()
        authority.open.set()
        check = _authorizer(authority, Clock())
        with pytest.raises(UnauthenticatedError, match="must be `Bearer <token>`"):
            await check.check(bearer(token), "churn")
        assert authority.asked == []

    asyncio.run(scenario())
