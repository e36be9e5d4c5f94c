"""One benchmark from start to end: serve the version on a scratch replica, load it, read
the replica's processes, and delete the replica whatever happens.

Phases: deploy and wait for the replica (``timeout_s``), a one-second warm-up, the
fixed-rate phase (percentiles, CPU per request, memory), then the rate search. The
scratch applications are deleted in a ``finally``, after success, failure or timeout,
and the Monitor forgets their statistics.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control_plane.benchmarking import scratch
from control_plane.benchmarking.inputs import request_bodies
from control_plane.benchmarking.load import LoadResult, open_loop, search_rate
from control_plane.benchmarking.schemas import BenchmarkFigures, BenchmarkSettings, ServedWith
from serving.names import CALLER_KEY_HEADER, endpoint_url
from serving.schemas import (
    BatchingConfig,
    EndpointConfig,
    RouteTable,
    ScalingConfig,
    TensorSignature,
    VersionConfig,
)

log = logging.getLogger(__name__)
WARMUP_S = 1.0
WARMUP_RATE = 20.0


@dataclass(frozen=True)
class Target:
    """The version measured, as the store holds it."""

    model: str
    version: int
    digest: str
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Cluster:
    """Where and how the scratch replica is made: the control plane's view of Serve."""

    backend: Any  # deploy(name, prefix, app) and delete(name), as the reconciler's
    env: dict[str, str]  # the replicas' environment (store mark, artifact token)
    base_url: str  # the control plane and /v2, as replicas and this client reach them
    max_body_bytes: int = 64 * 1024 * 1024
    stats_interval_s: float = 1.0


def scratch_config(endpoint: str, target: Target, served: ServedWith, cluster: Cluster,
                   *, router: ScalingConfig | None = None, incarnation: str = "") -> EndpointConfig:
    """The one-version endpoint the scratch replica serves under ``endpoint``."""
    signature = target.manifest["signature"]
    replica = ScalingConfig(replicas=1, num_cpus=served.num_cpus, num_gpus=served.num_gpus,
                            memory_mb=served.memory_mb,
                            max_ongoing_requests=served.max_ongoing_requests)
    version = VersionConfig(
        version=target.version, model=target.model,
        artifact_url=f"{cluster.base_url}/api/artifacts/{target.digest}", digest=target.digest,
        kind=target.manifest.get("kind", "onnx"), code=target.manifest.get("code"),
        inputs=[TensorSignature(**spec) for spec in signature["inputs"]],
        outputs=[TensorSignature(**spec) for spec in signature["outputs"]],
        task=target.manifest.get("task", "other"),
        reference_profile=target.manifest.get("reference_profile"),
        class_labels=target.manifest.get("class_labels"),
        batching=BatchingConfig.model_validate(served.batching.model_dump()),
        scaling=replica, intra_op_threads=served.intra_op_threads,
    )
    isolated = served.placement == "isolated"
    return EndpointConfig(
        endpoint=endpoint, placement=served.placement, versions=[version],
        routes=RouteTable(weights={target.version: 100.0}),
        scaling=(router or ScalingConfig(replicas=1)) if isolated else replica,
        stats_interval_s=cluster.stats_interval_s, control_plane_url=cluster.base_url,
        max_body_bytes=cluster.max_body_bytes, generation=1, incarnation=incarnation,
    )


def needs(config: EndpointConfig) -> dict[str, float]:
    """What the scratch replicas reserve together, in Ray's resource names."""
    scalings = [config.scaling] + ([v.scaling for v in config.versions]
                                   if config.placement == "isolated" else [])
    return {"CPU": sum(s.num_cpus for s in scalings), "GPU": sum(s.num_gpus for s in scalings),
            "memory": float(sum(s.memory_mb for s in scalings) * 2**20)}


def run_benchmark(config: EndpointConfig, target: Target, served: ServedWith,
                  settings: BenchmarkSettings, cluster: Cluster,
                  progress: Callable[[str], None]) -> BenchmarkFigures:
    """Measure ``target`` on the scratch applications of ``config``; always deletes them.

    The scratch endpoint answers only requests carrying this benchmark's key: its route is
    on the public ingress, and anyone's load there would move the figures a pipeline's
    benchmark gate rejects or passes a version on."""
    key = secrets.token_urlsafe(24)
    config = config.model_copy(update={
        "caller_key_sha256": hashlib.sha256(key.encode()).hexdigest()})
    keyed = {CALLER_KEY_HEADER: key}
    names = scratch.application_names(config)
    bodies = request_bodies(target.manifest["signature"], target.manifest.get("reference_profile"),
                            rows=settings.rows_per_request)
    url = endpoint_url(cluster.base_url, config.endpoint, "infer")
    try:
        progress(f"deploying the scratch replica ({', '.join(names)})")
        scratch.deploy(config, cluster.env, cluster.backend)
        scratch.wait_running(names, settings.timeout_s, needs(config), progress)
        processes = scratch.replica_processes(names)
        if not processes:
            raise RuntimeError("Serve lists no running replica of the scratch application")
        progress("warming up")
        warm = open_loop(url, bodies, min(settings.rate, WARMUP_RATE), WARMUP_S, headers=keyed)
        if not warm.latencies_s:
            raise RuntimeError(f"the scratch replica answered no request: {warm.first_error}")
        before, started = scratch.sample(processes), time.monotonic()
        progress(f"measuring at {settings.rate:g} req/s for {settings.duration_s:g}s")
        fixed = open_loop(url, bodies, settings.rate, settings.duration_s, headers=keyed)
        after, elapsed = scratch.sample(processes), time.monotonic() - started
        latency = fixed.latency()
        if latency is None:
            raise RuntimeError(f"no request of the fixed-rate phase was answered: {fixed.first_error}")

        def step(rate: float) -> LoadResult:
            progress(f"rate search: {rate:g} req/s for {settings.step_seconds:g}s")
            return open_loop(url, bodies, rate, settings.step_seconds, headers=keyed)

        best, steps = (search_rate(step, settings.rate, settings.p99_target_ms, settings.search_steps)
                       if settings.search_steps else (None, []))
        memory = scratch.sample(processes)
        cpu_s = max(0.0, after.cpu_s - before.cpu_s)
        return BenchmarkFigures(
            rate=settings.rate, duration_s=settings.duration_s, requests=fixed.requests,
            errors=fixed.errors, achieved_rps=round(fixed.achieved_rps, 3), latency_ms=latency,
            p99_target_ms=settings.p99_target_ms, max_rate_within_p99=best, search=steps,
            cpu_ms_per_request=1000.0 * cpu_s / max(1, fixed.requests),
            cpu_utilization=cpu_s / elapsed if elapsed > 0 else 0.0,
            memory_rss_mb=memory.rss_bytes / 2**20,
            gpu_memory_mb=memory.gpu_bytes / 2**20 if memory.gpu_bytes is not None else None,
            replica_processes=memory.processes, served_with=served,
        )
    finally:
        # A failure here must not hide the benchmark's own: logged, and the control plane's
        # sweep (scratch.sweep_leftovers) deletes what is left on the next benchmark.
        try:
            progress("deleting the scratch replica")
            left = scratch.delete(names, cluster.backend)
            if left:
                log.warning("scratch applications %s were still listed, or not yet deleted, "
                            "when the wait ran out (swept once their benchmark ends)", left)
            scratch.forget_statistics(config.endpoint, config.monitor_actor,
                                      config.monitor_namespace)
        except Exception:
            log.exception("deleting the scratch applications %s failed", names)
