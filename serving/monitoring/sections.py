"""The monitoring sections of a version's snapshot, computed from the Monitor's counters.

Replicas' monitoring deltas become counters (:func:`monitoring_counts`) that the Monitor
adds to each version's one-second slots and to its all-time totals; the snapshot reads a
window of them back as the ``quality``, ``accuracy`` and ``anomalies`` sections (see
:mod:`serving.monitoring.snapshot`). The counters' names are those of
:mod:`serving.monitoring.counters`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from serving.monitoring import counters
from serving.monitoring.feedback import (
    JoinedPair,
    class_index,
    classification_metrics,
    predicted_class,
    regression_metrics,
)
from serving.monitoring.snapshot import (
    Accuracy,
    Anomalies,
    BaselineJudgement,
    FeatureQuality,
    Quality,
)

MAX_CONFUSION_CLASSES = 64  # beyond this only accuracy is counted (the matrix grows as k^2)


def monitoring_counts(part: dict[str, Any], input_names: tuple[str, ...],
                      prediction_names: tuple[str, ...]) -> dict[str, float]:
    """Counters of one replica's monitoring delta (see ``VersionObservations.to_delta``)."""
    counts: dict[str, float] = {counter: part[key]
                                for key, counter in counters.QUALITY_SCALARS.items() if part.get(key)}
    age_n, age_sum, _ = part.get("data_age") or (0, 0.0, 0.0)
    if age_n:
        counts[counters.DATA_AGE_COUNT], counts[counters.DATA_AGE_SUM] = age_n, age_sum
    for key, counter in (("feedback_dropped", counters.FEEDBACK_DROPPED_AT_REPLICA),
                         ("feedback_unjoinable", counters.FEEDBACK_UNJOINABLE)):
        if part.get(key):
            counts[counter] = part[key]
    # Data quality is of every row, however it was routed.
    parts = [part, *(part.get("routed") or {}).values()]
    for group, names, missing_of, outside_of in (
            ("inputs", input_names, counters.INPUT_MISSING, counters.INPUT_OUT_OF_RANGE),
            ("predictions", prediction_names, counters.PREDICTION_MISSING,
             counters.PREDICTION_OUT_OF_RANGE)):
        for window in (routed.get(group) for routed in parts):
            if not window or len(window["missing"]) != len(names):
                continue
            for name, missing, outside in zip(names, window["missing"], window["out_of_range"],
                                              strict=True):
                if missing:
                    counts[missing_of.key(name)] = counts.get(missing_of.key(name), 0) + int(missing)
                if outside:
                    counts[outside_of.key(name)] = counts.get(outside_of.key(name), 0) + int(outside)
    return counts


def joined_counts(pair: JoinedPair, meta: dict[str, Any]) -> dict[str, float]:
    """Counters of one joined (prediction, ground truth) pair, per row."""
    counts: Counter[str] = Counter()
    if len(pair.labels) != len(pair.predicted):
        counts[counters.INVALID_LABELS] += len(pair.labels)
        return counts
    task = meta.get("task")
    if task == "classification":
        n_classes = meta.get("n_classes") or 0
        small = n_classes <= MAX_CONFUSION_CLASSES
        # A cell per (truth, guess) pair: only classes a confusion matrix may hold, or any
        # whole number a labeler sent would be a counter of the Monitor's for good.
        cells = range(n_classes or MAX_CONFUSION_CLASSES)
        for label, predicted in zip(pair.labels, pair.predicted, strict=True):
            truth = class_index(label, meta.get("class_labels"))
            if truth is None or (n_classes and truth not in cells):  # no such class
                counts[counters.INVALID_LABELS] += 1
                continue
            guess = predicted_class(float(predicted))
            counts[counters.LABELLED] += 1
            counts[counters.CORRECT] += truth == guess
            # A NaN answer is wrong, and in no class.
            if small and guess is not None and truth in cells and guess in cells:
                counts[counters.confusion_key(truth, guess)] += 1
    elif task == "regression":
        for label, predicted in zip(pair.labels, pair.predicted, strict=True):
            try:
                error = float(label) - float(predicted)
            except (TypeError, ValueError, OverflowError):
                error = math.nan
            if not math.isfinite(error):  # a label string such as "1e999" parses to inf
                counts[counters.INVALID_LABELS] += 1
                continue
            counts[counters.LABELLED] += 1
            counts[counters.ABS_ERROR_SUM] += abs(error)
            counts[counters.SQUARED_ERROR_SUM] += error * error
    return counts


def quality_section(counts: Counter[str], *, input_names: tuple[str, ...],
                    prediction_names: tuple[str, ...], last_request_age_s: float | None,
                    problem: str) -> Quality:
    """Missing and out-of-range values, refused requests, freshness, over a window."""
    features = {name: FeatureQuality(
        missing=int(counts.get(counters.INPUT_MISSING.key(name), 0)),
        out_of_range=int(counts.get(counters.INPUT_OUT_OF_RANGE.key(name), 0)))
        for name in input_names}
    rows = int(counts.get(counters.ROWS, 0))
    age_n = counts.get(counters.DATA_AGE_COUNT, 0)
    missing = int(counts.get(counters.MISSING_VALUES, 0))
    out_of_range = sum(f.out_of_range for f in features.values())
    cells = rows * len(input_names)
    return Quality(
        rows=rows,
        missing=missing,
        rows_with_missing=int(counts.get(counters.ROWS_WITH_MISSING, 0)),
        missing_rate=missing / cells if cells else None,
        out_of_range=out_of_range,
        out_of_range_rate=out_of_range / cells if cells else None,
        rows_out_of_support=int(counts.get(counters.ROWS_OUT_OF_SUPPORT, 0)),
        unusual_confidence=int(counts.get(counters.UNUSUAL_CONFIDENCE, 0)),
        features=features,
        prediction_out_of_range={
            name: int(counts.get(counters.PREDICTION_OUT_OF_RANGE.key(name), 0))
            for name in prediction_names},
        rejected={reason: int(n) for reason, n in counters.REJECTED.read(counts).items()},
        last_request_age_s=last_request_age_s,
        data_age_s=counts[counters.DATA_AGE_SUM] / age_n if age_n else None,
        data_age_count=int(age_n),
        unmonitored_rows=int(counts.get(counters.UNMONITORED_ROWS, 0)),
        unobserved_requests=int(counts.get(counters.UNOBSERVED_REQUESTS, 0)),
        problem=problem,
    )


def accuracy_section(every: Counter[str], meta: dict[str, Any],
                     sample: tuple[str, ...] | None = None) -> Accuracy:
    """Online accuracy from the feedback pairs joined in the window with the predictions
    of requests routed as ``sample`` says (None: every request)."""
    counts = counters.feedback(every, sample)
    labelled_every = int(counters.labelled(every))
    not_kept = int(every.get(counters.FEEDBACK_DROPPED_AT_REPLICA, 0)
                   + every.get(counters.FEEDBACK_UNJOINABLE, 0))
    task = meta.get("task")
    invalid = int(counts.get(counters.INVALID_LABELS, 0))
    if task == "regression":
        result = regression_metrics(counts.get(counters.LABELLED, 0),
                                    counts.get(counters.ABS_ERROR_SUM, 0.0),
                                    counts.get(counters.SQUARED_ERROR_SUM, 0.0))
    elif task == "classification":
        confusion = counters.confusion(counts)
        labelled = int(counts.get(counters.LABELLED, 0))
        if confusion and sum(confusion.values()) == labelled:
            result = classification_metrics(confusion, meta.get("n_classes"))
        else:  # too many classes for a confusion count: accuracy only
            result = {"labelled": labelled,
                      "accuracy": counts.get(counters.CORRECT, 0) / labelled if labelled else None}
    else:
        result = {"labelled": int(counts.get(counters.LABELLED, 0))}
    return Accuracy(**result, task=task, invalid=invalid,
                    labelled_apart=labelled_every - int(result["labelled"]), not_kept=not_kept)


def anomalies_section(quality: Quality,
                      judged: tuple[BaselineJudgement, BaselineJudgement] | None) -> Anomalies:
    """Latency and error rate against their baselines (``judged``: see
    ``AnomalyTracker.judge``), and the predictions unlike the reference's."""
    rows = quality.rows
    latency_ms, error_rate = judged or (None, None)
    return Anomalies(
        latency_ms=latency_ms,
        error_rate=error_rate,
        out_of_support_rows=quality.rows_out_of_support,
        out_of_support_rate=quality.rows_out_of_support / rows if rows else None,
        unusual_confidence=quality.unusual_confidence,
        unusual_confidence_rate=quality.unusual_confidence / rows if rows else None,
        unusual_predictions=sum(quality.prediction_out_of_range.values()),
    )
