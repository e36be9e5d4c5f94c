"""Every /v2 route the data plane answers is declared in serving/access.py.

The endpoint application's routes are enumerated from its dispatcher's own path pattern
(every literal segment it accepts, with and without a pinned version, under every
method); the inference server's from the paths it answers. A (method, path) counts as a
route unless the application says there is no such route (404) or refuses the method.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from serving.access import ENDPOINT_ROUTES, SERVER_ROUTES
from tests.unit.serving.test_core import make_core

METHODS = ("GET", "POST", "PUT", "DELETE")
# KServe v2 and Triton paths the server does not implement: each must answer 404.
UNIMPLEMENTED = ("/models", "/repository/index", "/health", "/metrics", "/trace/setting",
                 "/logging", "/systemsharedmemory/status", "/cudasharedmemory/status")


def _endpoint_path_literals() -> tuple[list[str], list[str]]:
    """The pinned-version prefixes and the actions the dispatcher's pattern accepts."""
    from serving.core import _PATH

    pattern = _PATH.pattern
    actions = re.search(r"\(\?P<action>([^)]*)\)", pattern)
    assert actions, f"the dispatcher's pattern changed shape: {pattern}; update this test"
    prefixes = [""] + (["/versions/1"] if "(?P<version>" in pattern else [])
    return prefixes, actions.group(1).split("|")


def _is_route(status: int, body: bytes) -> bool:
    if status == 404:
        return False
    if status in (400, 405):
        # The dispatcher refuses a wrong method by naming the right one.
        message = str(json.loads(body or b"{}").get("error", ""))
        return not re.search(r"must be POST|use GET", message)
    return True


def test_every_endpoint_route_is_declared() -> None:
    core = make_core({1: 100})
    prefixes, actions = _endpoint_path_literals()
    found: set[str] = set()
    for prefix in prefixes:
        for action in ["", *actions, "/not-a-route"]:
            for method in METHODS:
                result = asyncio.run(core.handle(method, prefix + action, {}, b"{}"))
                if _is_route(result.status, result.body):
                    found.add(f"{method} {(prefix + action).replace('/versions/1', '/versions/{version}')}")
    assert "POST /infer" in found and "GET " in found  # the probe sees real routes
    undeclared = sorted(found - set(ENDPOINT_ROUTES))
    assert not undeclared, (f"data-plane routes without an access rule: {undeclared}; declare "
                            "each in serving/access.py, ENDPOINT_ROUTES")
    assert not sorted(set(ENDPOINT_ROUTES) - found), "ENDPOINT_ROUTES declares missing routes"


@pytest.mark.parametrize("method", METHODS)
def test_every_server_route_is_declared(method: str) -> None:
    from starlette.requests import Request

    from serving.endpoint import InferenceServer

    server = InferenceServer()
    declared = {key.split(" ", 1)[1] for key in SERVER_ROUTES
                if key.split(" ", 1)[0] in (method, "ANY")}
    for path in sorted({"", "/health/live", "/health/ready", *UNIMPLEMENTED}):
        scope = {"type": "http", "method": method, "path": f"/v2{path}", "root_path": "",
                 "query_string": b"", "headers": []}
        response = asyncio.run(server(Request(scope)))
        answered = _is_route(response.status_code, response.body)
        assert answered == (path in declared), (method, path, response.status_code)
