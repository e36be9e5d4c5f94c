"""Request-path stalls from monitoring under load: where a replica accounts its observed
requests (the monitoring kernels and the Python around them) while it serves.

    python -m benchmarks.observation_stalls [--seconds 6] [--rounds 4] [--concurrency 32]

One process, one event loop, as in a replica (its startup objects frozen out of the GC's
scans, as Serve does): the real ``InferenceCore`` over the small MLP (ONNX Runtime, one
thread, inline runs as a served version takes them) with its reference profile, so drift,
data quality and the feedback join all run; ``concurrency`` clients post the same v2 JSON
body back to back, and a shipper takes the statistics and hands each delta to a stand-in
for the Monitor's handle (the remote call is not what is measured). Three ways:

- **before**: the shipper accounts each second's observations in a worker thread, and
  the request that finds ``PENDING_LIMIT`` (4,096) waiting accounts them on the loop;
- **thread, early**: at 4,096 waiting the shipper is woken instead, still accounting in a
  worker thread;
- **now** (``serving.endpoint``'s shipper): woken early, and accounting on the loop
  ``ACCOUNT_STEP`` requests at a time, giving the loop back between steps.

Each request's time from its client's post to its answer is recorded. Modes alternate in
rounds; medians over rounds. Results: benchmarks/results/observation_stalls.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.monitoring import MODELS, setup

RESULTS = Path(__file__).parent / "results"
STALL_MS = 2.0  # a request this slow waited on something other than its own model run
MODES = {"before": "each second in a thread; at 4,096 waiting on the request path (before)",
         "thread": "in a thread, shipped early at 4,096 waiting",
         "now": "on the loop in steps of 256, shipped early at 4,096 waiting (now)"}


class StandInMonitor:
    """Takes ``record.remote(...)`` as the Monitor actor's handle does; counts shipments."""

    def __init__(self) -> None:
        self.shipments = 0
        self.record = SimpleNamespace(remote=self._record)

    def _record(self, *args: Any) -> Any:
        self.shipments += 1
        answered: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        answered.set_result({})
        return SimpleNamespace(future=lambda: answered)


def make_core(early: bool, workdir: Path) -> Any:
    from serving.backends import LocalVersion
    from serving.backlog import Backlog
    from serving.core import InferenceCore
    from serving.monitoring.stats import StatsRecorder
    from serving.schemas import EndpointConfig, RouteTable

    runner, monitoring = setup("small", MODELS["small"], workdir)
    config = runner.config.model_copy(update={"reference_profile": monitoring.profile_document})
    backlog = Backlog()
    backlog.counted = True  # as the lean ingress counts: cheap runs go inline
    version = LocalVersion(config, runner, concurrent.futures.ThreadPoolExecutor(4), backlog)
    version.warm()

    class InlineCore(InferenceCore):
        """The request path as it was: no one is asked to take a full recorder."""

        def take_stats(self) -> StatsRecorder:
            taken = super().take_stats()
            self.recorder.when_full = None
            return taken

    endpoint = EndpointConfig(endpoint="stalls", versions=[config], routes=RouteTable(weights={1: 100}))
    core = (InferenceCore if early else InlineCore)(endpoint, {1: version})
    if not early:
        core.recorder.when_full = None
    return core


async def thread_shipper(core: Any, monitor: StandInMonitor, early: bool) -> None:
    """A shipper accounting in a worker thread, at the interval (or once woken, ``early``)."""
    while True:
        if early:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(core.stats_due.wait(), core.config.stats_interval_s)
        else:
            await asyncio.sleep(core.config.stats_interval_s)
        delta = await asyncio.to_thread(core.take_stats().to_delta)
        await asyncio.wrap_future(monitor.record.remote("stalls", "bench", delta, None).future())


def shipper_for(mode: str, core: Any, monitor: StandInMonitor) -> Any:
    from serving import endpoint

    if mode != "now":
        return thread_shipper(core, monitor, early=mode == "thread")
    replica = endpoint._CoreAdapter()
    replica.core, replica._replica = core, "bench"
    return replica._ship_forever()


async def drive(mode: str, core: Any, body: bytes, concurrency: int,
                seconds: float) -> dict[str, Any]:
    from serving import endpoint

    monitor = StandInMonitor()
    original, endpoint.get_monitor = endpoint.get_monitor, lambda *key: monitor
    shipper = asyncio.get_running_loop().create_task(shipper_for(mode, core, monitor))
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            reply = await core.handle("POST", "/infer", {}, body)
            latencies.append(time.perf_counter() - started)
            failures += reply.status != 200
            await asyncio.sleep(0)  # the next post is a new arrival, after the others'

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        endpoint.get_monitor = original
        if shipper.done():  # it must run for the whole round; a fault is the benchmark's
            shipper.result()
        shipper.cancel()
    core.take_stats()  # the next round starts empty
    ms = np.asarray(latencies) * 1e3
    return {"requests": len(ms), "req_per_s": len(ms) / elapsed, "failures": failures,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "p999_ms": float(np.percentile(ms, 99.9)), "max_ms": float(ms.max()),
            "stalled": int((ms > STALL_MS).sum()), "shipments": monitor.shipments}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    from benchmarks.serving import body as request_body

    body = request_body(MODELS["small"][0])
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}

    async def measure(workdir: Path) -> None:
        # One event loop for every round, as a replica has one for its life.
        cores = {mode: make_core(mode != "before", workdir) for mode in MODES}
        gc.collect()
        gc.freeze()  # as Serve does once a replica has started
        for mode, core in cores.items():  # warm: every path run and the kernels loaded
            await drive(mode, core, body, args.concurrency, 1.0)
        for index in range(args.rounds):
            for mode in (list(MODES) if index % 2 == 0 else list(MODES)[::-1]):
                runs[mode].append(await drive(mode, cores[mode], body, args.concurrency,
                                              args.seconds))
                print(mode, runs[mode][-1], flush=True)

    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(measure(Path(workdir)))
    summary = {mode: {key: float(np.median([r[key] for r in results])) for key in results[0]}
               for mode, results in runs.items()}
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
              "settings": vars(args), "load_average": {"before": load_before,
                                                       "after": os.getloadavg()[0]},
              "cpus": len(os.sched_getaffinity(0)), "runs": runs, "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "observation_stalls.json").write_text(json.dumps(report, indent=2))
    lines = ["# Monitoring's request-path stalls under load", "",
             f"Run {report['when']}, Python {report['python']}, {report['cpus']} CPUs; the small "
             f"MLP with its reference profile, {args.concurrency} clients on one event loop, "
             f"{args.rounds} alternating rounds of {args.seconds:g} s per mode; load average "
             f"{load_before:.1f} before, {report['load_average']['after']:.1f} after. Medians "
             "over rounds.", "",
             f"| accounting | req/s | p50 ms | p99 ms | p99.9 ms | max ms | requests over "
             f"{STALL_MS:g} ms | shipments | failures |", "|---|---|---|---|---|---|---|---|---|"]
    for mode, label in MODES.items():
        s = summary[mode]
        lines.append(f"| {label} | {s['req_per_s']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                     f"{s['p999_ms']:.2f} | {s['max_ms']:.1f} | {s['stalled']:.0f} | "
                     f"{s['shipments']:.0f} | {s['failures']:.0f} |")
    (RESULTS / "observation_stalls.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
