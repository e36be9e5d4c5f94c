"""Issue 13's data-plane attacks on a real local Ray + Serve, each expected to change nothing.

Feedback poisoning (pinned requests, attacker-chosen ids, labels posted anonymously and with
a reader's token), floods of pinned and rejected requests, memory probes and the inputs that
used to be 500s. Each test fails on the code before the fix: feedback was open to anyone and
joined on the client's id, pinned and 4xx requests counted toward `min_samples`, replicas
read whole bodies before any limit, and `²` reached `int()`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import ray

from control_plane.store import Database
from control_plane.store.models import RunMetricRow
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.waiting import wait_for

SMALL = {"num_cpus": 0.05}
REQUEST_ID = "x-modelplane-request-id"


def body(rows: np.ndarray, request_id: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32",
                                           "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    if request_id is not None:
        payload["id"] = request_id
    return payload


def predicted_class(response: httpx.Response) -> int:
    return int(np.argmax(response.json()["outputs"][0]["data"]))


@pytest.fixture(scope="module")
def edge(platform: Platform) -> Iterator[dict[str, Any]]:
    """Endpoint `edge` serving `edge:1`, `edge:2` registered, and tokens for each role."""
    client = platform.client()
    client.register_version("edge", linear_classifier(seed=1), linear_classifier_manifest())
    client.register_version("edge", linear_classifier(seed=2), linear_classifier_manifest())
    client.deploy("edge", "edge:1", scaling=SMALL)
    tokens = {role: client.create_token(f"edge-{role}", role).token
              for role in ("labeler", "reader", "deployer")}
    platform.wait_endpoint("edge", {1})
    yield {"client": client, "tokens": tokens, "url": f"{platform.url}/v2/models/edge"}
    for rollout in client.list_rollouts(endpoint="edge", active=True):
        client.rollout_action(rollout.id, "abort", "test finished")
    client.undeploy("edge")
    client.close()


def feedback(http: httpx.Client, url: str, pairs: list[tuple[str, int]],
             token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return http.post(f"{url}/feedback", headers=headers, json={"feedback": [
        {"request_id": rid, "label": label} for rid, label in pairs]})


def test_feedback_needs_a_label_source_and_joins_only_on_the_servers_id(
        platform: Platform, edge: dict[str, Any]) -> None:
    url, tokens = edge["url"], edge["tokens"]
    rows = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    with httpx.Client(timeout=30) as http:
        answers = [http.post(f"{url}/infer", json=body(row[None, :], f"mine-{i}"))
                   for i, row in enumerate(rows)]
        assert all(a.status_code == 200 for a in answers)
        server_ids = [a.headers[REQUEST_ID] for a in answers]
        assert len(set(server_ids)) == 6 and all(len(i) == 32 for i in server_ids)
        for answer, server_id, index in zip(answers, server_ids, range(6), strict=True):
            document = answer.json()
            assert document["id"] == f"mine-{index}"  # the client's id is echoed …
            assert document["parameters"]["modelplane_request_id"] == server_id  # … beside ours
        pairs = [(rid, predicted_class(a)) for rid, a in zip(server_ids, answers, strict=True)]
        anonymous = feedback(http, url, pairs)
        as_reader = feedback(http, url, pairs, tokens["reader"])
        unknown = feedback(http, url, pairs, "mp_not-a-token-anyone-issued")
        assert anonymous.status_code == 401 and "labeler" in anonymous.json()["error"]
        assert as_reader.status_code == 403 and "labeler" in as_reader.json()["error"]
        assert unknown.status_code == 401
        # The client's own ids join nothing: they are not keys of the prediction store.
        chosen = feedback(http, url, [(f"mine-{i}", 0) for i in range(6)], tokens["labeler"])
        assert chosen.status_code == 200 and chosen.json()["joined"] == 0
        joined = wait_for(lambda: (r := feedback(http, url, pairs[:3], tokens["labeler"])).json()
                          ["joined"] + r.json()["waiting"] == 3 and r, 20, "labels to be taken")
        assert joined.status_code == 200
        # A deployer outranks a labeler and may post too; serving never stopped.
        assert feedback(http, url, pairs[3:], tokens["deployer"]).status_code == 200
        assert http.post(f"{url}/infer", json=body(rows[:1])).status_code == 200


def test_poisoning_and_floods_leave_the_rollouts_decision_unchanged(
        platform: Platform, edge: dict[str, Any]) -> None:
    """An attacker pins requests to the candidate, floods 4xx, posts wrong labels without a
    label source's token: the analysis stays inconclusive (nothing it may judge), then the
    randomly routed, honestly labelled traffic promotes the good candidate."""
    client, url, tokens = edge["client"], edge["url"], edge["tokens"]
    # The flood below lands on both versions alike; stable's answers to earlier tests would
    # not, and the Monitor still holds a step's first seconds of them (it dates statistics
    # as they arrive, about a second late): let them leave the window first.
    wait_for(lambda: client.endpoint_stats("edge", window_s=5)["versions"].get("1", {}).get(
        "requests", 0) == 0, 30, "the earlier tests' requests to leave the window")
    # The refused-share gate is off here: the flood's refusals split between the versions
    # by chance, and that gate, read every second at a 95% bound with one failure enough,
    # fails on such a split now and then (a known limit: its looks are not corrected for
    # being repeated).
    # A window of 60 s (clipped to the step's start): the flood below, 300 requests one
    # after another, spans more than 20 s on a loaded host.
    analysis = {"interval_s": 1, "window_s": 60, "min_samples": 40, "min_accuracy": 0.9,
                "min_labels": 20, "failures_to_rollback": 1, "max_p95_ratio": None,
                "max_refused_rate_increase": None}
    rollout = client.start_rollout({"endpoint": "edge", "model_ref": "edge:2", "steps": [50, 100],
                                    "step_duration_s": 3, "drain_s": 1, "analysis": analysis})
    wait_for(lambda: platform.served_weights("edge") == {1: 50.0, 2: 50.0}, 60, "the first step")

    def last_analysis() -> dict[str, Any]:
        return client.get_rollout(rollout.id).last_analysis

    # An analysis counts the Monitor's one-second slots back from its own moment, so the
    # second in which the step began to be served is in its window or not by a fraction of
    # a second, analysis to analysis (it counted 131 of the flood's 150 for 20 s, then none,
    # when the flood began in that second). The flood starts once that second is well
    # behind, so every analysis after it counts all of the flood.
    wait_for(lambda: (a := last_analysis()).get("step_index") == 0
             and "randomly routed" in a.get("reason", "") and a.get("window_s", 0) >= 3, 30,
             "an analysis of the served step over 3 s", seen=last_analysis)
    rng = np.random.default_rng(1)
    bad_body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    with httpx.Client(timeout=30) as http:
        attacked = []
        for index in range(150):
            row = rng.normal(size=(1, 4)).astype(np.float32)
            answer = http.post(f"{url}/versions/2/infer", json=body(row, f"atk-{index}"))
            assert answer.status_code == 200
            attacked.append((answer.headers[REQUEST_ID], f"atk-{index}", predicted_class(answer)))
            assert http.post(f"{url}/infer", json=bad_body).status_code == 400
        wrong = [(rid, (label + 1) % 3) for rid, _, label in attacked]
        wrong += [(mine, (label + 1) % 3) for _, mine, label in attacked]
        for start in range(0, len(wrong), 100):
            assert feedback(http, url, wrong[start:start + 100]).status_code == 401
            assert feedback(http, url, wrong[start:start + 100], tokens["reader"]).status_code == 403
        flooded = wait_for(lambda: (r := client.get_rollout(rollout.id)).last_analysis.get(
            "reason", "").find("150 pinned") >= 0 and r, 30, "an analysis of the flood",
            seen=last_analysis)
        assert flooded.last_analysis["verdict"] == "inconclusive", flooded.last_analysis
        assert flooded.state == "progressing" and flooded.step_index == 0
        stats = client.endpoint_stats("edge", window_s=60)["versions"]["2"]
        assert stats["pinned_requests"] >= 150 and stats["routing"]["random"]["requests"] < 40
        assert client.endpoint_stats("edge", window_s=60)["versions"]["1"]["rejected_requests"] \
            + stats["rejected_requests"] >= 150

        # Honest traffic: randomly routed, labelled by the label source (its true class here
        # is the candidate's own answer, so the good candidate's accuracy is 1).
        stop = threading.Event()
        honest = threading.Thread(target=_honest_traffic, args=(url, tokens["labeler"], stop))
        honest.start()
        try:
            done = wait_for(lambda: (r := client.get_rollout(rollout.id)).state.terminal and r,
                            120, "the rollout to end")
        finally:
            stop.set()
            honest.join(30)
    assert done.state == "succeeded", (done.reason, done.last_analysis)
    accuracy = client.endpoint_monitoring("edge", window_s=300)["versions"]["2"]["accuracy"]
    assert accuracy["labelled"] >= 20 and accuracy["accuracy"] == 1.0  # no wrong label landed


def _honest_traffic(url: str, token: str, stop: threading.Event) -> None:
    rng = np.random.default_rng(2)
    pending: list[tuple[str, int]] = []
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            answer = http.post(f"{url}/infer", json=body(rng.normal(size=(1, 4)).astype(np.float32)))
            if answer.status_code == 200:
                pending.append((answer.headers[REQUEST_ID], predicted_class(answer)))
            if len(pending) >= 10:
                feedback(http, url, pending, token)
                pending = []
            time.sleep(0.02)


def test_memory_probes_are_refused_before_anything_is_kept(platform: Platform,
                                                            edge: dict[str, Any]) -> None:
    url, tokens = edge["url"], edge["tokens"]
    host, port = "127.0.0.1", platform.port
    # A gigabyte announced, a kilobyte sent: the answer comes without waiting for the rest.
    with socket.create_connection((host, port), timeout=30) as raw:
        raw.sendall(b"POST /v2/models/edge/infer HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
                    + b"x" * 1024)
        answer = _read_answer(raw)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "limit of" in answer and "MODELPLANE_MAX_REQUEST_MB" in answer
    with httpx.Client(timeout=60) as http:
        # A chunked feedback body past its 4 MiB limit, without a token: 413 all the same.
        chunks = (b"x" * 65536 for _ in range(80))
        chunked = http.post(f"{url}/feedback", content=chunks)
        assert chunked.status_code == 413 and "limit of" in chunked.json()["error"]
        long_id = http.post(f"{url}/infer", json=body(np.zeros((1, 4), np.float32), "i" * 10_000))
        assert long_id.status_code == 400 and long_id.json()["error"].startswith("id")
        labels = {"feedback": [{"request_id": f"r{i}", "label": [1] * 4000} for i in range(30)]}
        too_many = http.post(f"{url}/feedback", json=labels,
                             headers={"authorization": f"Bearer {tokens['labeler']}"})
        assert too_many.status_code == 400 and too_many.json()["error"].startswith("feedback")
        assert http.post(f"{url}/infer", json=body(np.zeros((1, 4), np.float32))).status_code == 200


def _read_answer(raw: socket.socket) -> str:
    """One HTTP answer, header and body (by its Content-Length), as text."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += raw.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += raw.recv(65536)
    return (head + b"\r\n\r\n" + rest).decode(errors="replace")


def test_the_monitors_prediction_store_stays_under_its_byte_bound(platform: Platform,
                                                                   edge: dict[str, Any]) -> None:
    """Large batches (one stored value per row) sent as fast as one client can, against an
    endpoint whose Monitor has a 512 KiB store: the store drops its oldest, never grows."""
    from ray import serve

    from serving.applications import build_endpoint_app
    from serving.monitoring.monitor import ensure_monitor
    from serving.schemas import EndpointConfig, RouteTable, TensorSignature, VersionConfig

    bound = 512 * 1024
    monitor = ensure_monitor("edge-probe-monitor", "modelplane-tests", prediction_store_bytes=bound)
    version = edge["client"].get_version("edge", 1)
    config = EndpointConfig(
        endpoint="edge-probe", monitor_actor="edge-probe-monitor",
        monitor_namespace="modelplane-tests", routes=RouteTable(weights={1: 100}),
        scaling={"num_cpus": 0.05}, control_plane_url=platform.url,
        versions=[VersionConfig(
            version=1, model="edge", digest=version.artifact_digest, task="classification",
            artifact_url=f"{platform.url}/api/artifacts/{version.artifact_digest}",
            inputs=[TensorSignature(name="input", dtype="float32", shape=[None, 4])],
            outputs=[TensorSignature(name="probabilities", dtype="float32", shape=[None, 3])])])
    serve.run(build_endpoint_app(config, env={}), name="edge-probe",
              route_prefix="/v2/models/edge-probe", blocking=False)
    try:
        platform.wait_endpoint("edge-probe", {1})
        rows = np.random.default_rng(3).normal(size=(2000, 4)).astype(np.float32)
        with httpx.Client(timeout=60) as http:
            for _ in range(60):  # 120,000 rows: about 3.8 MB of predictions, estimated
                answer = http.post(f"{platform.url}/v2/models/edge-probe/infer", json=body(rows))
                assert answer.status_code == 200
        memory = wait_for(lambda: (m := ray.get(monitor.feedback_memory.remote()))
                          ["predictions"] and _dropped(monitor) > 0 and m, 30,
                          "the store to reach its bound")
        assert 0 < memory["prediction_bytes"] <= bound == memory["max_prediction_bytes"]
    finally:
        serve.delete("edge-probe")
        ray.kill(monitor)


def _dropped(monitor: Any) -> int:
    totals = ray.get(monitor.totals.remote())
    return sum(row.feedback.dropped_full for row in totals)


def test_unicode_digits_huge_numbers_and_nan_are_4xx(platform: Platform, edge: dict[str, Any]) -> None:
    url, admin = edge["url"], edge["client"]
    with httpx.Client(timeout=30) as http:
        for version in ("²", "%C2%B2", "%D9%A3", "99999999999999999999"):
            answer = http.post(f"{url}/versions/{version}/infer", json=body(np.zeros((1, 4), np.float32)))
            assert answer.status_code == 400 and "version" in answer.json()["error"], answer.text
        headers = {"authorization": f"Bearer {platform.token}", "content-type": "application/json"}
        api = f"{platform.url}/api"
        bad_run = http.post(f"{api}/runs", headers=headers,
                            content=b'{"experiment": "edge-nan", "params": {"lr": NaN}}')
        assert bad_run.status_code == 422 and "lr is nan" in bad_run.json()["error"]
        huge_ref = http.get(f"{api}/refs/edge:99999999999999999999", headers=headers)
        assert huge_ref.status_code == 400 and "model reference" in huge_ref.json()["error"]
        # A row stored before the edge checked (an infinity) does not make reads fail.
        run = admin.start_run("edge-nan")
        database = Database(platform.settings.db_url, migrate=False)
        with database.session() as session:
            session.add(RunMetricRow(run_id=run.id, key="loss", value=float("inf"), step=0,
                                     timestamp=run.start_time))
        for path in (f"/runs/{run.id}", f"/runs/{run.id}/metrics/loss", f"/runs/compare?ids={run.id}"):
            assert http.get(f"{api}{path}", headers=headers).status_code == 200, path
        assert http.post(f"{url}/infer", json=body(np.zeros((1, 4), np.float32))).status_code == 200
