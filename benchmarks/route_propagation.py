"""How long a route-table change takes to reach the replicas, and whether any restarts.

    python -m benchmarks.route_propagation [--changes 10] [--replicas 2]

Deploys a two-version endpoint with several replicas, then changes the weights
repeatedly through the control plane and times, for each change, the wait from the REST
call returning until every replica answers with the new table (each replica is asked
until all report it). Replica ids before and after show whether any replica restarted.
Results: benchmarks/results/route_propagation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"


def replicas_with(url: str, want: dict[str, float], replicas: int, timeout: float = 30.0) -> float:
    """Seconds until ``replicas`` distinct replicas have answered with weights ``want``."""
    started = time.monotonic()
    seen: set[str] = set()
    with httpx.Client(timeout=10) as http:
        while time.monotonic() - started < timeout:
            meta = http.get(url)
            if meta.status_code == 200 and meta.json()["parameters"]["weights"] == want:
                seen.add(meta.headers["x-modelplane-replica"])
                if len(seen) >= replicas:
                    return time.monotonic() - started
            else:
                seen.clear()
    raise RuntimeError(f"weights {want} did not reach {replicas} replicas in {timeout}s")


def main() -> None:
    import ray
    from ray import serve

    from serving.names import endpoint_url
    from tests.conftest import free_port
    from tests.onnx_models import linear_classifier, linear_classifier_manifest
    from tests.platform import start_platform_on_session

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mpr"))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=str(root / "ray"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    platform = start_platform_on_session(port, root / "home")
    with platform.client() as client:
        for seed in (1, 2):
            client.register_version("prop", linear_classifier(seed=seed), linear_classifier_manifest())
        client.deploy("prop", "prop:1", scaling={"replicas": args.replicas, "num_cpus": 0.25})
        client.deploy("prop", "prop:2")
        url = endpoint_url(platform.url, "prop")
        replicas_with(url, {"1": 100.0, "2": 0.0}, args.replicas, timeout=300)
        ids_before = _replica_ids(url, args.replicas)
        durations = []
        for index in range(args.changes):
            share = float(10 * (index % 9 + 1))
            client.set_traffic("prop", {1: 100.0 - share, 2: share})
            durations.append(replicas_with(url, {"1": 100.0 - share, "2": share}, args.replicas))
        ids_after = _replica_ids(url, args.replicas)
    result = {
        "replicas": args.replicas, "changes": args.changes,
        "seconds_after_rest_call": {"median": statistics.median(durations), "max": max(durations),
                                    "all": durations},
        "target_seconds": 1.0, "met": max(durations) <= 1.0,
        "replica_ids_unchanged": ids_before == ids_after,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "route_propagation.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    serve.shutdown()
    ray.shutdown()


def _replica_ids(url: str, replicas: int) -> set[str]:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    ids: set[str] = set()
    with httpx.Client(timeout=10) as http:
        for _ in range(200):
            ids.add(http.post(f"{url}/infer", json=body).headers["x-modelplane-replica"])
            if len(ids) >= replicas:
                break
    return ids


if __name__ == "__main__":
    main()
