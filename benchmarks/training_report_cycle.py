"""Short epochs: what Ray Train's report cycle adds to each, before and after.

    python -m benchmarks.training_report_cycle [--repeats 2]

A worker's report to Ray Train waits for the controller's poll that takes the one before
it, so on a model whose epoch trains in milliseconds the poll interval, and the tracker
request the controller makes per report, set the pace. This runs the README's breast
cancer example (40 epochs of a small MLP on 341 rows, about 10 ms of training an epoch)
through ``modelplane train submit``'s code path on a private Ray head, once with the
controller polling every 0.25 s (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, this project's
setting before) and once with the job's default now, each on a head of its own, in
alternating order. Per job: the median wall time between consecutive epochs reaching the
tracker (epochs 3+), and the time from submit to the registered version.

The "before" jobs run today's callback, one tracker request per epoch; the callback
before made two (about 24 ms each on this machine), so the before figure understates the
old cost by about that much an epoch.

Results go to benchmarks/results/training_report_cycle.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.training import RESULTS, machine, run_one

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "breast_cancer.yaml"
SETTINGS = {"poll 0.25 s (before)": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"},
            "job default (now)": {}}
MODEL = "bench-breast-cancer"


def spec_for(storage: Path) -> dict[str, Any]:
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["experiment"] = {"name": "bench-training", "run_name": "report-cycle"}
    spec["early_stopping"] = None  # every job runs its 40 epochs
    spec["checkpoint"]["storage_path"] = str(storage)
    spec["registration"] = {"model_name": MODEL}
    return spec


def run_setting(env: dict[str, str]) -> dict[str, Any]:
    from control_plane.client import Client
    from modelplane.settings import reset_settings_cache
    from tests.ray_head import RayHead
    from tests.servers import ControlPlaneProcess

    head = RayHead(num_cpus=2, extra_env=env).start()
    control = ControlPlaneProcess(head.root / "home").start()
    try:
        os.environ.update(MODELPLANE_URL=control.url, MODELPLANE_TOKEN=control.admin_token)
        reset_settings_cache()
        spec_path = head.root / "job.yaml"
        spec_path.write_text(yaml.safe_dump(spec_for(head.root / "checkpoints")))
        return run_one(Client(control.url, control.admin_token), head.dashboard, spec_path, MODEL)
    finally:
        control.stop()
        head.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        order = list(SETTINGS) if repeat % 2 == 0 else list(reversed(SETTINGS))
        for name in order:
            result = run_setting(SETTINGS[name])
            runs[name].append(result)
            print(f"  repeat {repeat + 1}, {name}: {result['epoch_s'] * 1000:.0f} ms an epoch, "
                  f"submit → registered {result['submit_to_registered_s']:.1f} s")
    report(runs, args.repeats, load=(load_at_start, os.getloadavg()[0]))


def report(runs: dict[str, list[dict[str, Any]]], repeats: int,
           load: tuple[float, float]) -> None:
    summary = {name: {"epoch_s": statistics.median(r["epoch_s"] for r in results),
                      "submit_to_registered_s": statistics.median(
                          r["submit_to_registered_s"] for r in results)}
               for name, results in runs.items()}
    before, now = (summary[name] for name in SETTINGS)
    ratios = {key: now[key] / before[key] for key in ("epoch_s", "submit_to_registered_s")}
    document = {
        "machine": machine(load),
        "settings": {"example": EXAMPLE.name, "repeats": repeats,
                     "env": {name: env for name, env in SETTINGS.items()}},
        "summary": summary, "ratios_now_over_before": ratios, "runs": runs,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training_report_cycle.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        "# Training: the report cycle on short epochs",
        "",
        f"`examples/breast_cancer.yaml` (40 epochs, early stopping off) submitted through "
        f"`modelplane train submit` to a private 2-CPU Ray head, each setting on a head of its "
        f"own, {repeats} run(s) each in alternating order; medians. On {os.cpu_count()} CPUs "
        f"(1-minute load average {load[0]:.1f} before, {load[1]:.1f} after). Produced by "
        "`python -m benchmarks.training_report_cycle`.",
        "",
        "| Ray Train's poll | wall time an epoch | submit → registered |",
        "|---|---|---|",
    ]
    for name, row in summary.items():
        lines.append(f"| {name} | {row['epoch_s'] * 1000:.0f} ms | "
                     f"{row['submit_to_registered_s']:.1f} s |")
    lines += ["", f"Now / before: wall time an epoch {ratios['epoch_s']:.2f}x, submit → registered "
              f"{ratios['submit_to_registered_s']:.2f}x.", "",
              "Wall time an epoch is the median between consecutive epochs' metrics reaching the "
              "tracker (epochs 3+, checkpoint epochs included). The before jobs already make one "
              "tracker request an epoch; the code before made two, about 24 ms each here."]
    (RESULTS / "training_report_cycle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
