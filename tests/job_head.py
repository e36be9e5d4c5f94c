"""The platform the job tests share: a private Ray head set up as on a cluster.

Reads require a token, the store's URL is set explicitly, and an operator runs `up` a
second time with their own token in the shell (tests/integration/jobs/test_secrets.py
proves it reaches no replica).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from control_plane.client import Client
from tests.conftest import free_port
from tests.ray_head import RayHead

DB_MARKER = "secret-store-marker"  # in the store's URL; test_secrets.py finds it anywhere


@dataclass
class JobHead:
    ray: RayHead
    env: dict[str, str]  # for every subprocess: the head's Ray settings and MODELPLANE_*
    db_url: str
    operator_token: str


def start_job_head(ray: RayHead) -> JobHead:
    """Start ``ray`` and the platform on it."""
    ray.start(timeout=300)  # a loaded 2-core box can take minutes
    port = free_port()
    home = ray.root / "home"
    db_url = f"sqlite:///{home / (DB_MARKER + '.db')}"
    env = {**ray.env, "MODELPLANE_HOME": str(home), "MODELPLANE_HTTP_PORT": str(port),
           "MODELPLANE_URL": f"http://127.0.0.1:{port}", "MODELPLANE_DB_URL": db_url,
           "MODELPLANE_READS_REQUIRE_TOKEN": "true"}
    _up(ray, env)
    admin_token = (home / "admin.token").read_text().strip()
    with Client(env["MODELPLANE_URL"], admin_token) as admin:
        operator_token = admin.create_token("operator", "admin").token
    _up(ray, {**env, "MODELPLANE_TOKEN": operator_token})
    return JobHead(ray, env, db_url, operator_token)


def _up(ray: RayHead, env: dict[str, str]) -> None:
    up = subprocess.run([sys.executable, "-m", "modelplane.cli", "up"],
                        env={**env, "RAY_ADDRESS": ray.gcs_address},
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
