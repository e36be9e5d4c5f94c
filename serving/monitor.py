"""The Monitor: merges replicas' deltas into rolling windows per (endpoint, version).

One named Ray actor per cluster. Replicas send deltas about once a second; the control
plane asks for p50/p95/p99, error rates, throughput and shadow agreement over a window,
and renders cumulative totals as Prometheus metrics.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.stats import LATENCY_MAX_S, LATENCY_MIN_S, ShadowStats

MONITOR_NAME = "modelplane-monitor"
MONITOR_NAMESPACE = "modelplane"
SLOT_SECONDS = 1.0
SLOTS = 300  # five minutes of one-second resolution


class CounterWindow:
    """A ring of per-slot Counters answering 'totals over the last N seconds'."""

    def __init__(self, slots: int, slot_seconds: float, clock: Callable[[], float]) -> None:
        self.slots, self.slot_seconds, self._clock = slots, slot_seconds, clock
        self._ring: list[Counter[str]] = [Counter() for _ in range(slots)]
        self._epoch = math.floor(clock() / slot_seconds)
        self._head = 0

    def _current(self) -> Counter[str]:
        epoch = math.floor(self._clock() / self.slot_seconds)
        for _ in range(min(max(epoch - self._epoch, 0), self.slots)):
            self._head = (self._head + 1) % self.slots
            self._ring[self._head] = Counter()
        self._epoch = max(epoch, self._epoch)
        return self._ring[self._head]

    def add(self, values: dict[str, float]) -> None:
        self._current().update(values)

    def total(self, seconds: float) -> Counter[str]:
        self._current()
        count = min(self.slots, max(1, math.ceil(seconds / self.slot_seconds)))
        result: Counter[str] = Counter()
        for back in range(count):
            result.update(self._ring[(self._head - back) % self.slots])
        return result


@dataclass
class VersionSeries:
    """Rolling windows and cumulative totals for one (endpoint, version)."""

    latency: Any
    counters: CounterWindow
    totals: Counter[str] = field(default_factory=Counter)
    latency_total: Any = None
    first_seen: float = 0.0


class MonitorState:
    """The Monitor's logic, Ray-free so it is unit-tested with a fake clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.series: dict[tuple[str, int], VersionSeries] = {}
        self.replicas: dict[str, dict[str, float]] = {}

    def _series(self, endpoint: str, version: int) -> VersionSeries:
        from kernels import Sketch, SketchWindow

        key = (endpoint, version)
        if key not in self.series:
            self.series[key] = VersionSeries(
                latency=SketchWindow(SLOTS, SLOT_SECONDS, clock=self._clock,
                                     min_value=LATENCY_MIN_S, max_value=LATENCY_MAX_S),
                counters=CounterWindow(SLOTS, SLOT_SECONDS, self._clock),
                latency_total=Sketch(0.01, LATENCY_MIN_S, LATENCY_MAX_S),
                first_seen=self._clock(),
            )
        return self.series[key]

    def record(self, endpoint: str, replica: str, delta: dict[int, dict[str, Any]]) -> None:
        """Merge one replica's delta (see ``StatsRecorder.to_delta``)."""
        from kernels import Sketch

        self.replicas.setdefault(endpoint, {})[replica] = self._clock()
        for version, data in delta.items():
            series = self._series(endpoint, int(version))
            if data.get("latency"):
                sketch = Sketch.from_bytes(data["latency"])
                series.latency.merge(sketch)
                series.latency_total.merge(sketch)
            counts: dict[str, float] = {f"code:{c}": n for c, n in data.get("codes", {}).items()}
            counts.update({f"error:{c}": n for c, n in data.get("errors", {}).items()})
            counts.update({f"shadow:{k}": v for k, v in data.get("shadow", {}).items() if v})
            series.counters.add(counts)
            series.totals.update(counts)

    def snapshot(self, endpoint: str, window_s: float = 60.0) -> dict[int, dict[str, Any]]:
        """Per-version statistics over the last ``window_s`` seconds."""
        result: dict[int, dict[str, Any]] = {}
        for (name, version), series in sorted(self.series.items()):
            if name != endpoint:
                continue
            counts = series.counters.total(window_s)
            codes = {int(k[5:]): int(v) for k, v in counts.items() if k.startswith("code:")}
            requests = sum(codes.values())
            server_errors = sum(n for c, n in codes.items() if c >= 500)
            client_errors = sum(n for c, n in codes.items() if 400 <= c < 500)
            shadow = ShadowStats(**{k[7:]: v for k, v in counts.items() if k.startswith("shadow:")})
            sketch = series.latency.sketch(window_s)
            have = sketch.count
            p50, p95, p99 = (sketch.quantiles([0.5, 0.95, 0.99]) if have else [math.nan] * 3)
            span = min(window_s, max(self._clock() - series.first_seen, SLOT_SECONDS))
            result[version] = {
                "requests": requests,
                "server_errors": server_errors,
                "client_errors": client_errors,
                "error_rate": server_errors / requests if requests else 0.0,
                "codes": codes,
                "errors": {k[6:]: int(v) for k, v in counts.items() if k.startswith("error:")},
                "latency_count": int(have),
                "p50_ms": float(p50) * 1000, "p95_ms": float(p95) * 1000,
                "p99_ms": float(p99) * 1000,
                "throughput_rps": requests / span,
                "shadow": {
                    "compared": int(shadow.compared),
                    "errors": int(shadow.errors),
                    "agreement": shadow.agreed / shadow.compared if shadow.compared else math.nan,
                    "mean_abs_diff": shadow.abs_diff_sum / shadow.compared if shadow.compared else math.nan,
                    "latency_delta_ms": 1000 * shadow.latency_delta_sum_s / shadow.compared
                    if shadow.compared else math.nan,
                },
            }
        return result

    def totals(self) -> list[dict[str, Any]]:
        """Cumulative counters and all-time latency quantiles per (endpoint, version)."""
        rows = []
        for (endpoint, version), series in sorted(self.series.items()):
            sketch = series.latency_total
            quantiles = sketch.quantiles([0.5, 0.95, 0.99]) if sketch.count else [math.nan] * 3
            rows.append({
                "endpoint": endpoint, "version": version,
                "codes": {int(k[5:]): int(v) for k, v in series.totals.items() if k.startswith("code:")},
                "shadow_compared": int(series.totals.get("shadow:compared", 0)),
                "shadow_agreed": int(series.totals.get("shadow:agreed", 0)),
                "latency_count": int(sketch.count), "latency_sum": float(sketch.sum),
                "latency_quantiles": {q: float(v) for q, v in zip((0.5, 0.95, 0.99), quantiles, strict=True)},
            })
        return rows

    def forget(self, endpoint: str) -> None:
        for key in [k for k in self.series if k[0] == endpoint]:
            del self.series[key]
        self.replicas.pop(endpoint, None)


class MonitorActor:
    """The Ray actor wrapping :class:`MonitorState` (created by :func:`ensure_monitor`)."""

    def __init__(self) -> None:
        from kernels import warmup

        warmup()
        self.state = MonitorState()

    def record(self, endpoint: str, replica: str, delta: dict[int, dict[str, Any]]) -> None:
        self.state.record(endpoint, replica, delta)

    def snapshot(self, endpoint: str, window_s: float = 60.0) -> dict[int, dict[str, Any]]:
        return self.state.snapshot(endpoint, window_s)

    def totals(self) -> list[dict[str, Any]]:
        return self.state.totals()

    def forget(self, endpoint: str) -> None:
        self.state.forget(endpoint)


def ensure_monitor(name: str = MONITOR_NAME, namespace: str = MONITOR_NAMESPACE) -> Any:
    """The cluster's Monitor actor, created (detached, no CPU reserved) if it is missing."""
    import ray

    actor_class = ray.remote(num_cpus=0, max_restarts=-1)(MonitorActor)
    return actor_class.options(
        name=name, namespace=namespace, lifetime="detached", get_if_exists=True
    ).remote()


def get_monitor(name: str = MONITOR_NAME, namespace: str = MONITOR_NAMESPACE) -> Any | None:
    """The Monitor actor handle, or None when it does not exist (yet)."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None
