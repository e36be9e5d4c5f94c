"""Every Prometheus metric modelplane exposes, defined in this one module.

Labels are bounded: endpoint, model, version, code (HTTP status) and quantile, never a
path or a user id. Values come from the Monitor (request path statistics), the store
(route tables) and Serve (replica counts), collected when ``/api/metrics`` is scraped.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ModelplaneCollector:
    def __init__(self, monitor_rows: list[dict[str, Any]], endpoints: list[Any],
                 replicas: dict[str, int]) -> None:
        self.monitor_rows, self.endpoints, self.replicas = monitor_rows, endpoints, replicas

    def collect(self):  # type: ignore[no-untyped-def]
        requests = CounterMetricFamily(
            "modelplane_requests", "Inference requests answered, by HTTP status code.",
            labels=["endpoint", "version", "code"])
        latency = Metric("modelplane_request_latency_seconds",
                         "Server-side request latency (quantiles from the Monitor's sketch).",
                         "summary")
        agreement = GaugeMetricFamily(
            "modelplane_shadow_agreement", "Share of shadow answers agreeing with the primary.",
            labels=["endpoint", "version"])
        compared = CounterMetricFamily(
            "modelplane_shadow_compared", "Shadow answers compared with the primary.",
            labels=["endpoint", "version"])
        for row in self.monitor_rows:
            labels = [row["endpoint"], str(row["version"])]
            for code, count in sorted(row["codes"].items()):
                requests.add_metric([*labels, str(code)], count)
            if row["version"] == 0:
                continue
            base = {"endpoint": row["endpoint"], "version": str(row["version"])}
            for quantile, value in row["latency_quantiles"].items():
                if not math.isnan(value):
                    latency.add_sample("modelplane_request_latency_seconds",
                                       {**base, "quantile": str(quantile)}, value)
            latency.add_sample("modelplane_request_latency_seconds_count", base, row["latency_count"])
            latency.add_sample("modelplane_request_latency_seconds_sum", base, row["latency_sum"])
            if row["shadow_compared"]:
                compared.add_metric(labels, row["shadow_compared"])
                agreement.add_metric(labels, row["shadow_agreed"] / row["shadow_compared"])
        weight = GaugeMetricFamily(
            "modelplane_traffic_weight", "Share of traffic routed to a version, percent.",
            labels=["endpoint", "model", "version"])
        shadow = GaugeMetricFamily(
            "modelplane_shadow_enabled", "1 when a version receives mirrored traffic.",
            labels=["endpoint", "model", "version"])
        replicas = GaugeMetricFamily(
            "modelplane_replicas", "Running replicas serving a version.",
            labels=["endpoint", "version"])
        generation = GaugeMetricFamily(
            "modelplane_endpoint_generation", "Changes applied to an endpoint's desired state.",
            labels=["endpoint"])
        for endpoint in self.endpoints:
            generation.add_metric([endpoint.name], endpoint.generation)
            for route in endpoint.routes:
                labels = [endpoint.name, endpoint.model, str(route.version)]
                weight.add_metric(labels, 0.0 if route.shadow else route.weight)
                shadow.add_metric(labels, 1.0 if route.shadow else 0.0)
                key = (f"endpoint-{endpoint.name}" if endpoint.placement == "colocated"
                       else f"endpoint-{endpoint.name}-v{route.version}")
                if key in self.replicas:
                    replicas.add_metric([endpoint.name, str(route.version)], self.replicas[key])
        yield from (requests, latency, compared, agreement, weight, shadow, replicas, generation)


def render(monitor_rows: list[dict[str, Any]], endpoints: list[Any], replicas: dict[str, int]) -> bytes:
    """The Prometheus text exposition for the given state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ModelplaneCollector(monitor_rows, endpoints, replicas))  # type: ignore[arg-type]
    return generate_latest(registry)
