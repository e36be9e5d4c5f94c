"""The Monitor's evidence, typed: what ``MonitorState.snapshot`` and ``totals`` answer.

A :class:`VersionSnapshot` is one version's statistics over a window, in sections:
traffic, latency, shadow, drift, quality, accuracy, anomalies and the replicas reporting.
The rollout analysis, the alert signals and the Prometheus exporter read its fields;
:meth:`VersionSnapshot.to_json` gives the body of ``GET /api/endpoints/{e}/stats`` per
version (the control plane then turns NaN into null). :class:`VersionTotals` is one
version's cumulative counts, which back the Prometheus counters.

Missing evidence stays visible: a latency quantile of an empty window is NaN, a rate with
nothing to divide by is None, and a section built with its defaults says there was
nothing to judge (no requests, an ``insufficient`` drift verdict, no labels). The classes
are frozen dataclasses of plain values, so they pickle across the Monitor actor's
boundary, and this module imports nothing heavy: the control plane reads it without NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

NAN = math.nan


class DriftVerdict(StrEnum):
    """The drift test's answer over a window."""

    DRIFT = "drift"
    OK = "ok"
    INSUFFICIENT = "insufficient"  # too few rows (or no reference profile): no verdict

    @property
    def judged(self) -> bool:
        """Whether the window held enough rows for a verdict, drift or not."""
        return self is not DriftVerdict.INSUFFICIENT


@dataclass(frozen=True)
class RoutedRequests:
    """Requests of one way of routing that the version answered (not 4xx), its 5xx, the
    requests it refused (4xx: its own signature or limits turned them away), its
    answers holding a value that is not finite (a NaN or an infinity from the model), and
    the requests whose callers gave up before it answered (in none of the others)."""

    requests: int = 0
    server_errors: int = 0
    refused: int = 0
    not_finite: int = 0
    abandoned: int = 0


@dataclass(frozen=True)
class Traffic:
    """Requests in the window: by outcome, and by how they reached the version.

    The analysis sample is ``routing["random"]``: pinned and sticky requests let the
    caller choose the version, and 4xx were refused before the model judged anything.
    """

    requests: int = 0
    server_errors: int = 0
    client_errors: int = 0
    error_rate: float = 0.0  # server errors over the requests answered (not refused, 4xx)
    throughput_rps: float = 0.0
    codes: Mapping[int, int] = field(default_factory=dict)  # requests by HTTP status
    errors: Mapping[str, int] = field(default_factory=dict)  # by modelplane error code
    routing: Mapping[str, RoutedRequests] = field(default_factory=dict)  # random, pinned, sticky
    pinned_requests: int = 0
    sticky_requests: int = 0
    # The seconds of the window asked for, and of those the Monitor has seen this version
    # (less just after it or the version started): counts over less are not the window's.
    window_s: float = 0.0
    observed_s: float = 0.0
    # Of the window, the seconds since the Monitor's first statistics of the version, the
    # newest a replica still catching up has not reached among them (observed_s is less
    # those: Replicas.catching_up_s).
    seen_s: float = 0.0

    @property
    def whole_window(self) -> bool:
        """Whether the Monitor has seen the version for the whole window."""
        return self.observed_s >= self.window_s

    @property
    def answered(self) -> int:
        """Requests the version answered (those not refused with a 4xx)."""
        return self.requests - self.client_errors

    @property
    def rejected_requests(self) -> int:
        """Requests refused before the model ran (the 4xx answers)."""
        return self.client_errors


QUANTILE_CONFIDENCE = 0.95
PAIRED_CONFIDENCE = 1 - (1 - QUANTILE_CONFIDENCE) / 2


@dataclass(frozen=True)
class Quantiles:
    """Latency quantiles in milliseconds over ``count`` requests (NaN when there are none).

    ``p95_bounds_ms`` and ``p99_bounds_ms`` are distribution-free one-sided
    ``QUANTILE_CONFIDENCE`` bounds ``(low, high)`` on the quantile the requests came from
    (see :mod:`kernels.order_statistics`); NaN where ``count`` requests cannot give one.
    ``p95_paired_bounds_ms`` are the p95's at ``PAIRED_CONFIDENCE``: a ratio of two
    versions' p95s is bounded by one bound of each, and holds at ``QUANTILE_CONFIDENCE``
    only where each does at that (two 5% chances of being wrong add up to 10%).
    """

    count: int = 0
    p50_ms: float = NAN
    p95_ms: float = NAN
    p99_ms: float = NAN
    p95_bounds_ms: tuple[float, float] = (NAN, NAN)
    p99_bounds_ms: tuple[float, float] = (NAN, NAN)
    p95_paired_bounds_ms: tuple[float, float] = (NAN, NAN)


@dataclass(frozen=True)
class LatencyBins:
    """A window's latency sketch as its non-empty bins: ``counts[i]`` requests fell in bin
    ``keys[i]``, keys in increasing order of latency (-1: below the sketch's range). Bins of
    one Monitor share their edges, so two versions' bins compare key by key (the rollouts'
    rank test on latency reads them)."""

    keys: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Latency:
    """Every request's latency, and the analysis sample's (the randomly routed requests
    the version answered, not those it refused, with the sticky or pinned ones where the
    snapshot was asked to count them), as quantiles and as the sketch's bins."""

    all_requests: Quantiles = field(default_factory=Quantiles)
    sample: Quantiles = field(default_factory=Quantiles)
    all_bins: LatencyBins = field(default_factory=LatencyBins)
    sample_bins: LatencyBins = field(default_factory=LatencyBins)


@dataclass(frozen=True)
class ShadowComparison:
    """How a shadow version's answers compared with the primary's (NaN before any)."""

    compared: int = 0
    errors: int = 0  # shadow calls that failed
    dropped: int = 0  # mirrored requests the shadow never got (too many in flight)
    agreement: float = NAN
    mean_abs_diff: float = NAN
    latency_delta_ms: float = NAN


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's test against the reference (None where a number is not finite)."""

    statistic: float | None
    p_value: float | None  # adjusted over every feature of the version
    raw_p_value: float | None
    drifted: bool
    test: str
    n: int
    statistics: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictionDrift:
    """Drift of the prediction features."""

    verdict: DriftVerdict = DriftVerdict.INSUFFICIENT
    drifted: bool = False
    samples: int = 0
    features: Mapping[str, FeatureDrift] = field(default_factory=dict)
    drifted_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Drift:
    """Drift of the inputs and predictions against the version's reference profile."""

    verdict: DriftVerdict = DriftVerdict.INSUFFICIENT  # over inputs and predictions
    reason: str = ""  # why there is no verdict, or what limits it
    samples: int = 0  # input rows in the window
    alpha: float = NAN
    correction: str = ""
    features: Mapping[str, FeatureDrift] = field(default_factory=dict)  # input features
    drifted_features: tuple[str, ...] = ()
    prediction: PredictionDrift = field(default_factory=PredictionDrift)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "reason": self.reason, "samples": self.samples,
                "alpha": self.alpha, "correction": self.correction,
                "features": {name: asdict(f) for name, f in self.features.items()},
                "drifted_features": list(self.drifted_features),
                "prediction": {"verdict": self.prediction.verdict.value,
                               "drifted": self.prediction.drifted,
                               "samples": self.prediction.samples,
                               "features": {name: asdict(f) for name, f
                                            in self.prediction.features.items()},
                               "drifted_features": list(self.prediction.drifted_features)}}


@dataclass(frozen=True)
class FeatureQuality:
    """Missing and out-of-range values of one input feature."""

    missing: int = 0
    out_of_range: int = 0


@dataclass(frozen=True)
class Quality:
    """Data quality of the inputs and freshness, over the window."""

    rows: int = 0
    missing: int = 0  # values
    rows_with_missing: int = 0
    missing_rate: float | None = None  # of the input values
    out_of_range: int = 0  # values outside the reference [min, max] or categories
    out_of_range_rate: float | None = None
    rows_out_of_support: int = 0
    unusual_confidence: int = 0
    features: Mapping[str, FeatureQuality] = field(default_factory=dict)
    prediction_out_of_range: Mapping[str, int] = field(default_factory=dict)
    rejected: Mapping[str, int] = field(default_factory=dict)  # refused requests by reason
    last_request_age_s: float | None = None
    data_age_s: float | None = None  # mean age of the features sent with feature_timestamp
    data_age_count: int = 0
    unmonitored_rows: int = 0  # rows whose shape did not fit the reference profile
    # Answered requests a replica failed to account (its log says why): not in drift.
    unobserved_requests: int = 0
    problem: str = ""  # why the version is not monitored ("" when it is)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def monitored(self) -> bool:
        return not self.problem

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "missing": self.missing,
            "rows_with_missing": self.rows_with_missing, "missing_rate": self.missing_rate,
            "out_of_range": self.out_of_range, "out_of_range_rate": self.out_of_range_rate,
            "rows_out_of_support": self.rows_out_of_support,
            "unusual_confidence": self.unusual_confidence,
            "features": {name: asdict(f) for name, f in self.features.items()},
            "prediction_out_of_range": dict(self.prediction_out_of_range),
            "rejected": dict(self.rejected), "rejected_total": self.rejected_total,
            "last_request_age_s": self.last_request_age_s, "data_age_s": self.data_age_s,
            "data_age_count": self.data_age_count, "unmonitored_rows": self.unmonitored_rows,
            "unobserved_requests": self.unobserved_requests,
            "monitored": self.monitored, "problem": self.problem,
        }


@dataclass(frozen=True)
class Accuracy:
    """Online accuracy from the feedback pairs joined in the window.

    Classifiers get accuracy, precision, recall and F1 (``average`` says how classes are
    averaged); regressors MAE and RMSE; each is None until a pair is labelled.
    """

    task: str | None = None
    labelled: int = 0
    invalid: int = 0  # labels that could not be read against the prediction
    # Labels joined with requests outside the sample asked for (pinned or sticky ones,
    # which a rollout judges only where it opts in): not in the figures below.
    labelled_apart: int = 0
    # Answered requests whose prediction the replicas did not keep for labels: more rows
    # than one feedback item may label, or past a shipment's bound.
    not_kept: int = 0
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    average: str | None = None  # "binary" or "macro"
    mae: float | None = None
    rmse: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The figures of the version's task only (a classifier has no MAE)."""
        figures: dict[str, Any] = {"labelled": self.labelled}
        if self.task == "classification":
            figures.update(accuracy=self.accuracy, precision=self.precision, recall=self.recall,
                           f1=self.f1, average=self.average)
        elif self.task == "regression":
            figures.update(mae=self.mae, rmse=self.rmse)
        return {**figures, "task": self.task, "invalid": self.invalid,
                "labelled_apart": self.labelled_apart, "not_kept": self.not_kept}


@dataclass(frozen=True)
class BaselineJudgement:
    """A window's value against its EWMA baseline (``z`` is None until it may judge)."""

    value: float | None = None
    baseline: float | None = None
    deviation: float | None = None
    z: float | None = None
    baseline_slots: int = 0
    anomalous: bool = False


@dataclass(frozen=True)
class Anomalies:
    """Latency and error-rate anomalies, and predictions unlike the reference's."""

    latency_ms: BaselineJudgement | None = None
    error_rate: BaselineJudgement | None = None
    out_of_support_rows: int = 0
    out_of_support_rate: float | None = None
    unusual_confidence: int = 0
    unusual_confidence_rate: float | None = None
    # Predictions outside the reference's range or classes it never predicted.
    unusual_predictions: int = 0

    @property
    def any(self) -> bool:
        """Whether latency or the error rate is anomalous."""
        return bool((self.latency_ms and self.latency_ms.anomalous)
                    or (self.error_rate and self.error_rate.anomalous))

    def to_json(self) -> dict[str, Any]:
        judged = {name: asdict(judgement) for name, judgement in
                  (("latency_ms", self.latency_ms), ("error_rate", self.error_rate))
                  if judgement is not None}
        return {**judged, "out_of_support_rows": self.out_of_support_rows,
                "out_of_support_rate": self.out_of_support_rate,
                "unusual_confidence": self.unusual_confidence,
                "unusual_confidence_rate": self.unusual_confidence_rate,
                "unusual_predictions": self.unusual_predictions, "any": self.any}


@dataclass(frozen=True)
class Replicas:
    """The endpoint's replicas that reported to the Monitor in the window, and of those the
    ones gone silent without a graceful stop: crashed, killed or stalled. What a silent
    replica had in flight and had not yet shipped is missing from every other section, and
    a version whose code kills its replica would otherwise look clean: the proxy, not the
    replica, answers the requests it took down with it (see
    ``serving.monitoring.replica_reports``)."""

    reporting: int = 0
    silent: int = 0
    silent_for_s: float = 0.0  # the longest silence among them
    # How far behind the present the statistics of the replica furthest behind reach,
    # while it still sends what it kept for a Monitor that was away (0: none is), and in a
    # new Monitor's first silence after the endpoint's first shipment, how far back its
    # backlogs reach (a replica still to come holds those seconds too): the newest seconds
    # of every window hold only part of the endpoint's requests till then.
    catching_up_s: float = 0.0


@dataclass(frozen=True)
class VersionSnapshot:
    """One version's statistics over a window (see ``MonitorState.snapshot``)."""

    traffic: Traffic = field(default_factory=Traffic)
    latency: Latency = field(default_factory=Latency)
    shadow: ShadowComparison = field(default_factory=ShadowComparison)
    drift: Drift = field(default_factory=Drift)
    quality: Quality = field(default_factory=Quality)
    accuracy: Accuracy = field(default_factory=Accuracy)
    anomalies: Anomalies = field(default_factory=Anomalies)
    replicas: Replicas = field(default_factory=Replicas)

    def to_json(self) -> dict[str, Any]:
        """The REST shape: traffic and every request's latency at the top, then sections."""
        traffic, every = self.traffic, self.latency.all_requests
        return {
            "requests": traffic.requests,
            "server_errors": traffic.server_errors,
            "client_errors": traffic.client_errors,
            "error_rate": traffic.error_rate,
            "codes": dict(traffic.codes),
            "errors": dict(traffic.errors),
            "latency_count": every.count,
            "p50_ms": every.p50_ms, "p95_ms": every.p95_ms, "p99_ms": every.p99_ms,
            "p95_bounds_ms": list(every.p95_bounds_ms), "p99_bounds_ms": list(every.p99_bounds_ms),
            "p95_paired_bounds_ms": list(every.p95_paired_bounds_ms),
            "throughput_rps": traffic.throughput_rps,
            "routing": {kind: asdict(routed) for kind, routed in traffic.routing.items()},
            "pinned_requests": traffic.pinned_requests,
            "sticky_requests": traffic.sticky_requests,
            "rejected_requests": traffic.rejected_requests,
            "sample_latency": asdict(self.latency.sample),
            "shadow": asdict(self.shadow),
            "drift": self.drift.to_json(),
            "quality": self.quality.to_json(),
            "accuracy": self.accuracy.to_json(),
            "anomalies": self.anomalies.to_json(),
            "replicas": asdict(self.replicas),
        }


@dataclass(frozen=True)
class QualityTotals:
    """Data-quality and feedback counts since the Monitor started (the Prometheus counters)."""

    rows: int = 0
    rows_out_of_support: int = 0
    unusual_confidence: int = 0
    labelled: int = 0  # feedback pairs joined
    missing: Mapping[str, int] = field(default_factory=dict)  # by input feature (seen ones)
    out_of_range: Mapping[str, int] = field(default_factory=dict)  # by input feature
    rejected: Mapping[str, int] = field(default_factory=dict)  # by reason


@dataclass(frozen=True)
class FeedbackStore:
    """One endpoint's ground-truth join: predictions held, and what became of the others."""

    held: int = 0  # predictions waiting for their labels
    labels_waiting: int = 0  # labels waiting for their prediction
    stored: int = 0
    joined: int = 0
    replaced: int = 0  # the same request id shipped twice (the newest kept)
    dropped_full: int = 0  # dropped unjoined: the store was full
    expired: int = 0  # dropped unjoined: too old
    labels_unmatched: int = 0  # labels that never found their prediction


@dataclass(frozen=True)
class VersionTotals:
    """One version's cumulative counts, and its signals over the exposition's window."""

    endpoint: str
    version: int
    codes: Mapping[int, int]  # requests by HTTP status
    shadow_compared: int
    shadow_agreed: int
    latency_count: int
    latency_sum: float  # seconds
    latency_quantiles: Mapping[float, float]  # all-time, seconds (NaN without requests)
    quality: QualityTotals
    window_s: float
    window: VersionSnapshot  # drift, quality, accuracy and anomalies over ``window_s``
    feedback: FeedbackStore  # the endpoint's (the same on each of its versions)
    # Comparisons with an agreement verdict (classifiers); a default, so a snapshot of a
    # Monitor from before it reads 0.
    shadow_judged: int = 0
