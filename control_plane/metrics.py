"""Every Prometheus metric modelplane exposes, defined in this one module.

Labels are bounded: endpoint, model, version, code (HTTP status) and quantile, never a
path or a user id; monitoring adds feature (a name from the version's reference profile),
statistic, reason (a rejection reason or a drop cause), and alerting adds alertname,
severity, state and receiver. Values come from the Monitor (request path statistics,
drift, data quality, online accuracy, anomalies), the store (route tables), Serve
(replica counts) and the alert service, collected when ``/api/metrics`` is scraped.
Windowed signals (drift, online accuracy, anomalies) are over the Monitor's
``METRICS_WINDOW_S`` (60 s); counters are cumulative since the Monitor started.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from serving.names import BENCHMARK_ENDPOINT_PREFIX, serving_app_name

if TYPE_CHECKING:
    from serving.monitoring import VersionTotals

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ModelplaneCollector:
    def __init__(self, monitor_rows: list[VersionTotals], endpoints: list[Any],
                 replicas: dict[str, int], alerts: dict[str, Any] | None = None,
                 monitor_up: bool | None = None) -> None:
        self.monitor_rows, self.endpoints, self.replicas = monitor_rows, endpoints, replicas
        self.alerts, self.monitor_up = alerts, monitor_up

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
            labels = [row.endpoint, str(row.version)]
            for code, count in sorted(row.codes.items()):
                requests.add_metric([*labels, str(code)], count)
            if row.version == 0:
                continue
            base = {"endpoint": row.endpoint, "version": str(row.version)}
            for quantile, value in row.latency_quantiles.items():
                if not math.isnan(value):
                    latency.add_sample("modelplane_request_latency_seconds",
                                       {**base, "quantile": str(quantile)}, value)
            latency.add_sample("modelplane_request_latency_seconds_count", base, row.latency_count)
            latency.add_sample("modelplane_request_latency_seconds_sum", base, row.latency_sum)
            if row.shadow_compared:
                compared.add_metric(labels, row.shadow_compared)
            if row.shadow_judged:
                agreement.add_metric(labels, row.shadow_agreed / row.shadow_judged)
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
                key = serving_app_name(endpoint.name, route.version, endpoint.placement)
                if key in self.replicas:
                    replicas.add_metric([endpoint.name, str(route.version)], self.replicas[key])
        yield from (requests, latency, compared, agreement, weight, shadow, replicas, generation)
        if self.monitor_up is not None:
            up = GaugeMetricFamily("modelplane_monitor_up", "1 when the Monitor answered this "
                                   "scrape; 0 when it did not (its families are absent then).")
            up.add_metric([], 1.0 if self.monitor_up else 0.0)
            yield up
        yield from _monitoring_families(self.monitor_rows)
        if self.alerts is not None:
            yield from _alert_families(self.alerts)


def render(monitor_rows: list[VersionTotals], endpoints: list[Any], replicas: dict[str, int],
           alerts: dict[str, Any] | None = None, *, monitor_up: bool | None = None) -> bytes:
    """The Prometheus text exposition for the given state (``monitor_up``: whether the
    Monitor answered; None leaves ``modelplane_monitor_up`` out)."""
    # A version benchmark's scratch endpoint is no endpoint of the store's, and its name
    # would tell anyone where a benchmark is measuring.
    monitor_rows = [row for row in monitor_rows
                    if not row.endpoint.startswith(BENCHMARK_ENDPOINT_PREFIX)]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ModelplaneCollector(monitor_rows, endpoints, replicas, alerts,  # type: ignore[arg-type]
                                           monitor_up))
    return generate_latest(registry)


_VERSION = ["endpoint", "version"]
_FEATURE = ["endpoint", "version", "feature"]
_ONLINE = ("accuracy", "precision", "recall", "f1", "mae", "rmse")
_DRIFT_STATISTICS = ("psi", "js", "ks", "wasserstein", "chi2")


def _gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=labels)


def _counter(name: str, text: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, labels=labels)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _monitoring_families(rows: list[VersionTotals]):  # type: ignore[no-untyped-def]
    """Drift, data quality, online accuracy, anomalies and the feedback store."""
    f = {
        "drift": _gauge("modelplane_drift_detected", "1 when the version's drift verdict is drift, "
                        "0 when ok (absent with too few rows).", _VERSION),
        "drift_rows": _gauge("modelplane_drift_window_rows", "Input rows in the drift window.", _VERSION),
        "pvalue": _gauge("modelplane_feature_drift_p_value",
                         "Adjusted drift p-value of an input feature.", _FEATURE),
        "drifted": _gauge("modelplane_feature_drifted", "1 when an input feature drifted.", _FEATURE),
        "statistic": _gauge("modelplane_feature_drift_statistic",
                            "Drift statistic of an input feature against the reference.",
                            [*_FEATURE, "statistic"]),
        "prediction": _gauge("modelplane_prediction_drift_detected",
                             "1 when the predictions drifted, 0 when not.", _VERSION),
        "prediction_pvalue": _gauge("modelplane_prediction_drift_p_value",
                                    "Adjusted drift p-value of a prediction feature.", _FEATURE),
        "rows": _counter("modelplane_input_rows", "Input rows observed.", _VERSION),
        "missing": _counter("modelplane_missing_values", "Missing (NaN, inf) input values.", _FEATURE),
        "out_of_range": _counter("modelplane_out_of_range_values",
                                 "Input values outside the reference [min, max] or categories.",
                                 _FEATURE),
        "support": _counter("modelplane_rows_out_of_support",
                            "Rows with any value outside the reference support.", _VERSION),
        "confidence": _counter("modelplane_unusual_confidence",
                               "Predictions whose confidence lies outside the reference's range.",
                               _VERSION),
        "rejected": _counter("modelplane_rejected_requests", "Requests refused, by reason.",
                             [*_VERSION, "reason"]),
        "age": _gauge("modelplane_last_request_age_seconds", "Seconds since the version last answered.",
                      _VERSION),
        "data_age": _gauge("modelplane_data_age_seconds",
                           "Mean age of the features sent with feature_timestamp.", _VERSION),
        "labelled": _counter("modelplane_feedback_labelled",
                             "Predictions joined with their ground truth.", _VERSION),
        "latency_anomaly": _gauge("modelplane_latency_anomaly",
                                  "1 when latency is anomalous against its EWMA baseline.", _VERSION),
        "latency_baseline": _gauge("modelplane_latency_baseline_seconds",
                                   "EWMA baseline of the mean latency.", _VERSION),
        "error_anomaly": _gauge("modelplane_error_rate_anomaly",
                                "1 when the error rate is anomalous against its EWMA baseline.", _VERSION),
        "held": _gauge("modelplane_predictions_held",
                       "Predictions kept for the ground-truth join.", ["endpoint"]),
        "dropped": _counter("modelplane_predictions_dropped",
                            "Kept predictions dropped unjoined (full store, too old).",
                            ["endpoint", "reason"]),
        "unmatched": _counter("modelplane_feedback_unmatched",
                              "Labels that never found their prediction.", ["endpoint"]),
        "reporting": _gauge("modelplane_replicas_reporting",
                            "Replicas that reported to the Monitor in the window.", ["endpoint"]),
        "silent": _gauge("modelplane_replicas_silent",
                         "Of those, replicas silent without a graceful stop (crashed, killed, "
                         "stalled): what they had in flight is in no count.", ["endpoint"]),
        "catching_up": _gauge("modelplane_replicas_catching_up_seconds",
                              "How far behind the present the statistics of the replica "
                              "furthest behind reach while it sends what it kept for a "
                              "Monitor that was away, or might while a new Monitor hears "
                              "from them (0: none is).", ["endpoint"]),
    }
    online = {name: _gauge(f"modelplane_online_{name}", f"Online {name} from feedback.", _VERSION)
              for name in _ONLINE}
    feedback_done: set[str] = set()
    for row in rows:
        if row.version == 0:
            # Refused before a version was chosen (a malformed body, an unknown version, a
            # wrong caller key): no model figures, but the refusals themselves, by reason.
            for reason, count in row.quality.rejected.items():
                f["rejected"].add_metric([row.endpoint, "0", reason], count)
            continue
        labels = [row.endpoint, str(row.version)]
        totals, window = row.quality, row.window
        drift = window.drift
        if drift.verdict.judged:
            f["drift"].add_metric(labels, 1.0 if drift.verdict == "drift" else 0.0)
        f["drift_rows"].add_metric(labels, float(drift.samples))
        for name, feature in drift.features.items():
            if (p := _number(feature.p_value)) is not None:
                f["pvalue"].add_metric([*labels, name], p)
            f["drifted"].add_metric([*labels, name], float(feature.drifted))
            for statistic in _DRIFT_STATISTICS:
                if (value := _number(feature.statistics.get(statistic))) is not None:
                    f["statistic"].add_metric([*labels, name, statistic], value)
        prediction = drift.prediction
        if prediction.verdict.judged:
            f["prediction"].add_metric(labels, float(prediction.verdict == "drift"))
        for name, feature in prediction.features.items():
            if (p := _number(feature.p_value)) is not None:
                f["prediction_pvalue"].add_metric([*labels, name], p)
        f["rows"].add_metric(labels, totals.rows)
        f["support"].add_metric(labels, totals.rows_out_of_support)
        f["confidence"].add_metric(labels, totals.unusual_confidence)
        f["labelled"].add_metric(labels, totals.labelled)
        for name, count in totals.missing.items():
            f["missing"].add_metric([*labels, name], count)
        for name, count in totals.out_of_range.items():
            f["out_of_range"].add_metric([*labels, name], count)
        for reason, count in totals.rejected.items():
            f["rejected"].add_metric([*labels, reason], count)
        if (age := _number(window.quality.last_request_age_s)) is not None:
            f["age"].add_metric(labels, age)
        if (data_age := _number(window.quality.data_age_s)) is not None:
            f["data_age"].add_metric(labels, data_age)
        for name, family in online.items():
            if (value := _number(getattr(window.accuracy, name))) is not None:
                family.add_metric(labels, value)
        latency = window.anomalies.latency_ms
        if latency is not None and latency.z is not None:
            f["latency_anomaly"].add_metric(labels, float(latency.anomalous))
        if latency is not None and (baseline := _number(latency.baseline)) is not None:
            f["latency_baseline"].add_metric(labels, baseline / 1000)
        errors = window.anomalies.error_rate
        if errors is not None and errors.z is not None:
            f["error_anomaly"].add_metric(labels, float(errors.anomalous))
        if row.endpoint not in feedback_done:
            feedback_done.add(row.endpoint)
            f["held"].add_metric([row.endpoint], row.feedback.held)
            f["dropped"].add_metric([row.endpoint, "dropped_full"], row.feedback.dropped_full)
            f["dropped"].add_metric([row.endpoint, "expired"], row.feedback.expired)
            f["unmatched"].add_metric([row.endpoint], row.feedback.labels_unmatched)
            f["reporting"].add_metric([row.endpoint], window.replicas.reporting)
            f["silent"].add_metric([row.endpoint], window.replicas.silent)
            f["catching_up"].add_metric([row.endpoint], window.replicas.catching_up_s)
    yield from f.values()
    yield from online.values()


def _alert_families(alerts: dict[str, Any]):  # type: ignore[no-untyped-def]
    active = _gauge("modelplane_alerts", "Alerts pending or firing now.",
                    ["alertname", "severity", "state"])
    counts = Counter(tuple(key) for key in alerts.get("active", []))
    for key, count in sorted(counts.items()):
        active.add_metric(list(key), count)
    notifications = _counter("modelplane_alert_notifications",
                             "Webhook deliveries by outcome (sent, failed, dropped, retries, expired; "
                             "unstored: sent from memory, the store could not keep it).",
                             ["receiver", "outcome"])
    for receiver, outcomes in sorted(alerts.get("receivers", {}).items()):
        for outcome, count in sorted(outcomes.items()):
            notifications.add_metric([receiver, outcome], count)
    yield from (active, notifications)
