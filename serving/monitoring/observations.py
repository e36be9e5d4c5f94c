"""What a replica observes of answered requests, per version, for monitoring.

Inputs and predictions feed drift (live histograms and a sample ring over the version's
reference profile), data quality (missing and out-of-range values, rows outside the
reference support, the age of the data) and the feedback join (the predicted value of
each request, by request id).

The request path only appends references (request id, arrays, outputs) to lists
(``StatsRecorder.observe``, :class:`ObservedRequests`), none of them a container the
garbage collector tracks. The compiled kernels run over everything observed when the
statistics are shipped, by the replica's shipping task, a step at a time between
requests (``StatsRecorder.to_delta_in_steps``): one pass over a step's rows costs little
more than the call itself. Everything is bounded: at :data:`PENDING_LIMIT` requests
waiting unaccounted the replica ships early (a busy second), and past
:data:`PENDING_HARD_LIMIT` (the shipper is behind) the request path accounts them itself;
the sample ring has a fixed capacity, and at most :data:`MAX_FEEDBACK_PER_DELTA`
predictions are kept per shipment (the rest are counted).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.monitoring.feedback import MAX_LABELS_PER_REQUEST
from serving.monitoring.profiles import (
    CONFIDENCE,
    batch_features,
    load_profiles,
    prediction_features,
    profile_key,
    text_inputs,
)
from serving.monitoring.routing import ROUTED_RANDOMLY, ROUTINGS
from serving.text import is_text_input, text_feature_names

if TYPE_CHECKING:
    from kernels import LiveWindow, ReferenceProfile
    from serving.schemas import TensorSignature, VersionConfig

log = logging.getLogger(__name__)

# Observed requests held unaccounted before the replica ships them early (about a second
# of a busy replica's traffic) ...
PENDING_LIMIT = 4096
# ... and at most, whatever the shipper's pace: past this the request path accounts them
# itself, a stall of a few milliseconds, so memory stays bounded when shipping falls behind.
PENDING_HARD_LIMIT = 4 * PENDING_LIMIT
# The same in bytes of the tensors held (a binary input keeps its whole request body): a
# shipper waiting on a slow Monitor must not let large requests pile up to gigabytes.
PENDING_BYTES_LIMIT = 16 << 20
PENDING_BYTES_HARD_LIMIT = 4 * PENDING_BYTES_LIMIT
# Rows per shipment for KS and Wasserstein at the Monitor, which samples up to 2,000 of a
# window's rows (drift_window.SAMPLE_LIMIT), each shipment weighing as its share of the
# window's rows: 256 keep a shipment small (they travel as float32) and let a window of
# eight seconds or more have a full sample.
SAMPLE_CAPACITY = 256
MAX_FEEDBACK_PER_DELTA = 20_000
FEATURE_TIMESTAMP = "feature_timestamp"
# The oldest feature_timestamp read as one (older ones are ignored), and how far ahead of
# this replica's clock one may be (a producer's clock runs ahead; beyond, it is ignored).
MAX_DATA_AGE_S = 366 * 86400.0
MAX_CLOCK_SKEW_S = 300.0
JOINABLE_TASKS = ("classification", "regression")


class ObservedRequests:
    """One version's answered requests waiting to be accounted: a list per field (ids,
    each input and output by name, data ages, ways of routing), in request order.

    Nothing kept per request is a container the garbage collector tracks (ids are strings,
    tensors arrays). A tuple and two dicts per request, held up to a second, made a busy
    replica's collector run every few hundred requests and a full collection every few
    seconds, a pause of milliseconds on the event loop (``benchmarks.observation_stalls``).
    """

    __slots__ = ("ages", "inputs", "outputs", "request_ids", "routed")

    def __init__(self) -> None:
        self.request_ids: list[str] = []
        self.inputs: dict[str, list[np.ndarray | None]] = {}
        self.outputs: dict[str, list[np.ndarray | None]] = {}
        self.ages: list[float | None] = []
        self.routed: list[str] = []

    def __len__(self) -> int:
        return len(self.request_ids)

    def add(self, request_id: str, arrays: Mapping[str, np.ndarray],
            outputs: Mapping[str, np.ndarray], age: float | None, routed: str) -> None:
        before = len(self.request_ids)
        self.request_ids.append(request_id)
        _append_each(self.inputs, arrays, before)
        _append_each(self.outputs, outputs, before)
        self.ages.append(age)
        self.routed.append(routed)

    def part(self, start: int, stop: int) -> ObservedRequests:
        """Requests ``start`` to ``stop`` (a step of a shipment's accounting)."""
        return self._made(lambda items: items[start:stop], len(self.request_ids[start:stop]))

    def only(self, routed: str) -> ObservedRequests:
        """The requests that reached the version ``routed``."""
        return self.picked([i for i, kind in enumerate(self.routed) if kind == routed])

    def picked(self, chosen: list[int]) -> ObservedRequests:
        """The requests at positions ``chosen``, in that order."""
        return self._made(lambda items: [items[i] for i in chosen], len(chosen))

    def by_shape(self) -> list[list[int]] | None:
        """The positions of requests grouped by the shape of their rows (every tensor's
        dimensions past the first, its rank and kind), or None when all share one: only
        tensors of one shape concatenate into one matrix."""
        count = len(self.request_ids)
        columns = [_padded(column, count) for column in (*self.inputs.values(),
                                                         *self.outputs.values())]
        if all(len({_row_shape(array) for array in column}) == 1 for column in columns):
            return None
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index in range(count):
            key = tuple(_row_shape(column[index]) for column in columns)
            groups.setdefault(key, []).append(index)
        return list(groups.values())

    def _made(self, pick: Any, count: int) -> ObservedRequests:
        made = ObservedRequests()
        made.request_ids, made.ages, made.routed = (
            pick(self.request_ids), pick(self.ages), pick(self.routed))
        made.inputs = {name: pick(_padded(column, len(self))) for name, column in self.inputs.items()}
        made.outputs = {name: pick(_padded(column, len(self)))
                        for name, column in self.outputs.items()}
        assert len(made) == count
        return made


def _append_each(columns: dict[str, list[np.ndarray | None]], arrays: Mapping[str, np.ndarray],
                 before: int) -> None:
    """Append each named array to its column; a name new or missing in some requests
    keeps its column aligned with the requests (None where a request had no such tensor)."""
    for name, array in arrays.items():
        column = columns.get(name)
        if column is None:
            column = columns[name] = [None] * before
        elif len(column) < before:
            column.extend([None] * (before - len(column)))
        column.append(array)


def _row_shape(array: np.ndarray | None) -> tuple[Any, ...] | None:
    return None if array is None else (array.ndim, array.shape[1:], array.dtype.kind)


def _padded(column: list[np.ndarray | None], length: int) -> list[np.ndarray | None]:
    return column if len(column) == length else column + [None] * (length - len(column))


class KeptPredictions:
    """Predictions kept for the feedback join, by request id, as two lists (a pair per
    request held until the shipment is a tracked container per request: see
    :class:`ObservedRequests`); paired when shipped."""

    __slots__ = ("request_ids", "values")

    def __init__(self) -> None:
        self.request_ids: list[str] = []
        self.values: list[float | list[float]] = []

    def __len__(self) -> int:
        return len(self.request_ids)

    def add(self, request_id: str, value: float | list[float]) -> None:
        self.request_ids.append(request_id)
        self.values.append(value)

    def pairs(self) -> list[tuple[str, float | list[float]]]:
        return list(zip(self.request_ids, self.values, strict=True))


@dataclass(frozen=True, eq=False)
class VersionMonitoring:
    """How one version is monitored: its profiles, task and support, parsed once."""

    version: int
    task: str
    inputs: tuple[TensorSignature, ...]
    output: str
    profile: ReferenceProfile | None
    prediction_profile: ReferenceProfile | None
    profile_key: str
    profile_document: dict[str, Any] | None
    texts: dict[str, frozenset[str] | None]  # text inputs monitored through derived features
    n_classes: int | None
    class_labels: tuple[str, ...] | None
    source: tuple[Any, ...]
    problem: str = ""

    @staticmethod
    def source_of(config: VersionConfig) -> tuple[Any, ...]:
        """What the monitoring of a version depends on. A version number and digest fix
        the manifest (versions are never reused), so the profile need not be compared."""
        return (config.version, config.digest, config.task, config.model)

    @classmethod
    def build(cls, config: VersionConfig) -> VersionMonitoring:
        """Parse the version's reference profile; a broken one turns drift off, not serving."""
        document = config.reference_profile
        problem = ""
        try:
            profile, predictions = load_profiles(document)
        except Exception as error:  # a bad profile must not stop the version from serving
            profile, predictions, problem = None, None, f"reference profile unreadable: {error}"
            log.warning("%s:%s: %s", config.model, config.version, problem)
        try:
            texts = text_inputs(document)
        except Exception as error:
            texts, profile, problem = {}, None, f"reference profile unreadable: {error}"
        width = _static_width(config.inputs, texts)
        if profile is not None and width is not None and width != profile.n_features:
            problem = (f"reference profile has {profile.n_features} features but the inputs "
                       f"have {width} values per row")
            profile = None
        if profile is None and not problem:
            problem = "no reference profile in the manifest"
        key = profile_key(document) if document else ""
        first = config.outputs[0]
        n_classes = None
        if config.task == "classification":
            if config.class_labels:
                n_classes = len(config.class_labels)
            elif len(first.shape) == 2 and first.shape[1] and first.shape[1] > 1:
                n_classes = int(first.shape[1])
        return cls(
            version=config.version, task=config.task, inputs=tuple(config.inputs),
            output=first.name, profile=profile, prediction_profile=predictions,
            profile_key=key if profile is not None or predictions is not None else "",
            profile_document=document, texts=texts, n_classes=n_classes,
            class_labels=tuple(config.class_labels) if config.class_labels else None,
            source=cls.source_of(config), problem=problem,
        )

    def meta(self) -> dict[str, Any]:
        """What the Monitor needs to know about the version (small; sent with every delta)."""
        return {"task": self.task, "n_classes": self.n_classes,
                "class_labels": list(self.class_labels) if self.class_labels else None,
                "profile_key": self.profile_key, "problem": self.problem}


class RoutedWindows:
    """The drift counts and newest rows of the requests that reached a version one way.

    Kept per way of routing: a rollout judges drift on the randomly routed requests, and
    a caller who pins its requests to a version must not be able to make it drift."""

    def __init__(self, monitoring: VersionMonitoring) -> None:
        from kernels import LiveWindow

        # Counts only (no sample ring: writing every row into a ring was most of the
        # kernel's cost); the newest rows are kept as the chunks themselves instead.
        self.inputs: LiveWindow | None = (
            LiveWindow(monitoring.profile, 0) if monitoring.profile else None)
        self.predictions: LiveWindow | None = (
            LiveWindow(monitoring.prediction_profile, 0) if monitoring.prediction_profile else None)
        self.recent_inputs = RecentRows()
        self.recent_predictions = RecentRows()

    def to_delta(self) -> dict[str, Any]:
        return {"inputs": _window_part(self.inputs, self.recent_inputs),
                "predictions": _window_part(self.predictions, self.recent_predictions)}


class VersionObservations:
    """One version's observations since the last shipment, accounted a chunk at a time."""

    def __init__(self, monitoring: VersionMonitoring) -> None:
        self.monitoring = monitoring
        self.rows = 0
        self.missing_values = 0
        self.rows_with_missing = 0
        self.rows_out_of_support = 0
        self.unmonitored_rows = 0  # rows whose shape did not fit the profile
        self.data_age = [0, 0.0, 0.0]  # count, sum, max (seconds)
        self.last_request_at = 0.0
        # Per way of routing, per request id: the predicted value, or a list of them for a
        # request of many rows (at most MAX_FEEDBACK_PER_DELTA each way: pinned requests
        # cannot crowd out the randomly routed ones').
        self.feedback: dict[str, KeptPredictions] = {}
        self.feedback_dropped = 0
        # Requests of more rows than one feedback item may label: kept, they could never
        # join, and one of millions of rows would evict the endpoint's other predictions.
        self.feedback_unjoinable = 0
        self.windows: dict[str, RoutedWindows] = {}

    @property
    def inputs(self) -> LiveWindow | None:
        """The randomly routed requests' input counts (None before any, or without a profile)."""
        windows = self.windows.get(ROUTED_RANDOMLY)
        return windows.inputs if windows is not None else None

    def account(self, observed: ObservedRequests) -> None:
        """Run the kernels once over a chunk of answered requests (once per way of routing
        among them: almost every chunk is one)."""
        if not len(observed):
            return
        # Stamped per chunk: freshness is exact to the statistics interval (about 1 s).
        self.last_request_at = time.time()
        ages = [age for age in observed.ages if age is not None]
        if ages:
            age = self.data_age
            age[0] += len(ages)
            age[1] += sum(ages)
            age[2] = max(age[2], *ages)
        routed = set(observed.routed)
        if len(routed) == 1:
            self._account_routed(routed.pop(), observed)
            return
        lost, cause = 0, None
        for kind in ROUTINGS:  # the sample first, should a bound be reached
            if kind in routed:
                # One way of routing failing (a caller's odd request) costs the others nothing.
                part = observed.only(kind)
                try:
                    self._account_routed(kind, part)
                except Exception as error:
                    lost, cause = lost + len(part), cause or error
        if cause is not None:
            raise UnaccountedRequests(lost) from cause

    def _account_routed(self, routed: str, observed: ObservedRequests) -> None:
        try:
            parts = [(observed, self._joined(observed))]
        except (ValueError, TypeError):
            # Rows of several shapes do not concatenate (a model with a free dimension
            # takes requests of several widths): each shape is accounted apart, so one odd
            # request costs the others nothing. Looked for only then: it costs a request
            # a third of a microsecond.
            groups = observed.by_shape()
            if groups is None:
                raise
            parts = [(part, self._joined(part)) for part in map(observed.picked, groups)]
        for part, (features, outputs, predicted) in parts:
            self._account_joined(routed, part, features, outputs, predicted)

    def _joined(self, observed: ObservedRequests) -> tuple[
            np.ndarray | None, list[Any] | None, np.ndarray | None]:
        """The requests' input features, outputs and prediction features, each joined into
        one matrix (None where there is none); raises where rows differ in shape."""
        monitoring = self.monitoring
        count = len(observed)
        features = batch_features(
            monitoring.inputs, {name: _padded(column, count) for name, column in observed.inputs.items()},
            monitoring.texts)
        outputs = observed.outputs.get(monitoring.output)
        if outputs is None or len(outputs) != count or any(o is None for o in outputs):
            return features, None, None
        scores = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)  # type: ignore[arg-type]
        return features, outputs, prediction_features(monitoring.task, scores)  # type: ignore[arg-type]

    def _account_joined(self, routed: str, observed: ObservedRequests, features: np.ndarray | None,
                        outputs: list[Any] | None, predicted: np.ndarray | None) -> None:
        monitoring = self.monitoring
        windows = self.windows.get(routed)
        if windows is None:
            windows = self.windows[routed] = RoutedWindows(monitoring)
        if features is not None:
            self._account_inputs(windows, features)
        if outputs is None or predicted is None:
            return
        window = windows.predictions
        if window is not None and predicted.shape[1] == window.profile.n_features:
            window.update(predicted)
            windows.recent_predictions.add(predicted)
        if monitoring.task in JOINABLE_TASKS:
            self._keep_for_feedback(routed, observed.request_ids, outputs, predicted[:, 0])

    def _account_inputs(self, windows: RoutedWindows, features: np.ndarray) -> None:
        rows = features.shape[0]
        self.rows += rows
        window = windows.inputs
        if window is None or features.shape[1] != window.profile.n_features:
            if window is not None:
                self.unmonitored_rows += rows
            missing = ~np.isfinite(features)
            self.missing_values += int(missing.sum())
            self.rows_with_missing += int(missing.any(axis=1).sum())
            return
        # The kernel counts per feature in one pass; the per-row counts below cost NumPy
        # passes, so they run only for the chunks that held such a value (comparing the
        # counters' bytes is far cheaper than summing them).
        missing_before, outside_before = window.missing.tobytes(), window.out_of_range.tobytes()
        window.update(features)
        windows.recent_inputs.add(features)
        if window.missing.tobytes() != missing_before:
            missing = ~np.isfinite(features)
            self.missing_values += int(missing.sum())
            self.rows_with_missing += int(missing.any(axis=1).sum())
        if window.out_of_range.tobytes() != outside_before:
            self.rows_out_of_support += _rows_outside_support(window.profile, features)

    def _keep_for_feedback(self, routed: str, request_ids: list[str], outputs: list[Any],
                           values: np.ndarray) -> None:
        kept = self.feedback.get(routed)
        if kept is None:
            kept = self.feedback[routed] = KeptPredictions()
        room = MAX_FEEDBACK_PER_DELTA - len(kept)
        flat = values.tolist()
        rows = [output.shape[0] if output.ndim else 1 for output in outputs]
        # One row per request, the common case: the values are the requests' in order. (The
        # count alone would not say so: an empty request beside a two-row one would pair
        # every request between them with its neighbour's prediction.)
        if len(flat) == len(outputs) and all(n == 1 for n in rows):
            if room < len(request_ids):
                self.feedback_dropped += len(request_ids) - max(room, 0)
                request_ids = request_ids[:max(room, 0)]
            kept.request_ids.extend(request_ids)
            kept.values.extend(flat[:len(request_ids)])
            return
        start = 0
        for request_id, count in zip(request_ids, rows, strict=True):
            if count > MAX_LABELS_PER_REQUEST:
                self.feedback_unjoinable += 1
            elif len(kept) >= MAX_FEEDBACK_PER_DELTA:
                self.feedback_dropped += 1
            else:
                kept.add(request_id, flat[start] if count == 1 else flat[start:start + count])
            start += count

    def _kept(self, routed: str) -> list[tuple[str, float | list[float]]]:
        kept = self.feedback.get(routed)
        return kept.pairs() if kept is not None else []

    def to_delta(self) -> dict[str, Any]:
        """Plain data for the Monitor (numpy arrays travel as they are): the randomly
        routed requests' drift counts and predictions as ``inputs``, ``predictions`` and
        ``feedback``, those of the other ways of routing under ``routed``."""
        unusual = 0
        for windows in self.windows.values():
            predictions = windows.predictions
            if predictions is not None and CONFIDENCE in predictions.profile.names:
                unusual += int(predictions.out_of_range[predictions.profile.names.index(CONFIDENCE)])
        random = self.windows.get(ROUTED_RANDOMLY)
        routed = {kind: {**windows.to_delta(), "feedback": self._kept(kind)}
                  for kind, windows in self.windows.items() if kind != ROUTED_RANDOMLY}
        return {
            **self.monitoring.meta(),
            "rows": self.rows,
            "missing_values": self.missing_values,
            "rows_with_missing": self.rows_with_missing,
            "rows_out_of_support": self.rows_out_of_support,
            "unmonitored_rows": self.unmonitored_rows,
            "unusual_confidence": unusual,
            **(random.to_delta() if random is not None else {"inputs": None, "predictions": None}),
            "routed": routed,
            "data_age": list(self.data_age),
            "last_request_at": self.last_request_at,
            "feedback": self._kept(ROUTED_RANDOMLY),
            "feedback_dropped": self.feedback_dropped,
            "feedback_unjoinable": self.feedback_unjoinable,
        }


class UnaccountedRequests(Exception):
    """Some of a chunk's requests could not be accounted (``requests`` of them; the cause
    is chained)."""

    def __init__(self, requests: int) -> None:
        super().__init__(f"{requests} requests could not be accounted")
        self.requests = requests


def data_age_seconds(parameters: dict[str, Any], now: float) -> float | None:
    """Age of the request's features from its ``feature_timestamp`` parameter, if any.

    The timestamp is Unix seconds or ISO 8601 (with a zone; naive means UTC). An
    unreadable one is ignored rather than refused: monitoring must not reject traffic.
    """
    raw = parameters.get(FEATURE_TIMESTAMP) if parameters else None
    if raw is None or isinstance(raw, bool):
        return None
    try:
        if isinstance(raw, int | float):
            stamp = float(raw)
        else:
            parsed = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            stamp = parsed.timestamp()
    except (TypeError, ValueError, OverflowError):
        return None
    # Past the horizon (or ahead of this clock by more than skew: milliseconds read as
    # seconds) it is no time the features were taken, and one such stamp would set the
    # window's mean age that alerts read.
    if not math.isfinite(stamp) or not now - MAX_DATA_AGE_S <= stamp <= now + MAX_CLOCK_SKEW_S:
        return None
    return max(now - stamp, 0.0)


def attach_profiles(delta: dict[int, dict[str, Any]], monitoring: dict[int, VersionMonitoring],
                    known: AbstractSet[str]) -> None:
    """Add the reference profiles the Monitor has not acknowledged yet to a delta: the
    profile each part was recorded against, where the version still has it (a delta kept
    while the Monitor was away may be older than a reconfigure)."""
    for version, data in delta.items():
        part = data.get("monitoring")
        spec = monitoring.get(version)
        if part is None or spec is None or not spec.profile_key or spec.profile_key in known \
                or part.get("profile_key", spec.profile_key) != spec.profile_key:
            continue
        data["profile"] = spec.profile_document


class RecentRows:
    """The newest :data:`SAMPLE_CAPACITY` rows, kept as the chunks they arrived in."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._rows = 0

    def add(self, rows: np.ndarray) -> None:
        self._chunks.append(rows)
        self._rows += rows.shape[0]
        while self._rows - self._chunks[0].shape[0] >= SAMPLE_CAPACITY:
            self._rows -= self._chunks.pop(0).shape[0]

    def newest(self) -> np.ndarray:
        if not self._chunks:
            return np.empty((0, 0))
        last = self._chunks[-1]
        if last.shape[0] >= SAMPLE_CAPACITY:  # a shipment's one chunk: no copy of it all
            return last[-SAMPLE_CAPACITY:].astype(np.float32)
        return np.concatenate(self._chunks)[-SAMPLE_CAPACITY:].astype(np.float32)


def _window_part(window: LiveWindow | None, recent: RecentRows) -> dict[str, Any] | None:
    if window is None or window.rows == 0:
        return None
    return {"hist": window.hist, "missing": window.missing,
            "out_of_range": window.out_of_range, "rows": window.rows,
            "samples": recent.newest()}


def _rows_outside_support(profile: ReferenceProfile, features: np.ndarray) -> int:
    """Rows with a value outside the reference [min, max] or a category it never saw."""
    layout = profile.layout()
    support = layout.cache.get("support")
    if support is None:
        numeric = np.flatnonzero(layout.kinds == 0)
        categorical = [(i, np.asarray(f.edges)) for i, f in enumerate(profile.features)
                       if f.kind == "categorical"]
        support = layout.cache["support"] = (numeric, layout.ref_min[numeric],
                                             layout.ref_max[numeric], categorical)
    numeric, low, high, categorical = support
    with np.errstate(invalid="ignore"):
        values = features if not categorical else features[:, numeric]  # no copy when all numeric
        outside = ((values < low) | (values > high)).any(axis=1)  # NaN compares False: missing
    for index, codes in categorical:
        column = features[:, index]
        outside |= np.isfinite(column) & ~np.isin(column, codes)
    return int(outside.sum())


def _static_width(inputs: list[TensorSignature],
                  texts: dict[str, frozenset[str] | None] | None = None) -> int | None:
    """Values per row across the inputs, when every non-batch dimension is fixed (a text
    input counts its derived features)."""
    texts = texts or {}
    width = 0
    for spec in inputs:
        if spec.name in texts and is_text_input(spec.dtype, spec.shape):
            width += len(text_feature_names(spec.name, with_vocabulary=texts[spec.name] is not None))
            continue
        if spec.dtype == "string" or not spec.shape:
            return None
        rest = spec.shape[1:]
        if any(dim is None for dim in rest):
            return None
        width += int(np.prod(rest)) if rest else 1
    return width
