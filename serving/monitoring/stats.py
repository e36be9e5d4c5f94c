"""What a replica measures per version, kept locally and shipped to the Monitor as deltas.

Recording is a few in-process operations per request (no remote call); a background task
in the replica swaps the recorder about once a second (sooner when it holds a busy
second's observations), accounts the observed requests (the monitoring kernels) on the
event loop a step at a time and sends what it collected. Observation work never decides
a request's outcome: the request path only appends, and a failure while accounting is
logged and counted (``unobserved_requests``), never raised to a caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from serving.monitoring.feedback import predicted_class
from serving.monitoring.observations import (
    PENDING_BYTES_HARD_LIMIT,
    PENDING_BYTES_LIMIT,
    PENDING_HARD_LIMIT,
    PENDING_LIMIT,
    ObservedRequests,
    UnaccountedRequests,
    VersionMonitoring,
    VersionObservations,
)
from serving.monitoring.routing import ROUTED_RANDOMLY
from serving.protocol.tensors import held_bytes

log = logging.getLogger(__name__)

# Latencies in seconds: 1 µs to ~3 h, with 1% relative accuracy.
LATENCY_MIN_S = 1e-6
LATENCY_MAX_S = 1e4
# Observed requests accounted per step when a shipment is accounted on the event loop:
# about 0.3 ms of the kernels' work on the small MLP's 64 features.
ACCOUNT_STEP = 256
ENDPOINT_LEVEL = 0  # requests refused before a version was chosen


class ServedConfig(NamedTuple):
    """The configuration a replica recorded a delta under, as the Monitor needs it."""

    incarnation: str  # which creation of the endpoint name (EndpointConfig.incarnation)
    generation: int  # which change of its configuration
    versions: tuple[int, ...]  # the versions it serves
    report_every_s: float = 1.0  # how often the replica ships (EndpointConfig.stats_interval_s)


def answered_requests(part: Mapping[str, Any]) -> int:
    """The requests a version's part of a delta (``StatsRecorder.to_delta``) answered."""
    return sum(n for code, n in part.get("codes", {}).items() if int(code) < 400)


def drop_observations(delta: dict[int, dict[str, Any]]) -> None:
    """Drop a delta's observations (the rows drift is judged on, the predictions labels
    join), its answered requests counted as unobserved, as the Monitor counts those it
    could not read; those already unobserved are among them."""
    for part in delta.values():
        if part.pop("monitoring", None) is not None:
            part["unobserved_requests"] = max(part.get("unobserved_requests", 0),
                                              answered_requests(part))
        part.pop("profile", None)


def new_latency_sketch() -> Any:
    from kernels import Sketch

    return Sketch(alpha=0.01, min_value=LATENCY_MIN_S, max_value=LATENCY_MAX_S)


@dataclass
class ShadowStats:
    """How a shadow version compared with the primary answers it mirrored."""

    compared: int = 0
    # Rows compared with a verdict (classifiers): agreement is agreed / judged, per row, so
    # it does not depend on how many rows callers put in a request. A regression model's
    # answers have none, only a difference; counting them as disagreements would read a
    # shadow identical to the primary as agreeing 0% of the time.
    judged: int = 0
    agreed: int = 0
    abs_diff_sum: float = 0.0
    latency_delta_sum_s: float = 0.0
    errors: int = 0
    # Mirrored requests the shadow never got: the replica had as many of its calls in
    # flight as it holds (a shadow that hangs or cannot keep up). Left out, they would
    # leave only its quick answers to judge.
    dropped: int = 0

    def merge(self, other: ShadowStats) -> None:
        self.compared += other.compared
        self.judged += other.judged
        self.agreed += other.agreed
        self.abs_diff_sum += other.abs_diff_sum
        self.latency_delta_sum_s += other.latency_delta_sum_s
        self.errors += other.errors
        self.dropped += other.dropped

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)

    @classmethod
    def from_counts(cls, counts: Mapping[str, float]) -> ShadowStats:
        """From the Monitor's counters; fields another version of the replicas sends and
        this one does not know are left out, so a mixed fleet never breaks a snapshot."""
        known = cls.__dataclass_fields__
        return cls(**{name: value for name, value in counts.items() if name in known})


@dataclass
class VersionStats:
    """One version's counts and latency values since the last flush."""

    latencies: list[float] = field(default_factory=list)  # randomly routed, answered
    # Per way of routing (pinned, sticky), answered: a rollout counting sticky requests
    # must not judge the pinned ones, which anyone may send to the version they choose.
    latencies_apart: dict[str, list[float]] = field(default_factory=dict)
    codes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # refused requests, by reason
    routed_apart: dict[str, Counter[int]] = field(default_factory=dict)  # pinned/sticky codes
    not_finite: Counter[str] = field(default_factory=Counter)  # NaN/inf answers, by routing
    abandoned: Counter[str] = field(default_factory=Counter)  # callers gone first, by routing
    shadow: ShadowStats = field(default_factory=ShadowStats)
    observations: VersionObservations | None = None
    unobserved: int = 0  # answered requests whose accounting failed (logged, not raised)


class StatsRecorder:
    """Per-version statistics of one replica between two flushes.

    ``monitoring`` (per version) switches on the observation of inputs and predictions
    for drift, data quality and the feedback join (see :mod:`serving.monitoring.observations`).
    ``when_full`` is called (on the request path, so it must be cheap: set an event) once
    :data:`PENDING_LIMIT` observed requests wait, for the owner to take and ship this
    recorder early; without it, or past :data:`PENDING_HARD_LIMIT`, ``observe`` accounts
    them itself.
    """

    def __init__(self, *, enabled: bool = True,
                 monitoring: Mapping[int, VersionMonitoring] | None = None,
                 when_full: Callable[[], None] | None = None) -> None:
        self.versions: dict[int, VersionStats] = {}
        self.enabled = enabled
        self.monitoring: Mapping[int, VersionMonitoring] = monitoring or {}
        self.when_full = when_full
        self._observed: dict[int, ObservedRequests] = {}
        self._observed_count = 0
        self._observed_bytes = 0

    def _of(self, version: int) -> VersionStats:
        stats = self.versions.get(version)
        if stats is None:
            stats = self.versions[version] = VersionStats()
        return stats

    def abandon(self, version: int, routed: str = ROUTED_RANDOMLY) -> None:
        """A request whose caller gave up before the version answered it (a disconnect, a
        gRPC deadline). Not an error of the version's: anyone may leave early, and random
        routing sends such callers to every version alike. A version that keeps its
        callers waiting until they leave has a larger share of them than stable, which is
        what a rollout judges (``max_abandoned_rate_increase``)."""
        if self.enabled:
            self._of(version).abandoned[routed] += 1

    def record(self, version: int, status: int, latency_s: float, error_code: str | None = None,
               routed: str = ROUTED_RANDOMLY, *, not_finite: bool = False) -> None:
        """One request's status and latency; ``routed`` says how it reached the version;
        ``not_finite``: the answer holds a NaN or an infinity (the model's, sent as is)."""
        if not self.enabled:
            return
        stats = self._of(version)
        stats.codes[status] += 1
        if not_finite:
            stats.not_finite[routed] += 1
        if routed != ROUTED_RANDOMLY:
            stats.routed_apart.setdefault(routed, Counter())[status] += 1
        if error_code:
            stats.errors[error_code] += 1
        if version != ENDPOINT_LEVEL and not 400 <= status < 500:
            # Latency is the model's: a refusal (4xx) never ran it, and its few microseconds
            # would pull a candidate that refuses much below stable's p95, and a flood of bad
            # requests would hide a slow model from a p95 alert.
            if routed == ROUTED_RANDOMLY:
                stats.latencies.append(latency_s)
            else:
                stats.latencies_apart.setdefault(routed, []).append(latency_s)

    def record_rejection(self, version: int, reason: str) -> None:
        """A request refused before the model ran (schema violation, malformed body …)."""
        if self.enabled:
            self._of(version).rejected[reason] += 1

    def observe(self, version: int, request_id: str, arrays: dict[str, np.ndarray],
                outputs: dict[str, np.ndarray], data_age_s: float | None = None,
                routed: str = ROUTED_RANDOMLY, *, held: int | None = None) -> None:
        """An answered request's inputs and outputs, for drift, quality and feedback;
        ``routed`` says how it reached the version (its drift counts and prediction are
        kept apart unless it was routed randomly); ``held``, the bytes they keep alive
        where the caller counted them already (:func:`held_bytes`)."""
        if not self.enabled:
            return
        # The request path: appends. The kernels run when the statistics are shipped
        # (to_delta, off the request path), early once PENDING_LIMIT requests wait, or
        # here where no one ships them (or the shipper is far behind).
        pending = self._observed.get(version)
        if pending is None:
            pending = self._observed[version] = ObservedRequests()
        pending.add(request_id, arrays, outputs, data_age_s, routed)
        self._observed_count += 1
        # Bytes too: a binary input is a view of its request's whole body, held until then.
        before = self._observed_bytes
        self._observed_bytes += held if held is not None else held_bytes(
            [*arrays.values(), *outputs.values()])
        count, held = self._observed_count, self._observed_bytes
        if count >= PENDING_LIMIT or held >= PENDING_BYTES_LIMIT:
            if (self.when_full is None or count >= PENDING_HARD_LIMIT
                    or held >= PENDING_BYTES_HARD_LIMIT):
                self.flush_observations()
            elif count == PENDING_LIMIT or before < PENDING_BYTES_LIMIT <= held:
                self.when_full()

    def flush_observations(self) -> None:
        """Account every observed request since the last flush, a version at a time (never
        raises: see ``_account``)."""
        for version, requests in self._take_observed().items():
            self._account(version, requests)

    async def to_delta_in_steps(self, step: int = ACCOUNT_STEP) -> dict[int, dict[str, Any]]:
        """``to_delta`` on the event loop of a recorder no request adds to any more (taken),
        accounting ``step`` observed requests at a time and giving the loop back between
        steps: a request waits one step (a fraction of a millisecond) at most. In a worker
        thread instead, the accounting's Python holds the GIL for slices of the switch
        interval (5 ms) while the loop waits for it (benchmarks/observation_stalls.py)."""
        for version, requests in self._take_observed().items():
            for first in range(0, len(requests), step):
                self._account(version, requests.part(first, first + step))
                await asyncio.sleep(0)
        return self.to_delta()

    def _take_observed(self) -> dict[int, ObservedRequests]:
        """The observed requests waiting, this recorder's no more."""
        observed, self._observed = self._observed, {}
        self._observed_count = self._observed_bytes = 0
        return observed

    def _account(self, version: int, requests: ObservedRequests) -> None:
        """Run the kernels over one version's observed requests.

        Never raises: a version whose accounting fails (a model answering an output the
        profile cannot read, a kernel fault) loses that chunk's observations, which are
        counted as ``unobserved_requests`` and logged; serving and the other versions
        carry on."""
        stats = self._of(version)
        try:
            if stats.observations is None:
                spec = self.monitoring.get(version)
                if spec is None:
                    return
                stats.observations = VersionObservations(spec)
            stats.observations.account(requests)
        except Exception as error:
            lost = error.requests if isinstance(error, UnaccountedRequests) else len(requests)
            if not stats.unobserved:
                log.exception("version %s: could not account %d observed requests; "
                              "they are counted as unobserved", version, lost)
            stats.unobserved += lost

    def record_shadow(self, version: int, *, agreed: tuple[int, int] | None, abs_diff: float,
                      latency_delta_s: float, failed: bool) -> None:
        """One mirrored request: ``agreed`` is (rows agreeing, rows judged) where the answers
        have a verdict (:func:`compare_outputs`)."""
        if not self.enabled:
            return
        shadow = self._of(version).shadow
        if failed:
            shadow.errors += 1
            return
        shadow.compared += 1
        if agreed is not None:
            shadow.agreed += agreed[0]
            shadow.judged += agreed[1]
        shadow.abs_diff_sum += abs_diff
        shadow.latency_delta_sum_s += latency_delta_s

    def record_shadow_dropped(self, version: int) -> None:
        if self.enabled:
            self._of(version).shadow.dropped += 1

    def to_delta(self) -> dict[int, dict[str, Any]]:
        """The collected statistics as plain data (sketches as bytes) for the Monitor."""
        self.flush_observations()
        delta: dict[int, dict[str, Any]] = {}
        for version, stats in self.versions.items():
            delta[version] = {
                "latency": _sketch_bytes(stats.latencies),
                "latency_sum": float(sum(stats.latencies)),
                # Apart, by way of routing: callers chose the version, so a rollout judges
                # these only where it opts in to that way.
                "latency_apart": {routed: _sketch_bytes(values)
                                  for routed, values in stats.latencies_apart.items()},
                "latency_apart_sum": {routed: float(sum(values))
                                      for routed, values in stats.latencies_apart.items()},
                "codes": dict(stats.codes),
                "errors": dict(stats.errors),
                "rejected": dict(stats.rejected),
                "routed_apart": {kind: dict(codes) for kind, codes in stats.routed_apart.items()},
                "not_finite": dict(stats.not_finite),
                "abandoned": dict(stats.abandoned),
                "shadow": stats.shadow.to_dict(),
            }
            if stats.observations is not None:
                delta[version]["monitoring"] = stats.observations.to_delta()
            if stats.unobserved:
                delta[version]["unobserved_requests"] = stats.unobserved
        return delta


def _sketch_bytes(latencies: list[float]) -> bytes | None:
    if not latencies:
        return None
    sketch = new_latency_sketch()
    sketch.add_many(np.asarray(latencies, dtype=np.float64))
    return sketch.to_bytes()  # type: ignore[no-any-return]


def compare_outputs(task: str, primary: dict[str, np.ndarray],
                    shadow: dict[str, np.ndarray]) -> tuple[tuple[int, int] | None, float]:
    """(a classifier's rows agreeing and rows judged, None for other tasks; the mean
    absolute difference) of the first output.

    A classifier's rows agree on the top class where they score several; where a row is
    one value, it is the label itself (whole numbers) or the positive class's probability,
    which agree on the same side of one half. Answers of another shape agree on no row."""
    name = next(iter(primary))
    if not (_numeric(primary[name]) and _numeric(shadow.get(name))):
        return _compare_labels(task, np.asarray(primary[name]), np.asarray(shadow.get(name)))
    a = np.asarray(primary[name], dtype=np.float64)
    b = np.asarray(shadow.get(name), dtype=np.float64)
    rows = a.shape[0] if a.ndim else 1
    if a.shape != b.shape:
        return ((0, rows) if task == "classification" else None), float("inf")
    # Over the values both answered finite: a NaN of the primary's says nothing of the
    # shadow (and would hold the window's mean at NaN), and the shadow's own NaN where the
    # primary's value is finite counts as its failure elsewhere (serving.core).
    finite = np.isfinite(a) & np.isfinite(b)
    diff = float(np.mean(np.abs(a[finite] - b[finite]))) if finite.any() else 0.0
    if task != "classification":
        return None, diff
    if rows == 0:  # an empty request: no row to agree or disagree on
        return (0, 0), diff
    if a.ndim >= 2 and a.shape[-1] > 1:
        same = a.argmax(axis=-1) == b.argmax(axis=-1)
        return (int(same.reshape(rows, -1).all(axis=1).sum()), rows), diff
    # One value per row: the class the feedback join reads from it (None: not finite).
    mine = [predicted_class(float(v)) for v in a.ravel()]
    theirs = [predicted_class(float(v)) for v in b.ravel()]
    agreeing = sum(1 for x, y in zip(mine, theirs, strict=True) if x is not None and x == y)
    return (agreeing, len(mine)), diff


def _numeric(array: object) -> bool:
    return getattr(getattr(array, "dtype", None), "kind", "") in ("b", "i", "u", "f")


def _compare_labels(task: str, a: np.ndarray, b: np.ndarray,
                    ) -> tuple[tuple[int, int] | None, float]:
    """Answers that are not numbers (a classifier's string labels, BYTES outputs) agree
    where they are equal; their difference is the share of values that are not."""
    rows = a.shape[0] if a.ndim else 1
    if a.shape != b.shape:
        return ((0, rows) if task == "classification" else None), float("inf")
    if a.size == 0:
        return ((0, 0) if task == "classification" else None), 0.0
    same = np.asarray(a == b, dtype=bool)
    if same.shape != a.shape:  # values NumPy cannot compare one by one (str against int)
        same = np.zeros(a.shape, dtype=bool)
    same = same.reshape(rows, -1)
    diff = float(1.0 - same.mean())
    if task != "classification":
        return None, diff
    return (int(same.all(axis=1).sum()), rows), diff
