"""Reading the data plane's Monitor from the control plane (absent without Ray)."""

from __future__ import annotations

import math
from typing import Any


def _monitor() -> Any | None:
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    from serving.monitor import get_monitor

    return get_monitor()


def version_stats(endpoint: str, window_s: float) -> dict[int, dict[str, Any]]:
    """The Monitor's per-version snapshot as it is (NaN where there is no data), or {}."""
    import ray

    monitor = _monitor()
    if monitor is None:
        return {}
    return ray.get(monitor.snapshot.remote(endpoint, window_s), timeout=10)


def endpoint_stats(endpoint: str, window_s: float) -> dict[str, Any]:
    """Per-version statistics (JSON-safe: NaN becomes None) or {} when there is no Monitor."""
    return {str(v): json_safe(stats) for v, stats in version_stats(endpoint, window_s).items()}


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def monitor_totals() -> list[dict[str, Any]]:
    """Cumulative per-version counters from the Monitor, or [] without one."""
    import ray

    monitor = _monitor()
    if monitor is None:
        return []
    return list(ray.get(monitor.totals.remote(), timeout=10))


def running_replicas() -> dict[str, int]:
    """Running replicas per Serve application (summed over its deployments)."""
    try:
        import ray
        from ray import serve
    except ImportError:
        return {}
    if not ray.is_initialized():
        return {}
    counts: dict[str, int] = {}
    for name, app in serve.status().applications.items():
        total = 0
        for deployment in app.deployments.values():
            total += int(deployment.replica_states.get("RUNNING", 0))
        counts[name] = total
    return counts
