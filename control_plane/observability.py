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
