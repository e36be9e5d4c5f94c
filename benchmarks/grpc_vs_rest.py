"""The gRPC inference service against REST on the same endpoint: what the extra hop costs.

    python -m benchmarks.grpc_vs_rest [--seconds 15] [--sequential 300]

One endpoint of the small MLP (one version, half a CPU, 64 ongoing requests) on a platform
with the fast ingress ``modelplane up`` picks (HAProxy), the server side pinned to core 0
and every client to core 1 (``taskset``). REST reaches the endpoint's replica in one hop
(HAProxy to the replica's own HTTP server); gRPC goes to the ``grpc-ingress`` replica,
which posts each call through HAProxy to the same replica's own server (the link,
``serving/grpc_link.py``; a Serve handle where the link cannot carry a call: the calls
the link answered are counted and reported). Measured for each:

- sequential latency with the official clients (``tritonclient.http`` with binary tensors,
  ``tritonclient.grpc`` with ``set_data_from_numpy``), p50 and p99 over ``--sequential``;
- throughput at 32 concurrent requests for ``--seconds`` with light clients that send a
  prebuilt request (REST: benchmarks/load_client.py's aiohttp loop, JSON; gRPC: a
  ``grpc.aio`` stub with a prebuilt ``ModelInferRequest``);
- over the throughput round, the CPU time per request of the endpoint's replica and of the
  gRPC ingress replica (found by their process titles), which is where the hop costs.

Results: benchmarks/results/grpc_vs_rest.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import SMALL, body, fast_platform, manifest, measure, mlp, wait_serving

RESULTS = Path(__file__).parent / "results"
ENDPOINT = "gvr"
CONCURRENCY = 32


def _row() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, SMALL[0])).astype(np.float32)


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": 1000 * samples[len(samples) // 2],
            "p99_ms": 1000 * samples[min(len(samples) - 1, int(len(samples) * 0.99))]}


def sequential_tritonclient(protocol: str, address: str, count: int) -> dict[str, float]:
    """Sequential calls with the official client of ``protocol``, 20 warm-up calls first."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    client = tc.InferenceServerClient(address)
    tensor = tc.InferInput("input", [1, SMALL[0]], "FP32")
    if protocol == "grpc":
        tensor.set_data_from_numpy(_row())
        wanted = [tc.InferRequestedOutput("output")]
    else:
        tensor.set_data_from_numpy(_row(), binary_data=True)
        wanted = [tc.InferRequestedOutput("output", binary_data=True)]
    samples = []
    for index in range(count + 20):
        started = time.perf_counter()
        result = client.infer(ENDPOINT, [tensor], outputs=wanted)
        elapsed = time.perf_counter() - started
        assert result.as_numpy("output").shape == (1, SMALL[-1])
        if index >= 20:
            samples.append(elapsed)
    client.close()
    return _percentiles(samples)


async def grpc_closed_loop(address: str, seconds: float) -> dict[str, float]:
    """32 workers sending one prebuilt ModelInferRequest through a grpc.aio stub."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    request = pb.ModelInferRequest(model_name=ENDPOINT, raw_input_contents=[_row().tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, SMALL[0]])
    done = failures = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, failures
            while time.perf_counter() < deadline:
                try:
                    await stub.ModelInfer(request)
                    done += 1
                except grpc.aio.AioRpcError:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return {"throughput_rps": done / elapsed, "throughput_failures": failures,
            "throughput_seconds": elapsed}


def client_main(argv: list[str]) -> None:
    """The client side, run pinned to core 1: one JSON object on stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("protocol", choices=["http", "grpc"])
    parser.add_argument("address")
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    if args.sequential:
        result.update(sequential_tritonclient(args.protocol, args.address, args.sequential))
    if args.protocol == "grpc" and args.seconds > 0:
        result.update(asyncio.run(grpc_closed_loop(args.address, args.seconds)))
    print(json.dumps(result))


REPLICA_TITLES = {"endpoint": f"ServeReplica:endpoint-{ENDPOINT}:endpoint",
                  "grpc_ingress": "ServeReplica:grpc-ingress:grpc"}


def replica_cpu() -> dict[str, float]:
    """CPU seconds so far of the endpoint's replica and the gRPC ingress's, by title."""
    import psutil

    seconds = dict.fromkeys(REPLICA_TITLES, 0.0)
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or ())
        for name, wanted in REPLICA_TITLES.items():
            if wanted in title:
                times = process.cpu_times()
                seconds[name] += times.user + times.system
    return seconds


def with_cpu(measured: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``measured()``; add each replica's CPU ms per request over its throughput round."""
    before = replica_cpu()
    result = measured()
    after = replica_cpu()
    answered = result["throughput_rps"] * result["throughput_seconds"]
    for name in REPLICA_TITLES:
        result[f"{name}_cpu_ms_per_request"] = 1000 * (after[name] - before[name]) / answered
    return result


def run_client(*args: str) -> dict[str, Any]:
    command = ["taskset", "-c", "1", sys.executable, "-m", "benchmarks.grpc_vs_rest", "--client",
               *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from serving.names import endpoint_url

    with fast_platform("mpgr") as (_, settings, client):
        client.register_version("grpc-bench", mlp(SMALL, 1), manifest(SMALL))
        client.deploy(ENDPOINT, "grpc-bench:1", scaling={"num_cpus": 0.5, "max_ongoing_requests": 64})
        wait_serving(endpoint_url(settings.url, ENDPOINT), {1}, {1: 100.0})
        http_address = settings.url.removeprefix("http://")
        grpc_address = f"{settings.http_host}:{settings.grpc_port}"
        counts = ["--sequential", str(args.sequential), "--seconds", str(args.seconds)]
        rest = run_client("http", http_address, *counts[:2], "--seconds", "0")
        rest.update(with_cpu(lambda: measure(
            endpoint_url(settings.url, ENDPOINT, "infer"), body(SMALL[0]),
            argparse.Namespace(sequential=0, seconds=args.seconds))))
        grpc = run_client("grpc", grpc_address, *counts[:2], "--seconds", "0")
        grpc.update(with_cpu(lambda: run_client("grpc", grpc_address, "--sequential", "0",
                                                "--seconds", str(args.seconds))))
        grpc["linked_calls"] = linked_calls()
    return {"rest": rest, "grpc": grpc}


def linked_calls() -> int | None:
    """ModelInfer calls the gRPC ingress sent over the link so far (None: it has none)."""
    from ray import serve

    from serving.names import GRPC_APP

    async def ask() -> int | None:  # throughput-optimized Serve: handles need a running loop
        return await serve.get_deployment_handle("grpc", app_name=GRPC_APP).linked_calls.remote()  # type: ignore[no-any-return]

    return asyncio.run(ask())


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--sequential", type=int, default=300)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # the server side; the clients pin themselves to core 1
    result = run(args)
    rest, grpc = result["rest"], result["grpc"]
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": vars(args), **result}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grpc_vs_rest.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# gRPC against REST on one endpoint", "",
        f"Run {report['when']}; small MLP {SMALL}, one version, one replica (half a CPU), fast "
        f"ingress (HAProxy); server on core 0, clients on core 1. Sequential: "
        f"{args.sequential} calls with tritonclient (HTTP binary / gRPC raw). Throughput: "
        f"{CONCURRENCY} concurrent requests for {args.seconds:g} s (REST: aiohttp, JSON body; "
        "gRPC: grpc.aio stub, prebuilt request).", "",
        "| path | hops to the replica | seq p50 ms | seq p99 ms | req/s at 32 | failures | "
        "CPU ms/request: endpoint replica | gRPC ingress replica |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {name} | {hops} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
          f"{row['throughput_rps']:.0f} | {row['throughput_failures']} | "
          f"{row['endpoint_cpu_ms_per_request']:.2f} | {row['grpc_ingress_cpu_ms_per_request']:.2f} |"
          for name, hops, row in (("REST", "HAProxy, replica", rest),
                                  ("gRPC", "grpc-ingress replica, HAProxy, replica", grpc))),
        "", f"gRPC / REST: sequential p50 {grpc['p50_ms'] / rest['p50_ms']:.2f}x, throughput "
        f"{grpc['throughput_rps'] / rest['throughput_rps']:.2f}x. ModelInfer calls the ingress "
        f"sent over the link: {grpc['linked_calls']} (the rest by Serve's handle).", "",
    ]
    (RESULTS / "grpc_vs_rest.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
