"""Version benchmarks on the real platform: a scratch replica on the session's Serve, real
HTTP load, figures stored on the version, shown and compared by the CLI; the scratch
application is gone afterwards, whether the benchmark succeeded or failed."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from control_plane.errors import ConflictError, NotFoundError
from serving.names import is_benchmark_app
from tests.onnx_models import (
    calibrate_slow,
    linear_classifier,
    linear_classifier_manifest,
    slow_classifier,
)

# Short phases: a benchmark here costs a few seconds of load on two cores.
QUICK = {"rate": 10, "duration_s": 3, "p99_target_ms": 500, "search_steps": 2,
         "step_duration_s": 1, "timeout_s": 120}
MODEL = "bench-mlp"


@pytest.fixture(scope="module")
def client(platform):
    api = platform.client()
    api.register_version(MODEL, linear_classifier(seed=0), linear_classifier_manifest())
    # The same answers after ~40 ms of extra work per request: many times slower.
    api.register_version(MODEL, slow_classifier(calibrate_slow(40), seed=0),
                         linear_classifier_manifest())
    yield api
    api.close()


def scratch_applications() -> list[str]:
    from ray import serve

    return [name for name in serve.status().applications if is_benchmark_app(name)]


def outsiders_answers(platform, client, benchmark_id: int) -> list[int]:
    """What requests without the benchmark's key got from its scratch endpoint while it
    ran (statuses of those that reached it: none before it ran)."""
    from serving.names import ENDPOINT_APP_PREFIX, endpoint_url

    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    answers: list[int] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(answers) < 5:
        if client.get_benchmark(MODEL, 1, benchmark_id).status != "running":
            break
        for app in scratch_applications():
            url = endpoint_url(platform.url, app.removeprefix(ENDPOINT_APP_PREFIX), "infer")
            try:  # Serve holds a request for an application whose replica still starts
                status = httpx.post(url, json=body, timeout=60).status_code
            except httpx.TimeoutException:
                continue
            if status not in (404, 503):  # not routed, or not loaded yet
                answers.append(status)
        time.sleep(0.2)
    return answers


def cli(platform, *args: str) -> str:
    return platform.cli(*args)


def test_figures_are_measured_stored_shown_and_compared(platform, client) -> None:
    started = client.start_benchmark(MODEL, 1, QUICK)
    assert started.status == "running" and started.figures is None
    with pytest.raises(ConflictError, match="is being benchmarked") as second:
        client.start_benchmark(MODEL, 1, QUICK)
    assert second.value.detail["status"] == 409 and second.value.detail["field"] == "version"
    outsider = outsiders_answers(platform, client, started.id)
    assert outsider and set(outsider) == {403}, outsider  # the scratch route is public
    fast = client.wait_benchmark(MODEL, 1, started.id, timeout_s=240)
    assert fast.status == "succeeded", fast.error
    figures = fast.figures
    assert figures.requests == 30 and figures.errors == 0
    assert 0 < figures.latency_ms.p50 <= figures.latency_ms.p95 <= figures.latency_ms.p99
    assert figures.cpu_ms_per_request > 0 and figures.memory_rss_mb > 0
    assert figures.gpu_memory_mb is None  # no GPU serves it here
    assert figures.served_with.placement == "colocated" and figures.replica_processes == 1
    assert 1 <= len(figures.search) <= 2 and figures.max_rate_within_p99 is not None
    assert scratch_applications() == []

    # The rate search was checked on the quick version; the slow one needs only its figures.
    slow = client.wait_benchmark(MODEL, 2, client.start_benchmark(
        MODEL, 2, {**QUICK, "search_steps": 0}).id, timeout_s=240)
    assert slow.status == "succeeded", slow.error
    # Ordering by a clear margin, not wall-clock limits: the work per request is many times more.
    assert slow.figures.cpu_ms_per_request > 3 * figures.cpu_ms_per_request
    # Each request's extra work runs inside its latency, so the slow version's median cannot
    # be shorter than the extra CPU it measured; a load spike only lengthens it. (Comparing
    # the two medians would compare two moments of a shared machine: once the quick
    # version's p50 was 37 ms under load, against 54 ms for the slow one.)
    extra_cpu_ms = slow.figures.cpu_ms_per_request - figures.cpu_ms_per_request
    assert slow.figures.latency_ms.p50 > 0.8 * extra_cpu_ms > 0
    assert scratch_applications() == []

    assert [b.id for b in client.list_benchmarks(MODEL, 1)] == [fast.id]
    shown = cli(platform, "models", "show", f"{MODEL}:1")
    assert f"#{fast.id} at 10 req/s" in shown and "p99" in shown and "ms/request" in shown
    compared = cli(platform, "models", "compare", f"{MODEL}:1", f"{MODEL}:2")
    assert "cpu_ms_per_request" in compared and "p50_ms" in compared
    ratio = slow.figures.cpu_ms_per_request / figures.cpu_ms_per_request
    assert f"{ratio:.3g}x" in compared


def test_a_failed_benchmark_leaves_no_scratch_application(platform, client) -> None:
    timed_out = client.wait_benchmark(
        MODEL, 1, client.start_benchmark(MODEL, 1, {**QUICK, "timeout_s": 0.2}).id, timeout_s=120)
    assert timed_out.status == "failed" and "timeout_s" in timed_out.error
    assert timed_out.figures is None and scratch_applications() == []

    # A version whose artifact no longer matches its digest: the replica refuses to load it.
    # Weights of its own, so no replica's artifact cache already holds a good copy.
    unique = uuid.uuid4().int % 2**31
    broken = client.register_version(MODEL, linear_classifier(seed=unique),
                                     linear_classifier_manifest())
    stored = Path(platform.settings.artifact_uri) / "sha256" / broken.artifact_digest[:2] / \
        broken.artifact_digest
    os.chmod(stored, 0o644)
    stored.write_bytes(b"not the model that was registered")
    failed = client.wait_benchmark(MODEL, broken.version, client.start_benchmark(
        MODEL, broken.version, {**QUICK, "timeout_s": 60}).id, timeout_s=180)
    assert failed.status == "failed" and "scratch replica" in failed.error, failed.error
    assert scratch_applications() == []


def test_bad_input_names_the_field(platform, client) -> None:
    url = f"{platform.url}/api/models/{MODEL}/versions/1/benchmarks"
    headers = {"authorization": f"Bearer {platform.token}"}
    for body, field in (({"rate": 0}, "rate"), ({"rate": 1, "duration_s": 2}, "duration_s"),
                        ({"duration_s": 601}, "duration_s"), ({"rate": 1e6}, "rate")):
        answer = httpx.post(url, json=body, headers=headers, timeout=10)
        assert answer.status_code == 422, answer.text
        assert field in answer.json()["detail"]["fields"][0], answer.text
    with pytest.raises(NotFoundError, match="no version 99"):
        client.start_benchmark(MODEL, 99, QUICK)
    with pytest.raises(NotFoundError, match="no endpoint named"):
        client.start_benchmark(MODEL, 1, {**QUICK, "endpoint": "nowhere"})
    anonymous = httpx.post(url, json={}, timeout=10)
    assert anonymous.status_code == 401
