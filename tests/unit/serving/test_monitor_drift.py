"""Drift at the Monitor: rolling windows of replica deltas, calibrated verdicts per feature."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from serving.monitoring import Drift
from serving.monitoring.drift_window import SAMPLE_LIMIT, window
from serving.monitoring.monitor import MonitorState
from serving.monitoring.observations import attach_profiles
from serving.monitoring.profiles import load_profiles
from serving.monitoring.snapshot import FeatureQuality
from tests.unit.serving.monitoring_helpers import FEATURES, make_core, reference_profile, send_many

PROFILE = reference_profile()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ship(core, state: MonitorState, replica: str = "replica-a") -> dict:
    delta = core.take_stats().to_delta()
    attach_profiles(delta, core.monitoring, set())
    return state.record("churn", replica, delta)


def window_of(core, state: MonitorState, clock: Clock, rows: np.ndarray, seconds: float = 2.0) -> Drift:
    """Send ``rows`` (one request each), ship, and read the drift over the next window."""
    asyncio.run(send_many(core, [r[None, :].astype(np.float32) for r in rows]))
    ship(core, state)
    drift = state.snapshot("churn", seconds)[1].drift
    clock.now += seconds
    return drift


@pytest.fixture
def monitored():
    clock = Clock()
    return make_core(PROFILE), MonitorState(clock=clock), clock


def test_unshifted_traffic_never_drifts_and_a_one_sigma_shift_is_named(monitored) -> None:
    core, state, clock = monitored
    rng = np.random.default_rng(11)
    verdicts = [window_of(core, state, clock, rng.normal(size=(300, 4))) for _ in range(25)]
    assert [v.verdict for v in verdicts] == ["ok"] * 25
    assert all(v.drifted_features == () for v in verdicts)
    shifted = rng.normal(size=(300, 4))
    shifted[:, 1] += 1.0  # income moves by one standard deviation
    drift = window_of(core, state, clock, shifted)
    assert drift.verdict == "drift"
    assert drift.drifted_features == ("income",)
    assert drift.features["income"].test == "ks" and drift.features["income"].p_value < 1e-6
    assert set(drift.features) == set(FEATURES)


def test_the_statistics_match_scipy(monitored) -> None:
    core, state, clock = monitored
    # Within one shipment's sample (SAMPLE_CAPACITY rows), so KS sees every row.
    rows = np.random.default_rng(12).normal(loc=0.3, size=(250, 4)).astype(np.float32)
    drift = window_of(core, state, clock, rows, seconds=5)
    inputs, _ = load_profiles(PROFILE)
    live = rows.astype(np.float64)
    for index, name in enumerate(FEATURES):
        feature = inputs.feature(name)
        reported = drift.features[name].statistics
        reference = np.asarray(feature.sample)
        assert reported["ks"] == pytest.approx(stats.ks_2samp(reference, live[:, index]).statistic)
        assert reported["wasserstein"] == pytest.approx(
            stats.wasserstein_distance(reference, live[:, index]))
        live_counts = np.bincount(np.searchsorted(feature.edges, live[:, index], side="right"),
                                  minlength=len(feature.counts))
        assert reported["js"] == pytest.approx(jensenshannon(feature.counts, live_counts))
        assert drift.features[name].n == 250


def test_prediction_drift_uses_chi_square_on_the_class_and_ks_on_confidence(monitored) -> None:
    core, state, clock = monitored
    rows = np.random.default_rng(13).normal(size=(400, 4))
    rows[:, 0] += 2.0  # moves the predicted classes
    prediction = window_of(core, state, clock, rows).prediction
    assert prediction.drifted and prediction.verdict == "drift"
    assert prediction.features["predicted_class"].test == "chi2"
    assert prediction.features["confidence"].test == "ks"


def test_too_few_rows_give_no_verdict(monitored) -> None:
    core, state, clock = monitored
    drift = window_of(core, state, clock, np.random.default_rng(14).normal(size=(20, 4)) + 5)
    assert drift.verdict == "insufficient"
    assert drift.reason == "20 rows in the window, need 100" and drift.features == {}


def test_windows_forget_old_traffic(monitored) -> None:
    core, state, clock = monitored
    shifted = np.random.default_rng(15).normal(size=(300, 4)) + 3
    assert window_of(core, state, clock, shifted, seconds=2).verdict == "drift"
    clock.now += 10
    assert state.snapshot("churn", 2)[1].drift.verdict == "insufficient"
    assert state.snapshot("churn", 60)[1].drift.verdict == "drift"


def test_a_window_s_rows_are_spread_over_its_shipments(monitored) -> None:
    core, state, clock = monitored
    rng = np.random.default_rng(16)
    for second in range(12):  # 12 shipments of 256 sampled rows of 600, numbered by second
        rows = rng.normal(size=(600, 4))
        rows[:, 2] = second
        asyncio.run(send_many(core, [r[None, :].astype(np.float32) for r in rows]))
        ship(core, state)
        clock.now += 1
    inputs = state.series[("churn", 1)].drift_counts["random"][0]
    live, rows = window([inputs], 300)
    seconds = np.bincount(live.sample_columns()[2].astype(int), minlength=12)
    assert rows == 7200 and seconds.sum() == SAMPLE_LIMIT and seconds.min() >= SAMPLE_LIMIT // 12
    live, rows = window([inputs], 3)  # the last two shipments (and this second's, none): all their rows
    assert rows == 1200 and sorted(set(live.sample_columns()[2])) == [10, 11]
    assert live.sample_columns().shape[1] == 512


def test_a_restarted_monitor_asks_for_the_profile_again(monitored) -> None:
    core, _, clock = monitored
    fresh = MonitorState(clock=clock)
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 5))
    delta = core.take_stats().to_delta()
    key = core.monitoring[1].profile_key
    attach_profiles(delta, core.monitoring, {key})  # this replica believes it sent it already
    assert fresh.record("churn", "replica-a", delta) == {"missing_profiles": [key]}
    assert "waiting for the version's reference profile" in fresh.snapshot("churn", 5)[1].drift.reason
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 5))
    assert ship(core, fresh) == {"missing_profiles": []}
    assert fresh.snapshot("churn", 5)[1].drift.samples == 5


def test_a_profile_shipped_under_a_key_it_does_not_hash_to_is_not_installed(monitored) -> None:
    """Profiles are kept first-come by key: one shipped under another's key (a mistake, or
    a process planting a reference of its choosing before the version's replicas ship
    theirs) would judge that version's drift for as long as the Monitor runs."""
    import copy

    core, _, clock = monitored
    fresh = MonitorState(clock=clock)
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 5))
    delta = core.take_stats().to_delta()
    attach_profiles(delta, core.monitoring, set())
    key = core.monitoring[1].profile_key
    planted = copy.deepcopy(delta[1]["profile"])
    planted["planted"] = True  # any change: it no longer hashes to the key
    delta[1]["profile"] = planted
    assert fresh.record("churn", "replica-a", delta) == {"missing_profiles": [key]}
    assert key not in fresh.profiles
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 5))
    assert ship(core, fresh) == {"missing_profiles": []}  # the version's own, installed
    assert fresh.snapshot("churn", 5)[1].drift.samples == 5


def test_quality_counters_reach_the_snapshot(monitored) -> None:
    core, state, _ = monitored
    rows = np.zeros((10, 4))
    rows[0, 0] = rows[1, 0] = np.nan
    rows[2, 3] = 99.0
    asyncio.run(send_many(core, [r[None, :].astype(np.float32) for r in rows]))
    ship(core, state)
    quality = state.snapshot("churn", 5)[1].quality
    assert quality.rows == 10 and quality.missing == 2 and quality.out_of_range == 1
    assert quality.features["age"] == FeatureQuality(missing=2, out_of_range=0)
    assert quality.features["score"] == FeatureQuality(missing=0, out_of_range=1)
    assert quality.rows_out_of_support == 1
    assert 0 <= quality.last_request_age_s < 5


def test_histograms_are_the_reference_bins_and_the_windows_live_counts(monitored) -> None:
    core, state, clock = monitored
    rows = np.random.default_rng(13).normal(loc=0.5, size=(400, 4)).astype(np.float32)
    asyncio.run(send_many(core, [r[None, :] for r in rows]))
    ship(core, state)
    answer = state.histograms("churn", 1, 5.0)
    inputs, _ = load_profiles(PROFILE)
    assert answer["inputs"]["rows"] == 400 and set(answer["inputs"]["features"]) == set(FEATURES)
    for index, name in enumerate(FEATURES):
        feature, shown = inputs.feature(name), answer["inputs"]["features"][name]
        assert shown["edges"] == list(feature.edges) and shown["reference"] == list(feature.counts)
        # Numeric bin j holds edges[j-1] <= x < edges[j]; the outer bins are open-ended.
        expected = np.bincount(np.searchsorted(np.asarray(feature.edges), rows[:, index].astype(np.float64),
                                               side="right"), minlength=len(feature.counts))
        assert shown["live"] == expected.tolist(), name
    clock.now += 10  # the window has moved past every row
    later = state.histograms("churn", 1, 5.0)["inputs"]
    assert later["rows"] == 0 and all(sum(f["live"]) == 0 for f in later["features"].values())
    assert state.histograms("churn", 7, 5.0) == {"inputs": None, "predictions": None}


def test_history_cuts_the_window_into_steps_as_the_live_figures_count_them(monitored) -> None:
    core, state, clock = monitored
    rng = np.random.default_rng(14)
    asyncio.run(send_many(core, [r[None, :] for r in rng.normal(size=(50, 4)).astype(np.float32)]))
    ship(core, state)
    clock.now += 7  # into the next 5-second step
    asyncio.run(send_many(core, [r[None, :] for r in rng.normal(size=(30, 4)).astype(np.float32)]))
    ship(core, state)
    points = state.history("churn", 20.0, 5.0)[1]
    assert len(points) == 4 and [p["requests"] for p in points][-2:] in ([50, 30], [0, 30])
    assert sum(p["requests"] for p in points) == 80
    assert all(b["t"] - a["t"] == pytest.approx(5.0) for a, b in itertools.pairwise(points))
    newest, live = points[-1], state.snapshot("churn", 5.0)[1]
    assert newest["requests"] == live.traffic.requests == 30
    assert newest["throughput_rps"] == pytest.approx(30 / 5.0)
    assert newest["p99_ms"] == pytest.approx(live.latency.all_requests.p99_ms)
    empty = next(p for p in points if p["requests"] == 0)
    assert np.isnan(empty["p50_ms"]) and empty["error_rate"] == 0.0


def test_predictions_that_are_all_nan_are_not_judged_free_of_drift() -> None:
    """A regression model answering NaN for every row: its prediction drift was "ok" (the
    rows counted, though no value could be tested); it is "insufficient" now."""
    from serving.core import InferenceCore
    from serving.monitoring.profiles import build_reference_profile
    from serving.schemas import EndpointConfig, RouteTable
    from tests.unit.serving.monitoring_helpers import predict, training_data, version_config

    data = training_data()
    profile = build_reference_profile(data, predict(data)[:, :1], task="regression",
                                      feature_names=FEATURES)
    config = version_config(profile=profile, task="regression", outputs=1)

    class AnswersNaN:
        def __init__(self) -> None:
            self.config = config

        async def mirror(self, arrays):  # a shadow's call: the same answer
            return await self.infer(arrays)

        async def infer(self, arrays):
            return {"probabilities": np.full((len(arrays["input"]), 1), np.nan, np.float32)}

    core = InferenceCore(EndpointConfig(endpoint="churn", versions=[config],
                                        routes=RouteTable(weights={1: 100})), {1: AnswersNaN()})
    clock = Clock()
    drift = window_of(core, MonitorState(clock=clock), clock,
                      np.random.default_rng(3).normal(size=(400, 4)))
    assert drift.samples == 400 and drift.verdict == "ok"  # the inputs are as in training
    assert drift.prediction.verdict == "insufficient", drift.prediction
    assert not drift.prediction.drifted


def test_windows_cut_alike_share_one_drift_computation(monitored) -> None:
    core, state, clock = monitored
    window_of(core, state, clock, np.random.default_rng(17).normal(size=(300, 4)) + 3, seconds=60)
    clock.now -= 60  # read the same window again, at the same time
    drifts = {state.snapshot("churn", 59 + k / 1000)[1].drift.verdict for k in range(1, 1000)}
    assert drifts == {"drift"}
    # 999 windows a caller chose, all cut as 60 one-second slots: one computation kept.
    assert len(state._drift_cache) == 1


@pytest.mark.parametrize("window_s", [1, 2, 5, 10, 60])
def test_a_steady_rate_reads_as_itself_over_any_window(window_s: float) -> None:
    """Shipments land once a second, so the newest slot holds part of a second's requests:
    a rate over it too read a steady 50 req/s as 40 over 5 s."""
    from serving.monitoring.stats import StatsRecorder

    now = [1000.0]
    state = MonitorState(clock=lambda: now[0])
    for second in range(100):
        now[0] = 1000.0 + second + 0.3
        recorder = StatsRecorder()
        for _ in range(50):
            recorder.record(1, 200, 0.01)
        state.record("e", "replica", recorder.to_delta())
        if second == 3:
            assert state.snapshot("e", window_s)[1].traffic.throughput_rps == pytest.approx(50)
    for moment in (1.1, 0.9):  # early in a slot no shipment reached yet, then in one it did
        now[0] = 1000.0 + 99 + moment
        assert state.snapshot("e", window_s)[1].traffic.throughput_rps == pytest.approx(50)
