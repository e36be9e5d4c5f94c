"""Ready means the replica answers on its own listener: through Serve's fallback proxy (the
moment after it starts, before the ingress sends to it directly) a replica whose lean
ingress is on says not ready, and still answers inferences."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from starlette.requests import Request

from serving.endpoint import WARMING, EndpointServer
from tests.unit.serving.test_core import make_core, triton_body


def _call(server: EndpointServer, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    async def call() -> tuple[int, dict]:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": method, "path": path, "root_path": "",
                 "query_string": b"", "headers": [(b"content-length", str(len(body)).encode())]}
        response = await server(Request(scope, receive))
        return response.status_code, json.loads(response.body)
    return asyncio.run(call())


def _server(lean: bool) -> EndpointServer:
    server = EndpointServer()
    server.core = make_core({1: 100.0})
    server._lean = SimpleNamespace(app=SimpleNamespace(reached=False)) if lean else None
    return server


def test_through_the_fallback_a_lean_replica_is_not_ready_yet() -> None:
    status, answer = _call(_server(lean=True), "GET", "/v2/models/iris/ready")
    assert status == 503 and answer == {"name": "iris", "ready": False, "warming": True,
                                        "error": WARMING}
    status, _ = _call(_server(lean=True), "GET", "/v2/models/iris/versions/1/ready")
    assert status == 503


def test_through_the_fallback_a_lean_replica_still_answers_inferences() -> None:
    body, _ = triton_body(rows=1)
    status, answer = _call(_server(lean=True), "POST", "/v2/models/iris/infer", body)
    assert status == 200 and answer["model_version"] == "1"
    status, answer = _call(_server(lean=True), "GET", "/v2/models/iris")
    assert status == 200 and answer["name"] == "iris"


def test_without_the_lean_ingress_serves_own_path_is_the_ready_one() -> None:
    status, answer = _call(_server(lean=False), "GET", "/v2/models/iris/ready")
    assert status == 200 and answer == {"name": "iris", "ready": True}


def test_once_reached_directly_a_replica_stays_ready_through_a_reconfigure() -> None:
    # Serve takes a replica out of HAProxy while it reconfigures (a version added): the
    # ingress's fallback reaches it then, and the endpoint has not stopped being ready.
    server = _server(lean=True)
    server._lean.app.reached = True
    status, answer = _call(server, "GET", "/v2/models/iris/ready")
    assert status == 200 and answer == {"name": "iris", "ready": True}


def test_only_a_request_of_the_endpoint_on_the_lean_path_counts_as_reached() -> None:
    from serving.lean_ingress import EndpointApp
    from tests.unit.serving.test_lean_http import Holder, healthy

    app = EndpointApp(Holder(make_core({1: 100.0})), "/v2/models/iris", "endpoint-iris", healthy)
    asyncio.run(app.call("GET", "/-/healthz", {}, b""))  # HAProxy checks before it sends
    assert not app.reached
    asyncio.run(app.call("GET", "/v2/models/iris/ready", {}, b""))
    assert app.reached
