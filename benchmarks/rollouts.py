"""How fast a breaching canary is rolled back, and what rollbacks and promotions cost clients.

    python -m benchmarks.rollouts [--repeats 3] [--interval 1]

On a local Ray + Serve with the whole platform, under background load:

- rollback: v2 (a model that fails whenever a row's first feature is positive) takes 50%
  as a canary while the load sends only negative first features, so it is healthy. At
  the onset the load switches to unrestricted rows and v2 starts failing half of its
  requests. Measured: seconds from the onset until the endpoint serves v1 at 100%, for
  one and for two consecutive failing analyses needed (target: that many analysis
  intervals plus at most 1 s), and failed requests that were not v2's own.
- promotion: a healthy v2 walks 50% → 100% and v1 is drained and removed. Measured:
  failed requests (target: none).

Results: benchmarks/results/rollouts.json and rollouts.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

RESULTS = Path(__file__).parent / "results"


def _weights(url: str, http: httpx.Client) -> dict[str, float]:
    return http.get(url).json()["parameters"]["weights"]


def rollback_once(platform: Any, name: str, interval: float, failures_needed: int) -> dict[str, Any]:
    from serving.names import endpoint_url
    from tests.load import BackgroundLoad
    from tests.onnx_models import flaky_classifier, linear_classifier, linear_classifier_manifest
    from tests.waiting import wait_for

    healthy_rows = lambda row: np.concatenate([-np.abs(row[:, :1]) - 0.01, row[:, 1:]], axis=1)  # noqa: E731
    with platform.client() as client:
        client.register_version(name, linear_classifier(seed=1), linear_classifier_manifest())
        client.register_version(name, flaky_classifier(0.0, seed=1), linear_classifier_manifest())
        client.deploy(name, f"{name}:1", scaling={"num_cpus": 0.1})
        platform.wait_endpoint(name, {1})
        url = endpoint_url(platform.url, name)
        with BackgroundLoad(platform.url, name, workers=4, shape_rows=healthy_rows) as load, \
                httpx.Client(timeout=10) as http:
            rollout = client.start_rollout({
                "endpoint": name, "model_ref": f"{name}:2", "steps": [50, 100],
                "step_duration_s": 3600, "drain_s": 1,
                "analysis": {"interval_s": interval, "window_s": 2, "min_samples": 10,
                             "failures_to_rollback": failures_needed, "max_p95_ratio": None}})
            wait_for(lambda: client.get_rollout(rollout.id).last_analysis.get("verdict") == "pass",
                     120, "a passing analysis")
            time.sleep(1.5)  # let a window of healthy traffic pass
            onset = time.monotonic()
            load.shape_rows = None
            while _weights(url, http) != {"1": 100.0, "2": 0.0}:
                time.sleep(0.02)
            recovered = time.monotonic() - onset
            time.sleep(1)
        done = client.get_rollout(rollout.id)
        client.undeploy(name)
    failures = load.failures()
    return {
        "seconds_onset_to_stable_100": recovered,
        "state": done.state.value, "reason": done.reason,
        "requests": len(load.answers),
        "failed_requests": len(failures),
        "failed_not_candidates_own": sum(1 for f in failures if f.version != 2 or f.row[0, 0] <= 0),
        "candidate_failures_after_switch": sum(
            1 for f in failures if f.at > onset + recovered + 0.1),
    }


def promotion_once(platform: Any, name: str) -> dict[str, Any]:
    from tests.load import BackgroundLoad
    from tests.onnx_models import linear_classifier, linear_classifier_manifest
    from tests.waiting import wait_for

    with platform.client() as client:
        client.register_version(name, linear_classifier(seed=1), linear_classifier_manifest())
        client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
        client.deploy(name, f"{name}:1", scaling={"num_cpus": 0.1})
        platform.wait_endpoint(name, {1})
        with BackgroundLoad(platform.url, name, workers=4) as load:
            started = time.monotonic()
            rollout = client.start_rollout({
                "endpoint": name, "model_ref": f"{name}:2", "steps": [50, 100],
                "step_duration_s": 2, "drain_s": 1,
                "analysis": {"interval_s": 1, "window_s": 2, "min_samples": 10,
                             "max_p95_ratio": None}})
            done = wait_for(lambda: (r := client.get_rollout(rollout.id)).state.terminal and r,
                            120, "the rollout to end")
            platform.wait_weights(name, {2: 100.0})
            elapsed = time.monotonic() - started
            time.sleep(1)
        client.undeploy(name)
    return {"state": done.state.value, "seconds_to_promoted_and_drained": elapsed,
            "requests": len(load.answers), "failed_requests": len(load.failures())}


def main() -> None:
    import ray
    from ray import serve

    from tests.conftest import free_port
    from tests.platform import start_platform_on_session

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="Analysis interval, seconds.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mpro"))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=str(root / "ray"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    platform = start_platform_on_session(port, root / "home")
    rollbacks: dict[str, list[dict[str, Any]]] = {}
    for needed in (1, 2):
        rollbacks[str(needed)] = [rollback_once(platform, f"rb{needed}-{i}", args.interval, needed)
                                  for i in range(args.repeats)]
    promotions = [promotion_once(platform, f"pr-{i}") for i in range(args.repeats)]
    summary = {}
    for needed, runs in rollbacks.items():
        seconds = [r["seconds_onset_to_stable_100"] for r in runs]
        target = int(needed) * args.interval + 1.0
        summary[f"rollback_after_{needed}_failing"] = {
            "median_s": statistics.median(seconds), "max_s": max(seconds), "target_s": target,
            "met": max(seconds) <= target,
            "failed_not_candidates_own": sum(r["failed_not_candidates_own"] for r in runs),
        }
    summary["promotion"] = {"failed_requests": sum(r["failed_requests"] for r in promotions),
                            "met": all(r["failed_requests"] == 0 for r in promotions)}
    result = {"analysis_interval_s": args.interval, "repeats": args.repeats, "summary": summary,
              "rollbacks": rollbacks, "promotions": promotions}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollouts.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "rollouts.md").write_text(_markdown(result))
    print(json.dumps(summary, indent=2))
    serve.shutdown()
    ray.shutdown()


def _markdown(result: dict[str, Any]) -> str:
    lines = ["# Rollouts", "",
             f"Analysis every {result['analysis_interval_s']:g} s over a 2 s window, "
             f"{result['repeats']} runs each, under background load on this machine.", "",
             "| scenario | median | max | target | met | failed requests not the candidate's own |",
             "|---|---|---|---|---|---|"]
    for key, row in result["summary"].items():
        if key.startswith("rollback"):
            lines.append(f"| {key.replace('_', ' ')} analyses: onset → stable at 100% | "
                         f"{row['median_s']:.2f} s | {row['max_s']:.2f} s | ≤ {row['target_s']:.1f} s "
                         f"| {'yes' if row['met'] else 'no'} | {row['failed_not_candidates_own']} |")
    promotion = result["summary"]["promotion"]
    lines.append(f"| promotion 50% → 100%, old version drained and removed | | | 0 failed | "
                 f"{'yes' if promotion['met'] else 'no'} | {promotion['failed_requests']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
