"""Training jobs on a real Ray head started here, reporting to a real control plane.

The head (`ray start --head`, every port chosen free, a private RAY_TMPDIR; this folder's
conftest) runs the platform too (`modelplane up` joins it), so a registered version can be
served. Jobs
reach it the ways users submit them: Ray's own `ray job submit` CLI, `modelplane train
submit`, and `modelplane train run` on a private local Ray. This process never connects
to Ray itself: every Ray client is a subprocess, as it would be for a user.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from control_plane.client import Client
from tests.job_head import JobHead
from tests.ray_head import BIN, RayHead
from tests.waiting import wait_for
from training.schemas import epoch_metric_keys


@dataclass
class Cluster:
    head: RayHead
    env: dict[str, str]  # for every subprocess: the head's Ray settings and MODELPLANE_*
    url: str

    @property
    def root(self) -> Path:
        return self.head.root

    @property
    def dashboard(self) -> str:
        return self.head.dashboard

    @property
    def token(self) -> str:
        return (Path(self.env["MODELPLANE_HOME"]) / "admin.token").read_text().strip()

    def client(self) -> Client:
        return Client(self.url, self.token)


@pytest.fixture(scope="module")
def cluster(job_head: JobHead) -> Cluster:
    return Cluster(job_head.ray, job_head.env, job_head.env["MODELPLANE_URL"])


@dataclass
class SubmittedJob:
    output: str
    run: Any
    version: Any


@pytest.fixture(scope="module")
def digits_job(cluster: Cluster) -> SubmittedJob:
    """Two CPU workers on digits, submitted with Ray's own CLI."""
    staging = cluster.root / "job-digits"
    _write_spec(staging / "job.yaml", cluster, experiment="t-digits", dataset="digits",
                epochs=4, workers=2, every=2, model_name="t-digits", alias="challenger")
    runtime_env = {"env_vars": {"MODELPLANE_URL": cluster.url, "MODELPLANE_TOKEN": cluster.token}}
    submitted = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard,
         "--working-dir", str(staging), "--runtime-env-json", json.dumps(runtime_env),
         "--", "python", "-m", "training.job", "--config", "job.yaml"],
        env=cluster.env, capture_output=True, text=True, timeout=300)
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output
    client = cluster.client()
    return SubmittedJob(output, _only_run(client, "t-digits"), client.resolve("t-digits@challenger"))


def test_a_job_submitted_with_ray_job_submit_trains_registers_and_serves(
        cluster: Cluster, digits_job: SubmittedJob) -> None:
    """The run is tracked per epoch; the version serves what torch computes."""
    assert "registered t-digits:1 (alias challenger)" in digits_job.output, digits_job.output
    client, run = cluster.client(), digits_job.run
    assert run.status == "finished"
    assert [m.step for m in client.metric_history(run.id, "val_loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.metric_history(run.id, "checkpoint_epoch")] == [2, 4]
    # A checkpointed epoch logs every key a spec's epoch limit counts (training.schemas).
    logged_at_2 = {key for key in run.latest_metrics
                   if 2 in [m.step for m in client.metric_history(run.id, key)]}
    assert logged_at_2 == set(epoch_metric_keys("classification")), logged_at_2
    assert run.params["resources.num_workers"] == 2
    assert run.environment["python_version"] and "torch" in run.environment["packages"]
    assert run.environment["ray_cluster"]["resources"]["CPU"] == 6
    # What tells this cluster from one at the same address elsewhere, and from its restart.
    assert all(run.environment["ray_cluster"][key] for key in ("address", "head", "session"))
    assert re.fullmatch(r"raysubmit_\w+", run.tags["ray_job_submission_id"])
    # One node, never drained: Ray Train's preemption watcher was not started for it.
    assert cluster.head.state("actors", class_name="PreemptionWatcher") == []

    version = digits_job.version
    manifest = version.manifest
    assert version.version == 1 and manifest.task == "classification"
    assert [s.name for s in manifest.signature.outputs] == ["probabilities", "label"]
    assert manifest.signature.inputs[0].shape == [None, 64]
    assert {"accuracy", "precision", "recall", "f1", "roc_auc"} <= set(manifest.metrics)
    assert manifest.metrics["accuracy"] > 0.8
    lineage = client.lineage("t-digits", 1)
    assert lineage.run is not None and lineage.run.id == run.id
    assert lineage.lineage.dataset_uri == "sklearn://digits"
    assert re.fullmatch(r"[0-9a-f]{64}", lineage.lineage.dataset_digest or "")
    assert re.fullmatch(r"[0-9a-f]{40}", lineage.lineage.code_commit or "")
    assert {"torch", "ray", "onnxruntime"} <= set(lineage.lineage.packages)
    assert lineage.lineage.parent_version is None
    profile = manifest.reference_profile or {}
    assert len(profile["features"]) == 64
    assert [f["name"] for f in profile["predictions"]["features"]] == ["predicted_class", "confidence"]

    rows = _digits_rows(32)
    expected = _torch_outputs(client, run, rows)
    served = _served(cluster, client, "t-digits", "t-digits:1", rows)
    np.testing.assert_allclose(served["probabilities"], expected["probabilities"], atol=1e-4)
    assert served["label"].tolist() == expected["label"].tolist()
    client.undeploy("t-digits")


def test_a_plateau_ends_the_run_before_the_epoch_limit(cluster: Cluster,
                                                       digits_job: SubmittedJob) -> None:
    """`modelplane train run` fine-tuning the digits version at a learning rate too small to
    move val_loss by min_delta: the run stops after `patience` flat epochs. It registers its
    scaler as a step in front of the graph (registration.preprocessing: step), and the
    version serves on raw rows what torch computes."""
    spec = _write_spec(cluster.root / "plateau" / "job.yaml", cluster, experiment="t-plateau",
                       dataset="digits", epochs=50, workers=1, every=10, learning_rate=1e-7,
                       early_stopping={"metric": "val_loss", "patience": 2, "min_delta": 0.01},
                       init_from="t-digits:1", model_name="t-digits", preprocessing="step")
    env = {**cluster.env, "RAY_TMPDIR": str(cluster.root / "local-ray")}
    result = subprocess.run([sys.executable, "-m", "modelplane.cli", "train", "run", str(spec),
                             "--num-cpus", "2"], env=env, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "fine-tuning from t-digits:1" in output, output
    assert "done (stopped early at epoch 3): run" in output, output

    client = cluster.client()
    run = _only_run(client, "t-plateau")
    assert [m.step for m in client.metric_history(run.id, "val_loss")] == [1, 2, 3]
    assert run.params["epochs_run"] == 3 and run.params["stopped_early"] is True
    # The last epoch is always checkpointed, early or not.
    assert [m.step for m in client.metric_history(run.id, "checkpoint_epoch")] == [3]
    # Fine-tuned from version 1's weights: as accurate at once, and its child in lineage.
    first_epoch = client.metric_history(run.id, "val_accuracy")[0].value
    assert first_epoch >= digits_job.version.manifest.metrics["accuracy"] - 0.05
    assert client.lineage("t-digits", 2).lineage.parent_version == 1
    assert "behind its fitted scaler (builtin:standardize)" in output, output

    code = client.get_version("t-digits", 2).manifest.code
    assert code is not None and code.preprocess == "builtin:standardize"
    assert [s.name for s in code.graph_inputs or []] == ["standardized"]
    rows = _digits_rows(16)
    expected = _torch_outputs(client, run, rows)
    served = _served(cluster, client, "t-digits-step", "t-digits:2", rows)
    np.testing.assert_allclose(served["probabilities"], expected["probabilities"], atol=1e-4)
    client.undeploy("t-digits-step")


def test_a_stopped_job_resumes_from_its_checkpoint(cluster: Cluster) -> None:
    """Stopped with `ray job stop` mid-way, resubmitted with resume: it goes on, not over."""
    first = _write_spec(cluster.root / "resume" / "first.yaml", cluster, experiment="t-resume",
                        dataset="breast_cancer", epochs=5000, workers=1, every=1)
    job_id = _submit(cluster, first)
    client = cluster.client()
    run = _wait_for(lambda: (runs := _runs(client, "t-resume")) and runs[0],
                    "the run to start", cluster, job_id)
    _wait_for(lambda: _last_step(client, run.id, "checkpoint_epoch") >= 3,
              "a checkpoint after epoch 3", cluster, job_id)
    stopped = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", cluster.dashboard,
                              job_id], env=cluster.env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    _wait_for(lambda: client.get_run(run.id).status != "running", "the run to end", cluster, None)
    assert client.get_run(run.id).status == "killed"
    seen = _last_step(client, run.id, "checkpoint_epoch")

    # The epochs come from `--set`, over the file's (as `train run` and `ray job submit` take).
    second = _write_spec(cluster.root / "resume" / "second.yaml", cluster, experiment="t-resume",
                         dataset="breast_cancer", epochs=1, workers=1, every=1,
                         resume_from=run.id)
    result = _modelplane(cluster, "train", "submit", str(second), "--address", cluster.dashboard,
                         "--set", f"hyperparameters.epochs={seen + 4}", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = next(r for r in _runs(client, "t-resume") if r.id != run.id)
    start = resumed.params["resumed_from_epoch"]
    assert start >= seen >= 3  # the latest checkpoint: at least the last one the run logged
    steps = [m.step for m in client.metric_history(resumed.id, "val_loss")]
    assert steps == list(range(start + 1, seen + 5))


def test_a_job_past_its_deadline_is_stopped_and_fails_saying_which(cluster: Cluster) -> None:
    """Ray Train checks that workers live, not that they finish: past
    resources.max_run_time_s the driver stops the job itself (here, wherever training has
    got to: its workers starting or its epochs running); the run ends failed with the
    deadline as its reason, and the command says it."""
    spec = _write_spec(cluster.root / "deadline" / "job.yaml", cluster, experiment="t-deadline",
                       dataset="breast_cancer", epochs=5000, workers=1, every=1)
    result = _modelplane(cluster, "train", "submit", str(spec), "--address", cluster.dashboard,
                         "--set", "resources.max_run_time_s=5", "--wait")
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    assert "resources.max_run_time_s (5 s)" in said, said
    run = _only_run(cluster.client(), "t-deadline")
    assert run.status == "failed", run.status
    assert run.params["failure_reason"].startswith(
        "training ran longer than resources.max_run_time_s (5 s)")


def test_bad_specs_fail_before_submission_naming_the_field(cluster: Cluster) -> None:
    root = cluster.root / "bad"
    csv = root / "table.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    cases = {
        "data.dataset": {"data": {"dataset": "iris2"}},
        "data.target": {"data": {"path": str(csv), "target": "outcome"}},
        "hyperparameters.learning_rate": {"hyperparameters": {"learning_rate": -0.1}},
        "resources.use_gpu": {"resources": {"num_workers": 2, "use_gpu": True}},
    }
    for field, override in cases.items():
        spec = {"experiment": {"name": "t-bad"}, "model": {"architecture": "mlp_classifier"},
                "data": {"dataset": "digits"}, **override}
        path = root / f"{field}.yaml"
        path.write_text(yaml.safe_dump(spec))
        result = _modelplane(cluster, "train", "submit", str(path), "--address", cluster.dashboard)
        assert result.returncode == 1, result.stdout + result.stderr
        assert field in result.stderr and "submitted" not in result.stdout, result.stderr
    assert "has 0 GPU" in result.stderr
    good = root / "good.yaml"
    good.write_text(yaml.safe_dump({"experiment": {"name": "t-bad"}, "model": {
        "architecture": "mlp_classifier"}, "data": {"dataset": "digits"}}))
    result = _modelplane(cluster, "train", "submit", str(good), "--address", cluster.dashboard,
                         "--set", "hyperparameters.learning_rate=-2")
    assert result.returncode == 1 and "submitted" not in result.stdout, result.stdout
    assert "hyperparameters.learning_rate" in result.stderr, result.stderr  # the --set's field
    listed = _modelplane(cluster, "train", "list", "--address", cluster.dashboard, "--json")
    assert "t-bad" not in {job["experiment"] for job in json.loads(listed.stdout)}


# ---------------------------------------------------------------- helpers


def _write_spec(path: Path, cluster: Cluster, *, experiment: str, dataset: str, epochs: int,
                workers: int, every: int, learning_rate: float = 0.003,
                early_stopping: dict[str, Any] | None = None, resume_from: str | None = None,
                init_from: str | None = None, model_name: str | None = None,
                alias: str | None = None, preprocessing: str | None = None) -> Path:
    spec: dict[str, Any] = {
        "experiment": {"name": experiment},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": [32]},
        "data": {"dataset": dataset, "seed": 0},
        "hyperparameters": {"learning_rate": learning_rate, "batch_size": 64, "epochs": epochs},
        "resources": {"num_workers": workers, "cpus_per_worker": 1},
        "checkpoint": {"every_n_epochs": every, "keep": 2,
                       "storage_path": str(cluster.root / "checkpoints")},
        "registration": {"model_name": model_name or experiment},
    }
    if early_stopping:
        spec["early_stopping"] = early_stopping
    if resume_from:
        spec["checkpoint"]["resume_from"] = resume_from
    if alias:
        spec["registration"]["alias"] = alias
    if preprocessing:
        spec["registration"]["preprocessing"] = preprocessing
    if init_from:
        spec["model"]["init_from"] = init_from
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def _modelplane(cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelplane.cli", *args], env=cluster.env,
                          capture_output=True, text=True, timeout=timeout)


def _submit(cluster: Cluster, spec: Path) -> str:
    result = _modelplane(cluster, "train", "submit", str(spec), "--address", cluster.dashboard)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"submitted job (\S+)", result.stdout)
    assert match, result.stdout
    return match.group(1)


def _runs(client: Client, experiment: str) -> list[Any]:
    from control_plane.errors import NotFoundError

    try:
        return client.list_runs(experiment).items
    except NotFoundError:
        return []


def _only_run(client: Client, experiment: str) -> Any:
    runs = _runs(client, experiment)
    assert len(runs) == 1, runs
    return client.get_run(runs[0].id)


def _last_step(client: Client, run_id: str, key: str) -> int:
    return max((m.step for m in client.metric_history(run_id, key)), default=0)


def _wait_for(probe: Any, what: str, cluster: Cluster, job_id: str | None,
              timeout: float = 180) -> Any:
    """:func:`wait_for`, showing the job's logs if it times out."""
    try:
        return wait_for(probe, timeout, what, interval=0.5)
    except AssertionError as error:
        if job_id is None:
            raise
        logs = _modelplane(cluster, "train", "logs", job_id, "--address", cluster.dashboard)
        raise AssertionError(f"{error}\n{logs.stdout}") from None


def _digits_rows(count: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:count].astype(np.float32)


def _served(cluster: Cluster, client: Client, endpoint: str, ref: str,
            rows: np.ndarray) -> dict[str, np.ndarray]:
    """Deploy ``ref`` on ``endpoint``, wait until it serves, and answer ``rows`` through it."""
    from control_plane.platform import wait_serving

    client.deploy(endpoint, ref, scaling={"num_cpus": 0.25})
    wait_serving(cluster.url, endpoint, int(ref.rsplit(":", 1)[1]), timeout_s=180)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}
    response = httpx.post(f"{cluster.url}/v2/models/{endpoint}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def _torch_outputs(client: Client, run: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The trained network's outputs in torch, from the bundle the job saved on its run."""
    from training.export import torch_outputs
    from training.finetune import MODEL_BUNDLE_ARTIFACT
    from training.models import load_bundle

    digest = next(a.digest for a in run.artifacts if a.path == MODEL_BUNDLE_ARTIFACT)
    with tempfile.TemporaryDirectory() as directory:
        path = client.download_artifact(digest, Path(directory) / "model.pt")
        return torch_outputs(load_bundle(path), rows)
