"""The authorization matrix over real HTTP, on Ray + Serve: the control plane's routes
(from the OpenAPI document the running app serves) and the data plane's /v2 routes of a
deployed endpoint and of the inference server, each called anonymously, as every role and
with a revoked token, and answered as its declared rule says.

The rules are declared in control_plane/api/access.py (control plane) and serving/access.py
(data plane); tests/unit/... check that every route the applications have is declared.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from control_plane.api.access import ROUTE_ACCESS, route_key
from control_plane.auth import Principal
from control_plane.errors import PermissionDeniedError
from control_plane.schemas import Role
from serving.access import ANYONE, ENDPOINT_ROUTES, LABEL_SOURCE, SERVER_ROUTES
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.unit.control_plane.test_route_access_matrix import _concrete

ENDPOINT = "matrix"
INFER_BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                          "data": [5.1, 3.5, 1.4, 0.2]}]}


@dataclass(frozen=True)
class Caller:
    label: str
    token: str | None
    role: Role | None
    revoked: bool = False

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


@pytest.fixture(scope="module")
def served(platform: Platform) -> list[Caller]:
    """An endpoint to call, and a caller of every kind."""
    with platform.client() as client:
        client.register_version("matrix-iris", linear_classifier(seed=4), linear_classifier_manifest())
        client.deploy(ENDPOINT, "matrix-iris:1")
        callers = [Caller("anonymous", None, None)]
        for role in Role:
            created = client.create_token(f"imatrix-{role.value}", role, expires_in_days=1)
            callers.append(Caller(role.value, created.token, role))
        revoked = client.create_token("imatrix-revoked", Role.ADMIN)
        client.revoke_token("imatrix-revoked")
        callers.append(Caller("revoked admin", revoked.token, None, revoked=True))
    platform.wait_endpoint(ENDPOINT, {1})
    return callers


def _at_least(role: Role, least: Role) -> bool:
    try:
        Principal("probe", role).require(least)
    except PermissionDeniedError:
        return False
    return True


def test_control_plane_routes_over_http(platform: Platform, served: list[Caller]) -> None:
    document = httpx.get(f"{platform.url}/api/openapi.json", timeout=30).json()
    wrong: list[str] = []
    with httpx.Client(base_url=f"{platform.url}/api", timeout=60) as http:
        for path, operations in sorted(document["paths"].items()):
            for method in operations:
                key = route_key(method, path)
                rule = ROUTE_ACCESS.get(key)
                if rule is None:
                    wrong.append(f"{key}: no rule in control_plane/api/access.py")
                    continue
                for caller in served:
                    kwargs = ({"json": {}} if method.upper() in {"POST", "PUT", "PATCH"} else {})
                    if key == "POST /artifacts":
                        kwargs = {"content": b"matrix"}
                    status = http.request(method.upper(), _concrete(path), headers=caller.headers(),
                                          **kwargs).status_code
                    if rule.role is None:
                        expected = "allowed"
                    elif caller.revoked:
                        expected = "401"
                    elif caller.role is None:
                        expected = "allowed" if rule.anonymous_allowed(platform.settings) else "401"
                    else:
                        expected = "allowed" if rule.allows(caller.role) else "403"
                    refused = {401} if rule.finer else {401, 403}
                    ok = (status not in refused and status < 500) if expected == "allowed" \
                        else status == int(expected)
                    if not ok:
                        wrong.append(f"{key} as {caller.label}: {status}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_data_plane_routes_over_http(platform: Platform, served: list[Caller]) -> None:
    tables = [(f"/v2/models/{ENDPOINT}", ENDPOINT_ROUTES), ("/v2", SERVER_ROUTES)]
    wrong: list[str] = []
    for prefix, table in tables:
        for key, rule in sorted(table.items()):
            method, path = key.split(" ", 1)
            method = "GET" if method == "ANY" else method
            url = f"{platform.url}{prefix}{path.replace('{version}', '1')}"
            body = INFER_BODY if path.endswith("/infer") else {"feedback": []}
            for caller in served:
                response = httpx.request(method, url, headers=caller.headers(), timeout=60,
                                         json=body if method == "POST" else None)
                status = response.status_code
                if rule == ANYONE:
                    ok = status not in {401, 403} and status < 500
                    expected = "allowed"
                else:
                    assert rule == LABEL_SOURCE, f"{key}: unknown rule {rule!r}"
                    if caller.revoked or caller.role is None:
                        expected = "401"  # feedback is not opened to anonymous callers here
                    else:
                        expected = "allowed" if _at_least(caller.role, Role.LABELER) else "403"
                    ok = (status not in {401, 403} and status < 500) if expected == "allowed" \
                        else status == int(expected)
                if not ok:
                    wrong.append(f"{key} as {caller.label}: {status} {response.text[:120]}, "
                                 f"expected {expected}")
    assert not wrong, "\n".join(wrong)
