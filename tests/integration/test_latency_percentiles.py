"""Served latency percentiles are the requests' own: with two replicas, the Monitor's
p50/p95/p99 equal the exact percentiles of the server-side latencies the replicas measured
for the same requests, within the sketch's 1% relative accuracy.

Each replica logs the latencies it records only in this test (tests.exact_latency).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.exact_latency import RELATIVE_ACCURACY, endpoint_replicas, quantiles_ms, replica_calls
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform

ENDPOINT = "exact-latency"
REPLICAS = 2
REQUESTS = 600


@pytest.fixture(scope="module")
def two_replicas(platform: Platform) -> Iterator[list[Any]]:
    with platform.client() as client:
        client.register_version("exact-latency-model", linear_classifier(n_classes=3, seed=5),
                                linear_classifier_manifest(n_classes=3))
        client.deploy(ENDPOINT, "exact-latency-model:1",
                      scaling={"replicas": REPLICAS, "num_cpus": 0.25})
    platform.wait_endpoint(ENDPOINT, {1})
    deadline = time.monotonic() + 120
    while len(replicas := endpoint_replicas(ENDPOINT)) < REPLICAS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(replicas) == REPLICAS, replicas
    yield replicas
    with platform.client() as client:
        client.undeploy(ENDPOINT)


def test_monitor_percentiles_equal_the_exact_ones_of_the_same_requests(
        platform: Platform, two_replicas: list[Any]) -> None:
    import ray

    start_logging, logged = replica_calls()
    pids = ray.get([replica.__ray_call__.remote(start_logging) for replica in two_replicas])
    assert len(set(pids)) == REPLICAS  # two processes, each with its own recorder

    url = f"{platform.url}/v2/models/{ENDPOINT}/infer"
    rng = np.random.default_rng(7)
    failures: list[str] = []

    def send(rows: np.ndarray) -> None:
        with httpx.Client(timeout=30) as http:
            for row in rows:
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                    "data": row.tolist()}]}
                answer = http.post(url, json=body)
                if answer.status_code != 200:
                    failures.append(answer.text)

    # Concurrent callers, so both replicas answer and latencies spread (queueing).
    workers = [threading.Thread(target=send, args=(chunk,))
               for chunk in np.array_split(rng.normal(size=(REQUESTS, 4)), 6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []

    def monitor() -> dict[str, Any]:
        with platform.client() as client:
            return client.endpoint_stats(ENDPOINT, window_s=300)["versions"].get("1", {})

    # Replicas ship about once a second: wait until the Monitor holds every request.
    deadline = time.monotonic() + 30
    while (seen := monitor()).get("latency_count", 0) < REQUESTS and time.monotonic() < deadline:
        time.sleep(0.5)
    per_replica = ray.get([replica.__ray_call__.remote(logged) for replica in two_replicas])
    assert all(per_replica), [len(values) for values in per_replica]  # both replicas served
    exact_values = np.concatenate([np.asarray(values) for values in per_replica])
    assert exact_values.size == REQUESTS == seen["latency_count"] == seen["requests"], seen
    # The sketch answers nearest-rank quantiles within 1%.
    exact = quantiles_ms(exact_values)
    reported = np.array([seen["p50_ms"], seen["p95_ms"], seen["p99_ms"]])
    print(f"\nexact p50/p95/p99 ms {exact.round(4).tolist()}, Monitor {reported.round(4).tolist()}, "
          f"requests per replica {[len(v) for v in per_replica]}")
    assert np.all(np.abs(reported - exact) <= RELATIVE_ACCURACY * exact + 1e-9), (reported, exact)
