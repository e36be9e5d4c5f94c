"""Secrets stay where they belong, on a real Ray head running `modelplane up`.

The head is the one the job tests share (this folder's conftest: `ray start --head`, every
port free, a private RAY_TMPDIR), with reads requiring a token and the store's URL set
explicitly, as on a cluster. This process never connects to Ray itself: jobs are submitted
with `modelplane train submit`, and replicas are inspected by a Ray client subprocess.

- A training job's runtime environment holds a token minted for it (role trainer), never
  the submitter's; that token can track and register but not mint tokens or deploy, and it
  is revoked once the job ends.
- Model replicas hold neither the store's URL nor the operator's token, and load their
  model with a read-only token when reads require one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from control_plane.client import Client
from tests.job_head import DB_MARKER, JobHead
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.ray_head import RayHead
from tests.waiting import wait_for
from training.submission import TERMINAL_STATES


@dataclass
class Head:
    ray: RayHead
    env: dict[str, str]
    url: str
    db_url: str
    operator_token: str = ""

    @property
    def admin_token(self) -> str:
        return (Path(self.env["MODELPLANE_HOME"]) / "admin.token").read_text().strip()

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.admin_token)

    def modelplane(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelplane.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ray_python(self, code: str, timeout: float = 120) -> Any:
        """Run ``code`` in a Ray client subprocess of this head; it prints one JSON value."""
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                                env={**self.env, "RAY_ADDRESS": self.ray.gcs_address},
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def head(job_head: JobHead) -> Head:
    return Head(job_head.ray, job_head.env, job_head.env["MODELPLANE_URL"], job_head.db_url,
                job_head.operator_token)


def _spec(path: Path, head: Head, *, experiment: str, epochs: int) -> Path:
    spec = {
        "experiment": {"name": experiment},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": [8]},
        "data": {"dataset": "breast_cancer", "seed": 0},
        "hyperparameters": {"learning_rate": 0.003, "batch_size": 64, "epochs": epochs},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every_n_epochs": 1, "keep": 1,
                       "storage_path": str(head.ray.root / "checkpoints")},
        "registration": {"model_name": experiment, "alias": "challenger"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def _job_env(head: Head, job_id: str) -> dict[str, str]:
    """The job's runtime environment as Ray's job API shows it to anyone who can list jobs."""
    return dict((head.ray.jobs.info(job_id).runtime_env or {}).get("env_vars", {}))


def _runs(client: Client, experiment: str) -> list[Any]:
    from control_plane.errors import NotFoundError

    try:
        return client.list_runs(experiment).items
    except NotFoundError:  # the job has not created its experiment yet
        return []


def test_a_submitted_job_runs_on_its_own_narrow_token_revoked_when_it_ends(head: Head) -> None:
    spec = _spec(head.ray.root / "long" / "job.yaml", head, experiment="s-long", epochs=5000)
    submitted = head.modelplane("train", "submit", str(spec), "--address", head.ray.dashboard)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)  # type: ignore[union-attr]

    env = _job_env(head, job_id)
    token = env.get("MODELPLANE_TOKEN", "")
    assert token and token != head.admin_token
    assert head.admin_token not in json.dumps(env)
    name = env["MODELPLANE_JOB_TOKEN_NAME"]
    admin = head.client()
    minted = {t.name: t for t in admin.list_tokens()}[name]
    assert minted.role == "trainer" and minted.expires_at is not None
    assert minted.revoked_at is None

    # While the job runs, its token tracks (the job's run appears) but holds no more power.
    wait_for(lambda: _runs(admin, "s-long"), 240, "the job's run to start", interval=1)
    bearer = {"authorization": f"Bearer {token}"}
    api = f"{head.url}/api"
    assert httpx.get(f"{api}/whoami", headers=bearer, timeout=30).json()["role"] == "trainer"
    assert httpx.post(f"{api}/tokens", headers=bearer, timeout=30,
                              json={"name": "escalate", "role": "admin"}).status_code == 403
    assert httpx.post(f"{api}/tokens", headers=bearer, timeout=30,
                              json={"name": "job-child", "role": "trainer",
                                    "expires_in_minutes": 5}).status_code == 403
    assert httpx.post(f"{api}/endpoints", headers=bearer, timeout=30,
                              json={"endpoint": "s-long", "model_ref": "s-long:1"}).status_code == 403
    assert httpx.delete(f"{api}/tokens/admin", headers=bearer, timeout=30).status_code == 403

    stopped = head.modelplane("train", "stop", job_id, "--address", head.ray.dashboard)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    # Ray's job API in this process: a CLI process per poll took seconds of CPU each.
    wait_for(lambda: head.ray.jobs.status(job_id) in TERMINAL_STATES, 180, "the stopped job to end",
             interval=1)
    # The submitter sees it ended; a job killed before it revoked its own token has it
    # revoked then.
    status = head.modelplane("train", "status", job_id, "--address", head.ray.dashboard, "--json")
    assert json.loads(status.stdout)["status"] in {"STOPPED", "FAILED"}, status.stdout + status.stderr
    revoked = {t.name: t for t in admin.list_tokens()}[name]
    assert revoked.revoked_at is not None
    assert httpx.get(f"{api}/whoami", headers=bearer, timeout=30).status_code == 401


def test_a_job_registers_with_its_token_and_revokes_it_on_exit(head: Head) -> None:
    spec = _spec(head.ray.root / "short" / "job.yaml", head, experiment="s-short", epochs=2)
    before = {t.name for t in head.client().list_tokens()}
    done = head.modelplane("train", "submit", str(spec), "--address", head.ray.dashboard, "--wait",
                           timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    version = head.client().resolve("s-short@challenger")
    assert version.version == 1
    minted = [t for t in head.client().list_tokens() if t.name not in before]
    assert [t.role for t in minted] == ["trainer"]
    # The version is recorded as registered by the job's token, and that token is dead.
    assert version.created_by == minted[0].name
    assert minted[0].revoked_at is not None


def test_replicas_hold_no_store_url_or_operator_token_and_load_with_a_read_token(head: Head) -> None:
    admin = head.client()
    model = head.ray.root / "iris.onnx"
    model.write_bytes(linear_classifier(seed=1))
    admin.register_version("s-iris", model, linear_classifier_manifest())
    admin.deploy("s-iris", "s-iris:1", scaling={"num_cpus": 0.25})
    from control_plane.platform import wait_serving

    # Reads need a token here, so a replica without one could not fetch its artifact.
    wait_serving(head.url, "s-iris", 1, timeout_s=240)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                        "data": [5.1, 3.5, 1.4, 0.2]}]}
    answer = httpx.post(f"{head.url}/v2/models/s-iris/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text

    environments = head.ray_python("""
        import json, os
        import ray
        from ray.util.state import list_actors
        ray.init(configure_logging=False, log_to_driver=False)
        found = {}
        for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=10000):
            if not actor.class_name.startswith(("ServeReplica:endpoint-",
                                                "ServeReplica:control-plane")):
                continue
            handle = ray.get_actor(actor.name, namespace="serve")
            found[actor.class_name] = ray.get(
                handle.__ray_call__.remote(lambda self: dict(os.environ)))
        print(json.dumps(found))
    """)
    control_planes = [env for name, env in environments.items() if "control-plane" in name]
    assert len(control_planes) == 1, sorted(environments)
    # The control plane holds the store's URL, but not the token of whoever ran `up`.
    assert control_planes[0]["MODELPLANE_DB_URL"] == head.db_url
    assert head.operator_token not in json.dumps(control_planes[0])
    environments = {n: e for n, e in environments.items() if "control-plane" not in n}
    assert environments, "no endpoint replica found"
    for replica, env in environments.items():
        dumped = json.dumps(env)
        assert "MODELPLANE_DB_URL" not in env, replica
        assert DB_MARKER not in dumped, replica
        assert head.admin_token not in dumped, replica
        assert head.operator_token not in dumped, replica
        token = env.get("MODELPLANE_TOKEN")
        assert token, f"{replica} has no token to read its artifact with"
        bearer = {"authorization": f"Bearer {token}"}
        who = httpx.get(f"{head.url}/api/whoami", headers=bearer).json()
        assert who["role"] == "reader", who
        # Read-only: it reads artifacts and the registry, and changes nothing.
        assert httpx.get(f"{head.url}/api/models", headers=bearer).status_code == 200
        refused = httpx.post(f"{head.url}/api/endpoints", headers=bearer,
                             json={"endpoint": "s-evil", "model_ref": "s-iris:1"})
        assert refused.status_code == 403, refused.text
    admin.undeploy("s-iris")
