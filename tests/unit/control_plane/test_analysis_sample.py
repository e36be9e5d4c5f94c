"""The analysis sample is the randomly routed traffic a version answered: pinned, sticky and
rejected requests are counted apart and cannot fill or poison a rollout's gates (issue 13).
Real inference cores (in-process backends) feed a real MonitorState; its snapshot is judged."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from control_plane.rollouts import AnalysisConfig, Verdict, analyse
from control_plane.rollouts.analysis import sample_routings
from serving.monitoring import VersionSnapshot, drift_window
from serving.monitoring.feedback import MAX_LABELS_PER_REQUEST
from serving.monitoring.monitor import MonitorState
from serving.monitoring.observations import attach_profiles
from serving.monitoring.routing import ROUTED_PINNED, ROUTED_STICKY
from serving.monitoring.snapshot import RoutedRequests
from serving.monitoring.stats import StatsRecorder
from tests.unit.serving.monitoring_helpers import infer_body, make_core, predict, reference_profile


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _traffic(pinned: int, sticky: int, rejected: int, randomly: int) -> VersionSnapshot:
    core = make_core()
    row = infer_body(np.zeros((1, 4), np.float32))
    bad = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}'

    async def send() -> None:
        for _ in range(pinned):
            assert (await core.handle("POST", "/versions/1/infer", {}, row)).status == 200
        for index in range(sticky):
            headers = {"x-modelplane-key": f"user-{index}"}
            assert (await core.handle("POST", "/infer", headers, row)).status == 200
        for _ in range(rejected):  # wrong shape: refused after the version was chosen
            assert (await core.handle("POST", "/infer", {}, bad)).status == 400
        for _ in range(randomly):
            assert (await core.handle("POST", "/infer", {}, row)).status == 200

    asyncio.run(send())
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", core.take_stats().to_delta())
    return state.snapshot("churn", 60)[1]


def test_pinned_sticky_and_rejected_requests_are_figures_of_their_own() -> None:
    traffic = _traffic(pinned=30, sticky=20, rejected=10, randomly=7).traffic
    assert traffic.requests == 67  # everything the version saw, as before
    assert traffic.routing["random"] == RoutedRequests(requests=7, server_errors=0, refused=10)
    assert traffic.routing["pinned"] == RoutedRequests(requests=30, server_errors=0)
    assert traffic.routing["sticky"] == RoutedRequests(requests=20, server_errors=0)
    assert (traffic.pinned_requests, traffic.sticky_requests, traffic.rejected_requests) == (30, 20, 10)


def test_a_flood_of_pinned_sticky_and_4xx_requests_does_not_reach_min_samples() -> None:
    stats = _traffic(pinned=150, sticky=150, rejected=150, randomly=20)
    result = analyse(AnalysisConfig(min_samples=100), stats, None)
    assert result.verdict == Verdict.INCONCLUSIVE
    assert "20 randomly routed" in result.reason and "150 pinned" in result.reason
    # An operator may opt in to sticky (A/B per user) or pinned traffic.
    opted = analyse(AnalysisConfig(min_samples=100, include_sticky=True), stats, None)
    assert opted.verdict == Verdict.PASS


def test_rejected_requests_do_not_dilute_the_error_rate() -> None:
    stats = _traffic(pinned=0, sticky=0, rejected=900, randomly=100)
    routing = {**stats.traffic.routing, "random": RoutedRequests(requests=100, server_errors=5)}
    stats = replace(stats, traffic=replace(stats.traffic, routing=routing))  # 5 of 100 failed
    result = analyse(AnalysisConfig(min_samples=100, max_error_rate=0.01), stats, None)
    assert result.verdict == Verdict.FAIL and result.checks["error_rate"]["value"] == 0.05


def test_slow_pinned_requests_do_not_move_the_latency_gates() -> None:
    recorder = StatsRecorder()
    for _ in range(200):
        recorder.record(1, 200, 0.010)  # randomly routed: 10 ms
        recorder.record(1, 200, 0.900, routed=ROUTED_PINNED)  # an attacker's heavy batches
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    stats = state.snapshot("churn", 60)[1]
    every, sample = stats.latency.all_requests, stats.latency.sample
    assert every.count == 400 and every.p95_ms > 800  # everything, as before
    assert sample.count == 200
    assert abs(sample.p95_ms - 10) < 0.5
    gates = AnalysisConfig(min_samples=100, max_p95_ms=100)
    assert analyse(gates, stats, None).verdict == Verdict.PASS
    pinned_too = AnalysisConfig(min_samples=100, max_p95_ms=100, include_pinned=True)
    opted = state.snapshot("churn", 60, sample_routings(pinned_too))[1]
    assert analyse(pinned_too, opted, None).verdict == Verdict.FAIL
    assert "p95_ms" in analyse(pinned_too, opted, None).reason


def test_a_rollout_counting_sticky_requests_judges_no_pinned_ones() -> None:
    """Pinned and sticky latencies travelled in one sketch, so a rollout opting in to
    sticky users (an A/B test per user) judged the pinned requests too, which anyone may
    send to the version they choose, as slow as they like."""
    recorder = StatsRecorder()
    for _ in range(200):
        recorder.record(1, 200, 0.010)
        recorder.record(1, 200, 0.012, routed=ROUTED_STICKY)
        recorder.record(1, 200, 0.900, routed=ROUTED_PINNED)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    sticky = AnalysisConfig(min_samples=100, max_p95_ms=100, include_sticky=True)
    stats = state.snapshot("churn", 60, sample_routings(sticky))[1]
    assert stats.latency.sample.count == 400 and stats.latency.all_requests.count == 600
    assert stats.latency.sample.p95_ms < 20 and sum(stats.latency.sample_bins.counts) == 400
    assert analyse(sticky, stats, None).verdict == Verdict.PASS
    slow_sticky = StatsRecorder()
    for _ in range(200):
        slow_sticky.record(1, 200, 0.010)
        slow_sticky.record(1, 200, 0.900, routed=ROUTED_STICKY)
    state.record("churn", "replica-2", slow_sticky.to_delta())
    stats = state.snapshot("churn", 60, sample_routings(sticky))[1]
    assert analyse(sticky, stats, None).verdict == Verdict.FAIL


def _latency_snapshot(latencies_s: list[float]) -> VersionSnapshot:
    """A version's snapshot from a real Monitor after randomly routed requests that took
    ``latencies_s``."""
    recorder = StatsRecorder()
    for latency in latencies_s:
        recorder.record(1, 200, latency)
    state = MonitorState(clock=Clock())
    state.record("latency", "replica", recorder.to_delta())
    return state.snapshot("latency", 60)[1]


def test_latency_gates_fail_on_evidence_not_on_a_thin_windows_luck() -> None:
    rng = np.random.default_rng(3)
    stable = _latency_snapshot(list(rng.lognormal(np.log(0.010), 0.3, size=300)))
    # Twelve requests from the same distribution, one of them unlucky: the point p95 ratio
    # is past 1.5, but twelve values cannot bound a p95 from above or place it far up. Not
    # a failure, nor a pass: the next window decides.
    lucky = [*rng.lognormal(np.log(0.010), 0.3, size=11), 0.040]
    thin = _latency_snapshot(lucky)
    gates = AnalysisConfig(min_samples=10, max_p95_ratio=1.5, max_p95_ms=25)
    result = analyse(gates, thin, stable)
    assert thin.latency.sample.p95_ms > 25 and result.checks["p95_ratio"]["value"] > 1.5
    assert result.verdict == Verdict.INCONCLUSIVE, result.reason
    assert result.checks["p95_ms"]["bound"] < 25 and result.checks["p95_ratio"]["bound"] < 1.5
    assert result.checks["p95_ms"]["unproven"] and result.checks["p95_ratio"]["unproven"]
    assert "p95_ratio 2.388 > 1.5, not yet on evidence (95% lower bound" in result.reason
    # Twelve slow requests are evidence enough against a 25 ms limit and against stable.
    slow = _latency_snapshot(list(rng.lognormal(np.log(0.050), 0.1, size=12)))
    failed = analyse(gates, slow, stable)
    assert failed.verdict == Verdict.FAIL
    assert "p95_ratio" in failed.reason and "95% lower bound" in failed.reason
    assert "over 12 and 300 requests" in failed.reason


def test_the_latency_bounds_tighten_with_evidence() -> None:
    rng = np.random.default_rng(4)
    widths = []
    for n in (60, 600, 6000):
        latency = _latency_snapshot(list(rng.lognormal(np.log(0.010), 0.3, size=n))).latency.sample
        low, high = latency.p95_bounds_ms
        assert low <= latency.p95_ms <= high
        widths.append((high - low) / latency.p95_ms)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.1


def _two_versions(candidate: dict[int, int], stable: dict[int, int]) -> dict[int, VersionSnapshot]:
    """Snapshots of a real Monitor after randomly routed requests answered with the given
    status codes (count per code): the candidate is version 2, stable version 1."""
    recorder = StatsRecorder()
    for version, codes in ((2, candidate), (1, stable)):
        for code, count in codes.items():
            for _ in range(count):
                recorder.record(version, code, 0.050)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    return state.snapshot("churn", 60)


def test_a_candidate_refusing_what_stable_answers_fails() -> None:
    """Its stricter signature answers 400 to two requests in five that stable answers: the
    4xx are left out of its sample and error rate, so every other gate passed it."""
    snapshots = _two_versions({200: 600, 400: 400}, {200: 1000})
    result = analyse(AnalysisConfig(min_samples=100), snapshots[2], snapshots[1])
    assert result.verdict == Verdict.FAIL, result.reason
    check = result.checks["refused_rate_increase"]
    assert check["value"] == 0.4 and 0.35 < check["bound"] < 0.4
    assert result.checks["error_rate"]["passed"]
    assert "refused_rate_increase 0.4 > 0.01" in result.reason


def test_a_candidate_refusing_everything_fails_rather_than_waiting_for_answers() -> None:
    snapshots = _two_versions({400: 300}, {200: 1000})
    result = analyse(AnalysisConfig(min_samples=100), snapshots[2], snapshots[1])
    assert result.verdict == Verdict.FAIL and "refused_rate_increase 1 > 0.01" in result.reason


def test_refusals_shared_with_stable_or_too_few_to_tell_do_not_fail() -> None:
    same = _two_versions({200: 900, 400: 100}, {200: 9000, 400: 1000})  # bad clients, both
    assert analyse(AnalysisConfig(min_samples=100), same[2], same[1]).verdict == Verdict.PASS
    few = _two_versions({200: 150, 400: 2}, {200: 1000})  # 1.3% on 152: no evidence of 1%
    result = analyse(AnalysisConfig(min_samples=100), few[2], few[1])
    assert result.verdict == Verdict.INCONCLUSIVE
    assert result.checks["refused_rate_increase"]["unproven"]
    off = AnalysisConfig(min_samples=100, max_refused_rate_increase=None)
    worse = _two_versions({200: 600, 400: 400}, {200: 1000})
    assert analyse(off, worse[2], worse[1]).verdict == Verdict.PASS


def test_refusals_are_not_in_the_latency_the_gates_and_alerts_judge() -> None:
    """A refusal never ran the model: its microseconds would pull the sample's p95 down,
    and every request's p95 (what alerts and the stats read) with it."""
    recorder = StatsRecorder()
    for _ in range(200):
        recorder.record(1, 200, 0.050)
        recorder.record(1, 400, 0.0001)
        recorder.record(1, 400, 0.0001)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    latency = state.snapshot("churn", 60)[1].latency
    assert latency.sample.count == 200 and abs(latency.sample.p50_ms - 50) < 1
    assert latency.all_requests.count == 200 and abs(latency.all_requests.p95_ms - 50) < 1


def test_a_candidate_answering_nan_fails() -> None:
    """Its answers hold NaN: HTTP 200, no error, and (for a regression model) nothing the
    drift or accuracy gates can judge. Counted per answer, compared with stable's."""
    recorder = StatsRecorder()
    for index in range(600):
        recorder.record(2, 200, 0.050, not_finite=index % 3 == 0)
        recorder.record(1, 200, 0.050, not_finite=index == 0)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    snapshots = state.snapshot("churn", 60)
    assert snapshots[2].traffic.routing["random"].not_finite == 200
    result = analyse(AnalysisConfig(min_samples=100), snapshots[2], snapshots[1])
    assert result.verdict == Verdict.FAIL and result.checks["error_rate"]["passed"]
    assert "not_finite_rate_increase 0.3317 > 0.01" in result.reason, result.reason
    off = AnalysisConfig(min_samples=100, max_not_finite_rate_increase=None)
    assert analyse(off, snapshots[2], snapshots[1]).verdict == Verdict.PASS


def test_a_candidate_whose_callers_give_up_on_it_fails_and_shared_departures_do_not() -> None:
    """A candidate hanging on a fifth of its requests past its callers' deadlines: they
    leave, and what it answers is fast and error-free. Its share of callers gone, against
    stable's, is the evidence; callers that leave both versions alike are not."""
    recorder = StatsRecorder()
    for index in range(1000):
        if index % 5 == 0:
            recorder.abandon(2)
        else:
            recorder.record(2, 200, 0.010)
        recorder.record(1, 200, 0.010)
        if index % 50 == 0:  # impatient callers, on both
            recorder.abandon(1)
            recorder.abandon(2)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    snapshots = state.snapshot("churn", 60)
    assert snapshots[2].traffic.routing["random"].abandoned == 220
    assert snapshots[2].traffic.requests == 800  # none of them among the requests
    result = analyse(AnalysisConfig(min_samples=100), snapshots[2], snapshots[1])
    assert result.verdict == Verdict.FAIL, result.reason
    assert result.checks["error_rate"]["passed"] and result.checks["p95_ratio"]["passed"]
    assert "abandoned_rate_increase 0.1961 > 0.01" in result.reason, result.reason
    assert analyse(AnalysisConfig(min_samples=100, max_abandoned_rate_increase=None),
                   snapshots[2], snapshots[1]).verdict == Verdict.PASS
    alike = StatsRecorder()
    for index in range(1000):
        for version in (1, 2):
            if index % 10 == 0:
                alike.abandon(version)
            else:
                alike.record(version, 200, 0.010)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", alike.to_delta())
    both = state.snapshot("churn", 60)
    result = analyse(AnalysisConfig(min_samples=100), both[2], both[1])
    assert result.verdict == Verdict.PASS and result.checks["abandoned_rate_increase"]["passed"]


def test_a_candidate_so_slow_its_callers_all_leave_fails_rather_than_waits() -> None:
    recorder = StatsRecorder()
    for index in range(400):
        recorder.abandon(2)
        recorder.record(1, 200, 0.010)
        if index % 40 == 0:
            recorder.record(2, 200, 0.010)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    snapshots = state.snapshot("churn", 60)
    result = analyse(AnalysisConfig(min_samples=100), snapshots[2], snapshots[1])
    assert result.verdict == Verdict.FAIL and "abandoned_rate_increase" in result.reason


def test_the_core_counts_the_answers_holding_nan() -> None:
    from serving.core import InferenceCore
    from serving.schemas import EndpointConfig, RouteTable
    from tests.unit.serving.monitoring_helpers import version_config

    config = version_config()

    class HalfNaN:
        def __init__(self) -> None:
            self.config, self.calls = config, 0

        async def mirror(self, arrays):  # a shadow's call: the same answer
            return await self.infer(arrays)

        async def infer(self, arrays):
            self.calls += 1
            out = np.full((len(arrays["input"]), 3), 0.5, np.float32)
            out[0, 1] = np.nan if self.calls % 2 else 0.5
            return {"probabilities": out}

    core = InferenceCore(EndpointConfig(endpoint="churn", versions=[config],
                                        routes=RouteTable(weights={1: 100})), {1: HalfNaN()})
    row = infer_body(np.zeros((1, 4), np.float32))

    async def send() -> None:
        for _ in range(10):
            assert (await core.handle("POST", "/infer", {}, row)).status == 200

    async def send_nan_inputs() -> None:  # a NaN answer to a NaN input is the caller's
        nan_row = infer_body(np.full((1, 4), np.nan, np.float32))
        for _ in range(10):
            assert (await core.handle("POST", "/infer", {}, nan_row)).status == 200

    asyncio.run(send())
    asyncio.run(send_nan_inputs())
    assert core.take_stats().to_delta()[1]["not_finite"] == {"random": 5}


def _monitored_traffic(send: Any, core: Any = None) -> tuple[MonitorState, list[Any]]:
    """Run ``send(core)`` (a coroutine sending requests) on a monitored core (one version
    unless given) and ship its statistics, with the reference profile, to a real
    MonitorState."""
    core = core or make_core(reference_profile())
    answers = asyncio.run(send(core))
    state = MonitorState(clock=Clock())
    delta = core.take_stats().to_delta()
    attach_profiles(delta, core.monitoring, set())
    state.record("churn", "replica", delta)
    return state, answers


def test_rows_pinned_or_sticky_to_a_version_never_make_the_sample_drift() -> None:
    rng = np.random.default_rng(21)
    shifted = rng.normal(size=(1200, 4)) + 3  # an attacker's rows, far from the reference

    async def send(core: Any) -> list[Any]:
        answers = []
        for row in rng.normal(size=(300, 4)):  # the randomly routed traffic: unshifted
            answers.append(await core.handle("POST", "/infer", {}, infer_body(row[None, :])))
        for index, row in enumerate(shifted):
            if index % 2:
                path, headers = "/versions/1/infer", {}
            else:
                path, headers = "/infer", {"x-modelplane-key": f"k{index}"}
            answers.append(await core.handle("POST", path, headers, infer_body(row[None, :])))
        return answers

    state, answers = _monitored_traffic(send)
    assert all(answer.status == 200 for answer in answers)
    sample = state.snapshot("churn", 60, sample=("random",))[1]
    assert sample.drift.verdict == "ok" and sample.drift.samples == 300
    assert analyse(AnalysisConfig(min_samples=100, fail_on_drift=True), sample, None).verdict \
        == Verdict.PASS
    every = state.snapshot("churn", 60)[1]  # what the stats and alerts show: every request
    assert every.drift.verdict == "drift" and every.drift.samples == 1500
    assert every.quality.rows == 1500 and sample.quality.rows == 1500  # quality: every row
    assert state.histograms("churn", 1, 60)["inputs"]["rows"] == 1500
    opted = state.snapshot("churn", 60, sample=("random", "sticky"))[1]
    assert opted.drift.verdict == "drift" and opted.drift.samples == 900
    failed = analyse(AnalysisConfig(min_samples=100, fail_on_drift=True, include_sticky=True),
                     opted, None)
    assert failed.verdict == Verdict.FAIL and "drift in" in failed.reason


def test_far_off_rows_anyone_sends_at_random_drift_stable_too_and_never_fail_the_candidate(
) -> None:
    """Anyone may send inference requests. Rows far from the reference sent through the
    random route reach stable and the candidate alike, so the drift they make is the
    traffic's: judged against stable's on the same stream, the candidate is not failed.
    (Judged alone it was, and the rollout rolled a healthy candidate back.)"""
    from serving.core import InferenceCore
    from serving.schemas import EndpointConfig, RouteTable
    from tests.unit.serving.monitoring_helpers import ModelBackend, version_config

    versions = [version_config(v, profile=reference_profile()) for v in (1, 2)]
    core = InferenceCore(EndpointConfig(endpoint="churn", versions=versions,
                                        routes=RouteTable(weights={1: 50, 2: 50})),
                         {v.version: ModelBackend(v) for v in versions})
    far_off = np.random.default_rng(23).normal(size=(1200, 4)) + 3

    async def send(core: Any) -> list[Any]:
        return [await core.handle("POST", "/infer", {}, infer_body(row[None, :]))
                for row in far_off]

    state, answers = _monitored_traffic(send, core)
    assert all(answer.status == 200 for answer in answers)
    sample = state.snapshot("churn", 60, sample=("random",))
    stable, candidate = sample[1], sample[2]
    assert stable.drift.verdict == "drift" and candidate.drift.verdict == "drift"
    # Only drift is judged: both versions' latencies here are in-process timings, as noisy
    # as the machine, and the p95 ratio between them proves nothing about the rows.
    config = AnalysisConfig(min_samples=100, fail_on_drift=True, max_p95_ratio=None)
    judged = analyse(config, candidate, stable)
    assert judged.verdict == Verdict.PASS, judged.reason
    assert set(judged.checks["drift"]["also_on_stable"]) >= set(candidate.drift.drifted_features)
    assert analyse(config, candidate, None).verdict == Verdict.FAIL  # alone, as before


def test_a_burst_of_far_off_rows_earlier_in_the_window_drifts_a_busy_stable_too() -> None:
    """The Monitor held each version's newest 2,000 rows: a busy stable's covered its last
    second, a quiet candidate's its whole window, so far-off rows sent at random 20 s
    earlier had left stable's sample and read as the candidate's own drift. (The routing is
    seeded: about 15 of the burst's requests reach the candidate, never none.)"""
    from serving.core import InferenceCore
    from serving.schemas import EndpointConfig, RouteTable
    from tests.unit.serving.monitoring_helpers import ModelBackend, version_config

    rng = np.random.default_rng(27)
    random.seed(27)  # the core's random routing: the candidate's share of the burst
    clock = Clock()
    state = MonitorState(clock=clock)
    versions = [version_config(v, profile=reference_profile()) for v in (1, 2)]
    core = InferenceCore(EndpointConfig(endpoint="churn", versions=versions,
                                        routes=RouteTable(weights={1: 97, 2: 3})),
                         {v.version: ModelBackend(v) for v in versions})
    for second in range(30):
        rows = rng.normal(size=(2000, 4))
        if 6 <= second < 11:
            rows[:, 1] += 3  # anyone's burst of far-off incomes, five seconds long

        async def send(rows: np.ndarray = rows) -> None:
            for request in np.split(rows.astype(np.float32), 100):
                assert (await core.handle("POST", "/infer", {}, infer_body(request))).status == 200

        asyncio.run(send())
        delta = core.take_stats().to_delta()
        attach_profiles(delta, core.monitoring, set())
        state.record("churn", "replica", delta)
        clock.now += 1
    sample = state.snapshot("churn", 60, sample=("random",))
    stable, candidate = sample[1], sample[2]
    assert stable.drift.samples > 50_000 and 1_000 < candidate.drift.samples < 2_000
    assert "income" in candidate.drift.drifted_features
    assert "income" in stable.drift.drifted_features
    # Drift alone: this process's timings of an in-process model are not the test's subject.
    config = AnalysisConfig(min_samples=50, fail_on_drift=True, max_p95_ratio=None)
    judged = analyse(config, candidate, stable)
    assert judged.verdict == Verdict.PASS, judged.reason


def test_labels_of_requests_pinned_to_a_version_never_steer_its_accuracy() -> None:
    rows = np.random.default_rng(22).normal(size=(260, 4)).astype(np.float32)

    async def send(core: Any) -> list[Any]:
        return [await core.handle("POST", "/infer" if index < 60 else "/versions/1/infer", {},
                                  infer_body(row[None, :]))
                for index, row in enumerate(rows)]

    # Labels for half the pinned requests arrive before their predictions are shipped.
    core = make_core(reference_profile())
    ids = [answer.headers["x-modelplane-request-id"] for answer in asyncio.run(send(core))]
    predicted = predict(rows).argmax(axis=1)
    wrong = (predicted + 1) % 3
    state = MonitorState(clock=Clock())
    early = [(rid, [int(w)]) for rid, w in zip(ids[60:160], wrong[60:160], strict=True)]
    assert state.feedback("churn", early)["waiting"] == 100
    delta = core.take_stats().to_delta()
    attach_profiles(delta, core.monitoring, set())
    state.record("churn", "replica", delta)
    # The labeler is honest about its share of the random traffic and lies about the
    # requests it pinned itself: every pinned label says the model was wrong.
    late = [(rid, [int(p)]) for rid, p in zip(ids[:60], predicted[:60], strict=True)]
    late += [(rid, [int(w)]) for rid, w in zip(ids[160:], wrong[160:], strict=True)]
    assert state.feedback("churn", late)["joined"] == 160
    sample = state.snapshot("churn", 60, sample=("random",))[1].accuracy
    assert (sample.labelled, sample.accuracy, sample.labelled_apart) == (60, 1.0, 200)
    gates = AnalysisConfig(min_samples=10, min_accuracy=0.8, min_labels=50)
    assert analyse(gates, state.snapshot("churn", 60, sample=("random",))[1], None).verdict \
        == Verdict.PASS
    every = state.snapshot("churn", 60)[1].accuracy
    assert every.labelled == 260 and every.accuracy == pytest.approx(60 / 260)
    pinned_too = state.snapshot("churn", 60, sample=("pinned",))[1]
    assert pinned_too.accuracy.labelled == 260
    assert analyse(AnalysisConfig(min_samples=10, min_accuracy=0.8, min_labels=50,
                                  include_pinned=True), pinned_too, None).verdict == Verdict.FAIL


def test_too_few_sample_labels_name_the_labels_left_out() -> None:
    rows = np.random.default_rng(23).normal(size=(40, 4)).astype(np.float32)

    async def send(core: Any) -> list[Any]:
        unlabelled = [await core.handle("POST", "/infer", {}, infer_body(row[None, :]))
                      for row in rows[:20]]
        return [await core.handle("POST", "/versions/1/infer", {}, infer_body(row[None, :]))
                for row in rows] + unlabelled

    state, answers = _monitored_traffic(send)
    labels = [(a.headers["x-modelplane-request-id"], [int(p)])
              for a, p in zip(answers[:40], predict(rows).argmax(axis=1), strict=True)]
    state.feedback("churn", labels)
    result = analyse(AnalysisConfig(min_samples=20, min_accuracy=0.5, min_labels=20),
                     state.snapshot("churn", 60, sample=("random",))[1], None)
    assert result.verdict == Verdict.INCONCLUSIVE
    assert "0 labels joined in the window, need 20" in result.reason
    assert "not counted: 40 joined with pinned or sticky requests" in result.reason


def test_a_request_of_more_rows_than_labels_may_name_keeps_no_prediction() -> None:
    rng = np.random.default_rng(24)

    async def send(core: Any) -> list[Any]:
        return [await core.handle("POST", "/infer", {}, infer_body(rng.normal(size=(rows, 4))))
                for rows in (MAX_LABELS_PER_REQUEST, MAX_LABELS_PER_REQUEST + 1, 1)]

    state, answers = _monitored_traffic(send)
    assert [answer.status for answer in answers] == [200, 200, 200]
    assert state.join.held("churn") == 2  # the largest that labels can name, and one row
    accuracy = state.snapshot("churn", 60)[1].accuracy
    assert accuracy.not_kept == 1 and accuracy.to_json()["not_kept"] == 1


def test_a_snapshot_refuses_a_way_of_routing_it_does_not_know() -> None:
    state = MonitorState(clock=Clock())
    with pytest.raises(ValueError, match="unknown ways of routing"):
        state.snapshot("churn", 60, sample=("random", "forged"))


def test_each_way_of_routing_weighs_in_the_drift_sample_as_its_share_of_rows() -> None:
    """Replicas ship a few hundred rows a second per way of routing, however many they saw:
    a trickle of pinned rows must not weigh like the whole random traffic in KS's rows."""
    rng = np.random.default_rng(25)
    clock = Clock()
    state = MonitorState(clock=clock)
    core = make_core(reference_profile())
    for _ in range(5):  # five seconds: 2,000 random rows and 64 pinned, shifted ones each
        async def send() -> None:
            for _ in range(20):
                rows = rng.normal(size=(100, 4)).astype(np.float32)
                assert (await core.handle("POST", "/infer", {}, infer_body(rows))).status == 200
            shifted = (rng.normal(size=(64, 4)) + 6).astype(np.float32)
            assert (await core.handle("POST", "/versions/1/infer", {},
                                      infer_body(shifted))).status == 200

        asyncio.run(send())
        delta = core.take_stats().to_delta()
        attach_profiles(delta, core.monitoring, set())
        state.record("churn", "replica", delta)
        clock.now += 1
    live, rows = drift_window.window(state.series[("churn", 1)].drift_parts(0, None), 60)
    assert rows == 5 * 2064
    columns = live.sample_columns()  # features x sampled rows
    shifted_share = float(np.mean(columns[0] > 3))
    assert columns.shape[1] > 1000 and abs(shifted_share - 64 / 2064) < 0.01, shifted_share


def test_an_empty_request_beside_a_two_row_one_shifts_no_prediction() -> None:
    rows = np.random.default_rng(26).normal(size=(203, 4)).astype(np.float32)

    async def send(core: Any) -> list[Any]:
        batches = [rows[:0], *(rows[i:i + 1] for i in range(200)), rows[200:202]]
        return [await core.handle("POST", "/infer", {}, infer_body(batch)) for batch in batches]

    state, answers = _monitored_traffic(send)
    # A request of no rows is refused (no evidence of the model); the rest are answered.
    assert answers[0].status == 400 and b"no rows" in answers[0].body
    assert all(answer.status == 200 for answer in answers[1:])
    truth = predict(rows).argmax(axis=1)  # a model that is always right
    labels = [(a.headers["x-modelplane-request-id"], [int(t)])
              for a, t in zip(answers[1:201], truth[:200], strict=True)]
    labels.append((answers[201].headers["x-modelplane-request-id"], [int(t) for t in truth[200:202]]))
    assert state.feedback("churn", labels)["joined"] == 201
    accuracy = state.snapshot("churn", 60, sample=("random",))[1].accuracy
    assert (accuracy.labelled, accuracy.accuracy, accuracy.invalid) == (202, 1.0, 0)


class OneAtATime:
    """A version that runs one request at a time, ``run_s`` each: requests queue for it."""

    def __init__(self, config: Any, run_s: float) -> None:
        from tests.unit.serving.monitoring_helpers import ModelBackend

        self.config, self.run_s, self._model = config, run_s, ModelBackend(config)
        self._lock: asyncio.Lock | None = None

    async def mirror(self, arrays):  # a shadow's call: the same answer
        return await self.infer(arrays)

    async def infer(self, arrays: dict[str, Any]) -> dict[str, Any]:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            await asyncio.sleep(self.run_s)
            return await self._model.infer(arrays)


def _canary(run_s: dict[int, float], flooded: int | None) -> tuple[VersionSnapshot, VersionSnapshot]:
    """Candidate (2) and stable (1) after randomly routed requests at 50/50, while
    ``flooded`` (a version, or None) gets a flood of requests pinned to it."""
    from serving.core import InferenceCore
    from serving.schemas import EndpointConfig, RouteTable
    from tests.unit.serving.monitoring_helpers import version_config

    configs = {v: version_config(v) for v in (1, 2)}
    core = InferenceCore(EndpointConfig(endpoint="churn", versions=list(configs.values()),
                                        routes=RouteTable(weights={1: 50, 2: 50})),
                         {v: OneAtATime(configs[v], run_s[v]) for v in (1, 2)})
    row = infer_body(np.zeros((1, 4), np.float32))

    async def send() -> None:
        done = asyncio.Event()

        async def flood() -> None:
            while not done.is_set():
                assert (await core.handle("POST", f"/versions/{flooded}/infer", {}, row)).status == 200

        flooders = [asyncio.create_task(flood()) for _ in range(6 if flooded else 0)]
        await asyncio.sleep(0.01)
        for _ in range(300):
            assert (await core.handle("POST", "/infer", {}, row)).status == 200
        done.set()
        await asyncio.gather(*flooders)

    asyncio.run(send())
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", core.take_stats().to_delta())
    snapshot = state.snapshot("churn", 60, sample=("random",))
    return snapshot[2], snapshot[1]


GATES = AnalysisConfig(min_samples=100, max_p95_ratio=1.5)


def test_a_flood_pinned_to_a_good_candidate_cannot_fail_it() -> None:
    candidate, stable = _canary({1: 0.001, 2: 0.001}, flooded=2)
    assert candidate.latency.sample.p95_ms > 2 * stable.latency.sample.p95_ms  # it queued
    result = analyse(GATES, candidate, stable)
    assert result.verdict == Verdict.INCONCLUSIVE, result.reason
    assert "loaded the versions unevenly" in result.reason and result.checks["p95_ratio"]["disturbed"]


def test_a_flood_pinned_to_stable_cannot_pass_a_slow_candidate() -> None:
    candidate, stable = _canary({1: 0.001, 2: 0.008}, flooded=1)
    result = analyse(GATES, candidate, stable)
    assert result.verdict == Verdict.INCONCLUSIVE, result.reason
    assert result.checks["p95_ratio"]["disturbed"]


def test_a_flood_pinned_to_stable_cannot_hide_the_candidate_s_own_slowness() -> None:
    """The flood loaded stable, not the candidate: what the candidate's sample shows of
    itself past an absolute limit is its own, never passed, and held rather than failed
    only where stable's loaded share is past the limit too and the candidate is not shown
    slower than it past the ratio allowed. (Real timings on a shared machine: how far
    apart they land varies with its load; test_rollout_logic.py pins each outcome.)"""
    candidate, stable = _canary({1: 0.001, 2: 0.03}, flooded=1)
    result = analyse(replace(GATES, max_p95_ms=10), candidate, stable)
    assert result.verdict != Verdict.PASS and not result.checks["p95_ms"]["passed"]
    assert result.checks["p95_ms"]["disturbed"], result.reason
    mine, theirs = candidate.latency.sample, stable.latency.sample
    if "also_on_stable" in result.checks["p95_ms"]:
        assert result.verdict == Verdict.INCONCLUSIVE and theirs.p95_ms > 10, result.reason
        assert mine.p95_bounds_ms[0] <= theirs.p95_ms * 1.5  # not shown slower past it
    else:
        assert result.verdict == Verdict.FAIL and result.rejects and "p95_ms" in result.reason


def test_a_shadow_crowded_out_is_still_judged_on_what_it_answered() -> None:
    from serving.monitoring import ShadowComparison

    gates = AnalysisConfig(min_samples=100, max_error_rate=0.05, min_shadow_agreement=0.9)
    flood = _traffic(pinned=400, sticky=0, rejected=0, randomly=0)
    every_one_dropped = replace(flood, shadow=ShadowComparison(dropped=150))
    result = analyse(gates, every_one_dropped, None, shadow=True)
    assert result.verdict == Verdict.INCONCLUSIVE and "150 mirrored requests were dropped" in result.reason
    disagreeing = replace(flood, shadow=ShadowComparison(compared=200, dropped=60, agreement=0.5))
    result = analyse(gates, disagreeing, None, shadow=True)
    assert result.verdict == Verdict.FAIL and result.reason == "shadow_agreement 0.5 < 0.9"


def test_mirrored_requests_a_pinned_flood_crowded_out_do_not_fail_the_shadow() -> None:
    from serving.monitoring import ShadowComparison

    crowded = ShadowComparison(compared=200, errors=1, dropped=60, agreement=1.0)
    flooded = replace(_traffic(pinned=400, sticky=0, rejected=0, randomly=0), shadow=crowded)
    result = analyse(AnalysisConfig(min_samples=100, max_error_rate=0.05), flooded, None, shadow=True)
    assert result.verdict == Verdict.INCONCLUSIVE and "400 requests sent to it directly" in result.reason
    alone = replace(flooded, traffic=replace(flooded.traffic, routing={}))
    result = analyse(AnalysisConfig(min_samples=100, max_error_rate=0.05), alone, None, shadow=True)
    assert result.verdict == Verdict.FAIL  # dropped with nothing else sent to it: it cannot keep up
    failing = replace(flooded, shadow=replace(crowded, errors=40))
    result = analyse(AnalysisConfig(min_samples=100, max_error_rate=0.05), failing, None, shadow=True)
    assert result.verdict == Verdict.FAIL  # its own failures are judged, flood or not


def _answers(total: int, not_finite: int, version: int = 2) -> VersionSnapshot:
    recorder = StatsRecorder()
    for index in range(total):
        recorder.record(version, 200, 0.010, not_finite=index < not_finite)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    return state.snapshot("churn", 60)[version]


@pytest.mark.parametrize("stable_requests", [0, 20], ids=["no-stable", "thin-stable"])
def test_a_candidate_answering_nans_at_100_percent_fails_without_stable_to_compare(
        stable_requests: int) -> None:
    """Every step at 100% (blue-green's switch, a canary's last) leaves stable no sample:
    a model answering only NaN must not pass for lack of a comparison."""
    stable = _answers(stable_requests, 0, version=1) if stable_requests else None
    broken = analyse(AnalysisConfig(), _answers(1000, 1000), stable)
    assert broken.verdict == Verdict.FAIL and "not_finite_rate 1 > 0.01" in broken.reason
    few = analyse(AnalysisConfig(), _answers(1000, 12), stable)  # 1.2%: no evidence past 1%
    assert few.verdict == Verdict.INCONCLUSIVE and few.checks["not_finite_rate"]["unproven"]
    # A stable too thin to compare with leaves the relative checks unknown.
    passed = Verdict.PASS if stable is None else Verdict.INCONCLUSIVE
    assert analyse(AnalysisConfig(), _answers(1000, 0), stable).verdict == passed


def test_two_stray_server_errors_in_a_thin_window_are_no_verdict() -> None:
    snapshots = _two_versions({200: 118, 500: 2}, {200: 1998, 500: 2})
    result = analyse(AnalysisConfig(min_samples=100), snapshots[2], snapshots[1])
    assert result.verdict == Verdict.INCONCLUSIVE and result.checks["error_rate"]["value"] > 0.01
    assert result.checks["error_rate"]["unproven"]
    quiet = _two_versions({200: 119, 500: 1}, {200: 1998, 500: 2})  # within the limit
    assert analyse(AnalysisConfig(min_samples=100), quiet[2], quiet[1]).verdict == Verdict.PASS
    many = _two_versions({200: 900, 500: 100}, {200: 1000})
    assert analyse(AnalysisConfig(min_samples=100), many[2], many[1]).verdict == Verdict.FAIL


def _shadowed(primary_breaks_on: float | None, values: list[float]) -> VersionSnapshot:
    """Version 2 shadowing version 1 after one request per value of ``values``: the shadow
    answers NaN for every request, the primary for those whose first input is
    ``primary_breaks_on``."""
    from serving.core import InferenceCore
    from serving.schemas import EndpointConfig, RouteTable
    from tests.unit.serving.monitoring_helpers import ModelBackend, version_config

    class Broken(ModelBackend):
        def __init__(self, config: Any, breaks_on: float | None) -> None:
            super().__init__(config)
            self.breaks_on = breaks_on

        async def infer(self, arrays: dict[str, Any]) -> dict[str, Any]:
            answer = await super().infer(arrays)
            if self.breaks_on is not None and float(arrays["input"][0, 0]) != self.breaks_on:
                return answer
            return {name: np.full_like(value, np.nan) for name, value in answer.items()}

    configs = {v: version_config(v) for v in (1, 2)}
    core = InferenceCore(EndpointConfig(endpoint="churn", versions=list(configs.values()),
                                        routes=RouteTable(weights={1: 100}, shadows=[2])),
                         {1: Broken(configs[1], primary_breaks_on) if primary_breaks_on is not None
                          else ModelBackend(configs[1]), 2: Broken(configs[2], None)})

    async def send() -> None:
        for value in values:
            row = infer_body(np.full((1, 4), value, np.float32))
            assert (await core.handle("POST", "/infer", {}, row)).status == 200
        await asyncio.sleep(0.05)  # the shadows run after the answers

    asyncio.run(send())
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", core.take_stats().to_delta())
    return state.snapshot("churn", 60)[2]


def test_a_shadow_answering_nans_fails_the_shadow_step() -> None:
    shadow = _shadowed(None, [0.0] * 150)
    assert shadow.shadow.errors == 150
    result = analyse(AnalysisConfig(min_samples=100), shadow, None, shadow=True)
    assert result.verdict == Verdict.FAIL and "shadow_error_rate 1 > 0.01" in result.reason


def test_a_shadow_s_nan_where_the_primary_answered_nan_too_is_no_failure_of_it() -> None:
    """Inputs neither version can score say nothing against the shadow; only its NaNs
    where the primary answered numbers do."""
    shadow = _shadowed(9.0, [9.0] * 150 + [0.0] * 30)
    assert (shadow.shadow.errors, shadow.shadow.compared) == (30, 0)
    result = analyse(AnalysisConfig(min_samples=100), shadow, None, shadow=True)
    assert result.verdict == Verdict.INCONCLUSIVE, result.reason


def test_a_drift_gate_without_a_verdict_is_unknown_not_passed() -> None:
    """Too few rows in the window for a drift verdict (a quiet candidate, or fewer than
    the Monitor needs for one) passed fail_on_drift as if the inputs had not drifted."""
    from serving.monitoring.snapshot import Drift, DriftVerdict
    from tests.snapshots import served

    quiet = replace(served(200), drift=Drift(verdict=DriftVerdict.INSUFFICIENT,
                                             reason="60 rows, need 100"))
    gate = AnalysisConfig(min_samples=50, fail_on_drift=True)
    result = analyse(gate, quiet, None)
    assert result.verdict == Verdict.INCONCLUSIVE
    assert "drift cannot be judged" in result.reason and "60 rows, need 100" in result.reason
    assert analyse(AnalysisConfig(min_samples=50), quiet, None).verdict == Verdict.PASS
    judged = replace(quiet, drift=Drift(verdict=DriftVerdict.OK, samples=500))
    assert analyse(gate, judged, None).verdict == Verdict.PASS
