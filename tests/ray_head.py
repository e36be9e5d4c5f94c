"""A private Ray head (`ray start --head --block`) for tests and benchmarks that submit jobs.

Every port is chosen free and the temp dir is private, so it neither finds nor disturbs
any other Ray on the machine; ``stop`` ends exactly its own processes (``ray stop`` would
end every cluster here). Processes talk to it as users do: through ``env``, which carries
Ray's token mode when this machine has a Ray token.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from control_plane.platform import head_ports
from control_plane.ray_auth import dashboard_auth_headers, ray_auth_env

if TYPE_CHECKING:
    from training.submission import JobClient

BIN = Path(sys.executable).parent


@dataclass
class RayHead:
    num_cpus: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)  # more `ray start --head` options
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mph")))
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['port']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    @functools.cached_property
    def jobs(self) -> JobClient:
        """Ray's job API on this head, for polling from the test's process: one client,
        since each new one asks the dashboard its token mode and Ray's version first."""
        from training.submission import JobClient

        return JobClient(self.dashboard)

    def state(self, kind: str, **equal: str) -> list[dict[str, Any]]:
        """Rows of Ray's state API on the head (``nodes``, ``actors``, as ``ray list`` reads
        them), with details, where each field named in ``equal`` has that value: an HTTP call,
        where a Ray client process cost seconds of CPU."""
        params: list[tuple[str, str | int]] = [("limit", 10_000), ("detail", "true")]
        for key, value in equal.items():
            params += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
        answer = httpx.get(f"{self.dashboard}/api/v0/{kind}", params=params,
                           headers=dashboard_auth_headers(self.dashboard, self.env), timeout=30)
        answer.raise_for_status()
        return answer.json()["data"]["result"]["result"]  # type: ignore[no-any-return]

    def start(self, timeout: float = 120.0) -> RayHead:
        """Start the head; returns once its dashboard (the job API) answers."""
        self.ports = head_ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPLANE_", "RAY_"))}
        # Short RAY_TMPDIR: Ray's socket paths live under it. Jobs run `python -m …`, so the
        # head's `python` must be this one.
        env.update(RAY_TMPDIR=str(self.root / "ray"),
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **self.extra_env)
        env.update(ray_auth_env(env))  # with extra_env's HOME, where it gives one
        self.env = env
        command = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                   f"--num-cpus={self.num_cpus}", "--include-dashboard=true",
                   "--dashboard-host=127.0.0.1",
                   *(f"--{name}={port}" for name, port in self.ports.items()), *self.extra_args]
        log_path = self.root / "head.log"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with {self.process.returncode}; "
                                   f"see {log_path}")
            try:
                httpx.get(f"{self.dashboard}/api/version", timeout=2)
                return self
            except httpx.TransportError:
                time.sleep(0.5)
        raise RuntimeError(f"the Ray dashboard did not answer at {self.dashboard}; see {log_path}")

    def up_platform(self, **settings: str) -> dict[str, str]:
        """`modelplane up` on this head with its own home and HTTP port (plus ``settings``,
        MODELPLANE_* variables); returns the environment a client of that platform uses."""
        from tests.conftest import free_port

        port = free_port()
        env = {**self.env, "MODELPLANE_HOME": str(self.root / "home"),
               "MODELPLANE_HTTP_PORT": str(port), "MODELPLANE_URL": f"http://127.0.0.1:{port}",
               **settings}
        up = subprocess.run([sys.executable, "-m", "modelplane.cli", "up"],
                            env={**env, "RAY_ADDRESS": self.gcs_address},
                            capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        return env

    def stop(self) -> None:
        """Stop exactly this head's processes and remove its files."""
        from control_plane.platform import stop_cluster_processes

        if self.process is not None:
            stop_cluster_processes(self.ports["port"], head_pid=self.process.pid)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)
