"""The data plane's edge: bounded bodies, ids and stores; path segments checked; feedback
refused without a label source's token (issue 13). The same attacks run on Ray + Serve in
tests/integration/test_integrity_edge.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from starlette.requests import Request

from serving.core import MAX_FEEDBACK_BODY_BYTES
from serving.endpoint import InferenceServer, read_body
from serving.errors import InvalidRequestError, PayloadTooLargeError
from serving.feedback_auth import FeedbackAuthorizer
from serving.monitoring import counters
from serving.monitoring.feedback import FeedbackJoin, JoinedPair, class_index, prediction_bytes
from serving.monitoring.monitor import MonitorState
from serving.monitoring.sections import joined_counts
from tests.unit.serving.monitoring_helpers import infer_body, make_core, send


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def call(core: Any, subpath: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return asyncio.run(core.handle("POST", subpath, headers or {}, body))


@pytest.mark.parametrize("version", ["²", "\u0661", "\u0663", "1²", "0x1", "-1", "9" * 30])
def test_a_version_that_is_not_ascii_digits_is_a_400_naming_version(version: str) -> None:
    core = make_core()
    result = call(core, f"/versions/{version}/infer", infer_body(np.zeros((1, 4), np.float32)))
    payload = json.loads(result.body)
    assert result.status == 400 and "version" in payload["error"], payload
    assert send(core, np.zeros((1, 4), np.float32)).status == 200  # still serving


def test_an_unknown_version_stays_a_404() -> None:
    result = call(make_core(), "/versions/7/infer", infer_body(np.zeros((1, 4), np.float32)))
    assert result.status == 404


def test_a_long_request_id_is_a_400_naming_id() -> None:
    core = make_core()
    result = call(core, "/infer", infer_body(np.zeros((1, 4), np.float32), "x" * 257))
    payload = json.loads(result.body)
    assert result.status == 400 and payload["error"].startswith("id"), payload
    assert send(core, np.zeros((1, 4), np.float32), "x" * 256).status == 200


def test_every_answer_carries_an_unguessable_server_id() -> None:
    core = make_core()
    answers = [send(core, np.zeros((1, 4), np.float32), "same-client-id") for _ in range(50)]
    ids = {a.headers["x-modelplane-request-id"] for a in answers}
    assert len(ids) == 50 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    refused = call(core, "/infer", b"{not json")
    assert refused.status == 400 and len(refused.headers["x-modelplane-request-id"]) == 32


def test_feedback_without_a_token_is_a_401_before_anything_is_read() -> None:
    async def sink(endpoint: str, items: Any) -> dict[str, Any]:
        raise AssertionError("unauthenticated feedback must not reach the Monitor")

    core = make_core(feedback_sink=sink)
    for headers in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}):
        result = call(core, "/feedback", b'{"feedback": [{"request_id": "a", "label": 1}]}', headers)
        payload = json.loads(result.body)
        assert result.status == 401 and payload["code"] == "unauthenticated"
        assert "MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS" in payload["error"]


def test_a_token_that_cannot_be_checked_is_a_503_naming_the_cause() -> None:
    core = make_core()  # no control plane address: nothing can vouch for the token
    result = call(core, "/feedback", b'{"feedback": [{"request_id": "a", "label": 1}]}',
                  {"authorization": "Bearer mp_whatever"})
    payload = json.loads(result.body)
    assert result.status == 503 and payload["code"] == "authority_unavailable"
    assert "control plane" in payload["error"]


def test_feedback_batches_are_bounded_in_bytes_and_labels() -> None:
    async def sink(endpoint: str, items: Any) -> dict[str, Any]:
        return {"received": len(items)}

    core = make_core(feedback_sink=sink,
                     feedback_authorizer=FeedbackAuthorizer(None, allows_anonymous=True))
    huge = b'{"feedback": [' + b'{"request_id": "a", "label": 1},' * 200_000 + b"]}"
    assert len(huge) > MAX_FEEDBACK_BODY_BYTES
    result = call(core, "/feedback", huge)
    assert result.status == 413 and str(MAX_FEEDBACK_BODY_BYTES) in json.loads(result.body)["error"]
    many = {"feedback": [{"request_id": f"r{i}", "label": [1] * 4000} for i in range(30)]}
    result = call(core, "/feedback", json.dumps(many).encode())
    payload = json.loads(result.body)
    assert result.status == 400 and payload["error"].startswith("feedback"), payload
    assert "120000 labels" in payload["error"]


def _request(body_chunks: list[bytes], headers: dict[str, str]) -> tuple[Request, list[int]]:
    delivered: list[int] = []
    chunks = list(body_chunks)

    async def receive() -> dict[str, Any]:
        if not chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = chunks.pop(0)
        delivered.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/v2/models/e/infer", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive), delivered


def test_a_declared_content_length_over_the_limit_is_refused_before_reading() -> None:
    request, delivered = _request([b"x" * 1024] * 8, {"content-length": str(8 * 1024)})
    with pytest.raises(PayloadTooLargeError, match="limit of 4096 bytes"):
        asyncio.run(read_body(request, 4096))
    assert delivered == []  # not one byte read


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    request, delivered = _request([b"x" * 1024] * 100, {"transfer-encoding": "chunked"})
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(read_body(request, 4096))
    assert sum(delivered) == 5 * 1024  # stopped at the first chunk past the limit


@pytest.mark.parametrize("length", ["²", "-1", "1e3", "9" * 40])
def test_a_content_length_that_is_not_a_number_is_a_400(length: str) -> None:
    request, _ = _request([b"{}"], {"content-length": length})
    with pytest.raises(InvalidRequestError) as raised:
        asyncio.run(read_body(request, 4096))
    assert raised.value.detail["field"] == "content-length"


def test_the_prediction_store_is_bounded_by_bytes() -> None:
    bound = 1024 * 1024
    join = FeedbackJoin(Clock(), max_bytes=bound)
    big = [0.0] * 10_000  # one request of 10,000 rows keeps 10,000 values
    for index in range(50):
        join.add_predictions("e", 1, [(f"r{index}", big)])
        assert join.bytes_held <= bound
    memory = join.memory()
    assert memory["prediction_bytes"] == sum(prediction_bytes(f"r{i}", big) for i in range(47, 50))
    assert join.stats("e").dropped_full == 47 and join.held("e") == 3
    join.add_labels("e", [("r49", [1] * 10_000)])  # joining releases the bytes
    assert join.bytes_held == 2 * prediction_bytes("r48", big)


def test_waiting_labels_are_bounded_by_bytes() -> None:
    join = FeedbackJoin(Clock(), max_waiting_bytes=200_000)
    for index in range(100):
        join.add_labels("e", [(f"w{index}", ["x" * 256] * 100)])
        assert join.waiting_bytes <= 200_000
    assert join.stats("e").labels_unmatched > 0
    join.forget("e")
    assert join.waiting_bytes == 0 and join.bytes_held == 0


def test_the_monitor_stays_under_its_bound_whatever_the_replicas_ship() -> None:
    state = MonitorState(clock=Clock(), prediction_store_bytes=2 * 1024 * 1024)
    for shipment in range(40):
        items = [(f"{shipment}-{i}", [1.0] * 2000) for i in range(20)]
        state.record("e", "replica", {1: {"codes": {200: 20}, "monitoring": {"feedback": items}}})
        assert state.join.memory()["prediction_bytes"] <= 2 * 1024 * 1024


def test_class_labels_in_other_scripts_are_not_class_indexes() -> None:
    assert class_index("²", None) is None and class_index("٣", None) is None
    assert class_index("-2", None) == -2 and class_index("3", None) == 3


def test_labels_that_no_float_holds_are_refused_or_counted_invalid() -> None:
    async def sink(endpoint: str, items: Any) -> dict[str, Any]:
        return state.feedback(endpoint, items)

    state = MonitorState(clock=Clock())
    core = make_core(feedback_sink=sink,
                     feedback_authorizer=FeedbackAuthorizer(None, allows_anonymous=True))
    huge = b'{"feedback": [{"request_id": "a", "label": 1' + b"0" * 400 + b"}]}"
    result = call(core, "/feedback", huge)
    assert result.status == 400 and json.loads(result.body)["error"].startswith("feedback[0].label")
    pair = JoinedPair("e", 1, [1.0, 2.0], ["1e999", 3.0])
    assert joined_counts(pair, {"task": "regression"}) == {
        counters.INVALID_LABELS: 1, counters.LABELLED: 1,
        counters.ABS_ERROR_SUM: 1.0, counters.SQUARED_ERROR_SUM: 1.0}


def test_the_inference_server_never_takes_the_clients_request_id() -> None:
    request, _ = _request([b""], {"x-request-id": "chosen-by-caller"})
    request.scope["path"] = "/v2/models/ghost/infer"
    response = asyncio.run(InferenceServer()(request))
    server_id = response.headers["x-modelplane-request-id"]
    assert response.status_code == 404 and server_id != "chosen-by-caller" and len(server_id) == 32
    assert json.loads(response.body)["request_id"] == server_id


def test_a_feature_named_like_a_feedback_counter_adds_nothing_to_the_labels() -> None:
    """Counter names hold feature names, which whoever deploys a model chooses: one such
    as ``x|fb:n`` must not read as labels joined with some way of routing."""
    counts = {counters.INPUT_MISSING.key("x|fb:n"): 500, counters.LABELLED: 3,
              "pinned|" + counters.LABELLED: 4}
    assert counters.feedback(counts, None) == {counters.LABELLED: 7}
    assert counters.feedback(counts, ("random",)) == {counters.LABELLED: 3}
