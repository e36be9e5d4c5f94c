"""Schemathesis against the control plane's OpenAPI document: no input yields a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from control_plane.schemas import ErrorBody
from tests.servers import ControlPlaneProcess

pytestmark = pytest.mark.no_ray


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("fuzz") / "home").start()
    yield process
    process.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_makes_the_server_fail(server: ControlPlaneProcess, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")
    headers = {"authorization": f"Bearer {server.admin_token}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30

    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=12, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def exercise(case: schemathesis.Case) -> None:
            response = case.call(base_url=f"{server.url}/api", headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} → {response.status_code}: "
                                f"{response.text[:200]}")
            else:
                if response.status_code >= 400:
                    ErrorBody.model_validate(response.json())  # the one error body

        try:
            exercise()
        except Unsatisfiable:
            # Negative mode on an operation with no parameters: nothing to make invalid.
            assert mode == GenerationMode.NEGATIVE
    assert failures == []
