"""The authorization matrix: every route of the control plane's app, every kind of caller.

Routes come from the application itself (its OpenAPI document and its other routes), not
from a list kept here: a new route without a rule in control_plane/api/access.py fails.
Each route is called anonymously, with a revoked token and with a token of every role, on
a real control plane (SQLite file, artifact folder) with reads open and with reads
requiring a token, and each answer is checked against the route's declared rule:

- refused callers get 401 (no valid token where one is needed) or 403 (role too low);
- allowed callers get past authorization: neither 401 nor 403 (a route whose service
  decides more finely, ``finer`` in the table, may still answer 403 to some), and never
  a 500, whatever the dummy path and body make of the call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from control_plane.api.access import ROUTE_ACCESS, Access, route_key
from control_plane.schemas import Role, TokenCreate
from modelplane.settings import Settings

# Path parameters get values that parse (so the call reaches its handler) but name nothing.
PARAMETER_VALUES = {"digest": "0" * 64, "version": "1", "rollout_id": "1"}
DEFAULT_VALUE = "matrix-probe"


@dataclass(frozen=True)
class Caller:
    label: str
    token: str | None
    role: Role | None  # None: anonymous or revoked
    revoked: bool = False


@dataclass
class Matrix:
    client: TestClient
    cp: object
    callers: list[Caller]


@pytest.fixture
def matrix(tmp_path: Path) -> Iterator[Matrix]:
    from control_plane.api import build_api
    from control_plane.auth import Principal
    from control_plane.service import ControlPlane

    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")})
    cp = ControlPlane.start(settings)
    root = Principal("matrix-root", Role.ADMIN)
    callers = [Caller("anonymous", None, None)]
    for role in Role:
        # Trainer tokens must expire; any token may.
        created = cp.tokens.create(TokenCreate(name=f"matrix-{role.value}", role=role,
                                               expires_in_days=1), root)
        callers.append(Caller(role.value, created.token, role))
    revoked = cp.tokens.create(TokenCreate(name="matrix-revoked", role=Role.ADMIN), root)
    cp.tokens.revoke("matrix-revoked", root)
    callers.append(Caller("revoked admin", revoked.token, None, revoked=True))
    client = TestClient(build_api(cp), raise_server_exceptions=False)
    try:
        yield Matrix(client, cp, callers)
    finally:
        client.close()
        cp.close()


def app_routes(app: object) -> dict[str, str]:
    """``"METHOD /path"`` → a concrete URL, for every route the app serves."""
    found: dict[str, str] = {}
    for path, operations in app.openapi()["paths"].items():  # type: ignore[attr-defined]
        for method in operations:
            found[route_key(method, path)] = _concrete(path)
    # Routes outside the OpenAPI document: the document itself and its viewers, and any
    # API route hidden from it.
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Route | APIRoute) and getattr(route, "include_in_schema", True) is False:
            for method in route.methods or ():
                if method != "HEAD":
                    found[route_key(method, route.path)] = _concrete(route.path)
    return found


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}",
                  lambda m: PARAMETER_VALUES.get(m.group(1), DEFAULT_VALUE), path)


def test_every_route_declares_who_may_call_it(matrix: Matrix) -> None:
    routes = app_routes(matrix.client.app)
    assert len(routes) > 50  # the enumeration really sees the app's routes
    undeclared = sorted(set(routes) - set(ROUTE_ACCESS))
    assert not undeclared, (
        f"routes without an access rule: {undeclared}. Declare each in "
        "control_plane/api/access.py, ROUTE_ACCESS: add '\"METHOD /path\": RULE' with one of "
        "PUBLIC, READ, TOKEN, TRAIN, DEPLOY, APPROVE, ADMIN or a new Access(...)")
    stale = sorted(set(ROUTE_ACCESS) - set(routes))
    assert not stale, f"ROUTE_ACCESS declares routes the app does not have: {stale}; remove them"


@pytest.mark.parametrize("reads_require_token", [False, True])
def test_every_route_answers_every_caller_as_declared(matrix: Matrix,
                                                      reads_require_token: bool) -> None:
    cp = matrix.cp
    cp.settings = cp.settings.with_overrides(reads_require_token=reads_require_token)  # type: ignore[attr-defined]
    routes = app_routes(matrix.client.app)
    wrong: list[str] = []
    for key, url in sorted(routes.items()):
        rule = ROUTE_ACCESS[key]
        method = key.split(" ", 1)[0]
        for caller in matrix.callers:
            status = _call(matrix.client, method, url, caller)
            expected = _expected(rule, caller, cp.settings)  # type: ignore[attr-defined]
            if not _matches(expected, status, rule):
                wrong.append(f"{key} as {caller.label}: {status}, expected {expected} "
                             f"({rule.label or rule})")
    assert not wrong, "\n".join(wrong)


def test_an_undeclared_route_is_refused_to_everyone(matrix: Matrix) -> None:
    """Fail closed: a route someone forgot to declare answers nobody, admins included."""
    app = matrix.client.app

    @app.get("/matrix-undeclared")  # type: ignore[attr-defined]
    def undeclared() -> dict[str, str]:
        return {"leaked": "yes"}

    for caller in matrix.callers:
        response = matrix.client.get("/matrix-undeclared", headers=_headers(caller))
        assert response.status_code == 403, (caller.label, response.text)
        assert "control_plane/api/access.py" in response.json()["error"]


def _headers(caller: Caller) -> dict[str, str]:
    return {"authorization": f"Bearer {caller.token}"} if caller.token else {}


def _call(client: TestClient, method: str, url: str, caller: Caller) -> int:
    headers = _headers(caller)
    if method in {"POST", "PUT", "PATCH"}:
        if url == "/artifacts":
            headers = {**headers, "content-type": "application/octet-stream"}
            return client.request(method, url, headers=headers, content=b"matrix").status_code
        return client.request(method, url, headers=headers, json={}).status_code
    return client.request(method, url, headers=headers).status_code


def _expected(rule: Access, caller: Caller, settings: Settings) -> str:
    if rule.role is None:
        return "allowed"
    if caller.revoked:
        return "401"
    if caller.role is None:
        return "allowed" if rule.anonymous_allowed(settings) else "401"
    return "allowed" if rule.allows(caller.role) else "403"


def _matches(expected: str, status: int, rule: Access) -> bool:
    if expected == "allowed":
        refused = {401} if rule.finer else {401, 403}
        return status not in refused and status < 500
    return status == int(expected)


def test_token_lookups_run_off_the_event_loop(matrix: Matrix,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The access dependencies are coroutines (no thread-pool round trip per call), so the
    store read behind a token must be handed to the pool: on the loop, a slow store would
    stall every call in the process."""
    import asyncio

    tokens = matrix.cp.tokens  # type: ignore[attr-defined]
    authenticate = tokens.authenticate
    on_loop: list[bool] = []

    def recording(secret: str):  # type: ignore[no-untyped-def]
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return authenticate(secret)

    monkeypatch.setattr(tokens, "authenticate", recording)
    admin = next(c for c in matrix.callers if c.role is Role.ADMIN)
    headers = {"authorization": f"Bearer {admin.token}"}
    assert matrix.client.get("/models", headers=headers).status_code == 200
    assert matrix.client.post("/tokens", headers=headers,
                              json={"name": "loop-probe", "role": "reader"}).status_code == 201
    assert matrix.client.get("/health").status_code == 200
    assert on_loop and not any(on_loop), on_loop


def _asgi_post(app: object, path: str, headers: dict[str, str]) -> tuple[int, dict[str, object], int]:
    """POST straight through ASGI with a body of 64 chunks of 64 KiB: (status, body, how
    many chunks the app asked for)."""
    import asyncio
    import json

    asked, sent = 0, []

    async def receive() -> dict[str, object]:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": b"[" * 65536, "more_body": asked < 64}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 5000),
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    return int(start["status"]), json.loads(body), asked  # type: ignore[arg-type]


def test_a_call_its_rule_refuses_is_refused_before_its_body_is_read(matrix: Matrix) -> None:
    """FastAPI reads and parses a body before any dependency runs: without this refusal an
    anonymous caller's body of any size was held and parsed by the control plane (and a
    revoked or made-up token's, or a reader's)."""
    reader = next(c for c in matrix.callers if c.role == Role.READER)
    revoked = next(c for c in matrix.callers if c.revoked)
    callers = [({}, 401, "unauthenticated"), (_headers(revoked), 401, "unauthenticated"),
               ({"authorization": "Bearer mp_made-up"}, 401, "unauthenticated"),
               (_headers(reader), 403, "permission_denied")]
    for path in ("/models", "/runs", "/models/iris/versions"):
        for headers, status_expected, code in callers:
            status, body, asked = _asgi_post(matrix.client.app, path, {
                **headers, "content-type": "application/json", "content-length": str(10**12)})
            assert (status, body["code"], asked) == (status_expected, code, 0), (path, body)


def test_a_body_past_the_limit_is_refused_declared_or_streamed_and_an_upload_is_not(
        matrix: Matrix) -> None:
    from control_plane.api.call_gate import MAX_BODY_BYTES

    deployer = next(c for c in matrix.callers if c.role == Role.DEPLOYER)
    headers = {**_headers(deployer), "content-type": "application/json"}
    status, body, asked = _asgi_post(matrix.client.app, "/models", {
        **headers, "content-length": str(MAX_BODY_BYTES + 1)})
    assert (status, body["code"], asked) == (413, "payload_too_large", 0)
    assert body["detail"] == {"field": "body", "limit_bytes": MAX_BODY_BYTES}

    def chunks() -> Iterator[bytes]:  # no Content-Length: the count stops it
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    streamed = matrix.client.post("/models", headers=headers, content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["code"] == "payload_too_large"
    assert "4194304 bytes" in streamed.json()["error"]

    upload = b"\x01" * (MAX_BODY_BYTES + 1)  # an artifact streams to disk under its own limit
    answer = matrix.client.post("/artifacts", content=upload, headers={
        **_headers(deployer), "content-type": "application/octet-stream"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["size"] == len(upload)
    assert matrix.client.post("/models", headers=headers, json={"name": "small"}).status_code \
        in (201, 422)  # a body under the limit is judged by the route as before


def test_a_comparison_of_more_runs_than_one_call_may_read_names_the_limit(matrix: Matrix) -> None:
    from control_plane.api.routes_tracking import MAX_COMPARED_RUNS

    ids = ",".join(f"run-{n}" for n in range(MAX_COMPARED_RUNS + 1))
    answer = matrix.client.get(f"/runs/compare?ids={ids}")
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == {"field": "ids"} and "at most 50" in answer.json()["error"]


@pytest.mark.parametrize(("path", "field"), [
    ("/api/models/a%00b", "path"), ("/api/alerts/history?name=%00", "query"),
    ("/api/models/a%00b/versions", "path"),
])
def test_a_nul_character_is_refused_before_any_route_reads_it(
        matrix: Matrix, path: str, field: str) -> None:
    """PostgreSQL cannot compare a NUL: anyone's such call was a 500 with a traceback."""
    response = matrix.client.get(path)
    assert response.status_code == 400 and response.json()["detail"] == {"field": field}
    assert "NUL" in response.json()["error"]


def test_what_names_hosts_or_every_feature_is_not_for_anonymous_callers() -> None:
    """A training job's output (node addresses, process ids) was open to anyone, and the
    Prometheus scrape (every endpoint, model and feature) stayed open where reads require a
    token."""
    opened = Settings.from_env({})
    closed = Settings.from_env({"MODELPLANE_READS_REQUIRE_TOKEN": "true"})
    assert not ROUTE_ACCESS["GET /pipelines/{name}/runs/{number}/logs"].anonymous_allowed(opened)
    assert ROUTE_ACCESS["GET /metrics"].anonymous_allowed(opened)
    assert not ROUTE_ACCESS["GET /metrics"].anonymous_allowed(closed)
