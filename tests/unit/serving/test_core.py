"""The inference core with in-process backends: routing, validation, shadows, errors."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest
import tritonclient.http as tc

from serving.core import HttpResult, InferenceCore
from serving.schemas import EndpointConfig, RouteTable, TensorSignature, VersionConfig


def version_config(version: int, task: str = "classification") -> VersionConfig:
    return VersionConfig(
        version=version, model="iris", artifact_url="http://unused", digest="0" * 64,
        inputs=[TensorSignature(name="input", dtype="float32", shape=[None, 4])],
        outputs=[TensorSignature(name="probabilities", dtype="float32", shape=[None, 3])],
        task=task,
    )


class FakeBackend:
    """Answers one-hot class ``answer``; optionally fails or sleeps."""

    def __init__(self, version: int, answer: int, *, fail: bool = False, delay: float = 0.0):
        self.config = version_config(version)
        self.answer, self.fail, self.delay, self.calls = answer, fail, delay, 0

    async def mirror(self, arrays):  # a shadow's call: the same answer
        return await self.infer(arrays)

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("shadow exploded")
        rows = arrays["input"].shape[0]
        out = np.zeros((rows, 3), dtype=np.float32)
        out[:, self.answer] = 1.0
        return {"probabilities": out}


def make_core(weights: dict[int, float], shadows=(), backends=None) -> InferenceCore:
    backends = backends or {v: FakeBackend(v, answer=v % 3) for v in {*weights, *shadows}}
    config = EndpointConfig(endpoint="iris", versions=[b.config for b in backends.values()],
                            routes=RouteTable(weights=weights, shadows=list(shadows)))
    return InferenceCore(config, backends)


def triton_body(rows: int = 2, binary: bool = False) -> tuple[bytes, dict[str, str]]:
    tensor = tc.InferInput("input", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 4), np.float32), binary_data=binary)
    wanted = [tc.InferRequestedOutput("probabilities", binary_data=binary)]
    body, json_size = tc.InferenceServerClient.generate_request_body(
        [tensor], outputs=wanted, request_id="r1"
    )
    headers = {"inference-header-content-length": str(json_size)} if json_size else {}
    return body, headers


def header(result) -> dict:
    """The JSON part of a v2 response (the whole body unless binary tensors follow)."""
    lowered = {k.lower(): v for k, v in result.headers.items()}
    size = lowered.get("inference-header-content-length")
    return json.loads(result.body[: int(size)] if size else result.body)


def call(core: InferenceCore, subpath: str, body: bytes = b"", headers=None, method="POST"):
    return asyncio.run(core.handle(method, subpath, headers or {}, body))


def test_infer_answers_with_the_version_and_request_id() -> None:
    core = make_core({1: 100})
    body, headers = triton_body()
    result = call(core, "/infer", body, headers)
    assert result.status == 200
    payload = header(result)
    assert payload["model_version"] == "1" and payload["id"] == "r1"
    assert np.array(payload["outputs"][0]["data"]).reshape(2, 3)[:, 1].tolist() == [1.0, 1.0]


def test_binary_outputs_parse_with_tritonclient() -> None:
    core = make_core({1: 100})
    body, headers = triton_body(rows=3, binary=True)
    result = call(core, "/infer", body, headers)
    lowered = {k.lower(): v for k, v in result.headers.items()}
    parsed = tc.InferenceServerClient.parse_response_body(
        result.body, header_length=int(lowered["inference-header-content-length"])
    )
    assert parsed.as_numpy("probabilities").shape == (3, 3)
    assert parsed.as_numpy("probabilities")[:, 1].tolist() == [1.0, 1.0, 1.0]


def test_pinned_version_bypasses_weights() -> None:
    core = make_core({1: 100, 2: 0})
    body, headers = triton_body()
    result = call(core, "/versions/2/infer", body, headers)
    assert header(result)["model_version"] == "2"
    missing = call(core, "/versions/9/infer", body, headers)
    assert missing.status == 404 and "no version '9'" in json.loads(missing.body)["error"]


def test_sticky_header_keeps_a_user_on_one_variant() -> None:
    core = make_core({1: 50, 2: 50})
    body, headers = triton_body()
    seen = Counter(
        header(call(core, "/infer", body, {**headers, "x-modelplane-key": "user-42"}))["model_version"]
        for _ in range(40)
    )
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("mutate", "status", "fragment"),
    [
        (lambda b: b"{not json", 400, ""),
        (lambda b: b.replace(b'"FP32"', b'"FP64"'), 400, "expects float32"),
        (lambda b: b.replace(b'"shape":[2,4]', b'"shape":[4,2]'), 400, "expects [-1, 4]"),
        (lambda b: b.replace(b'"name":"input"', b'"name":"features"'), 400, "not an input of iris:1"),
    ],
)
def test_bad_requests_name_the_problem_and_are_counted(mutate, status, fragment) -> None:
    core = make_core({1: 100})
    body, _ = triton_body()
    result = call(core, "/infer", mutate(body))
    payload = header(result)
    assert result.status == status
    assert fragment in payload["error"]
    assert payload["code"] == "invalid_request" and payload["request_id"]
    recorded = sum(s.codes[status] for s in core.recorder.versions.values())
    assert recorded == 1


def test_shadow_failure_and_slowness_never_touch_the_primary() -> None:
    backends = {1: FakeBackend(1, answer=0), 2: FakeBackend(2, answer=0, fail=True),
                3: FakeBackend(3, answer=1, delay=0.05)}
    core = make_core({1: 100}, shadows=(2, 3), backends=backends)
    body, headers = triton_body()

    async def scenario():
        results = [await core.handle("POST", "/infer", headers, body) for _ in range(10)]
        await asyncio.sleep(0.2)  # let shadows finish
        return results

    results = asyncio.run(scenario())
    assert {r.status for r in results} == {200}
    assert {header(r)["model_version"] for r in results} == {"1"}
    stats = core.recorder.versions
    assert stats[2].shadow.errors == 10
    assert stats[3].shadow.compared == 10 and stats[3].shadow.agreed == 0
    assert stats[3].shadow.latency_delta_sum_s > 0


def test_a_failing_version_answers_500_with_the_request_id() -> None:
    backends = {1: FakeBackend(1, answer=0, fail=True)}
    core = make_core({1: 100}, backends=backends)
    body, headers = triton_body()
    result = call(core, "/infer", body, headers)
    payload = header(result)
    # The server's id, not the client's "r1": the one the replica log and feedback know.
    server_id = result.headers["x-modelplane-request-id"]
    assert result.status == 500 and payload["request_id"] == server_id != "r1"
    assert server_id in payload["error"]
    assert call(core, "", method="GET").status == 200  # still serving metadata


def test_metadata_and_ready() -> None:
    core = make_core({1: 100, 2: 0})
    meta = header(call(core, "", method="GET"))
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert header(call(core, "/versions/2", method="GET"))["parameters"]["version"] == "2"
    assert call(core, "/ready", method="GET").status == 200


def test_route_table_swaps_atomically() -> None:
    core = make_core({1: 100, 2: 0})
    body, headers = triton_body()
    assert header(call(core, "/infer", body, headers))["model_version"] == "1"
    config, backends, _ = core._state
    core.update(config.model_copy(update={"routes": RouteTable(weights={1: 0, 2: 100})}), backends)
    assert header(call(core, "/infer", body, headers))["model_version"] == "2"


def test_a_compressed_or_large_body_is_decoded_off_the_event_loop() -> None:
    """A large body, or a compressed one (a 64 KiB gzip body may hold 64 MiB of JSON), takes
    seconds to parse: decoded on the event loop, every other request of the replica
    (readiness included) waited for it."""
    import gzip

    core = make_core({1: 100})
    rows = np.random.default_rng(0).normal(size=(200_000, 4)).astype(np.float32)
    document = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.ravel().tolist()}]}
    packed = gzip.compress(json.dumps(document).encode())
    finished: list[str] = []

    async def scenario() -> None:
        async def heavy() -> None:
            result = await core.handle("POST", "/infer", {"content-encoding": "gzip"}, packed)
            assert result.status == 200, result.body[:300]
            finished.append("heavy")

        async def light() -> None:
            await asyncio.sleep(0)  # the heavy one starts first
            assert (await core.handle("GET", "/ready", {}, b"")).status == 200
            finished.append("light")

        await asyncio.gather(heavy(), light())

    asyncio.run(scenario())
    assert finished == ["light", "heavy"]


def test_a_benchmark_s_scratch_endpoint_answers_only_its_benchmark() -> None:
    import hashlib

    from serving.names import CALLER_KEY_HEADER
    from tests.unit.serving.monitoring_helpers import ModelBackend, infer_body, version_config

    version = version_config()
    config = EndpointConfig(endpoint="_bench-1", versions=[version],
                            routes=RouteTable(weights={1: 100}),
                            caller_key_sha256=hashlib.sha256(b"the-key").hexdigest())
    core = InferenceCore(config, {1: ModelBackend(version)})
    body = infer_body(np.zeros((1, 4), np.float32))

    def post(headers: dict[str, str]) -> HttpResult:
        return asyncio.run(core.handle("POST", "/infer", headers, body))

    for headers in ({}, {CALLER_KEY_HEADER: "a-guess"}, {CALLER_KEY_HEADER: "the-key "}):
        refused = post(headers)
        assert refused.status == 403, refused.body
        error = json.loads(refused.body)
        assert "only its benchmark" in error["error"]
    assert post({CALLER_KEY_HEADER: "the-key"}).status == 200
    assert asyncio.run(core.handle("GET", "", {}, b"")).status == 200  # metadata stays open
    counts = core.take_stats().to_delta()[1]["codes"]
    assert counts == {200: 1}  # refusals are never the version's answers


def test_every_503_says_when_to_ask_again() -> None:
    """Only a full queue said it; a version that could not load, and a replica still
    loading, answered 503 without Retry-After, so clients had no cue to back off."""
    from serving.backends import UnloadableVersion
    from serving.core import error_result
    from serving.errors import ModelNotReadyError
    from serving.schemas import RETRY_AFTER_S

    broken = UnloadableVersion(version_config(2), RuntimeError("missing operator"))
    core = make_core({1: 100, 2: 0}, backends={1: FakeBackend(1, answer=1), 2: broken})
    body, headers = triton_body()
    result = call(core, "/versions/2/infer", body, headers)
    assert result.status == 503 and "missing operator" in header(result)["error"]
    assert {k.lower(): v for k, v in result.headers.items()}["retry-after"] == str(RETRY_AFTER_S)
    loading = error_result(ModelNotReadyError("endpoint is loading"), "")
    assert loading.status == 503 and loading.headers["retry-after"] == str(RETRY_AFTER_S)
    assert "retry-after" not in call(core, "/versions/9/infer", body, headers).headers


def test_a_request_its_version_never_answers_is_counted_as_stalled_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A request hung in its version was never counted (only answers and failures were),
    so a version hanging on some requests was judged on those it answered."""
    from serving import core as core_module

    monkeypatch.setattr(core_module, "STALLED_AFTER_S", 0.05)
    release = asyncio.Event()

    class HangsOnce(FakeBackend):
        async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self.calls == 0:
                self.calls += 1
                await release.wait()
                return await super().infer(arrays)
            return await super().infer(arrays)

    core = make_core({1: 100}, backends={1: HangsOnce(1, answer=1)})
    body, headers = triton_body()

    async def scenario() -> tuple[dict, dict, int, int]:
        hung = asyncio.create_task(core.handle("POST", "/infer", headers, body))
        await asyncio.sleep(0.1)
        assert (await core.handle("POST", "/infer", headers, body)).status == 200
        first = core.take_stats().to_delta()
        release.set()
        late = await hung
        second = core.take_stats().to_delta()
        return first, second, late.status, len(core._in_flight)

    first, second, late_status, left = asyncio.run(scenario())
    assert first[1]["codes"] == {504: 1, 200: 1} and first[1]["errors"] == {"stalled": 1}
    assert late_status == 200  # its answer still goes out ...
    assert not second or second.get(1, {}).get("codes", {}) == {}  # ... and is not counted again
    assert left == 0


def test_a_large_answer_is_encoded_off_the_event_loop_and_a_small_one_on_it() -> None:
    import threading

    from serving import core as core_module

    core = make_core({1: 100})
    threads: list[int] = []

    def encode(inferred):
        threads.append(threading.get_ident())
        return sum(int(a.size) for a in inferred.outputs.values())

    async def answer(rows: int) -> tuple[int, int]:
        arrays = np.ones((rows, 4), np.float32)
        request = core_module.decode_request(json.dumps({"inputs": [{
            "name": "input", "datatype": "FP32", "shape": [rows, 4],
            "data": arrays.ravel().tolist()}]}).encode(), {})
        sent = await core.infer(lambda config: request, encode, {})
        return sent, threading.get_ident()

    small, loop = asyncio.run(answer(2))
    assert small == 6 and threads[-1] == loop
    rows = core_module.ENCODE_OFF_LOOP_ELEMENTS // 3 + 1
    large, loop = asyncio.run(answer(rows))
    assert large == 3 * rows and threads[-1] != loop


def test_a_request_abandoned_after_it_stalled_is_a_504_and_one_abandoned_early_is_counted_apart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that gives up (Serve cancels the handler on a disconnect, gRPC on a
    deadline) before the request stalled leaves it out of the codes, the error rate and
    the latency, and in the version's abandoned count (by way of routing), once."""
    from serving import core as core_module

    class Hangs(FakeBackend):
        async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            await asyncio.Event().wait()  # never set
            return await super().infer(arrays)

    core = make_core({1: 100}, backends={1: Hangs(1, answer=1)})
    body, headers = triton_body()

    async def abandon(after_s: float) -> dict:
        call = asyncio.create_task(core.handle("POST", "/infer", headers, body))
        await asyncio.sleep(after_s)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return core.take_stats().to_delta()

    monkeypatch.setattr(core_module, "STALLED_AFTER_S", 0.05)
    late = asyncio.run(abandon(0.1))
    assert late[1]["codes"] == {504: 1} and late[1]["errors"] == {"stalled": 1}
    assert late[1]["abandoned"] == {}
    monkeypatch.setattr(core_module, "STALLED_AFTER_S", 60.0)
    early = asyncio.run(abandon(0.05))
    assert early[1]["codes"] == {} and early[1]["latency_sum"] == 0.0
    assert early[1]["abandoned"] == {"random": 1}
    assert core._in_flight == {}
