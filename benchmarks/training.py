"""Training benchmark: one job on 1 and on 2 workers, and the time from submit to a version.

    python -m benchmarks.training [--epochs 10] [--copies 10] [--workers 1,2] [--repeats 1]

A private Ray head is started here (every port free, its own temp dir) with a control
plane beside it (``modelplane api``), and the same job spec is submitted through
``modelplane train submit``'s code path for each worker count: an MLP on scikit-learn's
digits, enlarged to ``--copies`` noisy copies of every row (written to a CSV) so an epoch
is long enough to time. Per job it records

- training samples per second: rows all workers trained on in an epoch over the slowest
  worker's training time (the job's ``samples_per_s`` metric), median over epochs 2+;
- epoch samples per second: training rows over the epoch's wall time, measured between
  consecutive epochs reaching the tracker (validation, all-reduce and the report to Ray
  Train included), median over epochs 3+;
- submit → registered: from the submission call until the registry lists the version.

Results go to benchmarks/results/training.json and training.md, with the 2-worker /
1-worker ratios measured in the same run. On a 2-core machine the workers share both
cores with Ray itself, so the ratio says what DDP costs there, not what it gains.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RESULTS = Path(__file__).parent / "results"


def write_dataset(path: Path, copies: int, seed: int = 0) -> int:
    """Digits, each row repeated ``copies`` times with a little pixel noise; returns the rows."""
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    features = np.concatenate([digits.data + rng.normal(scale=0.5, size=digits.data.shape)
                               for _ in range(copies)])
    table = pd.DataFrame(features.round(3), columns=[str(n) for n in digits.feature_names])
    table["digit"] = np.tile(digits.target, copies)
    table.to_csv(path, index=False)
    return len(table)


def job_spec(data: Path, storage: Path, workers: int, epochs: int) -> dict[str, Any]:
    return {
        "experiment": {"name": "bench-training", "run_name": f"{workers}-workers"},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": [256, 128]},
        "data": {"path": str(data), "target": "digit", "validation_split": 0.1, "seed": 0},
        "hyperparameters": {"optimizer": "adam", "learning_rate": 0.001, "batch_size": 128,
                            "epochs": epochs},
        "resources": {"num_workers": workers, "cpus_per_worker": 1},
        "checkpoint": {"every_n_epochs": epochs, "keep": 1, "storage_path": str(storage)},
        "registration": {"model_name": f"bench-digits-{workers}w"},
    }


def run_one(client: Any, dashboard: str, spec_path: Path, model: str) -> dict[str, Any]:
    from training.submission import TERMINAL_STATES, JobClient, submit_spec

    before = _version_count(client, model)
    started = time.perf_counter()
    submission = submit_spec(spec_path, address=dashboard, echo=lambda _: None)
    jobs = JobClient(dashboard)
    registered_s = None
    while True:
        if registered_s is None and _version_count(client, model) > before:
            registered_s = time.perf_counter() - started
        status = jobs.status(submission.job_id)
        if status in TERMINAL_STATES:
            break
        time.sleep(0.2)
    if status != "SUCCEEDED" or registered_s is None:
        raise RuntimeError(f"job {submission.job_id} ended {status}:\n{jobs.logs(submission.job_id)[-3000:]}")
    run = next(r for r in client.list_runs("bench-training").items
               if r.params.get("registered_version", "").startswith(f"{model}:")
               and int(r.params["registered_version"].split(":")[1]) == before + 1)
    compute = [m.value for m in client.metric_history(run.id, "samples_per_s")][1:]
    # Wall time per epoch: between consecutive epochs' metrics reaching the tracker, which
    # includes everything an epoch costs (validation, all-reduce, the report to Ray Train).
    stamps = [m.timestamp.timestamp() for m in client.metric_history(run.id, "val_loss")]
    epochs = [later - earlier for earlier, later in itertools.pairwise(stamps[1:])]
    rows = run.params["train_rows"]
    return {
        "job_id": submission.job_id,
        "run_id": run.id,
        "train_rows": rows,
        "epochs_timed": len(compute),
        "train_samples_per_s": statistics.median(compute),
        "epoch_samples_per_s": statistics.median(rows / t for t in epochs),
        "epoch_s": statistics.median(epochs),
        "submit_to_registered_s": registered_s,
        "accuracy": client.get_version(model, before + 1).manifest.metrics["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    from control_plane.client import Client
    from modelplane.settings import reset_settings_cache
    from tests.ray_head import RayHead
    from tests.servers import ControlPlaneProcess

    load_at_start = os.getloadavg()[0]
    head = RayHead(num_cpus=max(counts) + 1).start()
    control = ControlPlaneProcess(head.root / "home").start()
    try:
        # submit_spec hands the job this process's control plane address and token.
        os.environ.update(MODELPLANE_URL=control.url, MODELPLANE_TOKEN=control.admin_token)
        reset_settings_cache()
        client = Client(control.url, control.admin_token)
        data = head.root / "digits-augmented.csv"
        rows = write_dataset(data, args.copies)
        print(f"data: {rows} rows; Ray head at {head.dashboard}")
        results: dict[str, list[dict[str, Any]]] = {str(n): [] for n in counts}
        for repeat in range(args.repeats):
            for workers in counts:
                spec_path = head.root / f"job-{workers}.yaml"
                spec_path.write_text(yaml.safe_dump(job_spec(data, head.root / "checkpoints",
                                                             workers, args.epochs)))
                result = run_one(client, head.dashboard, spec_path, f"bench-digits-{workers}w")
                results[str(workers)].append(result)
                print(f"  repeat {repeat + 1}, {workers} worker(s): "
                      f"{result['train_samples_per_s']:,.0f} train samples/s, "
                      f"{result['epoch_samples_per_s']:,.0f} epoch samples/s, submit → registered "
                      f"{result['submit_to_registered_s']:.1f} s")
    finally:
        control.stop()
        head.stop()
    report(results, args, rows, load=(load_at_start, os.getloadavg()[0]))


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, rows: int,
           load: tuple[float, float]) -> None:
    def best(workers: str, key: str, high: bool = True) -> float:
        values = [r[key] for r in results[workers]]
        return max(values) if high else min(values)

    summary = {w: {"train_samples_per_s": best(w, "train_samples_per_s"),
                   "epoch_samples_per_s": best(w, "epoch_samples_per_s"),
                   "submit_to_registered_s": best(w, "submit_to_registered_s", high=False)}
               for w in results}
    ratios = {}
    if "1" in summary and "2" in summary:
        ratios = {key: summary["2"][key] / summary["1"][key]
                  for key in ("train_samples_per_s", "epoch_samples_per_s", "submit_to_registered_s")}
    document = {
        "machine": machine(load),
        "settings": {"epochs": args.epochs, "copies": args.copies, "rows": rows,
                     "repeats": args.repeats},
        "summary": summary, "ratios_2_over_1": ratios, "runs": results,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        "# Training benchmark",
        "",
        f"One job (MLP 64→256→128→10 on {rows:,} rows of noisy digits, batch 128 per worker, "
        f"{args.epochs} epochs) submitted through `modelplane train submit` to a private Ray head, "
        f"on {os.cpu_count()} CPUs (1-minute load average {load[0]:.1f} before, {load[1]:.1f} "
        f"after: other work shared the machine); best of {args.repeats} run(s). Produced by "
        "`python -m benchmarks.training`.",
        "",
        "| workers | training samples/s | epoch samples/s | submit → registered |",
        "|---|---|---|---|",
    ]
    for workers, row in summary.items():
        lines.append(f"| {workers} | {row['train_samples_per_s']:,.0f} | "
                     f"{row['epoch_samples_per_s']:,.0f} | {row['submit_to_registered_s']:.1f} s |")
    if ratios:
        lines += ["", "2 workers / 1 worker: training samples/s "
                  f"{ratios['train_samples_per_s']:.2f}x, epoch samples/s "
                  f"{ratios['epoch_samples_per_s']:.2f}x, submit → registered "
                  f"{ratios['submit_to_registered_s']:.2f}x."]
    lines += ["", "Training samples/s counts only the optimisation steps (all workers' rows over "
              "the slowest worker's step time); epoch samples/s divides the training rows by the "
              "wall time between consecutive epochs reaching the tracker (validation, all-reduce "
              "and the report to Ray Train included). Submit → registered "
              "includes the job's start (driver, Train controller and worker processes), "
              "training, evaluation, ONNX export and check, and registration."]
    (RESULTS / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def machine(load: tuple[float, float]) -> dict[str, Any]:
    """The machine a training benchmark ran on, and its load before and after."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1m": {"start": load[0], "end": load[1]}}


def _version_count(client: Any, model: str) -> int:
    from control_plane.errors import NotFoundError

    try:
        return client.list_versions(model, limit=1).total
    except NotFoundError:
        return 0


if __name__ == "__main__":
    main()
