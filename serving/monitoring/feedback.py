"""The ground-truth join: predictions kept by request id until their labels arrive.

Replicas ship each answered request's predicted values with their statistics; the Monitor
keeps them here, bounded by count, by (estimated) bytes and by age (the oldest go first and
are counted), so a label sent hours later through ``POST /v2/models/{e}/feedback`` on any replica finds the
prediction any other replica made. A label can also arrive before its prediction (that is
shipped about a second after the answer): it waits, briefly and in bounded numbers and
bytes. Request ids are the server's (``x-modelplane-request-id``), never the client's.

Accuracy, precision, recall and F1 are computed from a confusion count the same way
scikit-learn does: ``average='binary'`` (positive class 1) for two classes, ``'macro'``
over the classes seen otherwise, and 0 where a ratio has nothing to divide by.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from serving.monitoring.routing import ROUTED_RANDOMLY, ROUTINGS
from serving.monitoring.snapshot import FeedbackStore

# Labels one feedback item may carry, one per row: a prediction of more rows can never be
# joined, so it is never kept.
MAX_LABELS_PER_REQUEST = 4096
MAX_PREDICTIONS = 200_000
MAX_PREDICTION_AGE_S = 24 * 3600.0
MAX_WAITING_LABELS = 10_000
MAX_LABEL_WAIT_S = 120.0
# Bytes, estimated as CPython holds them: a request of many rows keeps one value per row,
# so a count bound alone would let a few large batches take gigabytes.
MAX_PREDICTION_BYTES = 128 * 1024 * 1024
MAX_WAITING_BYTES = 16 * 1024 * 1024
ENTRY_OVERHEAD_BYTES = 240  # dict and link slots, the id, the (value, arrival) pair, a float
VALUE_BYTES = 32  # a float object and its list slot
EXPIRY_CHECK_S = 1.0  # ages are looked at once a second: every endpoint's oldest, each time


def prediction_bytes(request_id: str, value: float | list[float]) -> int:
    """What one stored prediction (a value, or a list of them per row) costs, estimated
    (the bound the store keeps)."""
    return ENTRY_OVERHEAD_BYTES + len(request_id) + VALUE_BYTES * (
        len(value) if value.__class__ is list else 1)


def scalar_predictions_bytes(request_ids: Sequence[str]) -> int:
    """``prediction_bytes`` summed over predictions of one value each, without a call per
    prediction (a shipment's bulk insert)."""
    return len(request_ids) * (ENTRY_OVERHEAD_BYTES + VALUE_BYTES) + sum(map(len, request_ids))


def labels_bytes(request_id: str, labels: list[Any]) -> int:
    """What one waiting list of labels costs, estimated."""
    return ENTRY_OVERHEAD_BYTES + len(request_id) + sum(
        VALUE_BYTES + (len(label) if isinstance(label, str) else 0) for label in labels)


Bucket = tuple[str, int, str]  # (endpoint, version, way of routing)
# A stored prediction: (its value, or a list of them per row; when it arrived). A plain
# pair, made by the C loops of a shipment's bulk insert: one is kept per answered request
# of the whole cluster, and building a named tuple per request cost the Monitor more than
# the rest of the insert. Its version and way of routing are its bucket's; its estimated
# bytes, prediction_bytes of its request id and value.
StoredPrediction = tuple[float | list[float], float]
_SCALAR_VALUES = {float}


@dataclass(frozen=True, slots=True)
class JoinedPair:
    """A prediction and its ground truth, per row of the request."""

    endpoint: str
    version: int
    predicted: list[float]
    labels: list[Any]
    routed: str = ROUTED_RANDOMLY  # how the request reached its version


class FeedbackJoin:
    """Predictions by (endpoint, request id), and labels waiting for their prediction.

    The bounds are shared, but a full store gives up the oldest prediction of the bucket
    holding the most (bytes, or entries where the count bound is the one passed), not the
    oldest of all. A bucket is one version's predictions of one way of routing: one
    endpoint's flood evicts that endpoint's own predictions and leaves every other
    endpoint's labels their join; a flood of requests pinned to a version evicts pinned
    predictions, not the randomly routed ones a rollout's accuracy is judged on; and a
    randomly routed flood, which lands mostly on stable, evicts stable's, not the
    candidate's few. Labels waiting for their prediction are kept the same way, per
    endpoint: a full store gives up the oldest of the endpoint waiting on the most, so a
    label token of one endpoint, sending labels for made-up request ids, pays with its own
    first and can bring another endpoint's down to an equal share at most (the oldest of
    all went, another endpoint's included, and its accuracy gate went without).
    """

    def __init__(self, clock: Callable[[], float], *, max_predictions: int = MAX_PREDICTIONS,
                 max_age_s: float = MAX_PREDICTION_AGE_S, max_waiting: int = MAX_WAITING_LABELS,
                 max_wait_s: float = MAX_LABEL_WAIT_S, max_bytes: int = MAX_PREDICTION_BYTES,
                 max_waiting_bytes: int = MAX_WAITING_BYTES) -> None:
        self._clock = clock
        self.max_predictions, self.max_age_s = max_predictions, max_age_s
        self.max_waiting, self.max_wait_s = max_waiting, max_wait_s
        self.max_bytes, self.max_waiting_bytes = max_bytes, max_waiting_bytes
        # Per (endpoint, version, way of routing), by request id; insertion order is
        # arrival order, so a bucket's oldest prediction is always its first.
        self._predictions: dict[Bucket, OrderedDict[str, StoredPrediction]] = {}
        self._bytes: Counter[Bucket] = Counter()  # estimated bytes of each bucket
        # Labels waiting for their prediction, per endpoint by request id, oldest first.
        self._waiting: dict[str, OrderedDict[str, tuple[list[Any], float, int]]] = {}
        self._waiting_bytes: Counter[str] = Counter()  # estimated bytes, per endpoint
        self.labels_waiting = 0
        self.bytes_held = 0  # estimated bytes of the stored predictions, all endpoints
        self.predictions_held = 0
        self.waiting_bytes = 0
        self.counters: Counter[tuple[str, str]] = Counter()  # by (endpoint, event)
        self._expired_at = -math.inf  # when predictions were last looked at for their age

    def add_predictions(self, endpoint: str, version: int,
                        items: Iterable[tuple[str, float | list[float]]],
                        routed: str = ROUTED_RANDOMLY) -> list[JoinedPair]:
        """Keep predictions (a value, or a list per row) of requests routed as ``routed``
        says; labels already waiting join now."""
        now = self._clock()
        bucket = (endpoint, version, routed)
        predictions = self._predictions.get(bucket)
        if predictions is None:
            predictions = self._predictions[bucket] = OrderedDict()
        items = items if isinstance(items, list) else list(items)
        waiting_labels = self._waiting.get(endpoint)
        joined: list[JoinedPair] = []
        request_ids, values = zip(*items, strict=True) if items else ((), ())
        stored = replaced = added_bytes = 0
        try:
            if (set(map(type, values)) <= _SCALAR_VALUES
                    and (not waiting_labels or waiting_labels.keys().isdisjoint(request_ids))
                    and predictions.keys().isdisjoint(request_ids)
                    and len(set(request_ids)) == len(request_ids)):
                # A shipment's usual case (one value per request, ids new, no label waiting
                # for any): stored by C loops, a fifth of the per-request loop's cost below.
                # Its bytes first: an id they cannot be counted for stores nothing.
                counted = scalar_predictions_bytes(request_ids)
                predictions.update(zip(request_ids, zip(values, repeat(now), strict=False),
                                       strict=True))
                stored, added_bytes = len(request_ids), counted
                return joined
            for request_id, predicted in items:
                value = list(predicted) if isinstance(predicted, list) else predicted
                if waiting_labels:
                    waiting = waiting_labels.pop(request_id, None)
                    if waiting is not None:
                        self._unwait(endpoint, waiting[2])
                        joined.append(JoinedPair(endpoint, version, _as_list(value), waiting[0],
                                                 routed))
                        continue
                size = prediction_bytes(request_id, value)
                earlier = predictions.pop(request_id, None)
                if earlier is not None:  # the same id shipped twice: newest wins
                    replaced += 1
                    added_bytes -= prediction_bytes(request_id, earlier[0])
                predictions[request_id] = (value, now)
                added_bytes += size
                stored += 1
            return joined
        finally:
            # What was stored is counted, should an odd item end the loop part way.
            self.bytes_held += added_bytes
            self._bytes[bucket] += added_bytes
            self.predictions_held += stored - replaced
            for event, count in (("stored", stored), ("replaced", replaced),
                                 ("joined", len(joined))):
                if count:
                    self._count(endpoint, event, count)
            self._trim(now)

    def add_labels(self, endpoint: str, items: Iterable[tuple[str, list[Any]]]) -> tuple[list[JoinedPair], int]:
        """Join labels with their predictions: (pairs joined now, labels left waiting)."""
        now = self._clock()
        self._trim(now)
        joined, waiting = [], 0
        buckets = [(bucket, kept) for bucket in self._buckets(endpoint)
                   if (kept := self._predictions[bucket])]
        for request_id, labels in items:
            found: tuple[Bucket, StoredPrediction] | None = None
            for bucket, kept in buckets:
                stored = kept.pop(request_id, None)
                if stored is not None:
                    found = bucket, stored
                    break
            if found is None:
                earlier = self._waiting.get(endpoint, {}).pop(request_id, None)
                if earlier is not None:
                    self._unwait(endpoint, earlier[2])
                size = labels_bytes(request_id, labels)
                self._waiting.setdefault(endpoint, OrderedDict())[request_id] = (list(labels), now, size)
                self.labels_waiting += 1
                self.waiting_bytes += size
                self._waiting_bytes[endpoint] += size
                waiting += 1
                continue
            bucket, stored = found
            self._release(bucket, request_id, stored)
            self._count(endpoint, "joined")
            joined.append(JoinedPair(endpoint, bucket[1], _as_list(stored[0]), list(labels),
                                     bucket[2]))
        while self.labels_waiting and (self.labels_waiting > self.max_waiting
                                       or self.waiting_bytes > self.max_waiting_bytes):
            # The oldest label of the endpoint waiting on the most (bytes, or labels where
            # the count bound is the one passed).
            by_bytes = self.waiting_bytes > self.max_waiting_bytes
            fullest = max((e for e, kept in self._waiting.items() if kept),
                          key=lambda e: self._waiting_bytes[e] if by_bytes else len(self._waiting[e]))
            _, (_, _, size) = self._waiting[fullest].popitem(last=False)
            self._unwait(fullest, size)
            self._count(fullest, "labels_unmatched")
        return joined, waiting

    def _unwait(self, endpoint: str, size: int) -> None:
        """Account a label that stopped waiting (joined, replaced, dropped or expired)."""
        self.labels_waiting -= 1
        self.waiting_bytes -= size
        self._waiting_bytes[endpoint] -= size
        if not self._waiting.get(endpoint):
            self._waiting.pop(endpoint, None)
            self._waiting_bytes.pop(endpoint, None)

    def held(self, endpoint: str) -> int:
        """Predictions of ``endpoint`` waiting for their labels."""
        return sum(len(self._predictions[bucket]) for bucket in self._buckets(endpoint))

    def stats(self, endpoint: str) -> FeedbackStore:
        """Counters of one endpoint's join (held, dropped, expired, waiting labels …)."""
        events = {event: int(value) for (of, event), value in self.counters.items()
                  if of == endpoint}
        return FeedbackStore(held=self.held(endpoint),
                             labels_waiting=len(self._waiting.get(endpoint, ())),
                             **events)

    def memory(self) -> dict[str, int]:
        """The store's estimated bytes and its bounds (all endpoints together)."""
        return {"predictions": self.predictions_held, "prediction_bytes": self.bytes_held,
                "max_prediction_bytes": self.max_bytes, "labels_waiting": self.labels_waiting,
                "waiting_bytes": self.waiting_bytes, "max_waiting_bytes": self.max_waiting_bytes}

    def forget(self, endpoint: str, version: int | None = None) -> None:
        """Drop what is kept of ``endpoint`` (or only the predictions of one version)."""
        for bucket in self._buckets(endpoint):
            if version is not None and bucket[1] != version:
                continue
            for request_id, stored in self._predictions.pop(bucket).items():
                self._release(bucket, request_id, stored)
            self._bytes.pop(bucket, None)
        if version is not None:
            return
        for _, _, size in self._waiting.pop(endpoint, {}).values():
            self.labels_waiting -= 1
            self.waiting_bytes -= size
        self._waiting_bytes.pop(endpoint, None)
        for key in [k for k in self.counters if k[0] == endpoint]:
            del self.counters[key]

    def _buckets(self, endpoint: str) -> list[Bucket]:
        """The buckets of ``endpoint``: randomly routed ones first (most labels join there)."""
        buckets = [bucket for bucket in self._predictions if bucket[0] == endpoint]
        return sorted(buckets, key=lambda bucket: ROUTINGS.index(bucket[2]))

    def _release(self, bucket: Bucket, request_id: str, stored: StoredPrediction) -> int:
        """Account a prediction that has left the store (joined, dropped or expired); its
        estimated bytes."""
        size = prediction_bytes(request_id, stored[0])
        self.predictions_held -= 1
        self.bytes_held -= size
        self._bytes[bucket] -= size
        return size

    def _count(self, endpoint: str, event: str, n: int = 1) -> None:
        self.counters[(endpoint, event)] += n

    def _trim(self, now: float) -> None:
        stores = self._predictions
        while self._over_bounds():
            # The buckets holding the most give up their oldest, down to one level: the
            # one that frees what is over the bound (water-filling). One flooding bucket
            # pays alone, and the level is found once a trim, not once a prediction.
            by_bytes = self.bytes_held > self.max_bytes
            sizes = self._bytes if by_bytes else {b: len(kept) for b, kept in stores.items()}
            held = {b: sizes[b] for b, kept in stores.items() if kept}
            if not held:
                break
            excess = (self.bytes_held - self.max_bytes if by_bytes
                      else self.predictions_held - self.max_predictions)
            level = _water_level(list(held.values()), excess)
            for bucket, amount in held.items():
                kept, dropped = stores[bucket], 0
                while kept and amount > level and self._over_bounds():
                    size = self._release(bucket, *kept.popitem(last=False))
                    amount -= size if by_bytes else 1
                    dropped += 1
                if dropped:
                    self._count(bucket[0], "dropped_full", dropped)
        if now - self._expired_at >= EXPIRY_CHECK_S:
            self._expired_at = now
            horizon = now - self.max_age_s
            for bucket, kept in stores.items():
                expired = 0
                while kept:
                    request_id, oldest = next(iter(kept.items()))
                    if oldest[1] >= horizon:
                        break
                    del kept[request_id]
                    self._release(bucket, request_id, oldest)
                    expired += 1
                if expired:
                    self._count(bucket[0], "expired", expired)
            for bucket in [b for b, kept in stores.items() if not kept]:
                del stores[bucket]  # a version long gone must not be looked at for ever
                self._bytes.pop(bucket, None)
        horizon = now - self.max_wait_s
        for endpoint, waiting in list(self._waiting.items()):
            while waiting:
                key, (_, at, size) = next(iter(waiting.items()))
                if at >= horizon:
                    break
                del waiting[key]
                self._unwait(endpoint, size)
                self._count(endpoint, "labels_unmatched")

    def _over_bounds(self) -> bool:
        return self.predictions_held > self.max_predictions or self.bytes_held > self.max_bytes


def _water_level(held: list[float], excess: float) -> float:
    """The level that, with every amount in ``held`` above it cut down to it, frees
    ``excess`` (the largest amounts are cut first, to a common level)."""
    ordered = sorted(held, reverse=True)
    total = 0.0
    for count, amount in enumerate(ordered, start=1):
        total += amount
        below = ordered[count] if count < len(ordered) else 0.0
        if total - count * below >= excess:
            return max((total - excess) / count, 0.0)
    return 0.0


def _as_list(value: float | list[float]) -> list[float]:
    return value if value.__class__ is list else [value]  # type: ignore[list-item,return-value]


def predicted_class(value: float) -> int | None:
    """The class a classifier predicted, from the value kept for feedback: the top class's
    index (where it scores several) or a label (one whole number), else the positive
    class's probability, read as class 1 from one half up; None where it is not finite."""
    if not math.isfinite(value):
        return None
    if value == round(value):
        return int(value)
    return int(value >= 0.5)


def class_index(label: Any, class_labels: list[str] | None) -> int | None:
    """A classification label as a class index: an index, a whole number, or a class name."""
    if isinstance(label, bool):
        return int(label)
    if isinstance(label, int):
        return label
    if isinstance(label, float):
        return int(label) if label.is_integer() else None
    text = str(label)
    if class_labels and text in class_labels:
        return class_labels.index(text)
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    digits = text[1:] if text.startswith("-") else text
    return int(text) if digits.isascii() and digits.isdigit() else None


def classification_metrics(confusion: dict[tuple[int, int], float], n_classes: int | None) -> dict[str, Any]:
    """Accuracy, precision, recall and F1 from ``{(true, predicted): count}``, as sklearn."""
    labelled = int(sum(confusion.values()))
    if not labelled:
        return {"labelled": 0, "accuracy": None, "precision": None, "recall": None, "f1": None,
                "average": None}
    correct = sum(n for (t, p), n in confusion.items() if t == p)
    classes = sorted({t for t, _ in confusion} | {p for _, p in confusion})
    binary = n_classes == 2 or (n_classes is None and set(classes) <= {0, 1})
    scores = [_class_scores(confusion, c) for c in ([1] if binary else classes)]
    precision, recall, f1 = (sum(s[i] for s in scores) / len(scores) for i in range(3))
    return {"labelled": labelled, "accuracy": correct / labelled, "precision": precision,
            "recall": recall, "f1": f1, "average": "binary" if binary else "macro"}


def regression_metrics(labelled: float, abs_sum: float, square_sum: float) -> dict[str, Any]:
    """MAE and RMSE from the sums of absolute and squared errors."""
    if not labelled:
        return {"labelled": 0, "mae": None, "rmse": None}
    return {"labelled": int(labelled), "mae": abs_sum / labelled,
            "rmse": math.sqrt(square_sum / labelled)}


def _class_scores(confusion: dict[tuple[int, int], float], label: int) -> tuple[float, float, float]:
    tp = confusion.get((label, label), 0)
    predicted = sum(n for (_, p), n in confusion.items() if p == label)
    actual = sum(n for (t, _), n in confusion.items() if t == label)
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
