"""The main job: the modelplane story on the embedded default, step by step.

Today it runs the parts that exist: the control plane on real HTTP with a SQLite store
and a local artifact folder, two trained versions registered with lineage, a tracked
experiment, aliases, stages and an approval. Serving, rollouts and monitoring join the
story as they land.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from modelplane import __version__
from modelplane.settings import Settings, get_settings

MODEL = "breast-cancer"
EXPERIMENT = "quickstart"


@contextmanager
def _embedded_control_plane(settings: Settings, console: Console) -> Iterator[str]:
    """The control plane under uvicorn on a free loopback port, for the length of the block."""
    import socket

    import uvicorn

    from control_plane.api import build_standalone_app
    from control_plane.service import ControlPlane

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cp = ControlPlane.start(settings)
    if cp.new_admin_token:
        console.print(f"  created the admin token: {settings.admin_token_path} (mode 0600)")
    server = uvicorn.Server(uvicorn.Config(build_standalone_app(cp), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the control plane failed to start; see the log above")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        cp.close()


def run_quickstart() -> None:
    """Run every part of the story that exists, printing what each step does."""
    from control_plane.client import Client
    from modelplane.demo_model import train_breast_cancer_classifier

    console = Console()
    settings = get_settings()
    console.rule(f"modelplane {__version__} quickstart")
    console.print(f"home {settings.home}\nstore {settings.db_url}\nartifacts {settings.artifact_uri}")

    console.print("\n[bold]1. start the control plane[/bold] (REST API, SQLite, artifacts)")
    with _embedded_control_plane(settings, console) as url:
        console.print(f"  listening at {url}/api  (OpenAPI at {url}/api/docs)")
        client = Client(url, settings.resolved_token(), settings=settings)

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

        console.print("\n[bold]3. compare the runs[/bold]")
        runs = [v.manifest.lineage.run_id for v in versions]
        comparison = client.compare_runs([r for r in runs if r])
        for run_id, value in comparison.last_metrics["val_accuracy"].items():
            console.print(f"  run {run_id[:12]}  val_accuracy {value:.3f}")

        best = max(versions, key=lambda v: v.manifest.metrics["val_accuracy"])
        console.print(f"\n[bold]4. promote {MODEL}:{best.version}[/bold] (alias, stages, lineage)")
        client.set_alias(MODEL, "champion", best.version)
        client.transition_stage(MODEL, best.version, "staging", reason="best validation accuracy")
        client.transition_stage(MODEL, best.version, "production", reason="quickstart")
        resolved = client.resolve(f"{MODEL}@champion")
        lineage = client.lineage(MODEL, best.version)
        console.print(f"  {MODEL}@champion → version {resolved.version}, stage "
                      f"{resolved.stage.value}, parents {lineage.parents or 'none'}, dataset "
                      f"{lineage.lineage.dataset_uri}")
        client.close()

    console.print("\n[bold green]done.[/bold green] The store keeps what you just did; look at it with")
    console.print("  modelplane api   (then, in another shell)   modelplane models show breast-cancer")
