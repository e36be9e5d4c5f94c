"""A Ray token made after the cluster started changes nothing for that cluster's clients.

Ray 2.60 writes ``~/.ray/auth_token`` the first time anything on the machine starts a local
Ray with ``ray.init()``, and from then on a process that goes by the token alone switches
to token mode. Against a cluster that started without token authentication such a client
has its actors cancelled before they start: a training job's driver lost Ray Train's
controller that way, and `modelplane up` would lose its replicas. The package's head runs
with a HOME of its own (conftest.py) and without token authentication; here the token
appears under that HOME while it runs, as it does on a fresh machine mid-way through a day.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from control_plane.client import Client
from tests.job_head import JobHead

JOINS_AND_STARTS_AN_ACTOR = """
import os, sys
from control_plane.ray_auth import apply_ray_auth_env
apply_ray_auth_env(gcs=sys.argv[1])
print(os.environ.get("RAY_AUTH_MODE"))
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
@ray.remote(num_cpus=0)
class Echo:
    def ping(self):
        return "answered"
print(ray.get(Echo.remote().ping.remote(), timeout=60))
"""


@pytest.fixture
def late_token(job_head: JobHead) -> Iterator[Path]:
    """The head's HOME gains a Ray token, after the head started; removed at the end."""
    mode = httpx.get(f"{job_head.ray.dashboard}/api/authentication_mode", timeout=10).json()
    assert mode == {"authentication_mode": "disabled"}  # as it started: no token under its HOME
    token = Path(job_head.env["HOME"]) / ".ray" / "auth_token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("a-token-made-after-the-cluster-started")
    yield token
    token.unlink(missing_ok=True)


def test_jobs_and_up_keep_the_clusters_mode_when_a_token_appears(
        job_head: JobHead, late_token: Path) -> None:
    env = {k: v for k, v in job_head.env.items() if k != "RAY_AUTH_MODE"}
    spec = job_head.ray.root / "late-token" / "job.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(yaml.safe_dump({
        "experiment": {"name": "k-token"},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": [8]},
        "data": {"dataset": "breast_cancer", "seed": 0},
        "hyperparameters": {"learning_rate": 0.01, "batch_size": 64, "epochs": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every_n_epochs": 1, "keep": 1,
                       "storage_path": str(job_head.ray.root / "checkpoints")},
        "registration": {"model_name": "k-token"},
    }))
    # The driver sees the token too (its HOME is the head's): it must keep the cluster's
    # mode, or Ray Train's controller is cancelled before it starts.
    submitted = subprocess.run(
        [sys.executable, "-m", "modelplane.cli", "train", "submit", str(spec), "--address",
         job_head.ray.dashboard, "--wait"], env=env, capture_output=True, text=True, timeout=600)
    said = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, said
    assert "registered k-token:1" in said, said
    with Client(job_head.env["MODELPLANE_URL"], job_head.operator_token) as client:
        assert client.resolve("k-token:1").version == 1

    # A client that joins by the GCS address, as `up` and `down` do, asks the GCS: its
    # actors start (in token mode they would be cancelled before they start).
    joined = subprocess.run([sys.executable, "-c", JOINS_AND_STARTS_AN_ACTOR, job_head.ray.gcs_address],
                            env=env, capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert joined.stdout.split() == ["disabled", "answered"], joined.stdout + joined.stderr

    again = subprocess.run([sys.executable, "-m", "modelplane.cli", "up"],
                           env={**env, "RAY_ADDRESS": job_head.ray.gcs_address,
                                "MODELPLANE_TOKEN": job_head.operator_token},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "modelplane is up" in again.stdout
    assert "InvalidAuthToken" not in again.stdout + again.stderr
