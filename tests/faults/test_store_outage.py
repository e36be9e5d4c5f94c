"""The store goes away: PostgreSQL stopped under a running control plane, then started again.

The test runs its own PostgreSQL cluster (Debian's binaries, a data folder in tmp, a free
port), so stopping it disturbs nothing else. Every call made while it is down fails fast
with a 503 that names the store; nothing is half-written; calls succeed again once it is
back, without restarting the control plane.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.client import Client
from control_plane.errors import StoreUnavailableError
from tests.conftest import free_port
from tests.load import BackgroundLoad
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.servers import ControlPlaneProcess
from tests.waiting import wait_for

# In the Ray tier's session stream (tests/conftest.py), before its Ray starts: that evens
# the two streams out (about 26 minutes each when they run at once on 2 cores).
RAY_STREAM = "session"


class PrivatePostgres:
    """A throwaway PostgreSQL server run as the ``postgres`` user."""

    def __init__(self, data: Path) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins or shutil.which("su") is None:
            pytest.skip("PostgreSQL's binaries are not installed (scripts/test-postgres.sh "
                        "installs them)")
        self.bin = Path(bins[-1]).parent
        self.data = data
        self.port = free_port()

    def _as_postgres(self, *command: str) -> None:
        line = " ".join(command)
        subprocess.run(["su", "postgres", "-c", line], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self.data.mkdir(parents=True)
        shutil.chown(self.data, "postgres", "postgres")
        self._as_postgres(f"{self.bin}/initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._as_postgres(f"{self.bin}/pg_ctl", "-D", str(self.data), "-l",
                          str(self.data / "server.log"), "-w", "-o",
                          f"'-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off'",
                          "start")

    def stop(self) -> None:
        self._as_postgres(f"{self.bin}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    # Not under pytest's tmp folder: that is root's alone, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="modelplane-pg-outage-"))
    root.chmod(0o755)
    server = PrivatePostgres(root / "data")
    try:
        server.init()
        server.start()
        yield server
    finally:
        subprocess.run(["su", "postgres", "-c",
                        f"{server.bin}/pg_ctl -D {server.data} -m immediate stop"],
                       capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _timed(call: Callable[[], Any]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except BaseException as error:  # the outcome is what the test looks at
        return time.monotonic() - started, error
    return time.monotonic() - started, None


def test_calls_fail_fast_with_503_while_the_store_is_down(postgres: PrivatePostgres,
                                                           tmp_path: Path) -> None:
    server = ControlPlaneProcess(tmp_path / "home", db_url=postgres.url).start(timeout=60)
    try:
        with Client(server.url, server.admin_token, timeout=30) as client:
            client.register_version("outage", linear_classifier(seed=1), linear_classifier_manifest())
            run = client.start_run("outage")
            client.set_alias("outage", "champion", 1)

            postgres.stop()
            calls: dict[str, Callable[[], Any]] = {
                "create model": lambda: client.create_model("outage-new"),
                "register version": lambda: client.register_version(
                    "outage", linear_classifier(seed=2), linear_classifier_manifest()),
                "move alias": lambda: client.set_alias("outage", "champion", 1),
                "log metrics": lambda: client.log_metrics(run.id, {"loss": 0.5}, step=1),
                "read model": lambda: client.get_model("outage"),
            }
            timings = {}
            for name, call in calls.items():
                elapsed, error = _timed(call)
                timings[name] = round(elapsed, 3)
                assert isinstance(error, StoreUnavailableError), (name, error)
                assert "store" in error.message and "postgresql" in error.message, error.message
                assert "nothing was written" in error.message
                # Fails fast, never the OS's TCP timeout (the generous bound is for a loaded CI).
                assert elapsed < 15, (name, elapsed)
            health = httpx.get(f"{server.url}/api/health", timeout=10)
            assert health.status_code == 503 and health.json()["code"] == "store_unavailable"
            print(f"\nstore down: each call failed in {timings} s")

            postgres.start()
            # Back without restarting the control plane: pooled connections are re-made.
            client.create_model("outage-after")
            assert client.register_version("outage", linear_classifier(seed=3),
                                           linear_classifier_manifest()).version == 2
            assert sorted(v.version for v in client.list_versions("outage").items) == [1, 2]
            assert client.resolve("outage@champion").version == 1
            names = {m.name for m in client.list_models().items}
            assert "outage-new" not in names and "outage-after" in names
        report = httpx.get(f"{server.url}/api/integrity", params={"verify": "true"},
                           headers={"authorization": f"Bearer {server.admin_token}"}, timeout=30)
        assert report.status_code == 200 and report.json()["problems"] == []
    finally:
        server.stop()


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run([sys.executable, "-m", "modelplane.cli", *args], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_serving_and_a_rollout_ride_out_a_30s_store_outage(postgres: PrivatePostgres) -> None:
    """The whole platform (`modelplane up` on its own Ray head) with its store on PostgreSQL:
    stopped for 30 s mid-rollout, no inference request fails, every mutating call is a fast
    503, the rollout decides nothing meanwhile and goes on to promotion afterwards."""
    root = Path(tempfile.mkdtemp(prefix="mpso"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPLANE_", "RAY_"))}
    env.update(MODELPLANE_HOME=str(root / "home"), MODELPLANE_HTTP_PORT=str(free_port()),
               MODELPLANE_DB_URL=postgres.url, RAY_TMPDIR=str(root / "ray"))
    url = f"http://127.0.0.1:{env['MODELPLANE_HTTP_PORT']}"
    _cli(env, "up", "--num-cpus", "2", "--default-ingress")
    try:
        token = (root / "home" / "admin.token").read_text().strip()
        with Client(url, token, timeout=30) as client:
            for seed in (1, 2):
                client.register_version("outage-e", linear_classifier(seed=seed),
                                        linear_classifier_manifest())
            client.deploy("outage-e", "outage-e:1", scaling={"num_cpus": 0.1})
            wait_for(lambda: _ready(f"{url}/v2/models/outage-e/ready"), 180,
                     "the endpoint to be ready")
            with BackgroundLoad(url, "outage-e", workers=2) as load:
                rollout = client.start_rollout({
                    "endpoint": "outage-e", "model_ref": "outage-e:2", "steps": [50, 100],
                    "step_duration_s": 600, "drain_s": 1,
                    "analysis": {"interval_s": 1, "window_s": 3, "min_samples": 10,
                                 "max_p95_ratio": None, "max_p95_ms": 5000}})
                wait_for(lambda: client.get_rollout(rollout.id).last_analysis.get("verdict")
                         == "pass", 120, "a passing analysis before the outage")
                before = client.get_rollout(rollout.id)
                events_before = len(client.rollout_events(rollout.id))

                postgres.stop()
                down_at = time.time()
                refused, slowest = 0, 0.0
                while time.time() - down_at < 30:
                    elapsed, error = _timed(lambda: client.create_model("during-outage"))
                    assert isinstance(error, StoreUnavailableError), error
                    refused, slowest = refused + 1, max(slowest, elapsed)
                    time.sleep(1)
                postgres.start()
                up_at = time.time()

                wait_for(lambda: _after(client.get_rollout(rollout.id).last_analysis, up_at)
                         == "pass", 120, "a passing analysis after the outage")
                after = client.get_rollout(rollout.id)
                assert (after.state, after.step_index) == (before.state, before.step_index)
                during = [e for e in client.rollout_events(rollout.id)[events_before:]
                          if down_at < e.created_at.timestamp() < up_at]
                assert during == [], during
                client.rollout_action(rollout.id, "promote", "the outage is over")
                wait_for(lambda: client.get_rollout(rollout.id).state.terminal, 120,
                         "the rollout to finish")
                assert client.get_rollout(rollout.id).state == "succeeded"
                time.sleep(1)
            failed = load.failures()
            print(f"\nstore down 30 s: {len(load.answers)} inference requests, {len(failed)} "
                  f"failed; {refused} API calls refused, slowest in {slowest:.3f} s")
            assert failed == [], failed[:3]
            assert slowest < 15  # a pool or TCP timeout takes 30 s and more
    finally:
        subprocess.run([sys.executable, "-m", "modelplane.cli", "down"], env=env,
                       capture_output=True, timeout=180)
        shutil.rmtree(root, ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _after(record: dict[str, Any], moment: float) -> str | None:
    """The analysis's verdict if it was made after ``moment``."""
    if not record or datetime.fromisoformat(record["at"]).timestamp() <= moment:
        return None
    return str(record["verdict"])
