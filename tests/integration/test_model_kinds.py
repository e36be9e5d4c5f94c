"""Every model kind on the real platform (Ray + Serve, the control plane, tritonclient): a
Python model, a scaler + ONNX + label-map version, a TorchScript module, an exported torch
program and a text classifier (tokenizer + graph + label map) are registered through the
checks, served, called with JSON and binary tensors (strings included), canaried against a
version of the same kind, and rolled back on a failing gate; a version that cannot load on its replica answers 503 with the cause
while the others serve, and `status` says why."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as tc

from control_plane.client import Client
from control_plane.errors import ConflictError, InvalidArtifactError
from tests.load import BackgroundLoad
from tests.model_kinds import (
    LABELS,
    TEXT_LABELS,
    python_manifest,
    python_model,
    reference,
    review_texts,
    steps_manifest,
    steps_model,
    text_manifest,
    text_model,
    text_reference,
    torch_export_model,
    torchscript_manifest,
    torchscript_model,
)
from tests.platform import Platform
from tests.waiting import wait_for

SMALL = {"num_cpus": 0.05}
ANALYSIS = {"interval_s": 1, "window_s": 3, "min_samples": 15, "failures_to_rollback": 2,
            "max_p95_ratio": None, "max_error_rate": 0.02}
ROWS = np.random.default_rng(11).normal(size=(5, 4)).astype(np.float32)
STEPS_MEAN, STEPS_SCALE = 10.0, 2.0


@pytest.fixture(scope="module")
def kinds(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Client]:
    """Three endpoints, each serving v1 of its kind; v2 of the same kind registered."""
    root = tmp_path_factory.mktemp("kinds")
    client = platform.client()
    register = client.register_version
    register("kind-py", python_model(root / "py1", 1), python_manifest())
    # Version 2 fails one request in six: rows whose first feature is above 1.
    register("kind-py", python_model(root / "py2", 2, predict=(
        "assert float(x[0, 0]) <= 1.0, 'feature 0 out of the range it was built for'")),
        python_manifest())
    register("kind-steps", steps_model(root / "s1", 1), steps_manifest())
    register("kind-steps", steps_model(root / "s2", 2), steps_manifest())
    register("kind-torch", torchscript_model(1), torchscript_manifest())
    register("kind-torch", torch_export_model(2), torchscript_manifest(kind="torch_export"))
    for name in ("kind-py", "kind-steps", "kind-torch"):
        client.deploy(name, f"{name}:1", scaling=SMALL)
    for name in ("kind-py", "kind-steps", "kind-torch"):
        platform.wait_endpoint(name, {1})
    yield {"client": client, "root": root}
    for name in ("kind-py", "kind-steps", "kind-torch"):
        for rollout in client.list_rollouts(endpoint=name, active=True):
            client.rollout_action(rollout.id, "abort", "test finished")
        client.undeploy(name)
    client.close()


def triton(platform: Platform) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(f"127.0.0.1:{platform.port}")


def sent_rows(endpoint: str) -> np.ndarray:
    """What a client sends: raw rows for the scaled version, the rows themselves otherwise."""
    return STEPS_MEAN + STEPS_SCALE * ROWS if endpoint == "kind-steps" else ROWS


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize(("endpoint", "platform_name"), [
    ("kind-py", "python"), ("kind-steps", "onnxruntime_onnx"), ("kind-torch", "pytorch_libtorch")])
def test_each_kind_answers_tritonclient_like_the_reference(
        platform: Platform, kinds: dict[str, Any], endpoint: str, platform_name: str,
        binary: bool) -> None:
    client = triton(platform)
    assert client.is_model_ready(endpoint)
    assert client.get_model_metadata(endpoint)["platform"] == platform_name
    tensor = tc.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(sent_rows(endpoint), binary_data=binary)
    wanted = [tc.InferRequestedOutput("probabilities", binary_data=binary)]
    if endpoint == "kind-steps":
        wanted.append(tc.InferRequestedOutput("label", binary_data=binary))
    result = client.infer(endpoint, [tensor], outputs=wanted)
    expected = reference(ROWS, 1)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-4, atol=1e-6)
    assert result.get_response()["model_version"] == "1"
    if endpoint == "kind-steps":
        labels = [bytes(v).decode() if isinstance(v, bytes | np.bytes_) else str(v)
                  for v in result.as_numpy("label")]
        assert labels == [LABELS[i] for i in expected.argmax(axis=1)]


def test_a_python_canary_that_raises_is_rolled_back_and_the_stable_version_never_fails(
        platform: Platform, kinds: dict[str, Any]) -> None:
    client: Client = kinds["client"]
    with BackgroundLoad(platform.url, "kind-py") as load:
        rollout = client.start_rollout({
            "endpoint": "kind-py", "model_ref": "kind-py:2", "steps": [50, 100],
            "step_duration_s": 30, "drain_s": 1, "analysis": ANALYSIS})
        done = wait_for(lambda: (r := client.get_rollout(rollout.id)).state.terminal and r, 120,
                        "the python canary to end")
        wait_for(lambda: (platform.served_weights("kind-py") or {}).get(1) == 100.0, 20, "v1 back at 100%")
        settled = time.monotonic()
        wait_for(lambda: len(load.sent_after(settled)) > 30, 30, "answers after the rollback")
    assert done.state == "rolled_back", done.reason
    assert "error_rate" in json.dumps(done.last_analysis)
    failures = [a for a in load.answers if a.status != 200]
    # Every failure came from version 2, and says why (the model's own assertion).
    assert failures and all(a.version == 2 for a in failures), failures[:3]
    assert all("feature 0 out of the range" in (a.error or "") for a in failures), failures[:2]
    assert all(a.status == 200 for a in load.sent_after(settled))


def test_steps_and_torch_canaries_are_promoted_without_a_failed_request(
        platform: Platform, kinds: dict[str, Any]) -> None:
    client: Client = kinds["client"]
    raw = BackgroundLoad(platform.url, "kind-steps",
                         shape_rows=lambda row: (STEPS_MEAN + STEPS_SCALE * row).astype(np.float32))
    plain = BackgroundLoad(platform.url, "kind-torch")
    with raw, plain:
        rollouts = [client.start_rollout({
            "endpoint": name, "model_ref": f"{name}:2", "steps": [50, 100], "step_duration_s": 2,
            "drain_s": 1, "analysis": ANALYSIS}) for name in ("kind-steps", "kind-torch")]
        done = [wait_for(lambda r=r: (x := client.get_rollout(r.id)).state.terminal and x, 120,
                         f"rollout #{r.id} to end") for r in rollouts]
        for name in ("kind-steps", "kind-torch"):
            wait_for(lambda n=name: platform.served_weights(n) == {2: 100.0}, 30, f"{name} on v2 only")
    assert [d.state for d in done] == ["succeeded", "succeeded"], [d.reason for d in done]
    for load in (raw, plain):
        assert load.failures() == [], load.failures()[:3]
        assert set(load.versions()) == {1, 2}
    tensor = tc.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(sent_rows("kind-steps"))
    result = triton(platform).infer("kind-steps", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(ROWS, 2), rtol=1e-4, atol=1e-6)


def test_steps_torch_and_text_canaries_that_fail_some_rows_are_rolled_back(
        platform: Platform, kinds: dict[str, Any]) -> None:
    """Bugs each kind really has, each failing only some rows: a label map one class short
    (rows whose best class has no name), a TorchScript module's own range check, and a
    text version whose tokenizer knows a word its graph has no embedding for. Each canary
    is rolled back on its error rate; the stable versions never fail."""
    client: Client = kinds["client"]
    root = kinds["root"]
    # Seed 3's best class is 2 for about one row in seven of the load; never for the
    # registration check's rows.
    client.register_version("kind-steps", steps_model(root / "s3", 3, labels=LABELS[:2]),
                            steps_manifest())
    client.register_version("kind-torch", torchscript_model(3, limit=1.0), torchscript_manifest())
    training_texts = review_texts(400, 0)
    client.register_version("kind-text-roll", text_model(root / "t1", 1),
                            text_manifest(training_texts, 1))
    client.register_version("kind-text-roll", text_model(root / "t2", 1, extra_words=("ramen",)),
                            text_manifest(training_texts, 1))
    client.deploy("kind-text-roll", "kind-text-roll:1", scaling=SMALL)
    try:
        platform.wait_endpoint("kind-text-roll", {1})
        candidates = {"kind-steps": 3, "kind-torch": 3, "kind-text-roll": 2}
        stable = {"kind-steps": 2, "kind-torch": 2, "kind-text-roll": 1}
        loads = {
            "kind-steps": BackgroundLoad(platform.url, "kind-steps", workers=2, shape_rows=lambda row: (
                STEPS_MEAN + STEPS_SCALE * row).astype(np.float32)),
            "kind-torch": BackgroundLoad(platform.url, "kind-torch", workers=2),
            "kind-text-roll": BackgroundLoad(platform.url, "kind-text-roll", workers=2,
                                             texts=review_texts(200, 7, extra=("ramen",))),
        }
        for load in loads.values():
            load.__enter__()
        try:
            rollouts = {name: client.start_rollout({
                "endpoint": name, "model_ref": f"{name}:{version}", "steps": [50, 100],
                "step_duration_s": 30, "drain_s": 1, "analysis": ANALYSIS})
                for name, version in candidates.items()}
            done = {name: wait_for(lambda r=r: (x := client.get_rollout(r.id)).state.terminal and x,
                                   120, f"the {name} canary to end")
                    for name, r in rollouts.items()}
            for name, version in stable.items():
                wait_for(lambda n=name, v=version: platform.served_weights(n) == {v: 100.0}, 30,
                         f"{name} back on v{version} alone")
            settled = time.monotonic()
            for name, load in loads.items():
                wait_for(lambda ld=load: len(ld.sent_after(settled)) > 20, 30,
                         f"{name} answers after the rollback")
        finally:
            for load in loads.values():
                load.stop()
    finally:
        client.undeploy("kind-text-roll")
    causes = {"kind-steps": "label_map 2 labels", "kind-torch": "feature 0 out of the range",
              "kind-text-roll": "indices element out of data bounds"}
    for name, rollout in done.items():
        assert rollout.state == "rolled_back", (name, rollout.reason)
        assert "error_rate" in json.dumps(rollout.last_analysis), rollout.last_analysis
        load = loads[name]
        failures = load.failures()
        assert failures and all(a.version == candidates[name] for a in failures), failures[:3]
        assert all(causes[name] in (a.error or "") for a in failures), failures[:2]
        late = load.sent_after(settled)
        assert all(a.ok for a in late), [a for a in late if not a.ok][:3]
        assert load.versions()[stable[name]] > 0


def test_a_version_that_cannot_load_on_its_replica_answers_503_and_the_others_serve(
        platform: Platform, kinds: dict[str, Any]) -> None:
    client: Client = kinds["client"]
    # Loads in the registration check, fails where replicas run (what a package missing
    # from the replicas' image looks like).
    folder = python_model(kinds["root"] / "replica-only", 3, load=(
        "import os; assert 'modelplane-check-' in os.environ.get('HOME', ''), "
        "'libcuda.so.1 is not on this node'"))
    client.register_version("kind-py", folder, python_manifest())
    client.deploy("kind-py", "kind-py:3")  # added at 0%
    base = f"{platform.url}/v2/models/kind-py"
    ready = wait_for(lambda: (r := httpx.get(f"{base}/versions/3/ready", timeout=10)).status_code
                     == 503 and not r.json().get("warming") and r, 120,
                     "version 3 to be reported unloadable")
    assert ready.json()["ready"] is False and "libcuda.so.1 is not on this node" in ready.json()["error"]
    pinned = httpx.post(f"{base}/versions/3/infer", json=_body(), timeout=10)
    assert pinned.status_code == 503 and "could not be loaded" in pinned.json()["error"]
    for _ in range(20):
        answer = httpx.post(f"{base}/infer", json=_body(), timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1", answer.text
    shown = json.loads(platform.cli("status", "--json"))
    assert "libcuda.so.1" in shown["versions_not_loaded"]["kind-py"]["3"]
    assert shown["ready"]["kind-py"] is True  # version 3 takes no traffic


def test_a_broken_model_is_refused_at_registration_naming_the_field(
        platform: Platform, kinds: dict[str, Any]) -> None:
    client: Client = kinds["client"]
    broken = python_model(kinds["root"] / "broken", 4, predict="return {'probabilities': x}")
    with pytest.raises(InvalidArtifactError) as caught:
        client.register_version("kind-py", broken, python_manifest())
    assert caught.value.detail["field"] == "signature.outputs.probabilities"
    assert "declared [None, 3]" in str(caught.value)
    assert client.get_model("kind-py").latest_version == 3  # nothing registered


def test_a_model_with_requirements_is_served_in_its_own_environment_never_colocated(
        platform: Platform, kinds: dict[str, Any]) -> None:
    """`tabulate` is not among the platform's packages: the version imports it because its
    isolated replica runs in a runtime environment with the version's requirements."""
    client: Client = kinds["client"]
    folder = python_model(kinds["root"] / "needs-tabulate", 5,
                          load="import tabulate; assert tabulate.tabulate([[1]])")
    manifest = python_manifest()
    manifest["code"]["requirements"] = ["tabulate>=0.8"]
    client.register_version("kind-req", folder, manifest)
    with pytest.raises(ConflictError, match="placement isolated"):
        client.deploy("kind-req-shared", "kind-req:1", scaling=SMALL)
    client.deploy("kind-req", "kind-req:1", placement="isolated", scaling=SMALL)
    try:
        platform.wait_endpoint("kind-req", {1}, timeout=300)
        answer = httpx.post(f"{platform.url}/v2/models/kind-req/infer", json=_body(), timeout=30)
        assert answer.status_code == 200, answer.text
        row = np.asarray(_body()["inputs"][0]["data"], dtype=np.float32).reshape(1, 4)
        np.testing.assert_allclose(answer.json()["outputs"][0]["data"], reference(row, 5)[0],
                                   rtol=1e-4)
    finally:
        client.undeploy("kind-req")


def test_a_text_classifier_takes_strings_through_tritonclient_and_drift_is_seen_in_its_words(
        platform: Platform, kinds: dict[str, Any]) -> None:
    """BYTES in and out, JSON and binary; drift measured on the texts' derived features:
    the same kind of reviews leave unknown_rate quiet, reviews full of words the model
    never saw move it."""
    client: Client = kinds["client"]
    # As in real data, the training texts hold a word outside the model's vocabulary.
    client.register_version("kind-text", text_model(kinds["root"] / "text", 1),
                            text_manifest(review_texts(800, 0, extra=("ramen",)), 1))
    client.deploy("kind-text", "kind-text:1", scaling=SMALL)
    try:
        platform.wait_endpoint("kind-text", {1})
        texts = ["the food was great", "rude service and cold food", "ramen was tasty"]
        expected = text_reference(texts, 1)
        for binary in (False, True):
            tensor = tc.InferInput("review", [len(texts)], "BYTES")
            tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object),
                                       binary_data=binary)
            result = triton(platform).infer("kind-text", [tensor], outputs=[
                tc.InferRequestedOutput("probabilities", binary_data=binary),
                tc.InferRequestedOutput("label", binary_data=binary)])
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-4, atol=1e-6)
            labels = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label")]
            assert labels == [TEXT_LABELS[i] for i in expected.argmax(axis=1)]

        def drift() -> dict[str, Any]:
            return client.endpoint_monitoring("kind-text", window_s=120)["versions"]["1"]["drift"]

        _send_reviews(platform, review_texts(300, 5, extra=("ramen",)))
        settled = wait_for(lambda: (d := drift())["verdict"] != "insufficient"
                           and "review.unknown_rate" in d["features"] and d, 30, "a drift verdict")
        assert "review.unknown_rate" not in settled["drifted_features"], settled["drifted_features"]
        _send_reviews(platform, review_texts(300, 6, extra=("ramen", "matcha", "kombucha", "tofu",
                                                            "udon", "pho", "bao", "mochi",
                                                            "gyoza", "dashi")))
        moved = wait_for(lambda: "review.unknown_rate" in (d := drift())["drifted_features"] and d,
                         30, "unknown words to show as drift")
        assert moved["verdict"] == "drift"
    finally:
        client.undeploy("kind-text")


def _send_reviews(platform: Platform, texts: list[str]) -> None:
    with httpx.Client(timeout=10) as http:
        for text in texts:
            body = {"inputs": [{"name": "review", "datatype": "BYTES", "shape": [1], "data": [text]}]}
            answer = http.post(f"{platform.url}/v2/models/kind-text/infer", json=body)
            assert answer.status_code == 200, answer.text


def _body() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                        "data": [0.1, 0.2, 0.3, 0.4]}]}
