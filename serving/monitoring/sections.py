"""The monitoring sections of a version's snapshot, computed from the Monitor's counters.

Replicas' monitoring deltas become counters (:func:`monitoring_counts`) that the Monitor
adds to each version's one-second slots and to its all-time totals; the snapshot reads a
window of them back as the ``quality``, ``accuracy`` and ``anomalies`` sections. Counter
names are prefixed by section: ``q:`` quality, ``rej:`` rejections, ``fb:`` feedback.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from serving.monitoring.feedback import (
    JoinedPair,
    class_index,
    classification_metrics,
    regression_metrics,
)

MAX_CONFUSION_CLASSES = 64  # beyond this only accuracy is counted (the matrix grows as k^2)
_QUALITY_SCALARS = ("rows", "missing_values", "rows_with_missing", "rows_out_of_support",
                    "unusual_confidence", "unmonitored_rows")


def monitoring_counts(part: dict[str, Any], input_names: tuple[str, ...],
                      prediction_names: tuple[str, ...]) -> dict[str, float]:
    """Counters of one replica's monitoring delta (see ``VersionObservations.to_delta``)."""
    counts: dict[str, float] = {f"q:{key}": part[key] for key in _QUALITY_SCALARS if part.get(key)}
    age_n, age_sum, _ = part.get("data_age") or (0, 0.0, 0.0)
    if age_n:
        counts["q:age_n"], counts["q:age_sum"] = age_n, age_sum
    if part.get("feedback_dropped"):
        counts["fb:dropped_at_replica"] = part["feedback_dropped"]
    for kind, names, section in (("inputs", input_names, "q"), ("predictions", prediction_names, "qp")):
        window = part.get(kind)
        if not window or len(window["missing"]) != len(names):
            continue
        for name, missing, outside in zip(names, window["missing"], window["out_of_range"], strict=True):
            if missing:
                counts[f"{section}:missing:{name}"] = int(missing)
            if outside:
                counts[f"{section}:oor:{name}"] = int(outside)
    return counts


def joined_counts(pair: JoinedPair, meta: dict[str, Any]) -> dict[str, float]:
    """Counters of one joined (prediction, ground truth) pair, per row."""
    counts: Counter[str] = Counter()
    if len(pair.labels) != len(pair.predicted):
        counts["fb:invalid"] += len(pair.labels)
        return counts
    task = meta.get("task")
    if task == "classification":
        small = (meta.get("n_classes") or 0) <= MAX_CONFUSION_CLASSES
        for label, predicted in zip(pair.labels, pair.predicted, strict=True):
            truth = class_index(label, meta.get("class_labels"))
            if truth is None:
                counts["fb:invalid"] += 1
                continue
            guess = int(predicted)
            counts["fb:n"] += 1
            counts["fb:correct"] += truth == guess
            if small:
                counts[f"fb:cm:{truth}:{guess}"] += 1
    elif task == "regression":
        for label, predicted in zip(pair.labels, pair.predicted, strict=True):
            try:
                error = float(label) - float(predicted)
            except (TypeError, ValueError, OverflowError):
                error = math.nan
            if not math.isfinite(error):  # a label string such as "1e999" parses to inf
                counts["fb:invalid"] += 1
                continue
            counts["fb:n"] += 1
            counts["fb:abs"] += abs(error)
            counts["fb:sq"] += error * error
    return counts


def quality_section(counts: Counter[str], *, input_names: tuple[str, ...],
                    prediction_names: tuple[str, ...], last_request_age_s: float | None,
                    problem: str) -> dict[str, Any]:
    """Missing and out-of-range values, refused requests, freshness, over a window."""
    features = {name: {"missing": int(counts.get(f"q:missing:{name}", 0)),
                       "out_of_range": int(counts.get(f"q:oor:{name}", 0))} for name in input_names}
    rejected = {k[4:]: int(v) for k, v in counts.items() if k.startswith("rej:")}
    rows = int(counts.get("q:rows", 0))
    age_n = counts.get("q:age_n", 0)
    missing = int(counts.get("q:missing_values", 0))
    out_of_range = sum(f["out_of_range"] for f in features.values())
    cells = rows * len(input_names)
    return {
        "rows": rows,
        "missing": missing,
        "rows_with_missing": int(counts.get("q:rows_with_missing", 0)),
        "missing_rate": missing / cells if cells else None,
        "out_of_range": out_of_range,
        "out_of_range_rate": out_of_range / cells if cells else None,
        "rows_out_of_support": int(counts.get("q:rows_out_of_support", 0)),
        "unusual_confidence": int(counts.get("q:unusual_confidence", 0)),
        "features": features,
        "prediction_out_of_range": {name: int(counts.get(f"qp:oor:{name}", 0))
                                    for name in prediction_names},
        "rejected": rejected,
        "rejected_total": sum(rejected.values()),
        "last_request_age_s": last_request_age_s,
        "data_age_s": counts["q:age_sum"] / age_n if age_n else None,
        "data_age_count": int(age_n),
        "unmonitored_rows": int(counts.get("q:unmonitored_rows", 0)),
        # Answered requests a replica failed to account (its log says why): not in drift.
        "unobserved_requests": int(counts.get("q:unobserved_requests", 0)),
        "monitored": not problem,
        "problem": problem,
    }


def accuracy_section(counts: Counter[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Online accuracy from the feedback pairs joined in the window."""
    task = meta.get("task")
    invalid = int(counts.get("fb:invalid", 0))
    if task == "regression":
        result = regression_metrics(counts.get("fb:n", 0), counts.get("fb:abs", 0.0),
                                    counts.get("fb:sq", 0.0))
    elif task == "classification":
        confusion = {}
        for key, value in counts.items():
            if key.startswith("fb:cm:"):
                truth, guess = key[6:].split(":")
                confusion[(int(truth), int(guess))] = value
        labelled = int(counts.get("fb:n", 0))
        if confusion and sum(confusion.values()) == labelled:
            result = classification_metrics(confusion, meta.get("n_classes"))
        else:  # too many classes for a confusion count: accuracy only
            result = {"labelled": labelled, "precision": None, "recall": None, "f1": None,
                      "accuracy": counts.get("fb:correct", 0) / labelled if labelled else None,
                      "average": None}
    else:
        result = {"labelled": int(counts.get("fb:n", 0))}
    return {**result, "task": task, "invalid": invalid}


def anomaly_counts(quality: dict[str, Any]) -> dict[str, Any]:
    """The prediction-anomaly part: rows outside the reference support, unusual confidence."""
    rows = quality["rows"]
    unusual = quality["unusual_confidence"]
    return {
        "out_of_support_rows": quality["rows_out_of_support"],
        "out_of_support_rate": quality["rows_out_of_support"] / rows if rows else None,
        "unusual_confidence": unusual,
        "unusual_confidence_rate": unusual / rows if rows else None,
        # Predictions outside the reference's range or classes it never predicted.
        "unusual_predictions": sum(quality["prediction_out_of_range"].values()),
    }
