"""The Monitor: merges replicas' deltas into rolling windows per (endpoint, version).

One named Ray actor per cluster. Replicas send deltas about once a second; the control
plane asks for p50/p95/p99, error rates, throughput and shadow agreement over a window,
and for the monitoring signals: drift against the version's reference profile, data
quality, online accuracy from ground-truth feedback, and anomalies. It also holds the
recent predictions that feedback joins with, so a label sent to any replica finds the
prediction any replica made. Cumulative totals back the Prometheus metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from serving.monitoring import counters
from serving.monitoring.anomalies import BASELINE_LAG_S, AnomalyTracker
from serving.monitoring.drift_window import ALPHA as DRIFT_ALPHA
from serving.monitoring.drift_window import MIN_ROWS as DRIFT_MIN_ROWS
from serving.monitoring.drift_window import SlottedCounts, histograms, judge, window
from serving.monitoring.feedback import MAX_PREDICTION_BYTES, FeedbackJoin, JoinedPair
from serving.monitoring.profiles import load_profiles, profile_key
from serving.monitoring.replica_reports import ReplicaReports
from serving.monitoring.routing import ROUTED_PINNED, ROUTED_RANDOMLY, ROUTED_STICKY, ROUTINGS
from serving.monitoring.sections import (
    accuracy_section,
    anomalies_section,
    joined_counts,
    monitoring_counts,
    quality_section,
)
from serving.monitoring.snapshot import (
    PAIRED_CONFIDENCE,
    QUANTILE_CONFIDENCE,
    Drift,
    Latency,
    LatencyBins,
    QualityTotals,
    Quantiles,
    Replicas,
    RoutedRequests,
    ShadowComparison,
    Traffic,
    VersionSnapshot,
    VersionTotals,
)
from serving.monitoring.stats import (
    ENDPOINT_LEVEL,
    LATENCY_MAX_S,
    LATENCY_MIN_S,
    ServedConfig,
    ShadowStats,
    answered_requests,
)
from serving.names import MONITOR_NAME, MONITOR_NAMESPACE

log = logging.getLogger(__name__)

# The terms the Monitor actor speaks (its methods and the deltas replicas ship): raised on
# any change, so `up` replaces a Monitor left running by an older modelplane (2: the
# first to say; per-routing samples and snapshots' ``sample``; 3: pinned and sticky
# latencies apart, by way of routing, and ``endpoint_deleted``; 4: requests abandoned
# by their callers, by way of routing; 5: ``served``; 6: ``record``'s ``leaving`` and
# ``sequence``, and snapshots' ``replicas``; 7: ``record``'s ``age_s``; 8: ``record``'s
# ``more`` and snapshots' ``replicas.catching_up_s``).
MONITOR_PROTOCOL = 8
SLOT_SECONDS = 1.0
SLOTS = 300  # five minutes of one-second resolution
# A shipment older than this many of its replica's intervals when it arrives (kept while
# the Monitor was away or did not answer) is filed in the slot it was recorded in, not
# the current one; a younger one is merged as it arrives, as every shipment was before.
LATE_AFTER_INTERVALS = 2
METRICS_WINDOW_S = 60.0  # window of the windowed signals in the Prometheus exposition
DRIFT_CACHE_LIMIT = 1024


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

    def add(self, values: dict[str, float], back: int = 0) -> None:
        """Add ``values`` to the current slot, or to the one ``back`` slots before it
        (nothing where that has left the ring)."""
        current = self._current()
        if back <= 0:
            current.update(values)
        elif back < self.slots:
            self._ring[(self._head - back) % self.slots].update(values)

    def completed(self, after_epoch: int, lag_slots: int) -> list[tuple[int, Counter[str]]]:
        """Slots ``(epoch, counts)`` newer than ``after_epoch`` that ended ``lag_slots`` ago."""
        self._current()
        newest = self._epoch - lag_slots
        oldest = max(after_epoch + 1, self._epoch - self.slots + 1)
        return [(epoch, self._ring[(self._head - (self._epoch - epoch)) % self.slots])
                for epoch in range(oldest, newest + 1)]

    @property
    def epoch(self) -> int:
        return math.floor(self._clock() / self.slot_seconds)

    def window_slots(self, seconds: float) -> int:
        """How many of the newest slots make the last ``seconds``: the current one and each
        older one that began after the window's start (at least one, at most the ring). A
        slot that began earlier holds some of what arrived before the window: the second a
        rollout's step started in, or the one in which a failing analysis read its window,
        whose next analysis must judge only what that one did not see. ``ceil(seconds)``
        slots took that second whenever the current slot was further along than the
        window's start was in its own, so whether it counted changed from one analysis to
        the next."""
        position = self._clock() / self.slot_seconds
        # Less a rounding's worth: a slot that began at the very start is left out too.
        within = math.ceil(seconds / self.slot_seconds - (position - math.floor(position)) - 1e-9)
        return max(1, min(self.slots, within))

    def total_steps(self, seconds: float, step_seconds: float) -> list[Counter[str]]:
        """The last ``seconds`` in steps of ``step_seconds`` (whole slots), oldest first, as
        :meth:`total` cuts them: the newest step holds the current slot."""
        self._current()
        count = min(self.slots, max(1, math.ceil(seconds / self.slot_seconds)))
        per = max(1, round(step_seconds / self.slot_seconds))
        steps = []
        for start in range(0, count, per):
            step: Counter[str] = Counter()
            for back in range(start, min(start + per, count)):
                step.update(self._ring[(self._head - back) % self.slots])
            steps.append(step)
        return steps[::-1]

    def ended(self, seconds: float, since_epoch: int, skip: int = 0) -> tuple[Counter[str], int]:
        """The slots of the last ``seconds`` that have ended (the current one still fills)
        but the newest ``skip`` of those, and none before ``since_epoch``, summed, and how
        many they are."""
        self._current()
        count = min(self.slots - 1, max(1, math.ceil(seconds / self.slot_seconds)),
                    self._epoch - since_epoch)
        skip = max(skip, 0)
        result: Counter[str] = Counter()
        for back in range(1 + skip, count + 1):
            result.update(self._ring[(self._head - back) % self.slots])
        return result, max(count - skip, 0)

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
    # Pinned and sticky requests' latencies by way of routing, kept apart from the randomly
    # routed ones in ``latency``; each made on its first request, as few get any.
    latency_apart: dict[str, Any] = field(default_factory=dict)
    first_seen: float = 0.0
    anomalies: AnomalyTracker | None = None
    # Monitoring: what the replicas said about the version, its reference profiles (inputs,
    # predictions; either may be None) once known, and its live drift counts per way of
    # routing (serving.monitoring.routing), as (inputs, predictions).
    meta: dict[str, Any] = field(default_factory=dict)
    profiles: tuple[Any, Any] | None = None
    drift_counts: dict[str, tuple[SlottedCounts | None, SlottedCounts | None]] = field(
        default_factory=dict)
    last_request_at: float = 0.0

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.profiles[0].names if self.profiles and self.profiles[0] else ()

    @property
    def prediction_names(self) -> tuple[str, ...]:
        return self.profiles[1].names if self.profiles and self.profiles[1] else ()

    def drift_parts(self, group: int, routings: tuple[str, ...] | None) -> list[SlottedCounts]:
        """The drift counts of ``group`` (0: inputs, 1: predictions) of the requests routed
        as ``routings`` say (None: every way)."""
        return [counts[group] for routed, counts in self.drift_counts.items()
                if counts[group] is not None and (routings is None or routed in routings)]


class MonitorState:
    """The Monitor's logic, Ray-free so it is unit-tested with a fake clock.

    ``wall_clock`` dates requests for freshness (replicas stamp them with wall time);
    ``clock`` drives the windows.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, *,
                 drift_alpha: float = DRIFT_ALPHA, drift_min_rows: int = DRIFT_MIN_ROWS,
                 prediction_store_bytes: int = MAX_PREDICTION_BYTES) -> None:
        self._clock = clock
        self._wall = wall_clock
        self.series: dict[tuple[str, int], VersionSeries] = {}
        self.replicas = ReplicaReports(clock, memory_s=SLOTS * SLOT_SECONDS)
        self.profiles: dict[str, tuple[Any, Any]] = {}  # key -> (inputs, predictions)
        self.join = FeedbackJoin(clock, max_bytes=prediction_store_bytes)
        self.drift_alpha, self.drift_min_rows = drift_alpha, drift_min_rows
        # By (endpoint, version, slots of the window, the sample's ways of routing).
        self._drift_cache: dict[tuple[str, int, int, tuple[str, ...] | None],
                                tuple[Any, Drift]] = {}
        self.served: dict[str, ServedConfig] = {}  # per endpoint, the newest configuration seen
        # Per endpoint deleted, its last incarnation: a draining replica's late delta must
        # not bring its statistics back.
        self.deleted: dict[str, str] = {}

    def _series(self, endpoint: str, version: int) -> VersionSeries:
        from kernels import Sketch, SketchWindow

        key = (endpoint, version)
        if key not in self.series:
            counters = CounterWindow(SLOTS, SLOT_SECONDS, self._clock)
            self.series[key] = VersionSeries(
                latency=SketchWindow(SLOTS, SLOT_SECONDS, clock=self._clock,
                                     min_value=LATENCY_MIN_S, max_value=LATENCY_MAX_S),
                counters=counters,
                latency_total=Sketch(0.01, LATENCY_MIN_S, LATENCY_MAX_S),
                first_seen=self._clock(),
                anomalies=AnomalyTracker.starting(counters.epoch, SLOTS),
            )
        return self.series[key]

    def record(self, endpoint: str, replica: str, delta: dict[int, dict[str, Any]],
               served: ServedConfig | None = None, leaving: bool = False,
               sequence: int | None = None, age_s: float = 0.0,
               more: bool = False) -> dict[str, Any]:
        """Merge one replica's delta (see ``StatsRecorder.to_delta``) recorded under
        ``served`` (see :meth:`_admit`); an empty one says the replica is still there, and
        ``leaving`` that it is stopping gracefully and this was its last. ``sequence``
        numbers the replica's shipments: one sent again after its first sending was merged
        is dropped. ``age_s``: how long ago, by the replica's clock, the delta's recording
        ended. A late one (kept while this Monitor was away, restarting or not answering)
        is filed in the slots of the seconds it was recorded in, so a window holds the
        requests served in it: merged on arrival, a minute of backlog read as one second's
        traffic, under the step it arrived in, and could pass a candidate that failed its
        real requests. One older than the windows reach counts in the totals alone.
        ``more``: newer shipments the replica kept follow this late one at once, so the
        seconds since its recording hold part of their requests until they arrive (see
        ``Replicas.catching_up_s``).

        Returns the reference profiles the delta referred to that this Monitor does not
        hold (a restarted Monitor has none): the replica sends them with its next delta.
        """
        from kernels import Sketch

        if self.replicas.merged(endpoint, replica, sequence):
            return {"missing_profiles": []}
        versions = self._admit(endpoint, served)
        if versions is None:
            return {"missing_profiles": []}
        back = self._slots_back(age_s, served.report_every_s if served else 1.0)
        if leaving:
            self.replicas.left(endpoint, replica)
        else:
            self.replicas.heard(endpoint, replica, served.report_every_s if served else 1.0,
                                sequence, late_by_s=age_s if back else 0.0, more=more)
        missing_profiles: set[str] = set()
        for version, data in delta.items():
            if versions and int(version) not in versions and int(version) != ENDPOINT_LEVEL:
                continue  # a version the endpoint no longer serves (an older replica's last words)
            series = self._series(endpoint, int(version))
            counts: dict[str, float] = {counters.CODE.key(c): n for c, n in data.get("codes", {}).items()}
            latency_n, latency_sum = 0, 0.0
            apart, apart_sums = data.get("latency_apart") or {}, data.get("latency_apart_sum") or {}
            for routed, sketch_bytes, part_sum in (
                    (ROUTED_RANDOMLY, data.get("latency"), data.get("latency_sum", 0.0)),
                    *((r, apart[r], apart_sums.get(r, 0.0)) for r in apart if r in ROUTINGS)):
                if not sketch_bytes:
                    continue
                sketch = Sketch.from_bytes(sketch_bytes)
                if back < SLOTS:
                    self._latency_window(series, routed).merge(sketch, back)
                series.latency_total.merge(sketch)
                latency_n += sketch.count
                latency_sum += part_sum
            if latency_n:
                counts[counters.LATENCY_SUM], counts[counters.LATENCY_COUNT] = latency_sum, latency_n
            counts.update({counters.ERROR.key(c): n for c, n in data.get("errors", {}).items()})
            counts.update({counters.REJECTED.key(r): n for r, n in data.get("rejected", {}).items()})
            for kind, codes in (data.get("routed_apart") or {}).items():
                counts.update({counters.routed(kind).key(c): n for c, n in codes.items()})
            counts.update({counters.SHADOW.key(k): v for k, v in data.get("shadow", {}).items() if v})
            counts.update({counters.NOT_FINITE.key(kind): n
                           for kind, n in (data.get("not_finite") or {}).items() if n})
            counts.update({counters.ABANDONED.key(kind): n
                           for kind, n in (data.get("abandoned") or {}).items() if n})
            if data.get("unobserved_requests"):
                counts[counters.UNOBSERVED_REQUESTS] = data["unobserved_requests"]
            part = data.get("monitoring")
            if part is not None:
                try:
                    self._install_profile(data.get("profile"), part.get("profile_key", ""))
                    counts.update(self._record_monitoring(endpoint, int(version), series, part,
                                                          missing_profiles, back))
                except Exception:  # its monitoring is lost; its request counts never are
                    log.exception("%s v%s: a replica's monitoring section could not be read; "
                                  "its requests are counted as unobserved", endpoint, version)
                    # Every answered request, those the replica could not observe among them.
                    counts[counters.UNOBSERVED_REQUESTS] = max(
                        counts.get(counters.UNOBSERVED_REQUESTS, 0), answered_requests(data))
            series.counters.add(counts, back)
            series.totals.update(counts)
            if 0 < back < SLOTS:  # the window's figures reach back to what was filed there
                series.first_seen = min(series.first_seen,
                                        (series.counters.epoch - back) * SLOT_SECONDS)
        return {"missing_profiles": sorted(missing_profiles)}

    def _slots_back(self, age_s: float, report_every_s: float) -> int:
        """How many slots before the current one a delta recorded ``age_s`` ago belongs
        in: 0 unless it is late (more than ``LATE_AFTER_INTERVALS`` of its intervals
        old, which a shipment on time never is)."""
        if not (math.isfinite(age_s) and age_s > LATE_AFTER_INTERVALS * max(report_every_s,
                                                                              SLOT_SECONDS)):
            return 0
        now = self._clock()
        return math.floor(now / SLOT_SECONDS) - math.floor((now - age_s) / SLOT_SECONDS)

    def _latency_window(self, series: VersionSeries, routed: str) -> Any:
        if routed == ROUTED_RANDOMLY:
            return series.latency
        window = series.latency_apart.get(routed)
        if window is None:
            from kernels import SketchWindow

            window = series.latency_apart[routed] = SketchWindow(
                SLOTS, SLOT_SECONDS, clock=self._clock, min_value=LATENCY_MIN_S,
                max_value=LATENCY_MAX_S)
        return window

    def _install_profile(self, document: dict[str, Any] | None, key: str) -> None:
        if document is None or not key or key in self.profiles:
            return
        try:
            if profile_key(document) != key:  # kept first-come: it must be the one named
                log.warning("ignoring a reference profile shipped under %s, which it does "
                            "not hash to", key)
                return
            self.profiles[key] = load_profiles(document)
        except Exception as error:  # one bad profile must not stop the Monitor
            log.warning("ignoring an unreadable reference profile %s: %s", key, error)

    def _record_monitoring(self, endpoint: str, version: int, series: VersionSeries,
                           part: dict[str, Any], missing_profiles: set[str],
                           back: int = 0) -> dict[str, float]:
        series.meta = {k: part.get(k) for k in ("task", "n_classes", "class_labels", "profile_key", "problem")}
        series.last_request_at = max(series.last_request_at, part.get("last_request_at") or 0.0)
        key = part.get("profile_key") or ""
        if key and series.profiles is None:
            profiles = self.profiles.get(key)
            if profiles is None:
                missing_profiles.add(key)
            else:
                series.profiles = profiles
        # The randomly routed requests' part is the delta itself; the others' are under
        # "routed" (see VersionObservations.to_delta).
        routed_parts = {kind: routed for kind, routed in (part.get("routed") or {}).items()
                        if kind in ROUTINGS and kind != ROUTED_RANDOMLY}
        by_routing = [(ROUTED_RANDOMLY, part), *routed_parts.items()]
        if series.profiles is not None:
            for kind, routed in by_routing:
                for window, group in zip(self._drift_counts(series, kind),
                                         ("inputs", "predictions"), strict=True):
                    if window is not None and routed.get(group):
                        window.add(routed[group], back)
        counts = monitoring_counts(part, series.input_names, series.prediction_names)
        for kind, routed in by_routing:
            if routed.get("feedback"):
                for pair in self.join.add_predictions(endpoint, version, routed["feedback"],
                                                      routed=kind):
                    _merge(counts, _joined_counts(pair, series.meta))
        return counts

    def _drift_counts(self, series: VersionSeries,
                      routed: str) -> tuple[SlottedCounts | None, SlottedCounts | None]:
        """The version's drift counts of the requests routed as ``routed`` says (made on
        first use, once its profiles are known)."""
        counts = series.drift_counts.get(routed)
        if counts is None:
            inputs, predictions = series.profiles or (None, None)
            counts = series.drift_counts[routed] = (
                inputs and SlottedCounts(inputs, SLOTS, SLOT_SECONDS, self._clock),
                predictions and SlottedCounts(predictions, SLOTS, SLOT_SECONDS, self._clock))
        return counts

    def feedback(self, endpoint: str, items: list[tuple[str, list[Any]]]) -> dict[str, Any]:
        """Join ground truth with the predictions kept for it (see :mod:`serving.monitoring.feedback`)."""
        joined, waiting = self.join.add_labels(endpoint, items)
        by_version: dict[int, Counter[str]] = {}
        for pair in joined:
            series = self.series.get((endpoint, pair.version))
            if series is None:  # a version no longer served: no series made again for it
                continue
            by_version.setdefault(pair.version, Counter()).update(_joined_counts(pair, series.meta))
        for version, counts in by_version.items():
            series = self.series[(endpoint, version)]
            series.counters.add(counts)
            series.totals.update(counts)
        invalid = sum(int(counters.feedback(c, None).get(counters.INVALID_LABELS, 0))
                      for c in by_version.values())
        return {"received": len(items), "joined": len(joined), "waiting": waiting,
                "invalid_labels": invalid}

    def served_config(self, endpoint: str) -> ServedConfig | None:
        """The newest configuration of ``endpoint`` its replicas have recorded statistics
        under (None: none yet): a rollout's step is served once this is its generation."""
        return self.served.get(endpoint)

    def snapshot(self, endpoint: str, window_s: float = 60.0,
                 sample: tuple[str, ...] | None = None) -> dict[int, VersionSnapshot]:
        """Per-version statistics over the last ``window_s`` seconds; drift and online
        accuracy of the requests routed as ``sample`` says (a rollout's analysis sample:
        ``("random",)`` and sticky or pinned where it opts in), or of every request."""
        sample = _routings(sample)
        served = self.served.get(endpoint)
        for version in served.versions if served is not None else ():
            self._series(endpoint, version)  # served without traffic yet: zero, not absent
        replicas = self.replicas.of_endpoint(endpoint, window_s)  # the endpoint's, for each
        return {version: self._version_snapshot(endpoint, version, series, window_s, sample,
                                                replicas)
                for (name, version), series in sorted(self.series.items()) if name == endpoint}

    def history(self, endpoint: str, window_s: float = 300.0,
                step_s: float = 5.0) -> dict[int, list[dict[str, Any]]]:
        """Per version, the last ``window_s`` seconds in steps of ``step_s``, oldest first:
        each step's end (wall-clock seconds), requests, 5xx rate, requests/s and latency
        quantiles of every request, as the Monitor's per-second slots hold them."""
        wall, history = self._wall(), {}
        for (name, version), series in sorted(self.series.items()):
            if name != endpoint:
                continue
            counts = series.counters.total_steps(window_s, step_s)
            sketches = series.latency.sketch_steps(window_s, step_s)
            for apart_window in series.latency_apart.values():
                for sketch, apart in zip(sketches, apart_window.sketch_steps(window_s, step_s),
                                         strict=True):
                    sketch.merge(apart)
            points = []
            for back, (step_counts, sketch) in enumerate(zip(reversed(counts), reversed(sketches),
                                                             strict=True)):
                traffic, latency = _traffic(step_counts, step_s), _quantiles_ms(sketch)
                points.append({"t": wall - back * step_s, "requests": traffic.requests,
                               "error_rate": traffic.error_rate,
                               "throughput_rps": traffic.throughput_rps,
                               "p50_ms": latency.p50_ms, "p95_ms": latency.p95_ms,
                               "p99_ms": latency.p99_ms})
            history[version] = points[::-1]
        return history

    def histograms(self, endpoint: str, version: int, window_s: float = 60.0) -> dict[str, Any]:
        """A version's reference and live histograms per input and prediction feature over
        the last ``window_s`` seconds (None for a group without a reference profile)."""
        series = self.series.get((endpoint, version))
        if series is None:
            return {"inputs": None, "predictions": None}
        return {group: histograms(parts, window_s) if parts else None
                for group, parts in (("inputs", series.drift_parts(0, None)),
                                     ("predictions", series.drift_parts(1, None)))}

    def _version_snapshot(self, endpoint: str, version: int, series: VersionSeries,
                          window_s: float, sample: tuple[str, ...] | None,
                          replicas: Replicas) -> VersionSnapshot:
        # Every figure below over the same whole slots (CounterWindow.window_slots).
        slots = series.counters.window_slots(window_s)
        whole_s = slots * SLOT_SECONDS
        counts = series.counters.total(whole_s)
        # The sample's: the randomly routed requests', and those of the ways of routing
        # ``sample`` counts too; then every request's.
        sketch = series.latency.sketch(whole_s)
        apart = {routed: window.sketch(whole_s) for routed, window in series.latency_apart.items()}
        for routed in sample or ():
            if routed in apart:
                sketch.merge(apart.pop(routed))
        sample_latency, sample_bins = _quantiles_ms(sketch), _bins(sketch)
        for other in apart.values():
            sketch.merge(other)
        span = min(window_s, max(self._clock() - series.first_seen, SLOT_SECONDS))
        problem = series.meta.get("problem") or ""
        if version == ENDPOINT_LEVEL:
            problem = "requests refused before a version was chosen: no model inputs to judge"
        elif not series.meta:
            problem = "no monitoring data from the replicas (monitoring off or no traffic yet)"
        age = self._wall() - series.last_request_at if series.last_request_at else None
        quality = quality_section(counts, input_names=series.input_names,
                                  prediction_names=series.prediction_names,
                                  last_request_age_s=age, problem=problem)
        judged = None
        if series.anomalies is not None:
            series.anomalies.fold(series.counters.completed(series.anomalies.folded_epoch,
                                                            BASELINE_LAG_S))
            first_slot = series.counters.epoch - slots + 1
            judged = series.anomalies.judge(counts, first_slot)
        # A rate over the seconds that have ended: the current slot holds part of one (a
        # shipment lands in it once a second), and counting it over a whole one read a
        # steady 50 req/s as 40 over 5 s.
        # Nor over the newest seconds a replica still sending what it kept for a Monitor
        # that was away has not reached: they hold part of their requests until it has.
        # Unknown (NaN) where that leaves none: the requests over the seconds not reached
        # read a steady load as a lull.
        now = self._clock()
        unreached = (math.floor(now / SLOT_SECONDS)
                     - math.floor((now - replicas.catching_up_s) / SLOT_SECONDS))
        ended, ended_slots = series.counters.ended(
            whole_s - SLOT_SECONDS, math.floor(series.first_seen / SLOT_SECONDS), skip=unreached)
        rate = (sum(counters.codes(ended).values()) / (ended_slots * SLOT_SECONDS)
                if ended_slots else math.nan if unreached else None)
        # Seen are the seconds since the first statistics, backlogs included, that every
        # replica heard from has reached: a window whole as soon as a backlog's oldest
        # shipment landed read the seconds its newer ones had not reached yet as quiet
        # ones, and an alert on `requests > 0` resolved under steady traffic.
        seen_s = max(0.0, min(window_s, now - series.first_seen))
        traffic = replace(_traffic(counts, span, rate), window_s=window_s, seen_s=seen_s,
                          observed_s=max(0.0, seen_s - replicas.catching_up_s))
        return VersionSnapshot(
            traffic=traffic,
            latency=Latency(all_requests=_quantiles_ms(sketch), sample=sample_latency,
                            all_bins=_bins(sketch), sample_bins=sample_bins),
            shadow=_shadow(ShadowStats.from_counts(counters.SHADOW.read(counts))),
            drift=self._drift(endpoint, version, series, whole_s, problem, sample),
            quality=quality,
            accuracy=accuracy_section(counts, series.meta, sample),
            anomalies=anomalies_section(quality, judged),
            replicas=replicas,
        )

    def _drift(self, endpoint: str, version: int, series: VersionSeries, window_s: float,
               problem: str, sample: tuple[str, ...] | None) -> Drift:
        """The drift section of the requests routed as ``sample`` says, computed at most
        once per slot for a given window."""
        # ``window_s`` is whole slots (_version_snapshot), so the cache's key is their count.
        slots = max(1, min(SLOTS, math.ceil(window_s / SLOT_SECONDS)))
        key = (endpoint, version, slots, sample)
        stamp = (series.counters.epoch, series.totals.get(counters.ROWS, 0))
        cached = self._drift_cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        inputs = window(series.drift_parts(0, sample), window_s)
        predictions = window(series.drift_parts(1, sample), window_s)
        if series.profiles is None and not problem:
            problem = "waiting for the version's reference profile"
        result = judge(inputs, predictions, alpha=self.drift_alpha, min_rows=self.drift_min_rows,
                       problem=problem)
        if len(self._drift_cache) >= DRIFT_CACHE_LIMIT:  # many endpoints and windows
            self._drift_cache.clear()
        self._drift_cache[key] = (stamp, result)
        return result

    def totals(self) -> list[VersionTotals]:
        """Cumulative counters and all-time latency quantiles per (endpoint, version), and
        the monitoring signals over :data:`METRICS_WINDOW_S` (drift, accuracy, anomalies)."""
        rows = []
        snapshots: dict[str, dict[int, VersionSnapshot]] = {}
        for (endpoint, version), series in sorted(self.series.items()):
            sketch, totals = series.latency_total, series.totals
            quantiles = sketch.quantiles([0.5, 0.95, 0.99]) if sketch.count else [math.nan] * 3
            if endpoint not in snapshots:
                snapshots[endpoint] = self.snapshot(endpoint, METRICS_WINDOW_S)
            rows.append(VersionTotals(
                endpoint=endpoint, version=version,
                codes=counters.codes(totals),
                shadow_compared=int(totals.get(counters.SHADOW.key("compared"), 0)),
                shadow_judged=int(totals.get(counters.SHADOW.key("judged"), 0)),
                shadow_agreed=int(totals.get(counters.SHADOW.key("agreed"), 0)),
                latency_count=int(sketch.count), latency_sum=float(sketch.sum),
                latency_quantiles={q: float(v) for q, v in
                                   zip((0.5, 0.95, 0.99), quantiles, strict=True)},
                quality=QualityTotals(
                    rows=int(totals.get(counters.ROWS, 0)),
                    rows_out_of_support=int(totals.get(counters.ROWS_OUT_OF_SUPPORT, 0)),
                    unusual_confidence=int(totals.get(counters.UNUSUAL_CONFIDENCE, 0)),
                    labelled=int(counters.labelled(totals)),
                    missing=_ints(counters.INPUT_MISSING.read(totals)),
                    out_of_range=_ints(counters.INPUT_OUT_OF_RANGE.read(totals)),
                    rejected=_ints(counters.REJECTED.read(totals))),
                window_s=METRICS_WINDOW_S,
                window=snapshots[endpoint][version],
                feedback=self.join.stats(endpoint),
            ))
        return rows

    def _admit(self, endpoint: str, served: ServedConfig | None) -> frozenset[int] | None:
        """The versions ``endpoint`` serves now, after taking in the configuration a delta
        was recorded under; None when the delta belongs to an older incarnation of the
        endpoint (deleted and created again under the same name) and must be dropped.

        A newer incarnation starts the endpoint's statistics afresh; a newer generation
        that serves fewer versions forgets the removed ones, so a version deployed again
        later starts afresh too. Deltas without an identity (an empty set) are merged."""
        if served is None or not served.incarnation:
            return frozenset()
        gone = self.deleted.get(endpoint)
        if gone is not None:
            if served.incarnation <= gone:
                return None
            del self.deleted[endpoint]  # deployed again under the name
        known = self.served.get(endpoint)
        if known is not None and served.incarnation < known.incarnation:
            return None
        if known is not None and served.incarnation > known.incarnation:
            self.forget(endpoint)
            known = None
        if known is None or served.generation > known.generation:
            if known is not None:
                for version in set(known.versions) - set(served.versions):
                    self.forget(endpoint, version)
            self.served[endpoint] = known = served
        elif served.generation == known.generation and \
                not set(served.versions) <= set(known.versions):
            # One generation, two version sets: an isolated router got its table first
            # without the versions whose applications were not running yet, then whole.
            # Removing a version always takes a newer generation, so the union is served.
            self.served[endpoint] = known = known._replace(
                versions=tuple(sorted({*known.versions, *served.versions})))
        return frozenset(known.versions)

    def endpoint_deleted(self, endpoint: str) -> None:
        """Drop what is known of the undeployed ``endpoint``, and every later delta of its
        incarnations so far (a replica still draining ships one more)."""
        known = self.served.get(endpoint)
        if known is not None and known.incarnation:
            self.deleted[endpoint] = max(known.incarnation, self.deleted.get(endpoint, ""))
        self.forget(endpoint)

    def forget(self, endpoint: str, version: int | None = None) -> None:
        """Drop what is known of ``endpoint`` (or of one of its versions)."""
        for key in [k for k in self.series if k[0] == endpoint and version in (None, k[1])]:
            del self.series[key]
        for key in [k for k in self._drift_cache if k[0] == endpoint and version in (None, k[1])]:
            del self._drift_cache[key]
        if version is None:
            self.replicas.forget(endpoint)
            self.served.pop(endpoint, None)
            self.join.forget(endpoint)
        else:  # its predictions would only ever join labels nobody counts
            self.join.forget(endpoint, version)


def _quantiles_ms(sketch: Any) -> Quantiles:
    """Count, p50/p95/p99 and the p95's and p99's confidence bounds in milliseconds of
    ``sketch`` (NaN where it is empty or too small for a bound)."""
    n = int(sketch.count)
    if not n:
        return Quantiles()
    quantiles = sketch.quantiles([0.5, 0.95, 0.99]) * 1000
    bounds = sketch.quantile_bounds([0.95, 0.99], QUANTILE_CONFIDENCE) * 1000
    paired = sketch.quantile_bounds([0.95], PAIRED_CONFIDENCE) * 1000
    return Quantiles(count=n, p50_ms=float(quantiles[0]), p95_ms=float(quantiles[1]),
                     p99_ms=float(quantiles[2]),
                     p95_bounds_ms=(float(bounds[0, 0]), float(bounds[0, 1])),
                     p99_bounds_ms=(float(bounds[1, 0]), float(bounds[1, 1])),
                     p95_paired_bounds_ms=(float(paired[0, 0]), float(paired[0, 1])))


def _bins(sketch: Any) -> LatencyBins:
    """``sketch``'s non-empty bins, as plain ints (the snapshot crosses the actor boundary)."""
    keys, counts = sketch.bin_counts()
    return LatencyBins(keys=tuple(keys.tolist()), counts=tuple(counts.tolist()))


def _traffic(counts: Counter[str], span_s: float, rate: float | None = None) -> Traffic:
    """``counts`` as traffic; requests per second over ``span_s`` unless ``rate`` says."""
    codes = counters.codes(counts)
    requests = sum(codes.values())
    server_errors = sum(n for c, n in codes.items() if c >= 500)
    client_errors = sum(n for c, n in codes.items() if 400 <= c < 500)
    answered = requests - client_errors  # refused requests were never the model's to fail
    return Traffic(
        requests=requests,
        server_errors=server_errors,
        client_errors=client_errors,
        error_rate=server_errors / answered if answered else 0.0,
        throughput_rps=requests / span_s if rate is None else rate,
        codes=codes,
        errors=_ints(counters.ERROR.read(counts)),
        # The analysis sample: randomly routed requests the version answered. Pinned and
        # sticky requests are chosen by callers, and 4xx were refused before the model
        # judged anything, so each is a figure of its own.
        routing=_routing(codes, counts),
        pinned_requests=int(counters.routed(ROUTED_PINNED).total(counts)),
        sticky_requests=int(counters.routed(ROUTED_STICKY).total(counts)),
    )


def _routing(codes: dict[int, int], counts: Counter[str]) -> dict[str, RoutedRequests]:
    """Per way of routing, the answered (not 4xx) requests and the 5xx among them."""
    apart = {kind: counters.codes(counts, counters.routed(kind))
             for kind in (ROUTED_PINNED, ROUTED_STICKY)}
    random = {code: n - sum(a.get(code, 0) for a in apart.values()) for code, n in codes.items()}
    return {kind: RoutedRequests(
                requests=sum(n for c, n in by_code.items() if not 400 <= c < 500),
                server_errors=sum(n for c, n in by_code.items() if c >= 500),
                refused=sum(n for c, n in by_code.items() if 400 <= c < 500),
                not_finite=int(counts.get(counters.NOT_FINITE.key(kind), 0)),
                abandoned=int(counts.get(counters.ABANDONED.key(kind), 0)))
            for kind, by_code in ((ROUTED_RANDOMLY, random), *apart.items())}


def _shadow(shadow: ShadowStats) -> ShadowComparison:
    compared = shadow.compared
    if not compared:
        return ShadowComparison(errors=int(shadow.errors), dropped=int(shadow.dropped))
    return ShadowComparison(compared=int(compared), errors=int(shadow.errors),
                            dropped=int(shadow.dropped),
                            agreement=shadow.agreed / shadow.judged if shadow.judged else math.nan,
                            mean_abs_diff=shadow.abs_diff_sum / compared,
                            latency_delta_ms=1000 * shadow.latency_delta_sum_s / compared)


def _routings(sample: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``sample`` as the ways of routing it names, randomly routed ones always among them,
    in one order (it keys the drift cache); None: every way."""
    if sample is None:
        return None
    unknown = set(sample) - set(ROUTINGS)
    if unknown:
        raise ValueError(f"unknown ways of routing {sorted(unknown)}; known: {list(ROUTINGS)}")
    return tuple(kind for kind in ROUTINGS if kind in sample or kind == ROUTED_RANDOMLY)


def _joined_counts(pair: JoinedPair, meta: dict[str, Any]) -> dict[str, float]:
    """A joined pair's counters, kept apart where its request was pinned or sticky."""
    counts = joined_counts(pair, meta)
    return counts if pair.routed == ROUTED_RANDOMLY else counters.routed_feedback(pair.routed,
                                                                                   counts)


def _ints(counts: dict[str, float]) -> dict[str, int]:
    return {member: int(n) for member, n in counts.items()}


def _merge(counts: dict[str, float], more: dict[str, float]) -> None:
    for key, value in more.items():
        counts[key] = counts.get(key, 0) + value


class MonitorActor:
    """The Ray actor wrapping :class:`MonitorState` (created by :func:`ensure_monitor`)."""

    def __init__(self, prediction_store_bytes: int = MAX_PREDICTION_BYTES) -> None:
        from kernels import warmup

        warmup()
        self.state = MonitorState(prediction_store_bytes=prediction_store_bytes)

    def protocol(self) -> int:
        return MONITOR_PROTOCOL

    def record(self, endpoint: str, replica: str, delta: dict[int, dict[str, Any]],
               served: ServedConfig | None = None, leaving: bool = False,
               sequence: int | None = None, age_s: float = 0.0,
               more: bool = False) -> dict[str, Any]:
        return self.state.record(endpoint, replica, delta, served, leaving, sequence, age_s,
                                 more)

    def feedback(self, endpoint: str, items: list[tuple[str, list[Any]]]) -> dict[str, Any]:
        return self.state.feedback(endpoint, items)

    def snapshot(self, endpoint: str, window_s: float = 60.0,
                 sample: tuple[str, ...] | None = None) -> dict[int, VersionSnapshot]:
        return self.state.snapshot(endpoint, window_s, sample)

    def histograms(self, endpoint: str, version: int, window_s: float = 60.0) -> dict[str, Any]:
        return self.state.histograms(endpoint, version, window_s)

    def served(self, endpoint: str) -> ServedConfig | None:
        return self.state.served_config(endpoint)

    def history(self, endpoint: str, window_s: float = 300.0,
                step_s: float = 5.0) -> dict[int, list[dict[str, Any]]]:
        return self.state.history(endpoint, window_s, step_s)

    def totals(self) -> list[VersionTotals]:
        return self.state.totals()

    def forget(self, endpoint: str, version: int | None = None) -> None:
        self.state.forget(endpoint, version)

    def endpoint_deleted(self, endpoint: str) -> None:
        self.state.endpoint_deleted(endpoint)

    def feedback_memory(self) -> dict[str, int]:
        """The prediction store's estimated bytes and bounds (see ``FeedbackJoin.memory``)."""
        return self.state.join.memory()


def ensure_monitor(name: str = MONITOR_NAME, namespace: str = MONITOR_NAMESPACE, *,
                   prediction_store_bytes: int = MAX_PREDICTION_BYTES,
                   replaced: Callable[[int | None], None] | None = None) -> Any:
    """The cluster's Monitor actor, created (detached, no CPU reserved) if it is missing,
    or in place of a Monitor of an older modelplane (:mod:`serving.detached`)."""
    import ray

    from serving.detached import ensure_detached

    actor_class = ray.remote(num_cpus=0, max_restarts=-1)(MonitorActor)
    return ensure_detached(actor_class, name=name, namespace=namespace, protocol=MONITOR_PROTOCOL,
                           args=(prediction_store_bytes,), replaced=replaced)


def get_monitor(name: str = MONITOR_NAME, namespace: str = MONITOR_NAMESPACE) -> Any | None:
    """The Monitor actor handle, or None when it does not exist (yet)."""
    from serving.detached import named_actor

    return named_actor(name, namespace)
