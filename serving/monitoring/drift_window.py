"""Drift over rolling windows: live counts per second at the Monitor, verdicts on query.

Replicas ship, per version and about once a second, the live histograms and quality
counters of the inputs and of the predictions over the reference bins, plus the newest
rows. :class:`SlottedCounts` keeps the counts per one-second slot for the Monitor's
five minutes, and the rows as a :class:`~serving.monitoring.window_sample.WindowSample`
(samples of up to :data:`SAMPLE_LIMIT` rows spread over any window ending now);
:func:`judge` builds the window's live data and asks the kernels for a drift report.

Decisions: numeric features by the two-sample Kolmogorov-Smirnov test, categorical ones
by chi-square, each p-value calibrated at the window's size by the kernels; p-values of
every input and prediction feature are adjusted together (Benjamini-Hochberg), so that
the version's verdict keeps its false-alarm rate at ``alpha`` however many features it
has. Fewer than ``min_rows`` rows in the window give ``insufficient``: no verdict.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.monitoring.snapshot import Drift, DriftVerdict, FeatureDrift, PredictionDrift
from serving.monitoring.window_sample import WindowSample, spread_sample

if TYPE_CHECKING:
    from kernels import LiveWindow, ReferenceProfile

SAMPLE_LIMIT = 2000
MIN_ROWS = 100
ALPHA = 0.005
CORRECTION = "bh"
NUMERIC_TEST = "ks"
CATEGORICAL_TEST = "chi2"
REPORTED = ("psi", "js", "ks", "wasserstein", "chi2")


@dataclass
class _Slot:
    epoch: int
    hist: np.ndarray
    missing: np.ndarray
    out_of_range: np.ndarray
    rows: int


class SlottedCounts:
    """One profile's live counts per one-second slot, and its rows for samples."""

    def __init__(self, profile: ReferenceProfile, slots: int, slot_seconds: float,
                 clock: Callable[[], float], rng: np.random.Generator | None = None) -> None:
        self.profile, self.slots, self.slot_seconds, self._clock = profile, slots, slot_seconds, clock
        self._entries: deque[_Slot] = deque()
        self.rows = WindowSample(SAMPLE_LIMIT, rng)

    def _epoch(self) -> int:
        return math.floor(self._clock() / self.slot_seconds)

    def add(self, part: dict[str, Any], back: int = 0) -> None:
        """Merge one replica's shipment (see ``VersionObservations.to_delta``) into the
        current slot, or into the one ``back`` slots before it (a late shipment's: nothing
        where that has left the window)."""
        now = self._epoch()
        epoch = now - max(back, 0)
        hist = np.asarray(part["hist"], dtype=np.int64)
        if hist.shape[0] != self.profile.layout().n_bins:
            return  # shipped against another profile (a replica mid-reconfigure): skip
        if epoch <= now - self.slots:
            return
        # Slots stay in order: a late shipment's goes before the newer ones.
        position = len(self._entries)
        while position and self._entries[position - 1].epoch > epoch:
            position -= 1
        same = self._entries[position - 1] if position else None
        if same is not None and same.epoch == epoch:
            same.hist += hist
            same.missing += part["missing"]
            same.out_of_range += part["out_of_range"]
            same.rows += int(part["rows"])
        else:
            self._entries.insert(position, _Slot(
                epoch, hist.copy(), np.array(part["missing"], dtype=np.int64),
                np.array(part["out_of_range"], dtype=np.int64), int(part["rows"])))
        while self._entries and self._entries[0].epoch <= now - self.slots:
            self._entries.popleft()
        self.rows.forget_before(now - self.slots + 1)
        samples = np.asarray(part.get("samples", ()), dtype=np.float32)
        if samples.ndim == 2 and samples.shape[1] == self.profile.n_features:
            self.rows.add(epoch, int(part["rows"]), samples)

    def first_epoch(self, window_s: float) -> int:
        """The oldest slot of a window of ``window_s`` seconds ending now."""
        return self._epoch() - max(1, math.ceil(window_s / self.slot_seconds)) + 1

    def slots_since(self, first: int) -> list[_Slot]:
        return [slot for slot in self._entries if slot.epoch >= first]


def histograms(parts: list[SlottedCounts], window_s: float) -> dict[str, Any]:
    """Each feature's reference bins (edges and counts) and, in the same bins, the live
    counts of the last ``window_s`` seconds summed over ``parts`` (one profile's counts,
    per way of routing); ``rows``: the live rows counted."""
    profile = parts[0].profile
    chosen = [slot for part in parts for slot in part.slots_since(part.first_epoch(window_s))]
    layout = profile.layout()
    live = (np.sum([slot.hist for slot in chosen], axis=0) if chosen
            else np.zeros(layout.n_bins, dtype=np.int64))
    features = {}
    for index, feature in enumerate(profile.features):
        start, stop = layout.bin_offsets[index], layout.bin_offsets[index + 1]
        features[feature.name] = {"kind": feature.kind, "edges": [float(e) for e in feature.edges],
                                  "reference": [int(c) for c in feature.counts],
                                  "live": [int(c) for c in live[start:stop]]}
    return {"rows": sum(slot.rows for slot in chosen), "features": features}


def window(parts: list[SlottedCounts], window_s: float) -> tuple[LiveWindow, int] | None:
    """The last ``window_s`` seconds of ``parts`` (one profile's counts, per way of
    routing) as one live window: their counts summed, and a sample of their rows in
    which each shipment weighs as its share of the window's rows (a trickle of pinned
    rows does not weigh like the whole random traffic, nor a quiet second like a busy one)."""
    from kernels import LiveWindow

    if not parts:
        return None
    profile = parts[0].profile
    first = parts[0].first_epoch(window_s)
    chosen = [slot for part in parts for slot in part.slots_since(first)]
    if not chosen:
        return None
    sample = spread_sample([part.rows for part in parts], first, SAMPLE_LIMIT, profile.n_features)
    live = LiveWindow(profile, sample_capacity=sample.shape[0])
    if sample.shape[0]:
        live.update(sample)  # fills the sample ring; the counts are replaced below
    live.hist[:] = np.sum([slot.hist for slot in chosen], axis=0)
    live.missing[:] = np.sum([slot.missing for slot in chosen], axis=0)
    live.out_of_range[:] = np.sum([slot.out_of_range for slot in chosen], axis=0)
    return live, sum(slot.rows for slot in chosen)


@dataclass(frozen=True)
class _Tested:
    group: str  # "inputs" or "prediction"
    name: str
    test: str
    statistic: float
    pvalue: float
    n: int
    statistics: dict[str, float]


def judge(inputs: tuple[LiveWindow, int] | None, predictions: tuple[LiveWindow, int] | None,
          *, alpha: float = ALPHA, min_rows: int = MIN_ROWS, problem: str = "") -> Drift:
    """The drift section of a version's snapshot (see ``MonitorState.snapshot``)."""
    from kernels import adjust_pvalues

    groups = {"inputs": inputs, "prediction": predictions}
    rows = {name: (part[1] if part else 0) for name, part in groups.items()}
    tested: list[_Tested] = []
    for name, part in groups.items():
        if part is not None and part[1] >= min_rows:
            tested.extend(_test(name, part[0]))
    adjusted = adjust_pvalues([t.pvalue for t in tested], CORRECTION) if tested else np.array([])
    features: dict[str, dict[str, FeatureDrift]] = {"inputs": {}, "prediction": {}}
    for t, p in zip(tested, adjusted, strict=True):
        features[t.group][t.name] = FeatureDrift(
            statistic=_finite(t.statistic), p_value=_finite(float(p)),
            raw_p_value=_finite(t.pvalue), drifted=bool(p <= alpha), test=t.test, n=t.n,
            statistics={k: _finite(v) for k, v in t.statistics.items()})
    drifted = {g: tuple(n for n, f in features[g].items() if f.drifted) for g in features}
    # Enough rows, and a feature with enough values to test: rows whose values are all
    # missing or not finite (a model answering NaN) leave nothing to judge, and say so.
    enough = {g: any(f.n >= min_rows for f in features[g].values()) for g in features}
    reason = problem
    if not any(enough.values()):
        reason = problem or (
            f"{rows['inputs']} rows in the window, need {min_rows}" if rows["inputs"] < min_rows
            else f"{rows['inputs']} rows in the window, but no feature has {min_rows} "
                 "values that are there and finite")

    def verdict(*names: str) -> DriftVerdict:
        if any(drifted[g] for g in names):
            return DriftVerdict.DRIFT
        return DriftVerdict.OK if any(enough[g] for g in names) else DriftVerdict.INSUFFICIENT

    return Drift(
        verdict=verdict("inputs", "prediction"),
        reason=reason,
        samples=rows["inputs"],
        alpha=alpha,
        correction=CORRECTION,
        features=features["inputs"],
        drifted_features=drifted["inputs"],
        prediction=PredictionDrift(
            verdict=verdict("prediction"),
            drifted=bool(drifted["prediction"]),
            samples=rows["prediction"],
            features=features["prediction"],
            drifted_features=drifted["prediction"],
        ),
    )


def _test(group: str, live: LiveWindow) -> list[_Tested]:
    from kernels import drift_report

    # Uncorrected here: the correction runs once over inputs and predictions together.
    report = drift_report(live.profile, live, correction="none", test=NUMERIC_TEST)
    out = []
    for feature in report.features:
        test = CATEGORICAL_TEST if feature.kind == "categorical" else NUMERIC_TEST
        if math.isnan(feature.pvalues[test]):
            # No samples in the window, or the test declined for this feature (KS on a
            # reference with ties): the statistic the report fell back to decides.
            test = feature.test
        out.append(_Tested(group, feature.name, test, feature.statistics[test],
                           feature.pvalues[test], feature.n,
                           {k: feature.statistics[k] for k in REPORTED}))
    return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
