"""The metrics an alert rule can watch: each reads one number from a version's snapshot.

A snapshot is the Monitor's :class:`~serving.monitoring.VersionSnapshot` of one version
over the rule's window (an endpoint-wide signal reads a figure every version's snapshot
shares, once per endpoint). A signal returns ``(value, details)``; ``None`` means the window
holds no evidence (too few rows for a drift verdict, no labelled feedback, a latency
quantile or an error rate of no requests), which neither starts an alert nor ends one: an
active alert keeps its state and says its data is stale. Details travel with the alert:
the drifted features, say.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.monitoring import Drift, VersionSnapshot
    from serving.monitoring.snapshot import BaselineJudgement

Reading = tuple[float | None, dict[str, Any]]


@dataclass(frozen=True)
class Signal:
    description: str
    read: Callable[[VersionSnapshot], Reading]
    # The endpoint's figure, the same in every version's snapshot: read once per endpoint,
    # one alert labelled version "all" (per version, one crash paged once per version).
    endpoint_wide: bool = False


def _number(value: float | None) -> float | None:
    """``value`` as evidence: None where it is missing or not finite."""
    return float(value) if value is not None and math.isfinite(value) else None


def _figure(read: Callable[[VersionSnapshot], float | None]) -> Callable[[VersionSnapshot], Reading]:
    def reading(stats: VersionSnapshot) -> Reading:
        return _number(read(stats)), {}
    return reading


PARTIAL_WINDOW = "partial_window"


def _count(read: Callable[[VersionSnapshot], float | None]) -> Callable[[VersionSnapshot], Reading]:
    """A count over the window, marked where the Monitor has seen only part of it (just
    after it or the version started, a minute's window holds seconds): a lower bound then,
    evidence for `> X` but not for `< X` (see :func:`evidence`)."""
    def reading(stats: VersionSnapshot) -> Reading:
        value = _number(read(stats))
        if not stats.traffic.whole_window:
            return value, {PARTIAL_WINDOW: True, "observed_s": stats.traffic.observed_s}
        return value, {}
    return reading


def evidence(value: float | None, details: dict[str, Any], comparison: str,
             threshold: float) -> float | None:
    """``value`` where it can decide ``comparison`` against ``threshold``; None where it
    cannot: a count over part of the window only grows, so it can show `>` or `>=` hold,
    but neither that they stopped holding (a firing alert resolved, and fired again, after
    every Monitor restart) nor anything of `<`, `<=`, `==` or `!=`."""
    if value is None or not details.get(PARTIAL_WINDOW):
        return value
    if comparison in (">", ">=") and COMPARE[comparison](value, threshold):
        return value
    return None


def _drift_details(drift: Drift) -> dict[str, Any]:
    return {"drifted_features": list(drift.drifted_features),
            "prediction_drifted_features": list(drift.prediction.drifted_features),
            "samples": drift.samples,
            "p_values": {name: f.p_value for name, f in drift.features.items()}}


def _drift(stats: VersionSnapshot) -> Reading:
    drift = stats.drift
    if not drift.verdict.judged:
        return None, {"reason": drift.reason}
    return (1.0 if drift.verdict == "drift" else 0.0), _drift_details(drift)


def _drift_p_value(stats: VersionSnapshot) -> Reading:
    values = [f.p_value for f in stats.drift.features.values() if f.p_value is not None]
    return (min(values) if values else None), _drift_details(stats.drift)


def _drifted_features(stats: VersionSnapshot) -> Reading:
    value, details = _drift(stats)
    return (None if value is None else float(len(details["drifted_features"]))), details


def _prediction_drift(stats: VersionSnapshot) -> Reading:
    prediction = stats.drift.prediction
    if not prediction.verdict.judged:
        return None, {}
    return float(prediction.verdict == "drift"), {
        "drifted_features": list(prediction.drifted_features)}


def _anomaly(judged: Callable[[VersionSnapshot], BaselineJudgement | None]) -> Callable[[VersionSnapshot], Reading]:
    def read(stats: VersionSnapshot) -> Reading:
        judgement = judged(stats)
        if judgement is None or judgement.z is None:
            return None, {}
        return float(judgement.anomalous), {
            "value": judgement.value, "baseline": judgement.baseline, "z": judgement.z}
    return read


SIGNALS: dict[str, Signal] = {
    "requests": Signal("requests in the window (those refused with a 4xx too)",
                       _count(lambda s: s.traffic.requests)),
    "throughput_rps": Signal("requests per second", _figure(lambda s: s.traffic.throughput_rps)),
    "error_rate": Signal("share of requests answered 5xx",
                         _figure(lambda s: s.traffic.error_rate if s.traffic.answered else None)),
    "p50_ms": Signal("median latency, ms", _figure(lambda s: s.latency.all_requests.p50_ms)),
    "p95_ms": Signal("95th percentile latency, ms",
                     _figure(lambda s: s.latency.all_requests.p95_ms)),
    "p99_ms": Signal("99th percentile latency, ms",
                     _figure(lambda s: s.latency.all_requests.p99_ms)),
    "drift": Signal("1 when the version's drift verdict is drift, 0 when ok", _drift),
    "drifted_features": Signal("number of input features judged drifted", _drifted_features),
    "drift_p_value": Signal("smallest adjusted drift p-value over the input features", _drift_p_value),
    "prediction_drift": Signal("1 when the predictions drifted, 0 when not", _prediction_drift),
    "missing_rate": Signal("share of input values missing (NaN, inf)",
                           _figure(lambda s: s.quality.missing_rate)),
    "out_of_range_rate": Signal("share of input values outside the reference range",
                                _figure(lambda s: s.quality.out_of_range_rate)),
    "rejected": Signal("requests refused for schema violations",
                       _count(lambda s: s.quality.rejected_total)),
    "last_request_age_s": Signal("seconds since the version last answered",
                                 _figure(lambda s: s.quality.last_request_age_s)),
    "data_age_s": Signal("mean age of the features (feature_timestamp parameter)",
                         _figure(lambda s: s.quality.data_age_s)),
    "accuracy": Signal("online accuracy from feedback", _figure(lambda s: s.accuracy.accuracy)),
    "precision": Signal("online precision from feedback", _figure(lambda s: s.accuracy.precision)),
    "recall": Signal("online recall from feedback", _figure(lambda s: s.accuracy.recall)),
    "f1": Signal("online F1 from feedback", _figure(lambda s: s.accuracy.f1)),
    "mae": Signal("online mean absolute error from feedback", _figure(lambda s: s.accuracy.mae)),
    "rmse": Signal("online root mean squared error from feedback",
                   _figure(lambda s: s.accuracy.rmse)),
    "labelled": Signal("feedback pairs joined in the window",
                       _count(lambda s: s.accuracy.labelled)),
    "latency_anomaly": Signal("1 when latency is anomalous against its EWMA baseline",
                              _anomaly(lambda s: s.anomalies.latency_ms)),
    "error_rate_anomaly": Signal("1 when the error rate is anomalous against its EWMA baseline",
                                 _anomaly(lambda s: s.anomalies.error_rate)),
    "out_of_support_rate": Signal("share of rows with a value outside the reference support",
                                  _figure(lambda s: s.anomalies.out_of_support_rate)),
    "unusual_confidence_rate": Signal("share of predictions with a confidence outside the reference's",
                                      _figure(lambda s: s.anomalies.unusual_confidence_rate)),
    "shadow_agreement": Signal("share of shadow answers agreeing with the primary",
                               _figure(lambda s: s.shadow.agreement)),
    "shadow_errors": Signal("failed shadow calls in the window", _count(lambda s: s.shadow.errors)),
    # A count like the others: a Monitor restarted since knows nothing of a replica that
    # crashed before, so its 0 over part of the window resolved the crash's alert.
    "silent_replicas": Signal(
        "replicas of the endpoint silent in the window without a graceful stop (crashed, "
        "killed, stalled)",
        _count(lambda s: s.replicas.silent if s.replicas.reporting else None), endpoint_wide=True),
}

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}
