"""The scratch replica a benchmark measures: deployed, watched, sampled and deleted.

A benchmark's applications are named from ``serving.names.benchmark_endpoint_name``
(``endpoint-_bench-{store}-{id}``, and ``…-v{n}`` when isolated): a stored
endpoint's name starts with a letter or digit, so none can collide with them, and
``is_endpoint_app`` leaves them out, so the reconciler's sweep never deletes one while it
is measured. :func:`sweep_leftovers` deletes those a crashed control plane left behind.

The replica processes are found in Serve's own details (pid and node of each replica)
and read with psutil where they run: directly on this node, through a zero-CPU task
pinned to the replica's node elsewhere.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.names import (
    endpoint_app_name,
    endpoint_route_prefix,
    is_benchmark_app,
    version_app_name,
)
from serving.schemas import EndpointConfig

log = logging.getLogger(__name__)
DELETE_WAIT_S = 60.0
POLL_S = 0.25
# Behind HAProxy, Serve holds a stopping ingress replica open for a drain period (30 s by
# default) so the load balancer can deregister it before it refuses connections. Nothing
# calls a scratch replica once its benchmark has measured it, so a short drain is enough,
# and the champion's benchmark (and the pipeline) need not wait half a minute for it.
SCRATCH_DRAIN = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


@dataclass(frozen=True)
class ProcessSample:
    """One reading of the replica processes, summed over them."""

    cpu_s: float  # user + system, since each process started
    rss_bytes: int
    gpu_bytes: int | None  # None: no GPU holds memory for any of them
    processes: int


def application_names(config: EndpointConfig) -> list[str]:
    """The scratch applications of ``config``: the endpoint's (or router's) first."""
    names = [endpoint_app_name(config.endpoint)]
    if config.placement == "isolated":
        names += [version_app_name(config.endpoint, v.version) for v in config.versions]
    return names


def deploy(config: EndpointConfig, env: dict[str, str], backend: Any) -> None:
    """Submit the scratch applications (versions first when isolated); no waiting."""
    from serving.applications import build_endpoint_app, build_version_app

    env = {**env, **SCRATCH_DRAIN}
    if config.placement == "isolated":
        for version in config.versions:
            backend.deploy(version_app_name(config.endpoint, version.version), None,
                           build_version_app(config, version, env=env))
    backend.deploy(endpoint_app_name(config.endpoint), endpoint_route_prefix(config.endpoint),
                   build_endpoint_app(config, env=env))


def wait_running(names: list[str], timeout_s: float, needs: dict[str, float],
                 progress: Callable[[str], None]) -> None:
    """Until every application in ``names`` runs; RuntimeError with Serve's words (and the
    cluster's free resources when the replica has found no room) otherwise."""
    from control_plane.ownership import serve_details
    from serving.applications import serve_state

    deadline = time.monotonic() + timeout_s
    said = ""
    while True:
        apps = serve_details().get("applications") or {}
        statuses = {name: apps.get(name) or {} for name in names}
        failed = [(n, a) for n, a in statuses.items()
                  if serve_state(a) in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            name, app = failed[0]
            raise RuntimeError(f"the scratch replica failed to start ({name} is "
                               f"{app.get('status')}): {str(app.get('message') or '')[:1500]}")
        if all(serve_state(a) == "RUNNING" for a in statuses.values()):
            return
        free = free_resources()
        short = {k: v for k, v in needs.items() if v > 0 and free.get(k, 0.0) < v}
        now = (f"waiting for room: the replica needs {_fmt(needs)}, the cluster has "
               f"{_fmt(free)} free" if short else "waiting for the scratch replica to load the model")
        if now != said:
            progress(now)
            said = now
        if time.monotonic() >= deadline:
            messages = "; ".join(f"{n}: {a.get('message')}" for n, a in statuses.items()
                                 if a.get("message"))
            if short:
                raise RuntimeError(
                    f"the cluster has no room for the scratch replica: it needs {_fmt(needs)}, "
                    f"{_fmt(free)} is free ({_fmt(total_resources())} in all); undeploy an "
                    "endpoint, ask for less (num_cpus, num_gpus, memory_mb) or add a node"
                    + (f". Serve: {messages[:1000]}" if messages else ""))
            raise RuntimeError(f"the scratch replica was not running after {timeout_s:g}s "
                               f"(timeout_s)" + (f"; Serve: {messages[:1500]}" if messages else ""))
        time.sleep(POLL_S)


def delete(names: list[str], backend: Any, *, wait_s: float = DELETE_WAIT_S) -> list[str]:
    """Delete the applications and wait until Serve no longer lists them; returns those
    still listed, or whose delete could not be sent, when ``wait_s`` ran out (Serve goes on
    deleting them; the sweep of leftovers takes the rest)."""
    from control_plane.ownership import serve_details

    unsent, warned = list(names), set()
    deadline = time.monotonic() + wait_s
    while True:
        for name in list(unsent):
            try:
                backend.delete(name)
                unsent.remove(name)
            except Exception as error:  # asked again until the wait runs out (a deploy
                # that outlived its bound holds Serve's writes until it lands)
                if name not in warned:
                    warned.add(name)
                    log.warning("could not delete scratch application %s: %s", name, error)
        left = [n for n in names if n in (serve_details().get("applications") or {})]
        # A delete not yet sent is not done: its application may be a deploy that waits
        # on Serve's controller and lands later.
        if (not left and not unsent) or time.monotonic() >= deadline:
            return left + [n for n in unsent if n not in left]
        time.sleep(POLL_S)


def sweep_leftovers(running: Callable[[str], bool], backend: Any, store_id: str | None) -> list[str]:
    """Delete scratch applications of this store whose benchmark no longer runs (the
    control plane that ran it stopped); ``running`` answers for a scratch endpoint name,
    asked only once the applications are listed (a benchmark it reads as running then had
    its row before its application)."""
    from control_plane.ownership import application_owners, serve_details

    details = serve_details()
    owners = application_owners(details)
    gone = []
    for name in details.get("applications") or {}:
        if not is_benchmark_app(name) or (store_id and owners[name].store_id != store_id):
            continue
        endpoint = re.sub(r"-v\d+$", "", name.removeprefix(endpoint_app_name("")))
        if not running(endpoint):
            backend.delete(name)
            gone.append(name)
    return gone


def forget_statistics(endpoint: str, monitor_actor: str, namespace: str) -> None:
    """Drop what the Monitor kept of the scratch endpoint (its last shipments)."""
    from serving.monitoring.monitor import get_monitor

    monitor = get_monitor(monitor_actor, namespace)
    if monitor is not None:
        try:
            import ray

            ray.get(monitor.forget.remote(endpoint), timeout=5)
        except Exception as error:  # statistics of a deleted scratch endpoint age out anyway
            log.warning("could not make the Monitor forget %s: %s", endpoint, error)


def replica_processes(names: list[str]) -> list[tuple[str, int]]:
    """(node id, pid) of every running replica of the applications."""
    from control_plane.ownership import serve_details

    apps = serve_details().get("applications") or {}
    found = []
    for name in names:
        for deployment in ((apps.get(name) or {}).get("deployments") or {}).values():
            for replica in deployment.get("replicas") or ():
                if replica.get("state") == "RUNNING" and replica.get("pid"):
                    found.append((str(replica.get("node_id")), int(replica["pid"])))
    return found


def sample(processes: list[tuple[str, int]]) -> ProcessSample:
    """CPU seconds, resident and GPU memory of the processes, wherever they run."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    readings = []
    for node, pid in processes:
        if node == here:
            readings.append(read_process(pid))
        else:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            task = ray.remote(num_cpus=0)(read_process).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            readings.append(ray.get(task.remote(pid), timeout=30))
    gpu = [r[2] for r in readings if r[2] is not None]
    return ProcessSample(cpu_s=sum(r[0] for r in readings), rss_bytes=sum(r[1] for r in readings),
                         gpu_bytes=sum(gpu) if gpu else None, processes=len(readings))


def read_process(pid: int) -> tuple[float, int, int | None]:
    """(CPU seconds, resident bytes, GPU bytes or None) of process ``pid`` on this node."""
    import psutil

    process = psutil.Process(pid)
    with process.oneshot():
        times = process.cpu_times()
        rss = process.memory_info().rss
    return times.user + times.system, int(rss), gpu_memory(pid)


def gpu_memory(pid: int) -> int | None:
    """Bytes of GPU memory ``pid`` holds (NVML, else nvidia-smi), None without a GPU or
    when the process holds none."""
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                used = 0
                found = False
                for index in range(pynvml.nvmlDeviceGetCount()):
                    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                        if proc.pid == pid:
                            found = True
                            used += int(proc.usedGpuMemory or 0)
                return used if found else None
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # no driver, no device: try nvidia-smi, then say nothing
            pass
    return _nvidia_smi_memory(pid)


def _nvidia_smi_memory(pid: int) -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out, pid)


def parse_nvidia_smi(output: str, pid: int) -> int | None:
    """Bytes ``pid`` holds in ``nvidia-smi --query-compute-apps=pid,used_memory`` output (MiB)."""
    used, found = 0, False
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) == pid:
            found = True
            used += int(float(parts[1]) * 1024 * 1024) if parts[1].replace(".", "", 1).isdigit() else 0
    return used if found else None


def free_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.available_resources().items()}


def total_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def _fmt(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory") and v}
    if "memory" in shown:
        shown["memory"] = round(shown["memory"] / 2**20)
    return ", ".join(f"{k}={v:g}" + (" MiB" if k == "memory" else "") for k, v in sorted(shown.items())) or "nothing"
