"""One endpoint on a three-node Ray cluster: 1, 2 and 4 replicas over the worker nodes, and
the control plane's leader killed halfway through a run.

    python -m benchmarks.cluster [--seconds 15] [--concurrency 32] [--results cluster]

A head and two worker nodes on loopback (tests.cluster, the helper the cluster tests use);
the platform on the head with its store on PostgreSQL (scripts/test-postgres.sh, a fresh
database) and two control planes; the small MLP of benchmarks/serving.py served on the
workers. For each replica count the endpoint's throughput and latency under a closed loop
of ``--concurrency`` callers; then, with two replicas, the leading control plane is killed
(SIGKILL) halfway: every answer is counted per second, and the time until the other
control plane leads is read from ``GET /api/leadership``.

Every node, the load client and the control planes share this machine's cores (the count
is in the results), so more replicas cannot add capacity here: what the figures show is
that nothing is lost and where the cores go, not a cluster's scaling.
Results: benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.serving import SMALL, body, manifest, mlp

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


async def closed_loop(url: str, payload: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` callers back to back; every outcome counted, per second too."""
    import aiohttp

    started = time.perf_counter()
    deadline = started + seconds
    per_second: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []

    async def caller(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                async with session.post(url, data=payload,
                                        headers={"content-type": "application/json"}) as answer:
                    await answer.read()
                    outcomes[str(answer.status)] += 1
                    if answer.status == 200:
                        latencies.append(time.perf_counter() - sent)
                        per_second[int(time.perf_counter() - started)] += 1
            except aiohttp.ClientError as error:
                outcomes[type(error).__name__] += 1
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(caller(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    values = np.asarray(latencies) * 1000
    return {"rps": len(values) / elapsed, "outcomes": dict(outcomes),
            "failed": sum(n for k, n in outcomes.items() if k != "200"),
            "p50_ms": float(np.percentile(values, 50)) if values.size else None,
            "p99_ms": float(np.percentile(values, 99)) if values.size else None,
            "per_second": [per_second.get(s, 0) for s in range(int(seconds))]}


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the PostgreSQL of scripts/test-postgres.sh (started if needed)."""
    from tests.databases import PG_URL_VARIABLE, fresh_postgres_database

    if not os.environ.get(PG_URL_VARIABLE):
        started = subprocess.run([str(REPO / "scripts" / "test-postgres.sh")], capture_output=True,
                                 text=True, check=True)
        os.environ[PG_URL_VARIABLE] = started.stdout.strip().splitlines()[-1]
    with fresh_postgres_database() as url:
        yield url


def wait_running(api: Any, endpoint: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [r for r in api.cluster().replicas
                   if r.endpoint == endpoint and r.state == "RUNNING"]
        if len(running) == count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{endpoint} did not reach {count} running replicas")


def leader_killed_halfway(api: Any, infer_url: str, payload: bytes, args: argparse.Namespace
                          ) -> dict[str, Any]:
    before = api.leadership()
    holder_pid = int(str(before.holder).split(":")[2])

    async def new_leader(killed_at: float) -> tuple[Any, float | None]:
        """The lease once another term holds it, and how long after the kill that was seen."""
        while time.monotonic() - killed_at < 120:
            with contextlib.suppress(Exception):  # the killed one may have answered
                now = await asyncio.to_thread(api.leadership)
                if now.term != before.term:
                    return now, time.monotonic() - killed_at
            await asyncio.sleep(0.25)
        return before, None

    async def run() -> dict[str, Any]:
        load = asyncio.create_task(closed_loop(infer_url, payload, args.concurrency, args.seconds * 2))
        await asyncio.sleep(args.seconds)
        os.kill(holder_pid, signal.SIGKILL)
        after, seen_after_s = await new_leader(time.monotonic())
        return {"killed_at_s": args.seconds, "term_after": after.term,
                "holder_after": after.holder, "new_leader_after_s": seen_after_s, **(await load)}

    return {"term_before": before.term, "holder_before": before.holder, **asyncio.run(run())}


def report(result: dict[str, Any]) -> str:
    rows = result["replicas"]
    one = rows[0]["rps"]
    kill = result["leader_killed"]
    lines = [
        "# One endpoint on a three-node loopback cluster",
        "",
        f"`python -m benchmarks.cluster` on {result['cores']} cores, shared by a Ray head, two "
        "worker nodes, two control planes (PostgreSQL store, the artifacts on the head) and "
        f"the load client ({result['concurrency']} callers, {result['seconds']:g} s a run); "
        "the small MLP (64-256-256-10) of benchmarks/serving.py, replicas on the worker nodes.",
        "",
        "| replicas | per node | req/s | p50 ms | p99 ms | failed | efficiency |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *(f"| {r['replicas']} | {r['per_node']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
          f"{r['p99_ms']:.1f} | {r['failed']} | {r['rps'] / (r['replicas'] * one):.2f} |"
          for r in rows),
        "",
        "Efficiency is req/s over the replica count times one replica's req/s. On one machine "
        "the cores are the limit, not the replicas: the client, HAProxy and every replica take "
        "their share of the same two, so added replicas add no capacity here and efficiency "
        "falls as 1/n; on a cluster each worker brings its own cores.",
        "",
        f"## The leading control plane killed halfway (2 replicas, {2 * result['seconds']:g} s)",
        "",
        f"- answered: {sum(kill['per_second'])}, failed: {kill['failed']} "
        f"(outcomes {kill['outcomes']}); p99 {kill['p99_ms']:.1f} ms",
        f"- answers per second before the kill: {kill['per_second'][:int(kill['killed_at_s'])]}",
        f"- after: {kill['per_second'][int(kill['killed_at_s']):]}",
        f"- leadership term {kill['term_before']} -> {kill['term_after']}, the other control "
        "plane leading "
        + (f"{kill['new_leader_after_s']:.1f} s after the kill" if kill["new_leader_after_s"]
           is not None else "not within 120 s"),
        "",
        "The data path does not go through the control plane: serving goes on while the "
        "leader dies and the other takes over the loops. The dip in the seconds after the kill "
        "is Serve starting a new control-plane process on the same two cores; nothing fails.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--results", default="cluster")
    args = parser.parse_args()

    from control_plane.client import Client
    from modelplane.settings import Settings
    from tests.cluster import WORKER_RESOURCE, LoopbackCluster

    payload = body(SMALL[0])
    rows = []
    with postgres_database() as db_url:
        cluster = LoopbackCluster(num_cpus=2, workers=2, worker_cpus=2).start()
        try:
            env = cluster.up_platform(
                MODELPLANE_GRPC_PORT="0", MODELPLANE_PROXY_LOCATION="HeadOnly",
                MODELPLANE_HTTP_HOST="0.0.0.0", MODELPLANE_DB_URL=db_url,
                MODELPLANE_CONTROL_PLANE_REPLICAS="2")
            settings = Settings.from_env(env)
            url = env["MODELPLANE_URL"]
            infer_url = f"{url}/v2/models/scale/infer"
            with Client(url, settings.resolved_token(), settings=settings) as api:
                api.register_version("mlp", mlp(SMALL, 0), manifest(SMALL))
                for replicas in (1, 2, 4):
                    api.deploy("scale", "mlp:1", scaling={
                        "replicas": replicas, "num_cpus": 0.1,
                        "resources": {WORKER_RESOURCE: 0.01}})
                    wait_running(api, "scale", replicas)
                    placed = Counter(r.node_address for r in api.cluster().replicas
                                     if r.endpoint == "scale" and r.state == "RUNNING")
                    for _ in range(50):  # warm connections and caches
                        httpx.post(infer_url, content=payload,
                                   headers={"content-type": "application/json"}, timeout=30)
                    measured = asyncio.run(closed_loop(infer_url, payload, args.concurrency,
                                                       args.seconds))
                    rows.append({"replicas": replicas, "per_node": dict(placed), **measured})
                    print(f"{replicas} replica(s) {dict(placed)}: {measured['rps']:.0f} req/s, "
                          f"failed {measured['failed']}", flush=True)
                api.deploy("scale", "mlp:1", scaling={
                    "replicas": 2, "num_cpus": 0.1, "resources": {WORKER_RESOURCE: 0.01}})
                wait_running(api, "scale", 2)
                killed = leader_killed_halfway(api, infer_url, payload, args)
        finally:
            cluster.stop()
    result = {"cores": os.cpu_count(), "seconds": args.seconds, "concurrency": args.concurrency,
              "replicas": rows, "leader_killed": killed,
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(result, indent=2))
    text = report(result)
    (RESULTS / f"{args.results}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
