"""The control plane as the ``/api`` Serve application on a real local Ray."""

from __future__ import annotations

import httpx

from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform


def test_the_same_api_answers_under_serve(platform: Platform) -> None:
    with platform.client() as client:
        version = client.register_version(
            "on-serve", linear_classifier(seed=4), linear_classifier_manifest()
        )
        assert version.version == 1
        assert client.resolve("on-serve").artifact_digest == version.artifact_digest
        assert client.whoami() == {"name": "admin", "role": "admin"}
    spec = httpx.get(f"{platform.url}/api/openapi.json", timeout=30).json()
    assert "/models/{name}/versions" in spec["paths"]
    missing = httpx.get(f"{platform.url}/api/models/absent", timeout=30).json()
    assert missing["code"] == "not_found" and missing["request_id"]
    # A write asked again with its key is answered from the first call, through the
    # ingress as on a cluster.
    with platform.client() as client:
        token = client.create_token("on-serve-keys", "deployer").token
    sent = {"json": {"name": "on-serve-keyed"}, "timeout": 60, "headers": {
        "authorization": f"Bearer {token}", "idempotency-key": "on-serve-0001"}}
    made = httpx.post(f"{platform.url}/api/experiments", **sent)
    again = httpx.post(f"{platform.url}/api/experiments", **sent)
    assert made.status_code == again.status_code == 201, again.text
    assert again.json() == made.json() and again.headers["idempotent-replayed"] == "true"
