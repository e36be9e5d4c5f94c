"""Monitoring benchmark: a model server's per-batch time with drift, quality and feedback
logging on and off, one process, both measured in the same run.

    python -m benchmarks.monitoring [--seconds 2] [--rounds 6]

A batch is what ``serve.batch`` hands the model server: 32 single-row requests, run as one
ONNX call (``OnnxRunner.run_batch``). With monitoring on, each of the 32 requests is also
observed the way the inference core does it (``StatsRecorder.observe``: the request path
part, an append) and, once a second, the statistics are taken and shipped as the replica
does (``to_delta``: the kernels over every pending request, the sample rings, the kept
predictions), and early once 4,096 requests wait, as a replica's full recorder wakes its
shipper. A replica runs ``to_delta`` in its shipping thread, off the request path;
here it runs in the same thread, outside the per-batch timing but inside the throughput
figure, so the throughput ratio includes every cost monitoring adds to a replica. Off and
on alternate in rounds to share the machine's noise. This model answers 32 rows in ~120 µs,
so the kernels' per-row cost (64 features) weighs far more here than beside the ~0.5 ms of
CPU a served request costs: benchmarks/monitoring_served.py measures that. Results:
benchmarks/results/monitoring.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import mlp

RESULTS = Path(__file__).parent / "results"
BATCH = 32
# small and large are benchmarks/serving.py's SMALL and HEAVY (the batched scenario there).
MODELS = {"small": (64, 256, 256, 10), "medium": (128, 1024, 1024, 100),
          "large": (512, 4096, 4096, 1000)}
# This model answers a one-row request in ~4 µs of CPU here, a hundredth of what a served
# request costs (~0.4 ms for the fastest Python servers on this machine), so the ratios
# are the strictest test of monitoring's per-request cost; the absolute figure per request
# (monitoring_us_per_request) is what a served request pays.
TARGETS = (("mean per-batch time, monitoring on / off", "time_ratio", "<=", 1.05),
           ("throughput, monitoring on / off", "throughput_ratio", ">=", 0.97))


def setup(name: str, sizes: tuple[int, ...], workdir: Path) -> tuple[Any, Any]:
    """A runner for the MLP and the version's monitoring (profile from its training rows)."""
    from serving.monitoring.observations import VersionMonitoring
    from serving.monitoring.profiles import build_reference_profile
    from serving.runners.onnx import OnnxRunner
    from serving.schemas import TensorSignature, VersionConfig

    model = mlp(sizes, seed=1)
    path = workdir / f"{name}.onnx"
    path.write_bytes(model)
    base = VersionConfig(
        version=1, model=name, artifact_url="http://unused", digest="0" * 64, task="classification",
        inputs=[TensorSignature(name="input", dtype="float32", shape=[None, sizes[0]])],
        outputs=[TensorSignature(name="output", dtype="float32", shape=[None, sizes[-1]])])
    runner = OnnxRunner(base, path)
    training = np.random.default_rng(0).normal(size=(5000, sizes[0])).astype(np.float32)
    outputs = runner.run({"input": training})["output"]
    config = base.model_copy(update={"reference_profile": build_reference_profile(
        training, outputs, task="classification")})
    return runner, VersionMonitoring.build(config)


def measure(runner: Any, monitoring: Any, pool: list[list[dict[str, np.ndarray]]], *, on: bool,
            seconds: float) -> dict[str, Any]:
    """Batches for ``seconds``; per-batch times and the rows answered per second."""
    from serving.monitoring.stats import StatsRecorder

    # A replica's recorder, once PENDING_LIMIT requests wait, wakes its shipper to take and
    # ship it early (``when_full``); without that the request path accounted them inline,
    # inside the per-batch timing, which no replica does.
    due: list[bool] = []

    def fresh() -> StatsRecorder:
        return StatsRecorder(enabled=on, monitoring={1: monitoring},
                             when_full=lambda: due.append(True))

    recorder = fresh()
    times, batches, shipped = [], 0, 0
    started = last_ship = time.perf_counter()
    while True:
        items = pool[batches % len(pool)]
        t0 = time.perf_counter()
        outputs = runner.run_batch(items)
        if on:
            for index, (item, output) in enumerate(zip(items, outputs, strict=True)):
                recorder.observe(1, f"{batches}-{index}", item, output)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        batches += 1
        # The replica ships its statistics once a second, and early when the recorder is full.
        if on and (due or t1 - last_ship >= 1.0):
            recorder.to_delta()
            recorder = fresh()
            due.clear()
            last_ship, shipped = time.perf_counter(), shipped + 1
        if t1 - started >= seconds:
            break
    elapsed = time.perf_counter() - started
    if on:
        recorder.to_delta()
        shipped += 1
    return {"times": times, "rows_per_s": batches * BATCH / elapsed, "batches": batches,
            "shipments": shipped}


def monitor_side(monitoring: Any, pool: list[list[dict[str, np.ndarray]]], runner: Any) -> dict[str, float]:
    """What the Monitor pays per shipment and per drift query (informative, not a target)."""
    from serving.monitoring.monitor import MonitorState
    from serving.monitoring.observations import attach_profiles
    from serving.monitoring.stats import StatsRecorder

    state = MonitorState()
    record_ms, query_ms = [], []
    for round_index in range(5):
        recorder = StatsRecorder(monitoring={1: monitoring})
        for batch_index, items in enumerate(pool[:30]):  # ~1,000 requests: a busy second
            for index, (item, output) in enumerate(zip(items, runner.run_batch(items), strict=True)):
                recorder.observe(1, f"{round_index}-{batch_index}-{index}", item, output)
        delta = recorder.to_delta()
        attach_profiles(delta, {1: monitoring}, set())
        t0 = time.perf_counter()
        state.record("bench", "replica", delta)
        record_ms.append(1000 * (time.perf_counter() - t0))
        state._drift_cache.clear()
        t0 = time.perf_counter()
        state.snapshot("bench", 60)
        query_ms.append(1000 * (time.perf_counter() - t0))
    return {"monitor_record_ms_median": float(np.median(record_ms[1:])),
            "monitor_snapshot_ms_median": float(np.median(query_ms[1:]))}


def run_model(name: str, sizes: tuple[int, ...], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from kernels import warmup

    runner, monitoring = setup(name, sizes, workdir)
    warmup(monitoring.profile)
    rng = np.random.default_rng(1)
    pool = [[{"input": rng.normal(size=(1, sizes[0])).astype(np.float32)} for _ in range(BATCH)]
            for _ in range(64)]
    measure(runner, monitoring, pool, on=True, seconds=0.5)  # warm both paths
    measure(runner, monitoring, pool, on=False, seconds=0.5)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for round_index in range(args.rounds):
        order = ("off", "on") if round_index % 2 == 0 else ("on", "off")
        for mode in order:
            runs[mode].append(measure(runner, monitoring, pool, on=mode == "on", seconds=args.seconds))
    summary: dict[str, Any] = {"layers": list(sizes), "batch": BATCH}
    for mode, results in runs.items():
        times = np.concatenate([r["times"] for r in results])
        summary[mode] = {
            "batch_p50_us": 1e6 * float(np.median(times)),
            "batch_mean_us": 1e6 * float(np.mean(times)),
            # Median over rounds: one round that shared the CPU with something else
            # should not decide the figure.
            "rows_per_s": float(np.median([r["rows_per_s"] for r in results])),
            "batches": int(sum(r["batches"] for r in results)),
        }
    # The mean, not the median: one batch in eight pays for the chunk the kernels process,
    # and a median would leave that cost out.
    summary["time_ratio"] = summary["on"]["batch_mean_us"] / summary["off"]["batch_mean_us"]
    summary["p50_time_ratio"] = summary["on"]["batch_p50_us"] / summary["off"]["batch_p50_us"]
    summary["throughput_ratio"] = summary["on"]["rows_per_s"] / summary["off"]["rows_per_s"]
    # Every cost monitoring adds per request (the request path and the shipments' kernels),
    # from the throughputs, which include both.
    summary["monitoring_us_per_request"] = 1e6 * (1 / summary["on"]["rows_per_s"]
                                                  - 1 / summary["off"]["rows_per_s"])
    summary.update(monitor_side(monitoring, pool, runner))
    summary.update(kernel_floor(monitoring, pool))
    return summary


def kernel_floor(monitoring: Any, pool: list[list[dict[str, np.ndarray]]]) -> dict[str, float]:
    """``LiveWindow.update`` on one batch's rows: other rows each call (live traffic) and
    the same rows again and again (how the kernel micro-benchmark measures it). The
    kernel runs several times faster on rows it has just seen, so a benchmark that
    repeats one batch understates what live traffic costs."""
    from kernels import LiveWindow
    from serving.monitoring.profiles import batch_features

    window = LiveWindow(monitoring.profile, 0)
    batches = [batch_features(monitoring.inputs, {"input": [item["input"] for item in items]})
               for items in pool]

    def median_us(pick: Any) -> float:
        times = []
        for index in range(2000):
            rows = pick(index)
            started = time.perf_counter()
            window.update(rows)
            times.append(time.perf_counter() - started)
        return 1e6 * float(np.median(times))

    return {"kernel_update_fresh_rows_us": median_us(lambda i: batches[i % len(batches)]),
            "kernel_update_repeated_rows_us": median_us(lambda i: batches[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="Per mode and round.")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        models = {name: run_model(name, sizes, args, Path(workdir)) for name, sizes in MODELS.items()}
    # cpus: the cores this process may run on (fewer than the machine's when pinned).
    load = {"before": load_before[0], "after": os.getloadavg()[0], "cpus": len(os.sched_getaffinity(0)),
            "machine_cpus": os.cpu_count()}
    targets = []
    for name, summary in models.items():
        for label, key, op, limit in TARGETS:
            value = summary[key]
            targets.append({"model": name, "name": label, "value": value, "op": op, "target": limit,
                            "met": bool(value <= limit if op == "<=" else value >= limit)})
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
              "python": platform.python_version(), "settings": vars(args), "load_average": load,
              "models": models,
              "targets": targets}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "monitoring.json").write_text(json.dumps(report, indent=2))
    lines = ["# Monitoring benchmark", "",
             f"Run {report['when']}, Python {report['python']}; batches of {BATCH} single-row requests, "
             f"{args.rounds} alternating rounds of {args.seconds:g} s per mode; load average "
             f"{load['before']:.1f} before, {load['after']:.1f} after, on {load['cpus']} of the machine's "
             f"{load['machine_cpus']} CPUs (a "
             "machine shared with other work: compare on and off, measured in the same run).", "",
             "| model | layers | off: batch mean (p50) µs | on: batch mean (p50) µs | off: rows/s | "
             "on: rows/s | kernel update, fresh / repeated rows µs | Monitor record ms | "
             "Monitor drift query ms |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in models.items():
        lines.append(
            f"| {name} | {'-'.join(map(str, s['layers']))} | {s['off']['batch_mean_us']:.1f} "
            f"({s['off']['batch_p50_us']:.1f}) | {s['on']['batch_mean_us']:.1f} "
            f"({s['on']['batch_p50_us']:.1f}) | {s['off']['rows_per_s']:.0f} | {s['on']['rows_per_s']:.0f} | "
            f"{s['kernel_update_fresh_rows_us']:.1f} / {s['kernel_update_repeated_rows_us']:.1f} | "
            f"{s['monitor_record_ms_median']:.2f} | {s['monitor_snapshot_ms_median']:.1f} |")
    lines += ["", "CPU monitoring adds per request (from the throughputs, so the shipments' "
              "kernels included): " + "; ".join(f"{name} {s['monitoring_us_per_request']:.1f} µs"
                                                for name, s in models.items()) + ".",
              "", "| model | target | measured | goal | met |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['model']} | {t['name']} | {t['value']:.3f} | {t['op']} {t['target']} | "
                     f"{'yes' if t['met'] else '**no**'} |")
    (RESULTS / "monitoring.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
