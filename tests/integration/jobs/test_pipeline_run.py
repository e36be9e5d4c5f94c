"""A pipeline run end to end on a real Ray head with `modelplane up`: data checked, a real
Ray Train job, the candidate evaluated against the champion, approved where asked, and
deployed: directly for the first version, through a canary rollout under load for the
second. The control plane is SIGKILLed while the training job runs and again while the
rollout runs: the run resumes each time, with one training job per run.

Like the training tests, this process never connects to Ray: the control plane's process
is found by its title and its MODELPLANE_HOME.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from control_plane.client import Client
from tests.job_head import JobHead
from tests.ray_head import RayHead
from tests.waiting import wait_for

ENDPOINT = "pl-bc"


@pytest.fixture(scope="module")
def cluster(job_head: JobHead) -> tuple[RayHead, dict[str, str]]:
    return job_head.ray, job_head.env


def write_pipeline(root: Path) -> Path:
    job = {
        "experiment": {"name": "pl-bc"},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": [16]},
        "data": {"dataset": "breast_cancer", "seed": 0},
        "hyperparameters": {"learning_rate": 0.01, "batch_size": 64, "epochs": 4},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every_n_epochs": 3, "keep": 1, "storage_path": str(root / "checkpoints")},
        "registration": {"model_name": "pl-bc"},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    pipeline = {
        "name": "pl-bc",
        "data": {"uri": "sklearn://breast_cancer",
                 "expectations": {"min_rows": 400, "drift": {"test": "auto", "alpha": 0.01}}},
        "training": {"job": "job.yaml", "timeout_s": 600},
        "evaluate": {"gates": {"min_accuracy": 0.8, "max_regression": 0.1}},
        "approve": {"mode": "never"},
        "deploy": {"endpoint": ENDPOINT, "rollout": {
            "strategy": "canary", "steps": [50, 100], "step_duration_s": 4,
            # No p95 ratio: over windows of 10-odd requests it is noise on a busy box; the
            # rollout under test here is the one the pipeline starts and resumes.
            "analysis": {"interval_s": 1, "window_s": 10, "min_samples": 10,
                         "max_error_rate": 0.05, "max_p95_ratio": None}}},
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    return path


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelplane.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def control_plane_pid(home: str) -> int | None:
    """This platform's control plane replica: by title, and by its MODELPLANE_HOME (other
    Ray sessions on the machine run replicas of the same title)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if title.startswith("ray::ServeReplica:control-plane") and \
                f"MODELPLANE_HOME={home}".encode() in environ:
            return int(entry.name)
    return None


def kill_control_plane(env: dict[str, str], client: Client) -> None:
    pid = wait_for(lambda: control_plane_pid(env["MODELPLANE_HOME"]), 30, "the control plane process")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: control_plane_pid(env["MODELPLANE_HOME"]) not in (None, pid), 180,
             "a new control plane process")
    wait_for(lambda: _healthy(env["MODELPLANE_URL"]), 180, "the new control plane to answer")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def stage_state(client: Client, number: int, stage: str) -> str:
    run = client.pipeline_run("pl-bc", number)
    return next(s.state.value for s in run.stages if s.name == stage)


def jobs_of_run(head: RayHead, number: int) -> list[Any]:
    """The Ray jobs a run submitted (its number is in each job's metadata)."""
    return [job for job in head.jobs.list()
            if (job.metadata or {}).get("pipeline_run") == str(number)]


def summary(run: Any) -> str:
    return json.dumps([[s.name, s.state.value, s.reason, {k: v for k, v in s.outputs.items()
                                                          if k != "report"}]
                       for s in run.stages], default=str)


class Load:
    """Requests to the endpoint from a thread; every failure recorded with its cause."""

    def __init__(self, url: str) -> None:
        self.url, self.answered, self.failures = url, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30],
                            "data": [0.5] * 30}]}
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                try:
                    response = http.post(f"{self.url}/v2/models/{ENDPOINT}/infer", json=body)
                    if response.status_code == 200 and response.json().get("outputs"):
                        self.answered += 1
                    else:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                time.sleep(0.02)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the load thread hung"


def test_a_pipeline_trains_gates_deploys_and_resumes_after_kills(
        cluster: tuple[RayHead, dict[str, str]], tmp_path: Path) -> None:
    head, env = cluster
    spec = write_pipeline(tmp_path)
    client = Client(env["MODELPLANE_URL"], (Path(env["MODELPLANE_HOME"]) / "admin.token").read_text().strip())

    first = cli(env, "pipeline", "run", str(spec), "--wait", "--refresh", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("validate_data", "train", "evaluate", "deploy"):
        assert stage in first.stdout
    run = client.pipeline_run("pl-bc", 1)
    stages = {s.name: s for s in run.stages}
    assert run.state.value == "succeeded", summary(run)
    assert stages["validate_data"].outputs["rows"] == 569 and stages["validate_data"].inputs["reference"] is None
    assert stages["train"].outputs["version"] == 1 and stages["train"].outputs["status"] == "SUCCEEDED"
    assert stages["evaluate"].outputs["champion"] is None and stages["evaluate"].outputs["candidate"]["accuracy"] > 0.8
    assert stages["benchmark"].state.value == "skipped" and stages["approve"].state.value == "skipped"
    assert stages["deploy"].outputs["deployed"] == "pl-bc:1"
    assert len(jobs_of_run(head, 1)) == 1
    from control_plane.platform import wait_serving

    wait_serving(env["MODELPLANE_URL"], ENDPOINT, 1, timeout_s=180)

    # Run 2: killed while its job trains and again while its rollout runs, under load.
    with Load(env["MODELPLANE_URL"]) as load:
        second = client.start_pipeline_run("pl-bc", reason="new data")
        assert second.number == 2
        wait_for(lambda: client.pipeline_run("pl-bc", 2).stages[1].progress.get("submitted"),
                 120, "the training job to be submitted")
        kill_control_plane(env, client)
        wait_for(lambda: stage_state(client, 2, "deploy") in ("running", "passed", "failed"),
                 600, "the deploy stage")
        if stage_state(client, 2, "deploy") == "running":
            kill_control_plane(env, client)
        wait_for(lambda: client.pipeline_run("pl-bc", 2).state.terminal, 600, "run 2 to end")
    run = client.pipeline_run("pl-bc", 2)
    stages = {s.name: s for s in run.stages}
    assert run.state.value == "succeeded", summary(run)
    assert len(jobs_of_run(head, 2)) == 1  # followed after the kill, never submitted again
    assert stages["validate_data"].inputs["reference"] == "pl-bc:1"  # drift judged against v1
    assert stages["evaluate"].inputs["champion"] == "pl-bc:1"
    assert stages["evaluate"].outputs["report"]["comparison"] is not None
    rollout = client.get_rollout(stages["deploy"].outputs["rollout_id"])
    assert rollout.state.value == "succeeded" and rollout.candidate_version == 2
    assert len(client.list_rollouts(endpoint=ENDPOINT)) == 1  # the deploy stage started it once
    assert load.answered > 50 and load.failures == []
    logs = cli(env, "pipeline", "logs", "pl-bc", "--run", "2")
    assert "--- train ---" in logs.stdout and "registered pl-bc:2" in logs.stdout, logs.stdout[-2000:]
