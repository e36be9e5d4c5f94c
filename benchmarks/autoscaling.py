"""Autoscaling, scale to zero and load shedding under real load, on a three-node Ray cluster.

    python -m benchmarks.autoscaling [--steps 2:30,8:45,16:45,0:60] [--results autoscaling]

A head and two worker nodes on loopback (tests.cluster, the helper the cluster tests use),
the platform on the head, a model taking about 20 ms a request served on the workers:

1. **Stepped load.** Locust (``benchmarks/locust_steps.py``) drives the endpoint, deployed
   ``--autoscale 1:4 --target-ongoing 2``, through ``--steps``; the replica count is read
   from ``GET /api/cluster`` every second. Reported: how long after each step up the
   replicas reached their most, and how long after the load stopped they were back to one.
2. **Scale to zero.** An endpoint with ``--autoscale 0:1`` left idle scales to zero; the
   first request after that is timed (the cold start).
3. **Overload.** Thirty-two callers at once on one replica, with ``--max-queued 4`` and
   without: how many were answered, shed (503 with Retry-After) or failed, and the p99 of
   those answered.

Every node shares this machine's cores (the core count is in the results): the figures
show the behaviour, not a cluster's capacity. Results: benchmarks/results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.load_steps import parse_steps

RESULTS = Path(__file__).resolve().parent / "results"
ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                   "data": [0.1, 0.2, 0.3, 0.4]}]}
ON_WORKERS = {"resources": {"worker": 0.01}, "num_cpus": 0.1}


def running(api: Any, endpoint: str) -> int:
    return sum(r.state == "RUNNING" for r in api.cluster().replicas if r.endpoint == endpoint)


def replicas_in_any_state(api: Any, endpoint: str) -> int:
    return sum(r.endpoint == endpoint for r in api.cluster().replicas)


def wait_count(api: Any, endpoint: str, count: int, timeout: float) -> float:
    """Seconds until ``count`` replicas run (zero: until none is left in any state)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        found = running(api, endpoint) if count else replicas_in_any_state(api, endpoint)
        if found == count:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"{endpoint} did not reach {count} running replicas in {timeout:.0f}s")


def stepped_load(api: Any, url: str, steps: str, work: Path) -> dict[str, Any]:
    api.deploy("elastic", "slow:1", scaling={
        **ON_WORKERS, "autoscaling": {"min_replicas": 1, "max_replicas": 4,
                                      "target_ongoing_requests": 2, "upscale_delay_s": 2,
                                      "downscale_delay_s": 10, "look_back_period_s": 10}})
    wait_count(api, "elastic", 1, 180)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    started = time.time()

    def sample() -> None:
        while not stop.is_set():
            # A slow answer under load is skipped: the next second's sample counts.
            with contextlib.suppress(Exception):
                samples.append((time.time() - started, running(api, "elastic")))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    locust = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locust_steps.py")),
         "--host", url, "--headless", "--csv", str(work / "steps"), "--csv-full-history",
         "--only-summary"],
        env={**os.environ, "MODELPLANE_ENDPOINT": "elastic", "MODELPLANE_STEPS": steps,
             "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True, text=True, timeout=3600)
    if locust.returncode not in (0, 1):  # 1: some requests failed, which is reported
        raise RuntimeError(f"locust failed:\n{locust.stderr[-3000:]}")
    load_ended = time.time() - started
    settle_deadline = time.monotonic() + 180
    while time.monotonic() < settle_deadline and (not samples or samples[-1][1] > 1):
        time.sleep(1)
    time.sleep(2)
    stop.set()
    sampler.join()
    history = _locust_history(work / "steps_stats_history.csv", started)
    # Steps count from Locust's start, a second or two after its process was: read that off
    # its first row and put every time on the steps' clock.
    offset = history[0]["t"] if history else 0.0
    samples = [(t - offset, n) for t, n in samples]
    history = [{**row, "t": row["t"] - offset} for row in history]
    return {"steps": steps, "replicas": samples, "history": history,
            "load_ended_s": load_ended - offset, **_scaling_times(steps, samples),
            "requests": sum(int(r["requests"]) for r in history[-1:]),
            "failures": sum(int(r["failures"]) for r in history[-1:])}


def _locust_history(path: Path, started: float) -> list[dict[str, float]]:
    rows = []
    with open(path) as handle:
        for row in csv.DictReader(handle):
            if row["Name"] != "Aggregated":
                continue
            users = float(row["User Count"])
            rows.append({"t": float(row["Timestamp"]) - started, "users": users,
                         # Locust keeps showing its last rate once no user runs.
                         "rps": float(row["Requests/s"]) if users else 0.0, "failures_per_s": float(row["Failures/s"]),
                         "p99_ms": float(row["99%"]) if row["99%"] not in ("N/A", "") else float("nan"),
                         "requests": float(row["Total Request Count"]),
                         "failures": float(row["Total Failure Count"])})
    return rows


def _scaling_times(steps: str, samples: list[tuple[float, int]]) -> dict[str, Any]:
    """Per step: the most replicas seen during it and when it was first reached."""
    out, at = [], 0.0
    for users, seconds in parse_steps(steps):
        during = [(t, n) for t, n in samples if at <= t < at + seconds]
        most = max((n for _, n in during), default=0)
        reached = next((t - at for t, n in during if n == most), None)
        out.append({"users": users, "seconds": seconds, "most_replicas": most,
                    "reached_after_s": reached})
        at += seconds
    last_loaded = max((at_end for at_end in _step_ends(steps, loaded_only=True)), default=0.0)
    back = next((t - last_loaded for t, n in samples if t >= last_loaded and n == 1), None)
    return {"per_step": out, "back_to_one_after_s": back}


def _step_ends(steps: str, *, loaded_only: bool) -> list[float]:
    ends, at = [], 0.0
    for users, seconds in parse_steps(steps):
        at += seconds
        if users or not loaded_only:
            ends.append(at)
    return ends


def scale_to_zero(api: Any, url: str) -> dict[str, Any]:
    api.deploy("idle", "fast:1", scaling={
        **ON_WORKERS, "autoscaling": {"min_replicas": 0, "max_replicas": 1,
                                      "downscale_delay_s": 2, "look_back_period_s": 2}})
    wait_count(api, "idle", 1, 180)
    cold = []
    for _ in range(3):
        to_zero = wait_count(api, "idle", 0, 300)
        started = time.monotonic()
        answer = httpx.post(f"{url}/v2/models/idle/infer", json=ROW, timeout=300)
        cold.append({"to_zero_s": to_zero, "cold_start_s": time.monotonic() - started,
                     "status": answer.status_code})
    return {"runs": cold}


def overload(api: Any, url: str, *, callers: int = 32, seconds: float = 15) -> dict[str, Any]:
    out = {}
    for name, queue in (("shed", 4), ("unbounded", None)):
        endpoint = f"overload-{name}"
        scaling: dict[str, Any] = {**ON_WORKERS, "replicas": 1, "max_ongoing_requests": 2}
        if queue is not None:
            scaling["max_queued_requests"] = queue
        api.deploy(endpoint, "slow:1", scaling=scaling)
        wait_count(api, endpoint, 1, 180)
        out[name] = {"max_queued_requests": queue,
                     **_hammer(f"{url}/v2/models/{endpoint}/infer", callers, seconds)}
        api.undeploy(endpoint)
    return {"callers": callers, "seconds": seconds, **out}


def _hammer(infer_url: str, callers: int, seconds: float) -> dict[str, Any]:
    """``callers`` threads posting back to back for ``seconds``; every outcome counted."""
    statuses: Counter[str] = Counter()
    retry_after: Counter[str] = Counter()
    answered_ms: list[float] = []
    deadline = time.monotonic() + seconds

    def call() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    answer = http.post(infer_url, json=ROW)
                except httpx.HTTPError as error:
                    statuses[type(error).__name__] += 1
                    continue
                statuses[str(answer.status_code)] += 1
                if answer.status_code == 200:
                    answered_ms.append(1000 * (time.perf_counter() - started))
                else:
                    retry_after[answer.headers.get("retry-after", "none")] += 1
                    time.sleep(0.05)  # a shed caller backs off a little, as clients do

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = np.asarray(answered_ms)
    return {"statuses": dict(statuses), "retry_after": dict(retry_after),
            "answered_per_s": len(values) / seconds,
            "p50_ms": float(np.percentile(values, 50)) if values.size else None,
            "p99_ms": float(np.percentile(values, 99)) if values.size else None}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = result["stepped"]
    history = load["history"]
    figure, (users_axis, replica_axis, p99_axis) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    times = [r["t"] for r in history]
    users_axis.plot(times, [r["users"] for r in history], label="Locust users", color="tab:gray")
    rate_axis = users_axis.twinx()
    rate_axis.plot(times, [r["rps"] for r in history], label="requests/s", color="tab:blue")
    users_axis.set_ylabel("users")
    rate_axis.set_ylabel("requests/s")
    users_axis.set_title("Autoscaling 1..4 replicas, target 2 ongoing requests each")
    replica_axis.step([t for t, _ in load["replicas"]], [n for _, n in load["replicas"]],
                      where="post", color="tab:green")
    replica_axis.set_ylabel("running replicas")
    p99_axis.plot(times, [r["p99_ms"] for r in history], color="tab:red")
    p99_axis.set_ylabel("p99 ms (Locust, 10 s window)")
    p99_axis.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(result: dict[str, Any], name: str) -> str:
    load, zero, shed = result["stepped"], result["scale_to_zero"], result["overload"]
    lines = [
        "# Autoscaling, scale to zero and shedding on a three-node loopback cluster",
        "",
        f"`python -m benchmarks.autoscaling` on {result['cores']} cores shared by a Ray head and "
        "two worker nodes (tests.cluster); a model taking about 20 ms a request, replicas on "
        "the workers. Figures show behaviour, not a cluster's capacity.",
        "",
        f"![load, replicas and p99 over time]({name}.png)",
        "",
        f"## Stepped load (`--autoscale 1:4 --target-ongoing 2`, steps {load['steps']})",
        "",
        "| users | seconds | most replicas | reached after |",
        "|---:|---:|---:|---:|",
        *(f"| {s['users']} | {s['seconds']:g} | {s['most_replicas']} | "
          + (f"{s['reached_after_s']:.0f} s |" if s["reached_after_s"] is not None else "- |")
          for s in load["per_step"]),
        "",
        f"Back to one replica {load['back_to_one_after_s']:.0f} s after the load stopped"
        if load["back_to_one_after_s"] is not None else "Not back to one replica in 180 s",
        f"(downscale delay 10 s, look-back 10 s). Locust: {load['requests']:.0f} requests, "
        f"{load['failures']:.0f} failed.",
        "",
        "## Scale to zero (`--autoscale 0:1`)",
        "",
        "| run | idle until zero replicas | first request answered in | status |",
        "|---:|---:|---:|---:|",
        *(f"| {i + 1} | {r['to_zero_s']:.1f} s | {r['cold_start_s']:.2f} s | {r['status']} |"
          for i, r in enumerate(zero["runs"])),
        "",
        f"## Overload: {shed['callers']} callers for {shed['seconds']:g} s on one replica "
        "(2 running at a time)",
        "",
        "| max_queued_requests | answered/s | p50 ms | p99 ms | statuses | Retry-After |",
        "|---|---:|---:|---:|---|---|",
        *(f"| {shed[k]['max_queued_requests'] or 'none'} | {shed[k]['answered_per_s']:.1f} | "
          f"{shed[k]['p50_ms'] or 0:.0f} | {shed[k]['p99_ms'] or 0:.0f} | {shed[k]['statuses']} | "
          f"{shed[k]['retry_after'] or '-'} |" for k in ("shed", "unbounded")),
        "",
        "With the bound, a request either waits behind at most four others or is told at once "
        "to come back (503, `Retry-After: 1`); without it, every request waits behind all the "
        "others and the p99 grows with the number of callers. Fewer are answered per second "
        "with the bound here because the refused callers, retrying every 50 ms, take their "
        "share of the same two cores; on a cluster they are a load balancer's and clients' work.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="2:30,8:45,16:45,0:60")
    parser.add_argument("--results", default="autoscaling")
    args = parser.parse_args()

    from control_plane.client import Client
    from modelplane.settings import Settings
    from tests.cluster import LoopbackCluster
    from tests.onnx_models import (
        calibrate_slow,
        linear_classifier,
        linear_classifier_manifest,
        slow_classifier,
    )

    cluster = LoopbackCluster(num_cpus=2, workers=2, worker_cpus=2).start()
    try:
        env = cluster.up_platform(MODELPLANE_GRPC_PORT="0", MODELPLANE_PROXY_LOCATION="HeadOnly",
                                  MODELPLANE_HTTP_HOST="0.0.0.0")
        settings = Settings.from_env(env)
        url = env["MODELPLANE_URL"]
        with Client(url, settings.resolved_token(), settings=settings) as api, \
                tempfile.TemporaryDirectory() as work:
            api.register_version("fast", linear_classifier(), linear_classifier_manifest())
            api.register_version("slow", slow_classifier(calibrate_slow(20.0)),
                                 linear_classifier_manifest())
            print("stepped load ...", flush=True)
            stepped = stepped_load(api, url, args.steps, Path(work))
            print("scale to zero ...", flush=True)
            zero = scale_to_zero(api, url)
            print("overload ...", flush=True)
            shed = overload(api, url)
    finally:
        cluster.stop()
    result = {"cores": os.cpu_count(), "stepped": stepped, "scale_to_zero": zero,
              "overload": shed, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / f"{args.results}.png")
    text = report(result, args.results)
    (RESULTS / f"{args.results}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
