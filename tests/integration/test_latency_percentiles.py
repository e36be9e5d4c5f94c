"""Served latency percentiles are the requests' own: with two replicas, the Monitor's
p50/p95/p99 equal the exact percentiles of the server-side latencies the replicas measured
for the same requests, within the sketch's 1% relative accuracy.

Each replica logs the latencies it records only in this test: the test wraps
``StatsRecorder.record`` inside the replica's process (through Ray's ``__ray_call__`` on
the replica actor), so the product code carries no test hook and pays nothing for one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform

ENDPOINT = "exact-latency"
REPLICAS = 2
REQUESTS = 600
RELATIVE_ACCURACY = 0.01  # the latency sketch's alpha (serving.monitoring.stats.new_latency_sketch)


def _replica_calls() -> tuple[Callable[[Any], int], Callable[[Any], list[float]]]:
    """Functions run inside a replica; built here so cloudpickle ships them by value."""

    def start_logging(_replica: Any) -> int:
        import os

        from serving.monitoring import stats

        if not hasattr(stats, "_exact_latencies"):
            stats._exact_latencies = []
            original = stats.StatsRecorder.record

            def record(self: Any, version: int, status: int, latency_s: float,
                       error_code: str | None = None, routed: str = stats.ROUTED_RANDOMLY) -> None:
                # Exactly the values the recorder keeps for the Monitor (see its record()).
                if self.enabled and version != stats.ENDPOINT_LEVEL:
                    stats._exact_latencies.append(latency_s)
                original(self, version, status, latency_s, error_code, routed)

            stats.StatsRecorder.record = record
        return os.getpid()

    def logged(_replica: Any) -> list[float]:
        from serving.monitoring import stats

        return list(getattr(stats, "_exact_latencies", []))

    return start_logging, logged


def _endpoint_replicas() -> list[Any]:
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and f"endpoint-{ENDPOINT}" in a["name"]
             and "REPLICA" in a["name"].upper()]
    return [ray.get_actor(a["name"], namespace="serve") for a in names]


@pytest.fixture(scope="module")
def two_replicas(platform: Platform) -> Iterator[list[Any]]:
    with platform.client() as client:
        client.register_version("exact-latency-model", linear_classifier(n_classes=3, seed=5),
                                linear_classifier_manifest(n_classes=3))
        client.deploy(ENDPOINT, "exact-latency-model:1",
                      scaling={"replicas": REPLICAS, "num_cpus": 0.25})
    platform.wait_endpoint(ENDPOINT, {1})
    deadline = time.monotonic() + 120
    while len(replicas := _endpoint_replicas()) < REPLICAS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(replicas) == REPLICAS, replicas
    yield replicas
    with platform.client() as client:
        client.undeploy(ENDPOINT)


def test_monitor_percentiles_equal_the_exact_ones_of_the_same_requests(
        platform: Platform, two_replicas: list[Any]) -> None:
    import ray

    start_logging, logged = _replica_calls()
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
    # The sketch answers nearest-rank quantiles (NumPy's inverted_cdf) within 1%.
    exact = np.quantile(exact_values, [0.5, 0.95, 0.99], method="inverted_cdf") * 1000
    reported = np.array([seen["p50_ms"], seen["p95_ms"], seen["p99_ms"]])
    print(f"\nexact p50/p95/p99 ms {exact.round(4).tolist()}, Monitor {reported.round(4).tolist()}, "
          f"requests per replica {[len(v) for v in per_replica]}")
    assert np.all(np.abs(reported - exact) <= RELATIVE_ACCURACY * exact + 1e-9), (reported, exact)
