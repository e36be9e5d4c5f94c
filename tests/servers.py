"""Run the control plane as a real server process on loopback, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port


@dataclass
class ControlPlaneProcess:
    """``modelplane api`` in a subprocess with its own MODELPLANE_HOME."""

    home: Path
    db_url: str | None = None
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
        env.update(
            MODELPLANE_HOME=str(self.home),
            MODELPLANE_HTTP_PORT=str(self.port),
            MODELPLANE_URL=self.url,
            **self.extra_env,
        )
        if self.db_url:
            env["MODELPLANE_DB_URL"] = self.db_url
        return env

    def start(self, timeout: float = 30.0) -> ControlPlaneProcess:
        log = open(self.home.parent / f"api-{self.port}.log", "ab")  # noqa: SIM115
        self.home.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelplane.cli", "api"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"control plane exited with {self.process.returncode}; "
                                   f"see {log.name}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()  # the fixture that called start has nothing to stop it with
        raise RuntimeError(f"control plane did not answer within {timeout}s; see {log.name}")

    @property
    def admin_token(self) -> str:
        return (self.home / "admin.token").read_text().strip()

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def serve_control_plane(home: str, port: int) -> None:
    """Body of a forked API process: the control plane on ``home``, under uvicorn on ``port``."""
    import uvicorn

    from control_plane.api import build_standalone_app
    from control_plane.service import ControlPlane
    from modelplane.settings import Settings

    settings = Settings.from_env({"MODELPLANE_HOME": home, "MODELPLANE_HTTP_PORT": str(port)})
    cp = ControlPlane.start(settings)
    uvicorn.run(build_standalone_app(cp), host="127.0.0.1", port=port, log_level="error")


# Imported once by the fork server, so each API process starts in a fraction of a second:
# a loop of hundreds of kill -9s measures the store, not Python's import time.
_PRELOAD = ["uvicorn", "onnx", "onnxruntime", "alembic.command", "alembic.config",
            "alembic.script", "alembic.runtime.migration", "control_plane.api",
            "control_plane.service", "tests.servers"]


class ForkedControlPlane:
    """API processes forked from a preloaded fork server, for kill loops."""

    def __init__(self, home: Path) -> None:
        import multiprocessing

        self.home = home
        self.port = free_port()
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)
        self.process: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ForkedControlPlane:
        self.process = self._context.Process(target=serve_control_plane,
                                             args=(str(self.home), self.port), daemon=True)
        self.process.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.is_alive():
                raise RuntimeError(f"API process exited with {self.process.exitcode}")
            # A bare connect: an HTTP client per poll costs more than the server's start.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.005)
        raise RuntimeError(f"API process did not answer within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as in a crash."""
        if self.process is not None and self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.join(10)
