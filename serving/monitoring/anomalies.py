"""Latency and error-rate anomalies against an EWMA baseline per version.

Each completed one-second slot of a version (with traffic) updates an exponentially
weighted mean and variance of its mean latency and of its server-error rate. Slots join
the baseline :data:`BASELINE_LAG_S` seconds late, and a window is judged against the
baseline as it stood before the window's first slot (the tracker keeps the baseline of
each slot it folded), so the traffic under judgement is never part of what it is
compared with: with a memory of about 20 s, a one-minute window judged against the
current baseline would have it absorb a sustained regression before the window's mean
showed it, and the alarm would never sound. A window is anomalous when its value
lies more than :data:`Z_LIMIT` deviations above the baseline, with the deviation floored
(10% of the mean for latency, one point for the error rate) so that a perfectly steady
baseline does not turn noise into alarms, and only once the baseline has seen
:data:`MIN_BASELINE_SLOTS` slots and the window holds :data:`MIN_REQUESTS` requests.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

from serving.monitoring import counters
from serving.monitoring.snapshot import BaselineJudgement

EWMA_WEIGHT = 0.05  # per slot: a memory of about 20 seconds of traffic
BASELINE_LAG_S = 10
MIN_BASELINE_SLOTS = 30
MIN_REQUESTS = 20
Z_LIMIT = 4.0
LATENCY_FLOOR = 0.10  # of the baseline mean
ERROR_RATE_FLOOR = 0.01


@dataclass
class EwmaBaseline:
    """Exponentially weighted mean and variance of a per-slot signal."""

    weight: float = EWMA_WEIGHT
    mean: float = math.nan
    variance: float = 0.0
    slots: int = 0

    def update(self, value: float) -> None:
        if self.slots == 0:
            self.mean = value
        else:
            delta = value - self.mean
            self.mean += self.weight * delta
            self.variance = (1 - self.weight) * (self.variance + self.weight * delta * delta)
        self.slots += 1

    def judge(self, value: float | None, floor: float, *, requests: int) -> BaselineJudgement:
        """How far ``value`` is above the baseline, and whether that is an anomaly."""
        deviation = max(math.sqrt(self.variance), floor)
        ready = self.slots >= MIN_BASELINE_SLOTS and requests >= MIN_REQUESTS and value is not None
        z = (value - self.mean) / deviation if ready and deviation > 0 else None  # type: ignore[operator]
        return BaselineJudgement(value=value, baseline=None if math.isnan(self.mean) else self.mean,
                                 deviation=deviation if self.slots else None, z=z,
                                 baseline_slots=self.slots,
                                 anomalous=bool(z is not None and z > Z_LIMIT))


@dataclass
class AnomalyTracker:
    """One version's latency and error-rate baselines, fed by completed slots."""

    latency_ms: EwmaBaseline
    error_rate: EwmaBaseline
    folded_epoch: int
    # (epoch, latency baseline, error-rate baseline) after each slot folded, oldest first.
    history: deque[tuple[int, EwmaBaseline, EwmaBaseline]] = field(
        default_factory=lambda: deque(maxlen=300 + BASELINE_LAG_S + 1))

    @classmethod
    def starting(cls, epoch: int, window_slots: int) -> AnomalyTracker:
        """A tracker whose slots from ``epoch`` on are new, able to judge windows of up to
        ``window_slots`` slots."""
        return cls(EwmaBaseline(), EwmaBaseline(), epoch,
                   deque(maxlen=window_slots + BASELINE_LAG_S + 1))

    def fold(self, slots: list[tuple[int, dict[str, float]]]) -> None:
        """Feed the slots (epoch, counters) that completed more than the lag ago."""
        for epoch, counts in slots:
            if epoch <= self.folded_epoch:
                continue
            self.folded_epoch = epoch
            requests, server_errors, latency_sum, latency_n = slot_traffic(counts)
            if requests:
                self.error_rate.update(server_errors / requests)
            if latency_n:
                self.latency_ms.update(1000 * latency_sum / latency_n)
            self.history.append((epoch, replace(self.latency_ms), replace(self.error_rate)))

    def judge(self, counts: dict[str, float],
              window_start: int | None = None) -> tuple[BaselineJudgement, BaselineJudgement]:
        """The window's (mean latency in ms, error rate) against their baselines as they
        stood before ``window_start`` (the window's first slot; None: the latest)."""
        latency_base, error_base = self._before(window_start)
        requests, server_errors, latency_sum, latency_n = slot_traffic(counts)
        latency = 1000 * latency_sum / latency_n if latency_n else None
        error_rate = server_errors / requests if requests else None
        floor = LATENCY_FLOOR * latency_base.mean if latency_base.slots else 0.0
        return (latency_base.judge(latency, floor, requests=requests),
                error_base.judge(error_rate, ERROR_RATE_FLOOR, requests=requests))

    def _before(self, window_start: int | None) -> tuple[EwmaBaseline, EwmaBaseline]:
        if window_start is None or self.folded_epoch < window_start:
            return self.latency_ms, self.error_rate
        for epoch, latency, error_rate in reversed(self.history):
            if epoch < window_start:
                return latency, error_rate
        return EwmaBaseline(), EwmaBaseline()  # no slot before the window: nothing to judge by


def slot_traffic(counts: dict[str, float]) -> tuple[int, int, float, float]:
    """(requests answered, server errors, latency sum in seconds, latencies) of counters.

    A request refused with a 4xx was never the model's to fail: counted, a flood of
    malformed requests would dilute a real failure rate, and its end read as an anomaly."""
    codes = counters.codes(counts)
    return (sum(n for status, n in codes.items() if not 400 <= status < 500),
            sum(n for status, n in codes.items() if status >= 500),
            float(counts.get(counters.LATENCY_SUM, 0.0)),
            float(counts.get(counters.LATENCY_COUNT, 0.0)))
