"""The Monitor's latency bins: what the rollouts' rank test reads of each version's window."""

from __future__ import annotations

import numpy as np

from kernels import Sketch
from serving.monitoring.monitor import MonitorState
from serving.monitoring.routing import ROUTED_PINNED
from serving.monitoring.stats import (
    LATENCY_MAX_S,
    LATENCY_MIN_S,
    StatsRecorder,
    new_latency_sketch,
)


def test_sketch_bins_keep_the_order_of_values_and_every_count() -> None:
    values = np.sort(np.random.default_rng(0).lognormal(-6, 1, 2000))
    sketch = Sketch(0.01, LATENCY_MIN_S, LATENCY_MAX_S)
    sketch.add_many(np.concatenate((values, [0.0, 0.0])))  # two below the range
    keys, counts = sketch.bin_counts()
    assert keys[0] == -1 and counts[0] == 2
    assert np.all(np.diff(keys) > 0) and counts.sum() == sketch.count == 2002
    # One value per sketch: larger values never land in a lower bin.
    one_by_one = []
    for value in values[::50]:
        single = Sketch(0.01, LATENCY_MIN_S, LATENCY_MAX_S)
        single.add(value)
        one_by_one.append(int(single.bin_counts()[0][0]))
    assert one_by_one == sorted(one_by_one)


def test_the_snapshot_carries_the_samples_bins_and_every_requests() -> None:
    now = [1000.0]
    monitor = MonitorState(clock=lambda: now[0], wall_clock=lambda: now[0])
    recorder = StatsRecorder()
    rng = np.random.default_rng(1)
    randomly, pinned = rng.lognormal(-5, 0.5, 300), rng.lognormal(-4, 0.5, 40)
    for latency in randomly:
        recorder.record(2, 200, float(latency))
    for latency in pinned:
        recorder.record(2, 200, float(latency), routed=ROUTED_PINNED)
    monitor.record("churn", "replica-1", recorder.to_delta())
    latency = monitor.snapshot("churn", 60.0)[2].latency

    expected = new_latency_sketch()
    expected.add_many(randomly)
    keys, counts = expected.bin_counts()
    assert latency.sample_bins.keys == tuple(keys.tolist())
    assert latency.sample_bins.counts == tuple(counts.tolist())
    assert sum(latency.all_bins.counts) == 340 == latency.all_requests.count
    assert all(isinstance(k, int) for k in latency.all_bins.keys)  # plain ints: it pickles
