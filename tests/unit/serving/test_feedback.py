"""Ground truth: the bounded prediction store, the join, and sklearn-equal online metrics."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from sklearn import metrics

from serving.feedback_auth import FeedbackAuthorizer
from serving.monitoring import feedback
from serving.monitoring.feedback import (
    MAX_PREDICTION_BYTES,
    FeedbackJoin,
    class_index,
    classification_metrics,
    prediction_bytes,
    regression_metrics,
)
from serving.monitoring.monitor import MonitorState
from tests.unit.serving.monitoring_helpers import (
    infer_body,
    make_core,
    predict,
    reference_profile,
    send_many,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_store_drops_the_oldest_when_full_and_counts_them() -> None:
    join = FeedbackJoin(Clock(), max_predictions=3)
    join.add_predictions("e", 1, [(f"r{i}", [i]) for i in range(5)])
    assert join.held("e") == 3 and join.stats("e").dropped_full == 2
    joined, waiting = join.add_labels("e", [("r0", [0]), ("r4", [4])])
    assert [p.predicted for p in joined] == [[4]] and waiting == 1  # r0 was dropped


def test_a_shipment_stored_in_bulk_keeps_the_store_as_one_stored_request_by_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A shipment of one value per new request is stored by C loops; one holding ids seen
    before, an id twice, a label already waiting or a list of values, request by request.
    Both keep the same order (newest last, so evicted last), counts and bytes: a reference
    store (newest wins, moved to the end) says what each must hold."""
    join = FeedbackJoin(Clock(), max_predictions=10_000)
    reference: dict[str, float | list[float]] = {}

    def ship(items: list[tuple[str, float | list[float]]]) -> list[tuple[str, list[float]]]:
        waiting = set(join._waiting.get("e", {}))
        joined = join.add_predictions("e", 1, items)
        for request_id, value in items:
            if request_id in waiting:
                waiting.discard(request_id)
                continue
            reference.pop(request_id, None)
            reference[request_id] = value
        return [(pair.labels[0], pair.predicted) for pair in joined]

    sized = []  # the per-request path sizes each prediction as it stores it; bulk, none
    monkeypatch.setattr(feedback, "prediction_bytes",
                        lambda *args: sized.append(args) or prediction_bytes(*args))
    ship([(f"r{i}", i / 2) for i in range(100)])  # new ids: in bulk
    assert sized == []
    ship([(f"r{i}", -1.0) for i in range(50, 150)])  # half seen before: one by one
    ship([("d", 0.0), ("d", 1.0)])  # an id twice in one shipment
    assert join.add_labels("e", [("w", ["label-w"]), ("x", ["label-x"])]) == ([], 2)
    assert ship([("w", 7.0), ("n0", 1.0)]) == [("label-w", [7.0])]  # a label waited for it
    sized.clear()
    ship([(f"s{i}", 3.0) for i in range(10)])  # "x" waits, for none of these: in bulk
    assert sized == []
    ship([("m", [1.0, 2.0]), ("m2", 5.0)])  # a request of two rows
    assert join.memory()["predictions"] == join.held("e") == len(reference)
    assert join.bytes_held == sum(prediction_bytes(i, v) for i, v in reference.items())
    stats = join.stats("e")
    assert (stats.stored, stats.replaced, stats.joined) == (215, 51, 1)
    # Evicting all but the newest ten gives up the oldest first, in the reference's order.
    join.max_predictions = 10
    join.add_predictions("e", 1, [])
    kept = list(reference)[-10:]
    joined, waiting = join.add_labels("e", [(i, [0]) for i in reversed(list(reference))])
    assert sorted(map(str, (p.predicted for p in joined))) == sorted(
        str(reference[i] if isinstance(reference[i], list) else [reference[i]]) for i in kept)
    assert waiting == len(reference) - 10


@pytest.mark.parametrize("first", [1.0, [1.0]], ids=["in bulk", "request by request"])
def test_a_shipment_an_odd_id_stops_leaves_the_store_counted(first: float | list[float]) -> None:
    join = FeedbackJoin(Clock())
    with pytest.raises(TypeError):
        join.add_predictions("e", 1, [("a", first), (7, 2.0)])  # type: ignore[list-item]
    held = sum(len(kept) for kept in join._predictions.values())
    assert join.predictions_held == held == join.stats("e").stored
    assert join.bytes_held == (prediction_bytes("a", first) if held else 0)


@pytest.mark.parametrize("flood", ["many requests", "one request of many rows"])
def test_one_endpoint_s_flood_evicts_its_own_predictions_not_another_s(flood: str) -> None:
    """A store shared by every endpoint, full: the endpoint holding the most gives up its
    oldest, so a flood on one (anonymous requests, or one body of many rows) leaves the
    other endpoints' predictions to meet their labels."""
    join = FeedbackJoin(Clock(), max_predictions=100, max_bytes=64 * 1024)
    join.add_predictions("quiet", 1, [(f"q{i}", [i % 3]) for i in range(20)])
    if flood == "many requests":
        join.add_predictions("loud", 2, [(f"l{i}", [1]) for i in range(500)])
    else:
        join.add_predictions("loud", 2, [("huge", [1.0] * 10_000)])
    assert join.held("quiet") == 20 and join.stats("quiet").dropped_full == 0
    assert join.stats("loud").dropped_full > 0
    assert join.bytes_held <= join.max_bytes and join.memory()["predictions"] <= 100
    joined, waiting = join.add_labels("quiet", [(f"q{i}", [i % 3]) for i in range(20)])
    assert len(joined) == 20 and waiting == 0
    assert join.memory()["predictions"] == join.held("loud")
    join.forget("loud")
    assert join.memory() == {"predictions": 0, "prediction_bytes": 0,
                             "max_prediction_bytes": 64 * 1024, "labels_waiting": 0,
                             "waiting_bytes": 0, "max_waiting_bytes": join.max_waiting_bytes}


def test_two_flooding_endpoints_share_the_eviction_and_the_quiet_one_keeps_all() -> None:
    join = FeedbackJoin(Clock(), max_predictions=100)
    join.add_predictions("quiet", 1, [(f"q{i}", [0]) for i in range(10)])
    join.add_predictions("loud-a", 1, [(f"a{i}", [0]) for i in range(80)])
    join.add_predictions("loud-b", 1, [(f"b{i}", [0]) for i in range(80)])
    assert join.held("quiet") == 10 and join.memory()["predictions"] == 100
    assert abs(join.held("loud-a") - join.held("loud-b")) <= 1  # cut to one level
    assert join.stats("loud-a").dropped_full + join.stats("loud-b").dropped_full == 70


def test_a_flood_pinned_to_a_version_evicts_pinned_predictions_not_the_sample_s() -> None:
    """The sample a rollout judges accuracy on is the randomly routed requests': a flood of
    requests pinned to the candidate (anyone may send them) must not evict their
    predictions before their labels come."""
    join = FeedbackJoin(Clock(), max_predictions=100)
    join.add_predictions("e", 2, [(f"r{i}", [0]) for i in range(40)])
    join.add_predictions("e", 2, [(f"p{i}", [1]) for i in range(5000)], routed="pinned")
    assert join.memory()["predictions"] == 100 and join.stats("e").dropped_full == 4940
    joined, waiting = join.add_labels("e", [(f"r{i}", [0]) for i in range(40)])
    assert len(joined) == 40 and waiting == 0
    assert {pair.routed for pair in joined} == {"random"}
    late = join.add_labels("e", [("p4999", [1])])[0]
    assert [pair.routed for pair in late] == ["pinned"]  # the newest pinned ones are kept


def test_a_random_flood_landing_on_stable_evicts_stable_s_predictions_not_the_candidate_s() -> None:
    """Anyone may send randomly routed requests of 4,096 rows; at 95/5 they land on stable,
    whose predictions pay for the room they take, while the candidate's labels still join."""
    join = FeedbackJoin(Clock())
    join.add_predictions("e", 2, [(f"c{i}", 1.0) for i in range(5000)])  # the candidate's
    rows = [0.0] * 4096
    for batch in range(11):
        join.add_predictions("e", 1, [(f"f{batch}-{i}", rows) for i in range(100)])
    assert join.bytes_held <= MAX_PREDICTION_BYTES
    assert join.stats("e").dropped_full > 0  # the store was full: stable's oldest went
    joined, waiting = join.add_labels("e", [(f"c{i}", [1]) for i in range(5000)])
    assert len(joined) == 5000 and waiting == 0
    assert {pair.version for pair in joined} == {2}


def test_each_way_of_routing_has_its_own_room_in_a_shipment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.monitoring import observations

    monkeypatch.setattr(observations, "MAX_FEEDBACK_PER_DELTA", 50)
    core = make_core(reference_profile())
    row = np.zeros((1, 4), np.float32)

    async def send() -> None:  # pinned first, as an attacker would, then the sample's
        for path in ["/versions/1/infer"] * 80 + ["/infer"] * 50:
            await core.handle("POST", path, {}, infer_body(row))

    asyncio.run(send())
    part = core.take_stats().to_delta()[1]["monitoring"]
    assert len(part["feedback"]) == 50  # every randomly routed request's prediction
    assert len(part["routed"]["pinned"]["feedback"]) == 50 and part["feedback_dropped"] == 30


def test_predictions_expire_by_age() -> None:
    clock = Clock()
    join = FeedbackJoin(clock, max_age_s=3600)
    join.add_predictions("e", 1, [("old", [1])])
    clock.now = 1800
    join.add_predictions("e", 1, [("new", [2])])
    clock.now = 3601
    joined, _ = join.add_labels("e", [("old", [1]), ("new", [2])])
    assert [p.labels for p in joined] == [[2]]
    assert join.stats("e").expired == 1


def test_labels_that_arrive_first_wait_for_their_prediction_then_give_up() -> None:
    clock = Clock()
    join = FeedbackJoin(clock, max_wait_s=60)
    assert join.add_labels("e", [("early", [1]), ("never", [0])]) == ([], 2)
    clock.now = 30
    joined = join.add_predictions("e", 2, [("early", [1])])
    assert [(p.version, p.predicted, p.labels) for p in joined] == [(2, [1], [1])]
    clock.now = 100
    join.add_predictions("e", 2, [])
    assert join.stats("e").labels_unmatched == 1 and join.stats("e").labels_waiting == 0



@pytest.mark.parametrize("bound", ["count", "bytes"])
def test_one_endpoint_s_waiting_labels_flood_pushes_out_its_own_not_another_s(bound: str) -> None:
    """A label token of endpoint a posts labels for made-up request ids: the store of
    waiting labels, full, gave up the oldest of all, endpoint b's, whose label source
    labels at answer time (before its predictions ship), and b's accuracy gate went without."""
    clock = Clock()
    limits = {"max_waiting": 500} if bound == "count" else {"max_waiting_bytes": 64 * 1024}
    join = FeedbackJoin(clock, **limits)
    join.add_labels("b", [(f"b{i}", [1]) for i in range(100)])
    for k in range(10):
        join.add_labels("a", [(f"junk{k}-{i}", [0]) for i in range(1000)])
    clock.now = 1
    joined = join.add_predictions("b", 2, [(f"b{i}", [1.0]) for i in range(100)])
    assert len(joined) == 100 and join.stats("b").labels_unmatched == 0
    assert join.stats("a").labels_unmatched > 0  # the flood paid for itself
    memory = join.memory()
    assert memory["labels_waiting"] == join.stats("a").labels_waiting
    assert memory["labels_waiting"] <= limits.get("max_waiting", 10**9)
    assert memory["waiting_bytes"] <= limits.get("max_waiting_bytes", 10**12)

@pytest.mark.parametrize("classes", [2, 3, 5])
def test_classification_metrics_equal_sklearn(classes: int) -> None:
    rng = np.random.default_rng(classes)
    truth = rng.integers(0, classes, 400)
    guess = np.where(rng.random(400) < 0.7, truth, rng.integers(0, classes, 400))
    confusion: dict = {}
    for t, p in zip(truth.tolist(), guess.tolist(), strict=True):
        confusion[(t, p)] = confusion.get((t, p), 0) + 1
    ours = classification_metrics(confusion, classes)
    average = "binary" if classes == 2 else "macro"
    assert ours["average"] == average
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(truth, guess))
    assert ours["precision"] == pytest.approx(metrics.precision_score(truth, guess, average=average))
    assert ours["recall"] == pytest.approx(metrics.recall_score(truth, guess, average=average))
    assert ours["f1"] == pytest.approx(metrics.f1_score(truth, guess, average=average))


def test_metrics_where_a_class_is_never_predicted_follow_sklearn_zero_division() -> None:
    truth, guess = [0, 1, 2, 2], [0, 0, 0, 0]
    confusion = {(0, 0): 1, (1, 0): 1, (2, 0): 2}
    ours = classification_metrics(confusion, 3)
    assert ours["precision"] == pytest.approx(
        metrics.precision_score(truth, guess, average="macro", zero_division=0))
    assert ours["f1"] == pytest.approx(metrics.f1_score(truth, guess, average="macro", zero_division=0))


def test_regression_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(1)
    truth, guess = rng.normal(size=200), rng.normal(size=200)
    errors = truth - guess
    ours = regression_metrics(200, np.abs(errors).sum(), (errors ** 2).sum())
    assert ours["mae"] == pytest.approx(metrics.mean_absolute_error(truth, guess))
    assert ours["rmse"] == pytest.approx(np.sqrt(metrics.mean_squared_error(truth, guess)))


def test_labels_by_index_number_or_name() -> None:
    names = ["cat", "dog"]
    assert [class_index(v, names) for v in (1, 1.0, "dog", "0", True, 1.5, "fish")] == [
        1, 1, 1, 0, 1, None, None]


def test_feedback_through_the_route_joins_predictions_from_any_replica() -> None:
    clock = Clock()
    state = MonitorState(clock=clock)

    async def sink(endpoint, items):
        return state.feedback(endpoint, items)

    open_to_all = FeedbackAuthorizer(None, allows_anonymous=True)
    replicas = [make_core(reference_profile(), feedback_sink=sink, feedback_authorizer=open_to_all)
                for _ in range(2)]
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(60, 4)).astype(np.float32)
    ids = []
    for index, core in enumerate(replicas):
        half = rows[index * 30:(index + 1) * 30]
        answers = asyncio.run(send_many(core, [r[None, :] for r in half], prefix=f"c{index}-"))
        ids += [a.headers["x-modelplane-request-id"] for a in answers]
        state.record("churn", f"replica-{index}", core.take_stats().to_delta())
    predicted = predict(rows).argmax(axis=1)
    truth = np.where(rng.random(60) < 0.6, predicted, (predicted + 1) % 3)
    body = {"feedback": [{"request_id": rid, "label": int(t)} for rid, t in zip(ids, truth, strict=True)]}
    answer = asyncio.run(replicas[0].handle("POST", "/feedback", {}, json.dumps(body).encode()))
    assert answer.status == 200
    assert json.loads(answer.body) == {"received": 60, "joined": 60, "waiting": 0, "invalid_labels": 0}
    accuracy = state.snapshot("churn", 60)[1].accuracy
    assert accuracy.labelled == 60
    assert accuracy.accuracy == pytest.approx(metrics.accuracy_score(truth, predicted))
    assert accuracy.f1 == pytest.approx(metrics.f1_score(truth, predicted, average="macro"))


@pytest.mark.parametrize(("body", "field"), [
    (b'{"feedback": []}', "feedback"),
    (b'{"feedback": [{"request_id": "", "label": 1}]}', "feedback[0].request_id"),
    (b'{"feedback": [{"request_id": "a", "label": NaN}]}', "feedback[0].label"),
    (b'{"feedback": [{"request_id": "a"}]}', "feedback[0].label"),
    (b'{"feedback": [{"request_id": "a", "label": 1, "extra": 2}]}', "feedback[0].extra"),
    (b"[1, 2", "body"),
])
def test_bad_feedback_gets_a_400_naming_the_field(body: bytes, field: str) -> None:
    async def sink(endpoint, items):
        raise AssertionError("bad feedback must not reach the Monitor")

    core = make_core(None, feedback_sink=sink,
                     feedback_authorizer=FeedbackAuthorizer(None, allows_anonymous=True))
    result = asyncio.run(core.handle("POST", "/feedback", {}, body))
    payload = json.loads(result.body)
    assert result.status == 400 and payload["code"] == "invalid_request"
    assert payload["error"].startswith(field), payload["error"]


def test_feedback_without_a_monitor_is_a_503() -> None:
    core = make_core(None, feedback_authorizer=FeedbackAuthorizer(None, allows_anonymous=True))
    result = asyncio.run(core.handle("POST", "/feedback", {}, b'{"feedback": [{"request_id": "a", "label": 1}]}'))
    assert result.status == 503 and "Monitor" in json.loads(result.body)["error"]


def test_a_not_finite_prediction_is_a_wrong_answer_and_loses_no_other_label() -> None:
    """A classifier that answered NaN for one request: its label counts as a wrong answer,
    and the other labels of the batch are joined (int(NaN) raised, losing all of them)."""
    state = MonitorState(clock=Clock())
    state.record("churn", "r", {1: {"codes": {200: 3}, "monitoring": {
        "task": "classification", "n_classes": 2,
        "feedback": [("a", 1.0), ("b", float("nan")), ("c", 0.0)]}}})
    answer = state.feedback("churn", [("a", [1]), ("b", [1]), ("c", [1])])
    assert answer["joined"] == 3 and answer["invalid_labels"] == 0
    accuracy = state.snapshot("churn", 60)[1].accuracy
    assert accuracy.labelled == 3 and accuracy.accuracy == pytest.approx(1 / 3)


def test_a_one_column_probability_is_read_as_its_class() -> None:
    from serving.monitoring.feedback import predicted_class

    assert [predicted_class(v) for v in (0.0, 1.0, 2.0, 0.2, 0.5, 0.93)] == [0, 1, 2, 0, 1, 1]
    assert predicted_class(float("nan")) is None and predicted_class(float("inf")) is None
    state = MonitorState(clock=Clock())
    state.record("churn", "r", {1: {"codes": {200: 2}, "monitoring": {
        "task": "classification", "n_classes": 2, "feedback": [("a", 0.93), ("b", 0.2)]}}})
    state.feedback("churn", [("a", [1]), ("b", [1])])
    assert state.snapshot("churn", 60)[1].accuracy.accuracy == 0.5  # int() read both as 0


def test_a_monitoring_section_the_monitor_cannot_read_never_costs_the_request_counts() -> None:
    state = MonitorState(clock=Clock())
    state.record("churn", "r", {1: {"codes": {200: 7, 503: 3},
                                    "monitoring": {"last_request_at": "not a time"}}})
    snapshot = state.snapshot("churn", 60)[1]
    assert snapshot.traffic.requests == 10 and snapshot.traffic.server_errors == 3
    assert snapshot.quality.unobserved_requests == 7  # the answered ones


@pytest.mark.parametrize("n_classes", [2, None])
def test_labels_no_class_has_are_invalid_not_new_confusion_cells(n_classes: int | None) -> None:
    """A labeler sent 4,096 distinct whole numbers for a binary model: each became a
    confusion-matrix counter the Monitor kept for good (its memory grew with every call)."""
    from serving.monitoring import counters
    from serving.monitoring.feedback import JoinedPair
    from serving.monitoring.sections import MAX_CONFUSION_CLASSES, joined_counts

    labels = list(range(4096))
    pair = JoinedPair("churn", 1, predicted=[1.0] * len(labels), labels=labels)
    counts = joined_counts(pair, {"task": "classification", "n_classes": n_classes})
    cells = {key for key in counts if key.startswith(counters.CONFUSION.prefix)}
    if n_classes == 2:
        assert counts[counters.LABELLED] == 2 and counts[counters.INVALID_LABELS] == 4094
        assert counts[counters.CORRECT] == 1 and len(cells) == 2
    else:  # no class count known: every label judged, the matrix kept to its bound
        assert counts[counters.LABELLED] == 4096 and counts[counters.CORRECT] == 1
        assert len(cells) == MAX_CONFUSION_CLASSES


def test_labels_of_a_version_no_longer_served_leave_no_ghost_of_it() -> None:
    """After a promotion the old version's statistics are forgotten; labels arriving later
    for its predictions must not bring it back (an alert on it would never resolve)."""
    from serving.core import InferenceCore
    from serving.monitoring.stats import ServedConfig
    from serving.schemas import EndpointConfig, RouteTable
    from tests.unit.serving.monitoring_helpers import ModelBackend, version_config

    configs = {v: version_config(v) for v in (1, 2)}
    core = InferenceCore(EndpointConfig(endpoint="churn", versions=list(configs.values()),
                                        routes=RouteTable(weights={1: 50, 2: 50})),
                         {v: ModelBackend(configs[v]) for v in (1, 2)})
    rows = np.random.default_rng(9).normal(size=(60, 4)).astype(np.float32)
    answers = asyncio.run(send_many(core, [row[None, :] for row in rows]))
    by_version = {v: [a.headers["x-modelplane-request-id"] for a in answers
                      if json.loads(a.body)["model_version"] == str(v)] for v in (1, 2)}
    state = MonitorState()
    state.record("churn", "replica", core.take_stats().to_delta(), ServedConfig("i", 1, (1, 2)))
    state.record("churn", "replica", {}, ServedConfig("i", 2, (1,)))  # v2 retired
    assert sorted(state.snapshot("churn", 60)) == [1]
    answer = state.feedback("churn", [(rid, [0]) for rid in by_version[2] + by_version[1]])
    assert sorted(state.snapshot("churn", 60)) == [1]  # no ghost of version 2
    assert state.snapshot("churn", 60)[1].accuracy.labelled == len(by_version[1])
    assert answer["waiting"] == len(by_version[2])  # its predictions went with it


def test_a_row_answered_nan_is_in_no_class_whatever_its_label() -> None:
    """argmax names a NaN's index: an all-NaN row was class 0, counted right where the
    label was 0, and a model answering NaN on the common class lost no accuracy."""
    from serving.monitoring.profiles import prediction_features

    scores = np.array([[np.nan, np.nan, np.nan], [0.1, np.nan, 0.2], [0.1, 0.7, 0.2]])
    features = prediction_features("classification", scores)
    assert np.isnan(features[0, 0]) and np.isnan(features[1, 0]) and features[2, 0] == 1
    state = MonitorState(clock=Clock())
    state.record("churn", "r", {1: {"codes": {200: 3}, "monitoring": {
        "task": "classification", "n_classes": 3,
        "feedback": [(f"r{i}", float(v)) for i, v in enumerate(features[:, 0])]}}})
    state.feedback("churn", [("r0", [0]), ("r1", [0]), ("r2", [1])])
    accuracy = state.snapshot("churn", 60)[1].accuracy
    assert accuracy.labelled == 3 and accuracy.accuracy == pytest.approx(1 / 3)


def test_a_one_column_probability_classifier_is_profiled_and_watched_by_its_class() -> None:
    """Kept as probabilities, every training value was a category of the reference's
    predicted_class, and live answers from the same distribution were all out of range:
    prediction drift fired on every window."""
    from serving.monitoring.profiles import build_reference_profile, prediction_features

    rng = np.random.default_rng(11)
    rows = rng.normal(size=(5000, 3))
    probability = 1 / (1 + np.exp(-rows @ np.array([1.5, -1.0, 0.5])))
    profile = build_reference_profile(rows, probability[:, None], task="classification")
    predicted = profile["predictions"]["features"][0]
    assert predicted["name"] == "predicted_class" and predicted["kind"] == "categorical"
    assert predicted["edges"] == [0.0, 1.0]  # its categories: the two classes
    live = prediction_features("classification", np.array([[0.93], [0.2], [1.0], [np.nan]]))
    np.testing.assert_array_equal(live[:, 0], [1.0, 0.0, 1.0, np.nan])
