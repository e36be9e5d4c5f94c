"""`modelplane up / deploy / traffic / status / undeploy / down`, as a user runs them.

`up` starts its own Ray head here (in a private RAY_TMPDIR, so it neither finds nor
disturbs the test session's Ray) with the fastest ingress available, and `down` stops
exactly that head.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.client import Client
from modelplane.ports import port_free
from tests.conftest import free_port
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.processes import descendants


@pytest.fixture(scope="module")
def cli_env() -> Iterator[dict[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="mp"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPLANE_", "RAY_"))}
    # A HOME of its own, with no Ray token yet: as on a machine where Ray never ran.
    (root / "user").mkdir()
    env.update(MODELPLANE_HOME=str(root / "home"), MODELPLANE_HTTP_PORT=str(free_port()),
               RAY_TMPDIR=str(root / "ray"), HOME=str(root / "user"), COLUMNS="300")
    yield env
    subprocess.run([sys.executable, "-m", "modelplane.cli", "down"], env=env,
                   capture_output=True, timeout=180)


def run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "modelplane.cli", *args], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _program(pid: int) -> str:
    """The name of the program ``pid`` runs (its argv[0] without the folder)."""
    try:
        return os.path.basename(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def infer(http: httpx.Client, url: str, endpoint: str) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    return http.post(f"{url}/v2/models/{endpoint}/infer", json=body)


def test_the_platform_lifecycle_through_the_cli(cli_env: dict[str, str]) -> None:
    """up, up again, deploy, traffic, status, a crashed Ray head and up, undeploy, down."""
    up = run(cli_env, "up", "--num-cpus", "2")
    assert "modelplane is up" in up.stdout
    assert "admin.token" in up.stdout
    # Ray listens on every interface: the head it started requires a token, made for it.
    ray_token = Path(cli_env["HOME"]) / ".ray" / "auth_token"
    assert f"made a Ray token at {ray_token}" in up.stdout, up.stdout
    assert ray_token.stat().st_mode & 0o777 == 0o600
    head_record = json.loads((Path(cli_env["MODELPLANE_HOME"]) / "ray-head.json").read_text())
    mode = httpx.get(f"{head_record['dashboard_url']}/api/authentication_mode", timeout=10).json()
    assert mode == {"authentication_mode": "token"}
    url = f"http://127.0.0.1:{cli_env['MODELPLANE_HTTP_PORT']}"
    again = run(cli_env, "up")  # idempotent: finds everything running
    assert "modelplane is up" in again.stdout
    # Another port for the running platform: refused before anything moves (it moved the
    # gRPC service, then waited minutes for a control plane where nothing listens).
    port = int(cli_env["MODELPLANE_HTTP_PORT"])
    moved = subprocess.run([sys.executable, "-m", "modelplane.cli", "up"], capture_output=True,
                           env={**cli_env, "MODELPLANE_HTTP_PORT": str(free_port())},
                           text=True, timeout=120)
    assert moved.returncode == 1, moved.stdout + moved.stderr
    assert f"HTTP ingress at 127.0.0.1:{port}" in moved.stderr, moved.stderr
    assert f"set MODELPLANE_HTTP_PORT={port}" in moved.stderr
    assert not port_free("127.0.0.1", port + 1)  # the gRPC service stayed where it was

    token = (Path(cli_env["MODELPLANE_HOME"]) / "admin.token").read_text().strip()
    with Client(url, token) as client:
        for seed in (1, 2):
            client.register_version("cli-iris", linear_classifier(seed=seed), linear_classifier_manifest())

    deployed = run(cli_env, "deploy", "iris", "cli-iris:1", "--num-cpus", "0.25")
    assert "v1=100%" in deployed.stdout
    with httpx.Client(timeout=30) as http:
        first = infer(http, url, "iris")
        assert first.status_code == 200 and first.json()["model_version"] == "1"

        run(cli_env, "traffic", "iris", "1=50", "2=50")
        seen = Counter()
        for _ in range(200):
            response = infer(http, url, "iris")
            assert response.status_code == 200
            seen[response.json()["model_version"]] += 1
    assert set(seen) == {"1", "2"}, seen

    status = json.loads(run(cli_env, "status", "--json").stdout)
    assert status["ready"] == {"iris": True}
    routes = {r["version"]: r["weight"] for r in status["endpoints"][0]["routes"]}
    assert routes == {1: 50.0, 2: 50.0}
    lease = status["leadership"]  # the one control plane runs the loops, in the first term
    assert lease["leading"] and lease["holder"] == lease["this_process"] and lease["term"] == 1

    # Fault: the whole Ray head SIGKILLed (every process it started, at once), as a crash
    # or the OOM killer takes Ray's processes: Serve's HAProxy is not Ray's and stays,
    # holding the HTTP port and answering errors. `up` again stops it, converges to the
    # store, says what it restored, and serves the same route table.
    head = int(json.loads((Path(cli_env["MODELPLANE_HOME"]) / "ray-head.json").read_text())["pid"])
    ingress = [pid for pid in descendants(head) if _program(pid) == "haproxy"]
    assert ingress, "no HAProxy under the head"
    for pid in [head, *descendants(head)]:
        if pid not in ingress:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for _ in range(60):
        try:
            if httpx.get(f"{url}/v2/health/live", timeout=1).status_code != 200:
                break
        except httpx.TransportError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the killed head still answered")
    restored = run(cli_env, "up", "--num-cpus", "2")
    assert "is gone; stopping what it left running" in restored.stdout, restored.stdout
    assert not any(_alive(pid) for pid in ingress)
    assert "restored from the store:" in restored.stdout, restored.stdout
    assert "iris (v1=50%, v2=50%) serving" in restored.stdout, restored.stdout
    seen = Counter()
    with httpx.Client(timeout=30) as http:  # a new one: the old one's connections died
        for _ in range(100):
            response = infer(http, url, "iris")
            assert response.status_code == 200, response.text
            seen[response.json()["model_version"]] += 1
        assert set(seen) == {"1", "2"}, seen

        run(cli_env, "undeploy", "iris")
        gone = None
        for _ in range(60):
            gone = infer(http, url, "iris")
            if gone.status_code == 404:
                break
            time.sleep(0.5)
    assert gone is not None and gone.status_code == 404

    down = run(cli_env, "down", timeout=180)
    assert "modelplane is down" in down.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v2/health/live", timeout=2)
