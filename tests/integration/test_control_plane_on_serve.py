"""The control plane as the ``/api`` Serve application on a real local Ray."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from control_plane.client import Client
from control_plane.serve_app import APP_NAME, deploy_control_plane
from modelplane.settings import Settings
from tests.onnx_models import linear_classifier, linear_classifier_manifest


@pytest.fixture(scope="module")
def api_on_serve(serve_session: int, tmp_path_factory: pytest.TempPathFactory):
    from ray import serve

    home = tmp_path_factory.mktemp("serve-cp") / "home"
    settings = Settings.from_env(
        {"MODELPLANE_HOME": str(home), "MODELPLANE_HTTP_PORT": str(serve_session)}
    )
    deploy_control_plane(settings)
    _wait_healthy(settings.url)
    yield settings
    serve.delete(APP_NAME)


def _wait_healthy(url: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"control plane on Serve not healthy at {url} after {timeout}s")


def test_the_same_api_answers_under_serve(api_on_serve: Settings, tmp_path: Path) -> None:
    token = api_on_serve.admin_token_path.read_text().strip()
    with Client(api_on_serve.url, token) as client:
        version = client.register_version(
            "on-serve", linear_classifier(seed=4), linear_classifier_manifest()
        )
        assert version.version == 1
        assert client.resolve("on-serve").artifact_digest == version.artifact_digest
        assert client.whoami() == {"name": "admin", "role": "admin"}
    spec = httpx.get(f"{api_on_serve.url}/api/openapi.json").json()
    assert "/models/{name}/versions" in spec["paths"]
    missing = httpx.get(f"{api_on_serve.url}/api/models/absent").json()
    assert missing["error"] == "not_found" and missing["request_id"]
