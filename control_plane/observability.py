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


def endpoint_stats(endpoint: str, window_s: float) -> dict[str, Any]:
    """Per-version statistics (JSON-safe: NaN becomes None) or {} when there is no Monitor."""
    import ray

    monitor = _monitor()
    if monitor is None:
        return {}
    snapshot = ray.get(monitor.snapshot.remote(endpoint, window_s), timeout=10)
    return {str(version): _json_safe(stats) for version, stats in snapshot.items()}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
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
