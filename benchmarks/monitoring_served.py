"""Monitoring's cost on the served path: one replica, monitoring switched on and off.

    python -m benchmarks.monitoring_served [--seconds 6] [--rounds 8] [--rate R]

The small MLP (benchmarks/serving.py's SMALL) as a 90/10 canary of two versions that
carry a reference profile, so drift, data quality and the feedback store all run, behind
the fast ingress ``modelplane up`` picks (HAProxy), with the server side pinned to core 0
and the load client to core 1. The endpoint is deployed through the control plane as a
user would; the measured twin runs exactly the configuration the reconciler gave it, on
its own route, and the rounds alternate monitoring on and off by reconfiguring that one
live replica (Serve's ``user_config``; the benchmark checks the replica was not replaced),
so both modes run in the same process behind the same route. Two replicas measured side
by side differed by 5-7% in CPU per request whichever of them monitored, more than the
effect measured here; one replica toggled removes that.

Throughput on a shared 2-core machine moves 10-20% between rounds, far more than the 3%
being measured, so the decisive figure is CPU time per request: the replica's own process
(user + system time over the round, divided by the requests it answered), the Monitor
actor's (it merges the shipped statistics), and the whole server side (every process of
the Ray session plus HAProxy). CPU time is what a monitored request costs whatever else
shares the core, and the server side's CPU per request is what bounds throughput on a
pinned core.

A saturated replica's CPU per request is not a constant: the busier its event loop, the
more requests each wake-up serves, so anything that slows it a little also takes away
some of that batching, and the saturated rounds magnify a small cost. Each saturated
round is therefore followed by one in the same mode at one offered rate for both modes
(open loop, ``--rate``, by default a quarter of the first round's throughput), where both do
the same work and CPU per request is what monitoring costs. Results:
benchmarks/results/monitoring_served.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import (
    SMALL,
    body,
    fast_platform,
    measure,
    mlp,
    profiled_manifest,
    wait_serving,
)

RESULTS = Path(__file__).parent / "results"
TWIN, TWIN_APP = "b-twin", "bench-monitoring-twin"
GOAL = 0.97  # throughput with monitoring on / off
# The open-loop rounds offer this share of the first saturated round's throughput.
FIXED_SHARE = 0.25


def component_costs(requests_per_shipment: int = 800, repeats: int = 5) -> dict[str, float]:
    """What monitoring adds to one replica per request, part by part, timed in this process
    on the benchmark's two versions: the request path's ``record`` and ``observe``, and
    the shipping thread's ``to_delta`` (the kernels) and pickling, over shipments the size
    of a second of the served load. Precise where the served rounds are noisy."""
    import hashlib
    import pickle

    import onnxruntime as ort

    from serving.core import new_request_id
    from serving.monitoring.observations import VersionMonitoring
    from serving.monitoring.stats import StatsRecorder
    from serving.schemas import VersionConfig

    monitoring, outputs = {}, {}
    row = {"input": np.random.default_rng(3).normal(size=(1, SMALL[0])).astype(np.float32)}
    for version in (1, 2):
        model = mlp(SMALL, version)
        described = profiled_manifest(SMALL, model)
        config = VersionConfig.model_validate({
            "version": version, "model": "bench-small", "artifact_url": "http://unused",
            "digest": hashlib.sha256(model).hexdigest(), "task": described["task"],
            "reference_profile": described["reference_profile"], **described["signature"]})
        monitoring[version] = VersionMonitoring.build(config)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        outputs[version] = {"output": session.run(None, row)[0]}
    request_path, shipping, pickling, shipped_bytes = [], [], [], []
    for _ in range(repeats + 1):  # the first fills the kernels' caches (Numba, layouts)
        recorder = StatsRecorder(monitoring=monitoring)
        ids = [new_request_id() for _ in range(requests_per_shipment)]
        arrays = [{"input": row["input"].copy()} for _ in ids]
        started = time.process_time()
        for index, request_id in enumerate(ids):
            version = 2 if index % 10 == 0 else 1
            recorder.record(version, 200, 0.0005 + index * 1e-7)
            recorder.observe(version, request_id, arrays[index], outputs[version], None)
        recorded = time.process_time()
        delta = recorder.to_delta()
        delivered = time.process_time()
        payload = pickle.dumps(delta, protocol=5)
        pickled = time.process_time()
        request_path.append(recorded - started)
        shipping.append(delivered - recorded)
        pickling.append(pickled - delivered)
        shipped_bytes.append(len(payload))

    def per_request_us(seconds: list[float]) -> float:
        return float(np.median(seconds[1:])) * 1e6 / requests_per_shipment

    return {"requests_per_shipment": requests_per_shipment,
            "request_path_us": per_request_us(request_path),
            "to_delta_us": per_request_us(shipping), "pickle_us": per_request_us(pickling),
            "shipment_bytes": int(np.median(shipped_bytes[1:]))}


def deployed_user_config(app: str) -> dict[str, Any]:
    """The ``user_config`` Serve holds for ``app``'s one deployment."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    (deployment,) = details["applications"][app]["deployments"].values()
    return dict(deployment["deployment_config"]["user_config"])


def replica_pid(app: str) -> int:
    """The process of ``app``'s one Serve replica (Ray's state API)."""
    from ray.util.state import list_actors

    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
        if (actor.name or "").startswith(f"SERVE_REPLICA::{app}#"):
            return int(actor.pid)
    raise RuntimeError(f"no live replica of {app}")


def server_processes(ray_root: Path) -> list[Any]:
    """Every process of the server side: the Ray session's (their command lines name its
    temporary directory or they descend from a process that does) and HAProxy."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline", "name"])
             if str(ray_root) in " ".join(p.info["cmdline"] or ()) or "haproxy" in (p.info["name"] or "")]
    found = {p.pid: p for p in roots}
    for process in roots:
        try:
            found.update({c.pid: c for c in process.children(recursive=True)})
        except psutil.Error:
            continue
    return list(found.values())


def cpu_seconds(processes: list[Any]) -> float:
    return sum(seconds for _, seconds in cpu_by_process(processes).values())


def cpu_by_process(processes: list[Any]) -> dict[int, tuple[str, float]]:
    """(title, CPU seconds) per process id. Ray titles a worker after the actor it hosts
    and, while a call runs, the method too ("ray::MonitorActor.record"): the method is cut
    off so a process keeps one name."""
    import psutil

    found: dict[int, tuple[str, float]] = {}
    for process in processes:
        try:
            times = process.cpu_times()
            title = (process.cmdline() or [process.name()])[0].split()[0]
        except psutil.Error:
            continue
        if title.startswith("ray::"):
            title = title.split(".")[0]
        found[process.pid] = (title[:60], times.user + times.system)
    return found


def measured_round(url: str, payload: bytes, args: argparse.Namespace, replica: Any,
                   server: list[Any]) -> dict[str, Any]:
    """One load round with the CPU the replica and the server side spent on it."""
    replica_before, server_before = cpu_seconds([replica]), cpu_seconds(server)
    processes_before = cpu_by_process(server)
    result: dict[str, Any] = measure(url, payload, args)
    processes_after = cpu_by_process(server)
    replica_cpu, server_cpu = cpu_seconds([replica]) - replica_before, cpu_seconds(server) - server_before
    requests = result["throughput_requests"] + (args.sequential + 20 if args.sequential else 0)
    result["replica_cpu_ms_per_request"] = 1000 * replica_cpu / requests
    result["server_cpu_ms_per_request"] = 1000 * server_cpu / requests
    spent: dict[str, float] = {}
    for pid, (title, seconds) in processes_after.items():
        spent[title] = spent.get(title, 0.0) + seconds - processes_before.get(pid, (title, 0.0))[1]
    result["server_process_ms_per_request"] = {
        title: round(1000 * seconds / requests, 4) for title, seconds in spent.items() if seconds > 0}
    result["monitor_cpu_ms_per_request"] = sum(
        v for k, v in result["server_process_ms_per_request"].items() if "MonitorActor" in k)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    import ray
    from ray import serve

    from serving.applications import build_endpoint_app
    from serving.monitoring.monitor import get_monitor
    from serving.names import endpoint_app_name, endpoint_route_prefix, endpoint_url
    from serving.schemas import EndpointConfig

    with fast_platform("mpm") as (root, settings, client):
        base = settings.url
        for seed in (1, 2):
            model = mlp(SMALL, seed)
            client.register_version("bench-small", model, profiled_manifest(SMALL, model))
        canary = {1: 90.0, 2: 10.0}
        scaling = {"num_cpus": 0.5, "max_ongoing_requests": 64}
        client.deploy("b-mon", "bench-small:1", scaling=scaling)
        client.deploy("b-mon", "bench-small:2", scaling=scaling)
        client.set_traffic("b-mon", canary)
        wait_serving(endpoint_url(base, "b-mon"), {1, 2}, canary)
        # The measured twin: exactly the configuration the reconciler gave "b-mon", on
        # its own route, with monitoring switched between rounds by reconfiguring the one
        # live replica, so both modes run in the same process behind the same route. Its
        # weights are the canary's: a traffic change reaches b-mon's replicas on the route
        # board, and its Serve user_config keeps the routes of an earlier generation.
        deployed = deployed_user_config(endpoint_app_name("b-mon"))
        routes = {**deployed["routes"], "weights": canary}

        def deploy_twin(monitoring: bool) -> None:
            config = EndpointConfig.model_validate({**deployed, "endpoint": TWIN, "routes": routes,
                                                    "monitoring": monitoring})
            serve.run(build_endpoint_app(config, env={}), name=TWIN_APP,
                      route_prefix=endpoint_route_prefix(TWIN))

        deploy_twin(True)
        wait_serving(endpoint_url(base, TWIN), {1, 2}, canary)
        payload = body(SMALL[0])
        url = endpoint_url(base, TWIN, "infer")
        replica = psutil.Process(replica_pid(TWIN_APP))
        server = server_processes(root)
        warm = argparse.Namespace(sequential=50, seconds=2.0)
        rounds: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
        fixed: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
        fixed_rate = args.rate
        current = "on"
        for index in range(args.rounds):
            for mode in (("off", "on") if index % 2 == 0 else ("on", "off")):
                if mode != current:
                    deploy_twin(mode == "on")
                    current = mode
                    time.sleep(2)
                    measure(url, payload, warm)
                if replica_pid(TWIN_APP) != replica.pid:
                    raise RuntimeError("the twin's replica was replaced; a reconfigure must not restart it")
                result = measured_round(url, payload, args, replica, server)
                print(f"  round {index + 1} {mode}: {result}")
                rounds[mode].append(result)
                # The same mode again at one offered rate for both, below saturation.
                fixed_rate = fixed_rate or FIXED_SHARE * round(result["throughput_rps"], -1)
                offered = argparse.Namespace(sequential=0, seconds=args.seconds, rate=fixed_rate)
                result = measured_round(url, payload, offered, replica, server)
                print(f"  round {index + 1} {mode} at {fixed_rate:.0f} req/s: {result}")
                fixed[mode].append(result)
        deploy_twin(True)
        time.sleep(3)  # the last shipment reaches the Monitor
        snapshot = ray.get(get_monitor().snapshot.remote(TWIN, 3600))
        return {"rounds": rounds, "fixed_rate_rounds": fixed, "fixed_rate": fixed_rate,
                "monitor_rows_seen": _rows_seen(snapshot)}


def _rows_seen(snapshot: dict[int, Any]) -> dict[str, Any]:
    """Evidence that monitoring really ran in the "on" rounds: rows the Monitor accounted
    and whether drift had a verdict, per version."""
    return {str(version): {"rows": shot.quality.rows, "drift_checked": bool(shot.drift.features)}
            for version, shot in snapshot.items()}


def _per_mode(rounds: dict[str, list[dict[str, Any]]], medians: tuple[str, ...],
              sums: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Per mode, the median of each of ``medians`` over its rounds and, for each name in
    ``sums``, the total of those keys; and both CPU ratios, off / on (requests per
    CPU-second, on / off: the throughput a core saturated by the server gives)."""
    summary: dict[str, Any] = {}
    for mode, results in rounds.items():
        summary[mode] = {key: float(np.median([r[key] for r in results])) for key in medians}
        for name, keys in sums.items():
            summary[mode][name] = int(sum(r[key] for r in results for key in keys))
    for part in ("server", "replica"):
        key = f"{part}_cpu_ms_per_request"
        summary[f"{part}_cpu_ratio"] = summary["off"][key] / summary["on"][key]
    return summary


def summarise(rounds: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    summary = _per_mode(rounds, ("throughput_rps", "p50_ms", "p99_ms", "replica_cpu_ms_per_request",
                                 "server_cpu_ms_per_request", "monitor_cpu_ms_per_request"),
                        {"failures": ("throughput_failures", "sequential_failures")})
    summary["throughput_ratio"] = summary["on"]["throughput_rps"] / summary["off"]["throughput_rps"]
    summary["p50_ratio"] = summary["on"]["p50_ms"] / summary["off"]["p50_ms"]
    # Per round pair, so a round that shared the machine with something else shows.
    summary["round_ratios"] = [a["throughput_rps"] / b["throughput_rps"]
                               for a, b in zip(rounds["on"], rounds["off"], strict=True)]
    return summary


def summarise_fixed(rounds: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """The open-loop rounds: both modes did the same work, so CPU per request compares
    what monitoring costs without the batching a saturated replica gains or loses."""
    summary = _per_mode(rounds, ("throughput_rps", "open_p50_ms", "open_p99_ms",
                                 "replica_cpu_ms_per_request", "server_cpu_ms_per_request"),
                        {"failures": ("throughput_failures",), "late_sends": ("late_sends",)})
    summary["round_ratios"] = [b["server_cpu_ms_per_request"] / a["server_cpu_ms_per_request"]
                               for a, b in zip(rounds["on"], rounds["off"], strict=True)]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rate", type=float, default=0.0,
                        help=f"open-loop rounds' req/s (0: {FIXED_SHARE} of the first round's throughput)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # the server side; the load client pins itself to core 1
    load_before = os.getloadavg()[0]
    parts = component_costs()
    result = run(args)
    summary = summarise(result["rounds"])
    fixed = summarise_fixed(result["fixed_rate_rounds"])
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
              "settings": vars(args), "load_average": {"before": load_before, "after": os.getloadavg()[0]},
              "monitor_rows_seen": result["monitor_rows_seen"], "rounds": result["rounds"],
              "fixed_rate": result["fixed_rate"], "fixed_rate_rounds": result["fixed_rate_rounds"],
              "component_costs": parts,
              "summary": summary, "fixed_rate_summary": fixed,
              "target": {"name": "requests per server CPU-second, monitoring on / off (served, fast ingress)",
                         "value": summary["server_cpu_ratio"], "goal": GOAL,
                         "met": summary["server_cpu_ratio"] >= GOAL}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "monitoring_served.json").write_text(json.dumps(report, indent=2))
    write_markdown(report)


def write_markdown(report: dict[str, Any]) -> None:
    """benchmarks/results/monitoring_served.md from the report main() writes as JSON."""
    settings, summary, fixed = report["settings"], report["summary"], report["fixed_rate_summary"]
    parts, load_before = report["component_costs"], report["load_average"]["before"]
    on, off = summary["on"], summary["off"]
    lines = [
        "# Monitoring on the served path", "",
        f"Run {report['when']}, Python {report['python']}; small MLP, 90/10 canary, fast ingress; "
        f"server pinned to core 0, client to core 1; {settings['rounds']} alternating rounds of "
        f"{settings['seconds']:g} s at 32 concurrent requests; load average {load_before:.1f} before, "
        f"{report['load_average']['after']:.1f} after.", "",
        "| monitoring | replica CPU ms / request | Monitor CPU ms / request | server CPU ms / request | req/s | seq p50 ms | seq p99 ms | failures |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {mode} | {row['replica_cpu_ms_per_request']:.3f} | {row['monitor_cpu_ms_per_request']:.4f} | "
          f"{row['server_cpu_ms_per_request']:.3f} | "
          f"{row['throughput_rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['failures']} |"
          for mode, row in (("on", on), ("off", off))),
        "",
        "Medians over rounds. Requests per server CPU-second, on / off: "
        f"**{summary['server_cpu_ratio']:.3f}** (goal >= {GOAL}; "
        f"{'met' if report['target']['met'] else 'not met'}); the replica alone: "
        f"{summary['replica_cpu_ratio']:.3f}. Throughput on / off {summary['throughput_ratio']:.3f} "
        "(per round: " + ", ".join(f"{r:.3f}" for r in summary["round_ratios"])
        + "; rounds move more than the effect measured).",
        "",
        f"At one offered rate for both modes ({report['fixed_rate']:.0f} req/s, open loop, rounds of "
        f"{settings['seconds']:g} s after each saturated round), where each does the same work:",
        "",
        "| monitoring | replica CPU ms / request | server CPU ms / request | req/s | p50 ms | p99 ms | late sends | failures |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {mode} | {row['replica_cpu_ms_per_request']:.3f} | {row['server_cpu_ms_per_request']:.3f} | "
          f"{row['throughput_rps']:.0f} | {row['open_p50_ms']:.2f} | {row['open_p99_ms']:.2f} | "
          f"{row['late_sends']} | {row['failures']} |"
          for mode, row in (("on", fixed["on"]), ("off", fixed["off"]))),
        "",
        f"Requests per replica CPU-second at that rate, on / off: **{fixed['replica_cpu_ratio']:.3f}**; "
        f"per server CPU-second {fixed['server_cpu_ratio']:.3f} (per round: "
        + ", ".join(f"{r:.3f}" for r in fixed["round_ratios"]) + "). Below saturation the server "
        "side's own background work (Serve's controller, the dashboard, the control plane's "
        "loops) is most of its CPU per request and moves between rounds; the replica's is "
        "what monitoring adds to.",
        "",
        f"By part, timed in one process over shipments of {parts['requests_per_shipment']} requests "
        f"(a second of this load): the request path (record, observe) {parts['request_path_us']:.2f} µs, "
        f"the shipping thread's kernels (to_delta) {parts['to_delta_us']:.2f} µs and pickling "
        f"{parts['pickle_us']:.2f} µs per request, {parts['shipment_bytes'] / 1024:.0f} KiB a shipment: "
        f"{sum(parts[k] for k in ('request_path_us', 'to_delta_us', 'pickle_us')):.1f} µs in all, "
        f"{100 * sum(parts[k] for k in ('request_path_us', 'to_delta_us', 'pickle_us')) / 1000 / off['replica_cpu_ms_per_request']:.1f}% "
        "of the unmonitored replica's CPU per request; the Monitor's merge adds "
        f"{1000 * (on['monitor_cpu_ms_per_request'] - off['monitor_cpu_ms_per_request']):.1f} µs "
        f"({100 * (on['monitor_cpu_ms_per_request'] - off['monitor_cpu_ms_per_request']) / off['server_cpu_ms_per_request']:.1f}% of the server side's).",
        f"Rows the Monitor accounted for the twin (its \"on\" rounds), per version: {report['monitor_rows_seen']}.",
        "",
    ]
    (RESULTS / "monitoring_served.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
