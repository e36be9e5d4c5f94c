"""The exact server-side latencies a replica records, for checking the Monitor's sketches.

A replica logs the latencies it records only when a test asks: ``start_logging`` wraps
``StatsRecorder.record`` inside the replica's process (run there through Ray's
``__ray_call__`` on the replica actor), so the product code carries no test hook and pays
nothing for one. ``logged`` reads the log back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RELATIVE_ACCURACY = 0.01  # the latency sketch's alpha (serving.monitoring.stats.new_latency_sketch)


def replica_calls() -> tuple[Callable[[Any], int], Callable[[Any], list[float]]]:
    """Functions run inside a replica; built here so cloudpickle ships them by value."""

    def start_logging(_replica: Any) -> int:
        import os

        from serving.monitoring import routing, stats

        if not hasattr(stats, "_exact_latencies"):
            stats._exact_latencies = []
            original = stats.StatsRecorder.record

            def record(self: Any, version: int, status: int, latency_s: float,
                       error_code: str | None = None, routed: str = routing.ROUTED_RANDOMLY,
                       **keywords: Any) -> None:
                # Exactly the values the recorder keeps for the Monitor (see its record()).
                if self.enabled and version != stats.ENDPOINT_LEVEL:
                    stats._exact_latencies.append(latency_s)
                original(self, version, status, latency_s, error_code, routed, **keywords)

            stats.StatsRecorder.record = record
        return os.getpid()

    def logged(_replica: Any) -> list[float]:
        from serving.monitoring import stats

        return list(getattr(stats, "_exact_latencies", []))

    return start_logging, logged


def endpoint_replicas(endpoint: str) -> list[Any]:
    """Handles of the replica actors of ``endpoint`` (colocated), on the connected cluster."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and f"endpoint-{endpoint}#" in a["name"]
             and "REPLICA" in a["name"].upper()]
    return [ray.get_actor(a["name"], namespace="serve") for a in names]


def quantiles_ms(values: Any) -> Any:
    """p50, p95 and p99 in ms as the sketch answers them: nearest rank (NumPy's inverted_cdf)."""
    import numpy as np

    return np.quantile(np.asarray(values), [0.5, 0.95, 0.99], method="inverted_cdf") * 1000
