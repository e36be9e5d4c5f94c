"""What a replica records of answered requests: exact quality counts, drift counts, feedback."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from kernels import LiveWindow
from serving.monitoring import observations, stats
from serving.monitoring.observations import ObservedRequests, VersionMonitoring, data_age_seconds
from serving.monitoring.profiles import load_profiles, prediction_features
from serving.monitoring.stats import StatsRecorder
from tests.unit.serving.monitoring_helpers import (
    make_core,
    predict,
    reference_profile,
    send,
    send_many,
    version_config,
)

PROFILE = reference_profile()


def test_nans_and_out_of_range_values_are_counted_exactly() -> None:
    core = make_core(PROFILE)
    inputs, _ = load_profiles(PROFILE)
    rng = np.random.default_rng(3)
    batches = []
    for i in range(150):  # more than one chunk, one to four rows each
        rows = rng.normal(size=(1 + i % 4, 4))
        rows[rng.random(rows.shape) < 0.1] = np.nan
        rows[rng.random(rows.shape) < 0.05] = 50.0  # far outside the training range
        batches.append(rows.astype(np.float32))
    assert {r.status for r in asyncio.run(send_many(core, batches))} == {200}
    part = core.take_stats().to_delta()[1]["monitoring"]

    everything = np.concatenate(batches).astype(np.float64)
    lows = np.array([f.min for f in inputs.features])
    highs = np.array([f.max for f in inputs.features])
    missing = np.isnan(everything)
    outside = ~missing & ((everything < lows) | (everything > highs))
    assert part["rows"] == everything.shape[0]
    assert part["missing_values"] == missing.sum() > 0
    assert part["rows_with_missing"] == missing.any(axis=1).sum()
    assert part["inputs"]["missing"].tolist() == missing.sum(axis=0).tolist()
    assert part["inputs"]["out_of_range"].tolist() == outside.sum(axis=0).tolist()
    assert part["rows_out_of_support"] == outside.any(axis=1).sum() > 0


def test_chunked_counts_equal_one_pass_over_every_row() -> None:
    core = make_core(PROFILE)
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=(2, 4)).astype(np.float32) for _ in range(300)]
    asyncio.run(send_many(core, batches))
    part = core.take_stats().to_delta()[1]["monitoring"]
    inputs, predictions = load_profiles(PROFILE)
    rows = np.concatenate(batches).astype(np.float64)
    expected = LiveWindow(inputs, 0)
    expected.update(rows)
    assert part["inputs"]["hist"].tolist() == expected.hist.tolist()
    expected_predictions = LiveWindow(predictions, 0)
    expected_predictions.update(prediction_features("classification", predict(rows).astype(np.float32)))
    assert part["predictions"]["hist"].tolist() == expected_predictions.hist.tolist()
    # The sample ring keeps the newest rows, bounded by its capacity.
    assert part["inputs"]["samples"].shape == (observations.SAMPLE_CAPACITY, 4)
    np.testing.assert_array_equal(part["inputs"]["samples"], rows[-observations.SAMPLE_CAPACITY:])


def test_predictions_are_kept_by_the_server_id_never_the_clients() -> None:
    core = make_core(PROFILE)
    rows = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    named = send(core, rows[:1], "client-id")
    anonymous = send(core, rows[1:])
    named_id = named.headers["x-modelplane-request-id"]
    server_id = anonymous.headers["x-modelplane-request-id"]
    # The client's id is echoed; the server's id is in the header and the parameters.
    assert json.loads(named.body)["id"] == "client-id"
    assert json.loads(named.body)["parameters"]["modelplane_request_id"] == named_id
    assert json.loads(anonymous.body)["id"] == server_id
    assert len({named_id, server_id}) == 2 and len(server_id) == 32
    kept = dict(core.take_stats().to_delta()[1]["monitoring"]["feedback"])
    classes = predict(rows).argmax(axis=1).tolist()
    assert kept == {named_id: classes[0], server_id: classes[1:]}


def test_feedback_kept_per_shipment_is_bounded_and_the_rest_counted(monkeypatch) -> None:
    monkeypatch.setattr(observations, "MAX_FEEDBACK_PER_DELTA", 10)
    core = make_core(PROFILE)
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 25))
    part = core.take_stats().to_delta()[1]["monitoring"]
    assert len(part["feedback"]) == 10 and part["feedback_dropped"] == 15


def test_a_version_without_a_profile_still_counts_missing_values() -> None:
    core = make_core(None)
    rows = np.array([[np.nan, 1, 2, np.nan]], dtype=np.float32)
    send(core, rows)
    part = core.take_stats().to_delta()[1]["monitoring"]
    assert part["missing_values"] == 2 and part["inputs"] is None
    assert part["problem"] == "no reference profile in the manifest"


def test_a_profile_of_the_wrong_width_turns_drift_off_and_says_why() -> None:
    config = version_config(profile=reference_profile()).model_copy(
        update={"inputs": [version_config().inputs[0].model_copy(update={"shape": [None, 5]})]})
    spec = VersionMonitoring.build(config)
    assert spec.profile is None
    assert "profile has 4 features but the inputs have 5" in spec.problem


def test_rejections_are_counted_by_reason() -> None:
    core = make_core(PROFILE)
    good = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}
    bodies = [
        {"inputs": [{**good, "shape": [2, 2]}]},
        {"inputs": [{**good, "datatype": "INT32"}]},
        {"inputs": [{**good, "name": "other"}]},
        {"inputs": [good], "outputs": [{"name": "nope"}]},
    ]
    for body in bodies:
        result = asyncio.run(core.handle("POST", "/infer", {}, json.dumps(body).encode()))
        assert result.status == 400
    asyncio.run(core.handle("POST", "/infer", {}, b"{not json"))
    delta = core.take_stats().to_delta()
    assert delta[1]["rejected"] == {"shape": 1, "datatype": 1, "unknown_input": 1, "unknown_output": 1}
    assert delta[0]["rejected"] == {"malformed": 1}  # refused before a version was chosen


def test_feature_timestamps_give_the_age_of_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    import types

    import serving.core

    core = make_core(PROFILE)
    now = datetime.now(UTC).timestamp()
    monkeypatch.setattr(serving.core, "time", types.SimpleNamespace(
        time=lambda: now, perf_counter=time.perf_counter))  # the requests' own clock: "now"
    send(core, np.zeros((1, 4), np.float32), feature_timestamp=now - 30)
    send(core, np.zeros((1, 4), np.float32),
         feature_timestamp=datetime.fromtimestamp(now - 90, UTC).isoformat())
    send(core, np.zeros((1, 4), np.float32), feature_timestamp="yesterday")  # ignored, still served
    count, total, oldest = core.take_stats().to_delta()[1]["monitoring"]["data_age"]
    assert count == 2
    assert total == pytest.approx(120) and oldest == pytest.approx(90)


NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(("raw", "age"), [
    (NOW - 500, 500.0), ("2027-01-15T07:51:40Z", 500.0), ("2027-01-15T07:51:40", 500.0),
    (NOW + 200, 0.0),  # a producer's clock a little ahead
    ("nonsense", None), (True, None), (None, None),
    # No time features were taken at: one would set the window's mean age alone.
    (-1e308, None), (0, None), (NOW - 400 * 86400, None),
    (NOW * 1000, None),  # milliseconds: not "fresh"
])
def test_data_age_parsing(raw, age) -> None:
    assert data_age_seconds({"feature_timestamp": raw}, now=NOW) == age


def test_monitoring_off_records_nothing() -> None:
    core = make_core(PROFILE)
    config, backends, _ = core._state
    core.update(config.model_copy(update={"monitoring": False}), backends)
    send(core, np.zeros((1, 4), np.float32))
    assert core.take_stats().to_delta() == {}


def _limits(monkeypatch: pytest.MonkeyPatch, early: int, hard: int) -> None:
    for module in (observations, stats):
        monkeypatch.setattr(module, "PENDING_LIMIT", early)
        monkeypatch.setattr(module, "PENDING_HARD_LIMIT", hard)


def _counting_accounts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    accounted: list[int] = []
    original = observations.VersionObservations.account

    def counting(self, items):
        accounted.append(len(items))
        return original(self, items)

    monkeypatch.setattr(observations.VersionObservations, "account", counting)
    return accounted


def test_the_request_path_only_appends_and_the_shipment_accounts(monkeypatch) -> None:
    accounted = _counting_accounts(monkeypatch)
    core = make_core(PROFILE)
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 600))
    assert accounted == []  # 600 answers, no kernel on any request's path
    part = core.take_stats().to_delta()[1]["monitoring"]
    assert accounted == [600] and part["rows"] == 600


def test_observed_requests_waiting_for_their_shipment_leave_the_garbage_collector_idle() -> None:
    """The collector runs when the containers it tracks pile up: a busy replica holding a
    tuple and dicts per observed request for a second ran it every few hundred requests,
    and a full collection, milliseconds on the event loop, every few seconds. Observing
    keeps none: the net count of tracked allocations stays where it was."""
    import gc

    recorder = stats.StatsRecorder(monitoring={1: VersionMonitoring.build(version_config(profile=PROFILE))})
    rows = [np.full((1, 4), float(i), np.float32) for i in range(2000)]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for i, row in enumerate(rows):
            # As the request path does: the request's dicts are its own, dropped after.
            recorder.observe(1, f"r{i}", {"input": row}, {"probabilities": row[:, :3]}, None)
        grew = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert grew < 50, grew  # list growth only; a tracked container per request was 2,000+
    part = recorder.to_delta()[1]["monitoring"]
    assert part["rows"] == 2000 and len(part["feedback"]) == 2000


def test_a_busy_second_asks_for_an_early_shipment_instead_of_accounting_on_the_path(
        monkeypatch) -> None:
    """At the limit the kernels' work (milliseconds for a busy second) would stall every
    request in flight: the core asks its shipper to take the recorder instead."""
    _limits(monkeypatch, early=50, hard=200)
    accounted = _counting_accounts(monkeypatch)
    core = make_core(PROFILE)
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 49))
    assert not core.stats_due.is_set()
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 71, prefix="s"))
    assert core.stats_due.is_set() and accounted == []  # 120 waiting, none accounted
    taken = core.take_stats()
    assert not core.stats_due.is_set()  # the fresh recorder starts empty
    assert taken.to_delta()[1]["monitoring"]["rows"] == 120 and accounted == [120]


def test_a_backlog_past_the_hard_limit_is_accounted_on_the_request_path(monkeypatch) -> None:
    """A shipper that does not come (stuck, or far behind) must not let memory grow."""
    _limits(monkeypatch, early=50, hard=200)
    accounted = _counting_accounts(monkeypatch)
    core = make_core(PROFILE)
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 450))
    assert accounted == [200, 200]  # two full backlogs accounted on the path, 50 waiting
    assert core.recorder._observed_count == 50
    assert core.take_stats().to_delta()[1]["monitoring"]["rows"] == 450


def test_large_requests_are_bounded_in_bytes_not_only_in_count(monkeypatch) -> None:
    """A binary input is a view of its whole request body: a few thousand large requests
    held for a shipper waiting on a slow Monitor were gigabytes. The bytes they hold ask
    for the early shipment, and past the hard bound are accounted on the path."""
    _limits(monkeypatch, early=10_000, hard=40_000)  # counts far off
    one = 4 * 4 + 3 * 4  # a row's input and its three probabilities, float32
    for module in (observations, stats):
        monkeypatch.setattr(module, "PENDING_BYTES_LIMIT", 50 * one)
        monkeypatch.setattr(module, "PENDING_BYTES_HARD_LIMIT", 200 * one)
    accounted = _counting_accounts(monkeypatch)
    core = make_core(PROFILE)
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 49))
    assert not core.stats_due.is_set()
    asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 401, prefix="s"))
    assert core.stats_due.is_set()
    assert accounted == [200, 200] and core.recorder._observed_bytes == 50 * one
    assert core.take_stats().to_delta()[1]["monitoring"]["rows"] == 450


def test_accounting_that_fails_never_changes_an_answer_and_is_counted(monkeypatch, caplog) -> None:
    def broken(self, items):
        raise FloatingPointError("a kernel fault")

    _limits(monkeypatch, early=4, hard=8)  # accounted on the request path
    monkeypatch.setattr(observations.VersionObservations, "account", broken)
    core = make_core(PROFILE)
    results = asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 20))
    assert [r.status for r in results] == [200] * 20  # accounted on the path: still answered
    delta = core.take_stats().to_delta()[1]
    assert delta["codes"] == {200: 20}  # each request counted once, as answered
    assert delta["unobserved_requests"] == 20
    assert "could not account" in caplog.text

    from serving.monitoring.monitor import MonitorState

    state = MonitorState()
    state.record("churn", "replica-1", {1: delta})
    assert state.snapshot("churn", 60)[1].quality.unobserved_requests == 20


def test_requests_without_an_input_leave_the_chunks_inputs_unread_never_misaligned() -> None:
    """Columns stay aligned with their requests: a chunk whose last requests lacked the
    input is not read as the rows of the others (inputs are required today; this is what
    a request without one would do)."""
    recorder = stats.StatsRecorder(monitoring={1: VersionMonitoring.build(version_config(profile=PROFILE))})
    row = np.zeros((1, 4), np.float32)
    for i in range(3):
        recorder.observe(1, f"r{i}", {"input": row}, {"probabilities": row[:, :3]}, None)
    recorder.observe(1, "r3", {}, {"probabilities": row[:, :3]}, None)
    part = recorder.to_delta()[1]["monitoring"]
    assert part["rows"] == 0 and part["inputs"] is None  # not three rows for four requests
    assert len(part["feedback"]) == 4  # the outputs were all there


def test_an_empty_request_costs_the_other_requests_nothing() -> None:
    """A zero-row request alone in its way of routing (it reshaped to nothing and raised)
    lost the accounting of the whole chunk, every routing's, as unobserved."""
    recorder = StatsRecorder()
    recorder.monitoring = {1: VersionMonitoring.build(version_config(1))}
    requests, rng = ObservedRequests(), np.random.default_rng(9)
    answers: dict[str, np.ndarray] = {}
    for index, routed in enumerate(["random", "sticky", "sticky", "sticky", "pinned"]):
        rows = 0 if index == 0 else 1
        answers[f"r{index}"] = rng.random((rows, 3)).astype(np.float32)
        requests.add(f"r{index}", {"input": rng.normal(size=(rows, 4)).astype(np.float32)},
                     {"probabilities": answers[f"r{index}"]}, None, routed)
    recorder._account(1, requests)
    delta = recorder.to_delta()[1]
    assert "unobserved_requests" not in delta
    monitoring = delta["monitoring"]
    assert monitoring["rows"] == 4
    kept = dict(monitoring["routed"]["sticky"]["feedback"])
    assert kept == {f"r{i}": float(np.argmax(answers[f"r{i}"])) for i in (1, 2, 3)}
    assert dict(monitoring["routed"]["pinned"]["feedback"]) == {"r4": float(np.argmax(answers["r4"]))}


def test_requests_of_another_width_cost_the_others_nothing() -> None:
    """A model with a free input dimension (token ids, images) answers requests of several
    widths: those of one chunk are accounted by width, never dropped together."""
    from serving.monitoring.observations import ObservedRequests, VersionObservations
    from serving.schemas import TensorSignature, VersionConfig

    config = VersionConfig(
        version=1, model="tokens", artifact_url="http://unused", digest="1" * 64,
        inputs=[TensorSignature(name="tokens", dtype="float32", shape=[None, None])],
        outputs=[TensorSignature(name="probabilities", dtype="float32", shape=[None, 3])],
        task="classification")
    observed = VersionObservations(VersionMonitoring.build(config))
    requests, rng = ObservedRequests(), np.random.default_rng(8)
    answers: dict[str, np.ndarray] = {}
    for index in range(60):
        width = 5 if index in (7, 31) else 4  # two odd ones among them, one with a NaN
        tokens = rng.normal(size=(1, width)).astype(np.float32)
        if index == 31:
            tokens[0, 2] = np.nan
        answers[f"r{index}"] = rng.random((1, 3)).astype(np.float32)
        requests.add(f"r{index}", {"tokens": tokens}, {"probabilities": answers[f"r{index}"]},
                     None, "random")
    observed.account(requests)
    delta = observed.to_delta()
    assert delta["rows"] == 60 and delta["missing_values"] == 1 and delta["rows_with_missing"] == 1
    kept = dict(delta["feedback"])
    assert kept == {rid: float(np.argmax(scores)) for rid, scores in answers.items()}


def test_the_bytes_held_count_the_strings_an_object_array_points_to() -> None:
    texts = np.array(["x" * 1000, "y" * 3000], dtype=object)
    from serving.protocol.tensors import held_bytes

    assert held_bytes([texts]) == texts.nbytes + 4000
    assert held_bytes([np.zeros((2, 4), np.float32)]) == 32
