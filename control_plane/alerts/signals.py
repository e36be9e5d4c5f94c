"""The metrics an alert rule can watch: each reads one number from a version's snapshot.

A snapshot is what ``GET /api/endpoints/{e}/stats`` returns per version (the Monitor's
``MonitorState.snapshot``). A signal returns ``(value, details)``; ``None`` means the
window holds no evidence (too few rows for a drift verdict, no labelled feedback), which
never satisfies a condition. Details travel with the alert: the drifted features, say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Reading = tuple[float | None, dict[str, Any]]


@dataclass(frozen=True)
class Signal:
    description: str
    read: Callable[[dict[str, Any]], Reading]


def _path(*keys: str) -> Callable[[dict[str, Any]], Reading]:
    def read(stats: dict[str, Any]) -> Reading:
        value: Any = stats
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return (float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None), {}
    return read


def _drift_details(drift: dict[str, Any]) -> dict[str, Any]:
    prediction = drift.get("prediction") or {}
    return {"drifted_features": drift.get("drifted_features", []),
            "prediction_drifted_features": prediction.get("drifted_features", []),
            "samples": drift.get("samples"),
            "p_values": {name: f.get("p_value") for name, f in (drift.get("features") or {}).items()}}


def _drift(stats: dict[str, Any]) -> Reading:
    drift = stats.get("drift") or {}
    verdict = drift.get("verdict")
    if verdict not in ("drift", "ok"):
        return None, {"reason": drift.get("reason", "no drift data")}
    return (1.0 if verdict == "drift" else 0.0), _drift_details(drift)


def _drift_p_value(stats: dict[str, Any]) -> Reading:
    drift = stats.get("drift") or {}
    values = [f["p_value"] for f in (drift.get("features") or {}).values() if f.get("p_value") is not None]
    return (min(values) if values else None), _drift_details(drift)


def _drifted_features(stats: dict[str, Any]) -> Reading:
    value, details = _drift(stats)
    return (None if value is None else float(len(details["drifted_features"]))), details


def _prediction_drift(stats: dict[str, Any]) -> Reading:
    prediction = (stats.get("drift") or {}).get("prediction") or {}
    if prediction.get("verdict") not in ("drift", "ok"):
        return None, {}
    return float(prediction["verdict"] == "drift"), {
        "drifted_features": prediction.get("drifted_features", [])}


def _anomaly(kind: str) -> Callable[[dict[str, Any]], Reading]:
    def read(stats: dict[str, Any]) -> Reading:
        judged = ((stats.get("anomalies") or {}).get(kind)) or {}
        if judged.get("z") is None:
            return None, {}
        return float(bool(judged.get("anomalous"))), {
            "value": judged.get("value"), "baseline": judged.get("baseline"), "z": judged.get("z")}
    return read


SIGNALS: dict[str, Signal] = {
    "requests": Signal("requests answered in the window", _path("requests")),
    "throughput_rps": Signal("requests per second", _path("throughput_rps")),
    "error_rate": Signal("share of requests answered 5xx", _path("error_rate")),
    "p50_ms": Signal("median latency, ms", _path("p50_ms")),
    "p95_ms": Signal("95th percentile latency, ms", _path("p95_ms")),
    "p99_ms": Signal("99th percentile latency, ms", _path("p99_ms")),
    "drift": Signal("1 when the version's drift verdict is drift, 0 when ok", _drift),
    "drifted_features": Signal("number of input features judged drifted", _drifted_features),
    "drift_p_value": Signal("smallest adjusted drift p-value over the input features", _drift_p_value),
    "prediction_drift": Signal("1 when the predictions drifted, 0 when not", _prediction_drift),
    "missing_rate": Signal("share of input values missing (NaN, inf)", _path("quality", "missing_rate")),
    "out_of_range_rate": Signal("share of input values outside the reference range",
                                _path("quality", "out_of_range_rate")),
    "rejected": Signal("requests refused for schema violations", _path("quality", "rejected_total")),
    "last_request_age_s": Signal("seconds since the version last answered",
                                 _path("quality", "last_request_age_s")),
    "data_age_s": Signal("mean age of the features (feature_timestamp parameter)",
                         _path("quality", "data_age_s")),
    "accuracy": Signal("online accuracy from feedback", _path("accuracy", "accuracy")),
    "precision": Signal("online precision from feedback", _path("accuracy", "precision")),
    "recall": Signal("online recall from feedback", _path("accuracy", "recall")),
    "f1": Signal("online F1 from feedback", _path("accuracy", "f1")),
    "mae": Signal("online mean absolute error from feedback", _path("accuracy", "mae")),
    "rmse": Signal("online root mean squared error from feedback", _path("accuracy", "rmse")),
    "labelled": Signal("feedback pairs joined in the window", _path("accuracy", "labelled")),
    "latency_anomaly": Signal("1 when latency is anomalous against its EWMA baseline",
                              _anomaly("latency_ms")),
    "error_rate_anomaly": Signal("1 when the error rate is anomalous against its EWMA baseline",
                                 _anomaly("error_rate")),
    "out_of_support_rate": Signal("share of rows with a value outside the reference support",
                                  _path("anomalies", "out_of_support_rate")),
    "unusual_confidence_rate": Signal("share of predictions with a confidence outside the reference's",
                                      _path("anomalies", "unusual_confidence_rate")),
    "shadow_agreement": Signal("share of shadow answers agreeing with the primary",
                               _path("shadow", "agreement")),
    "shadow_errors": Signal("failed shadow calls in the window", _path("shadow", "errors")),
}

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}
