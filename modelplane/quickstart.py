"""The main job: the modelplane story on the embedded default, step by step.

It runs every part that exists today: the platform on a local Ray (Serve, the Monitor,
the control plane with a SQLite store and a local artifact folder), two trained and
tracked versions, an endpoint serving live traffic, a 90/10 canary with per-version
statistics, and the promotion of the better version. Rollouts that decide on their own,
training on Ray Train and drift alerts join the story as they land. The platform is left
running; `modelplane down` stops it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from modelplane import __version__
from modelplane.settings import get_settings

MODEL = "breast-cancer"
ENDPOINT = "breast-cancer"
EXPERIMENT = "quickstart"


def _send(url: str, rows: np.ndarray, count: int, *, seed: int = 0) -> Counter[str]:
    """``count`` single-row v2 requests with real rows; returns answers per version."""
    import httpx

    rng = np.random.default_rng(seed)
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=30) as http:
        for index in rng.integers(0, len(rows), size=count):
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, rows.shape[1]],
                                "data": rows[index].tolist()}]}
            response = http.post(f"{url}/v2/models/{ENDPOINT}/infer", json=body)
            seen[response.json().get("model_version", f"HTTP {response.status_code}")] += 1
    return seen


def _stats_table(stats: dict[str, Any]) -> Table:
    table = Table(title=f"{ENDPOINT}: last 60 s per version", title_justify="left")
    for column in ("version", "requests", "errors", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column)
    for version, row in sorted(stats.get("versions", {}).items()):
        if version == "0":
            continue
        table.add_row(version, str(row["requests"]), str(row["server_errors"]),
                      *(f"{row[k]:.2f}" if row[k] is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms")))
    return table


def run_quickstart() -> None:
    """Run every part of the story that exists, printing what each step does."""
    from sklearn.datasets import load_breast_cancer

    from control_plane.client import Client
    from control_plane.platform import start_platform, wait_serving
    from modelplane.demo_model import train_breast_cancer_classifier

    console = Console()
    settings = get_settings()
    console.rule(f"modelplane {__version__} quickstart")
    console.print(f"home {settings.home}\nstore {settings.db_url}\nartifacts {settings.artifact_uri}")

    console.print("\n[bold]1. start the platform[/bold] (Ray, Serve, Monitor, control plane)")
    with console.status("starting …") as status:
        info = start_platform(settings, progress=lambda m: status.update(m + " …"))
    console.print(f"  control plane {info.api_url}, inference {info.inference_url}"
                  + (" (HAProxy ingress)" if info.fast_ingress else ""))
    client = Client(settings.url, settings.resolved_token(), settings=settings)

    console.print("\n[bold]2. train two versions on scikit-learn's breast cancer data[/bold]")
    versions = []
    for name, learning_rate, epochs in (("baseline", 0.05, 50), ("tuned", 0.5, 300)):
        run = client.start_run(EXPERIMENT, name=name,
                               params={"learning_rate": learning_rate, "epochs": epochs})
        with console.status(f"  training {name} …"):
            model = train_breast_cancer_classifier(learning_rate=learning_rate, epochs=epochs)
        client.log_metrics(run.id, model.metrics, step=epochs)
        client.end_run(run.id)
        manifest = dict(model.manifest)
        manifest["lineage"] = {**manifest["lineage"], "run_id": run.id}
        if versions:
            manifest["lineage"]["parent_version"] = versions[-1].version
        version = client.register_version(MODEL, model.onnx_bytes, manifest,
                                          description=f"{name} (lr={learning_rate})")
        versions.append(version)
        console.print(f"  registered {MODEL}:{version.version}  val_accuracy="
                      f"{model.metrics['val_accuracy']:.3f}  run {run.id[:12]}")
    first, second = versions

    console.print(f"\n[bold]3. serve {MODEL}:{first.version}[/bold] at /v2/models/{ENDPOINT}")
    client.deploy(ENDPOINT, f"{MODEL}:{first.version}", scaling={"num_cpus": 0.25})
    client.set_traffic(ENDPOINT, {first.version: 100})  # a rerun finds the endpoint serving
    with console.status("  loading the model on Serve …"):
        wait_serving(settings.url, ENDPOINT, first.version)
    rows = load_breast_cancer().data.astype(np.float32)
    seen = _send(settings.url, rows, 200)
    console.print(f"  200 requests answered: {dict(seen)}")

    console.print(f"\n[bold]4. canary: {MODEL}:{second.version} takes 10% of live traffic[/bold]")
    client.deploy(ENDPOINT, f"{MODEL}:{second.version}")
    client.set_traffic(ENDPOINT, {first.version: 90, second.version: 10})
    with console.status("  loading the candidate in place (no replica restarts) …"):
        wait_serving(settings.url, ENDPOINT, second.version)
        time.sleep(1.0)
    seen = _send(settings.url, rows, 500, seed=1)
    console.print(f"  500 requests answered: {dict(sorted(seen.items()))}")
    time.sleep(2.5)  # replicas report to the Monitor about once a second
    console.print(_stats_table(client.endpoint_stats(ENDPOINT, window_s=60)))

    best = max(versions, key=lambda v: v.manifest.metrics["val_accuracy"])
    console.print(f"\n[bold]5. promote {MODEL}:{best.version}[/bold] (all traffic, alias, stage)")
    client.set_traffic(ENDPOINT, {best.version: 100})
    client.set_alias(MODEL, "champion", best.version)
    client.transition_stage(MODEL, best.version, "staging", reason="best validation accuracy")
    client.transition_stage(MODEL, best.version, "production", reason="quickstart canary")
    lineage = client.lineage(MODEL, best.version)
    console.print(f"  {MODEL}@champion → version {best.version}, production, parents "
                  f"{lineage.parents or 'none'}, deployed on "
                  f"{[d.endpoint for d in lineage.deployments]}")
    client.close()

    url = settings.url
    console.print("\n[bold green]done.[/bold green] modelplane is still running:")
    console.print(f"  infer      curl -X POST {url}/v2/models/{ENDPOINT}/infer -d "
                  "'{\"inputs\":[{\"name\":\"input\",\"datatype\":\"FP32\",\"shape\":[1,30],\"data\":[...]}]}'")
    console.print(f"  tritonclient.http.InferenceServerClient('{url.split('://', 1)[1]}')"
                  f".infer('{ENDPOINT}', inputs)")
    console.print(f"  metrics    {url}/api/metrics")
    console.print(f"  status     modelplane status;  modelplane models show {MODEL}")
    console.print("  stop       modelplane down")
