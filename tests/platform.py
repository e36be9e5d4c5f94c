"""A whole modelplane on the test session's Ray: Monitor, /v2, control plane at /api."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from control_plane.client import Client
from modelplane.settings import Settings
from serving.names import SERVER_APP, SERVER_ROUTE, endpoint_url


@dataclass
class Platform:
    settings: Settings
    port: int

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def token(self) -> str:
        return self.settings.admin_token_path.read_text().strip()

    def cli(self, *args: str) -> str:
        """``modelplane ARGS`` in this process against this platform; its output (the
        command must succeed)."""
        from typer.testing import CliRunner

        from modelplane.cli import app
        from modelplane.settings import reset_settings_cache

        env = {"MODELPLANE_URL": self.url, "MODELPLANE_TOKEN": self.token,
               "MODELPLANE_HOME": str(self.settings.home), "COLUMNS": "200"}
        reset_settings_cache()
        try:
            result = CliRunner().invoke(app, list(args), env=env)
        finally:
            reset_settings_cache()
        assert result.exit_code == 0, result.output
        return result.output

    def client(self) -> Client:
        return Client(self.url, self.token, settings=self.settings)

    def healthy(self) -> bool:
        """Whether the control plane answers its health check now."""
        try:
            return httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def wait_endpoint(self, endpoint: str, versions: set[int], timeout: float = 120.0) -> None:
        """Until the endpoint's metadata lists exactly ``versions``."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(endpoint_url(self.url, endpoint), timeout=5)
                last = response.text
                if response.status_code == 200 and {
                    int(v) for v in response.json()["versions"]
                } == versions:
                    return
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"{endpoint} did not serve versions {versions}: {last}")

    def served_weights(self, endpoint: str) -> dict[int, float] | None:
        """The weights the endpoint's answers show now; None where none came (a replica
        being replaced, a loaded host): a wait asks again."""
        try:
            metadata = httpx.get(endpoint_url(self.url, endpoint), timeout=30).json()
            return {int(v): w for v, w in metadata["parameters"]["weights"].items()}
        except (httpx.TransportError, ValueError, KeyError, TypeError):
            return None

    def wait_weights(self, endpoint: str, weights: dict[int, float], timeout: float = 90.0) -> float:
        """Until every answer shows the new weights; returns how long it took. A request
        that fails or times out (a replica being replaced, a loaded host) is "not yet"."""
        started = time.monotonic()
        want = {str(k): float(v) for k, v in weights.items()}
        while time.monotonic() - started < timeout:
            try:
                response = httpx.get(endpoint_url(self.url, endpoint), timeout=30)
                if response.status_code == 200 and response.json()["parameters"]["weights"] == want:
                    return time.monotonic() - started
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{endpoint} never showed weights {weights}")


def start_platform_on_session(port: int, home: Path, *, db_url: str | None = None) -> Platform:
    """Monitor, /v2 and the control plane on the session's Serve; the store at ``db_url``
    (any SQLAlchemy URL) with two control planes, as a cluster runs them for availability
    (control_plane.leadership), or a SQLite file in ``home`` and one when None."""
    from ray import serve

    from control_plane.platform import wait_healthy
    from control_plane.serve_app import deploy_control_plane
    from serving.applications import build_server_app
    from serving.monitoring.monitor import ensure_monitor

    env = {"MODELPLANE_HOME": str(home), "MODELPLANE_HTTP_PORT": str(port)}
    if db_url is not None:
        env["MODELPLANE_DB_URL"] = db_url
        env["MODELPLANE_CONTROL_PLANE_REPLICAS"] = "2"
    if os.environ.get("MODELPLANE_TEST_LEAN_INGRESS"):  # the lean ingress on or off, by choice
        env["MODELPLANE_LEAN_INGRESS"] = os.environ["MODELPLANE_TEST_LEAN_INGRESS"]
    settings = Settings.from_env(env)
    ensure_monitor()
    serve.run(build_server_app(), name=SERVER_APP, route_prefix=SERVER_ROUTE, blocking=False)
    deploy_control_plane(settings)
    wait_healthy(settings.url, timeout_s=120)
    return Platform(settings, port)
