"""A model measured cheap runs on the event loop while no other request waits, where the
thread hop would cost more than the model; anything slow, a request with many rows, a
backlog, or a server that counts none (Serve's own) sends it to the pool.

The version's clock is the model's own: each run advances it by the run's set cost, so the
policy is tested on the times it is given, not on how busy the host is."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serving.backends import INLINE_BELOW_S, LocalVersion
from serving.backlog import Backlog
from serving.runners.onnx import OnnxRunner
from serving.schemas import VersionConfig
from tests.onnx_models import linear_classifier, linear_classifier_manifest

CHEAP_S = 0.00001  # what the small MLP costs an input element, or about


class ThreadNoting:
    """An ONNX runner that notes the thread each call ran on and takes ``cost_s`` an input
    element on its clock (``now``), which the version reads."""

    can_batch = False
    is_async = False

    def __init__(self, runner: OnnxRunner) -> None:
        self.runner, self.config = runner, runner.config
        self.threads: list[int] = []
        self.cost_s = CHEAP_S
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        features = next(iter(arrays.values()))
        self.now += self.cost_s * features.size
        if features.shape[1:] != (4,):  # a request of another width: answered in kind
            return {"probabilities": np.zeros((len(features), 3), np.float32)}
        return self.runner.run(arrays)

    def warmup(self) -> None:
        self.run({"input": np.zeros((1, 4), np.float32)})


@pytest.fixture
def backlog() -> Backlog:
    counted = Backlog()
    counted.counted = True
    return counted


@pytest.fixture
def version(tmp_path: Path, backlog: Backlog) -> tuple[LocalVersion, ThreadNoting]:
    path = tmp_path / "model.onnx"
    path.write_bytes(linear_classifier(seed=1))
    signature = linear_classifier_manifest()["signature"]
    config = VersionConfig(version=1, model="m", artifact_url="http://unused", digest="0" * 64,
                           inputs=signature["inputs"], outputs=signature["outputs"])
    runner = ThreadNoting(OnnxRunner(config, path))
    local = LocalVersion(config, runner, ThreadPoolExecutor(2), backlog,  # type: ignore[arg-type]
                         clock=runner.clock)
    return local, runner


def _answer(version: LocalVersion, rows: int = 1,
            width: int = 4) -> tuple[dict[str, np.ndarray], int]:
    async def call() -> tuple[dict[str, np.ndarray], int]:
        arrays = {"input": np.ones((rows, width), np.float32)}
        return await version.infer(arrays), threading.get_ident()
    return asyncio.run(call())


def test_a_cheap_model_runs_inline_once_measured(version: tuple[LocalVersion, ThreadNoting]) -> None:
    local, runner = version
    loops = [_answer(local)[1] for _ in range(20)]
    assert all(thread != loop for thread, loop in zip(runner.threads[:8], loops[:8], strict=True))
    assert runner.threads[8:] == loops[8:]  # after eight measured calls, on the loop's thread
    assert local.run_time.per_element_s == pytest.approx(CHEAP_S)
    outputs, _ = _answer(local)
    assert outputs["probabilities"].shape == (1, 3)  # the same answer either way


def test_a_slow_model_and_a_large_request_go_to_the_pool(
        version: tuple[LocalVersion, ThreadNoting]) -> None:
    local, runner = version
    for _ in range(10):
        _answer(local)
    per_element = local.run_time.per_element_s
    many = int(INLINE_BELOW_S / per_element / 4) * 2 + 1
    _, loop = _answer(local, rows=many)
    assert runner.threads[-1] != loop  # its rows would block the loop too long
    _, loop = _answer(local, width=4 * many)
    assert runner.threads[-1] != loop  # one row, as wide: the same
    runner.cost_s = 0.05  # the model turns slow: one call measured is enough
    _answer(local)
    _, loop = _answer(local)
    assert runner.threads[-1] != loop and local.run_time.per_element_s > INLINE_BELOW_S


def test_one_slow_warm_call_does_not_hold_a_cheap_model_in_the_pool(
        version: tuple[LocalVersion, ThreadNoting]) -> None:
    """The last warm call preempted by the OS, or the first one's allocations, must not
    decide: a cheap model runs inline from the first call after its warm calls."""
    local, runner = version
    for call in range(8):
        runner.cost_s = 0.002 if call in (0, 7) else CHEAP_S
        _answer(local)
    runner.cost_s = CHEAP_S
    _, loop = _answer(local)
    assert runner.threads[-1] == loop and local.run_time.per_element_s == pytest.approx(CHEAP_S)


def test_a_backlog_or_an_uncounted_server_sends_cheap_calls_to_the_pool(
        version: tuple[LocalVersion, ThreadNoting], backlog: Backlog) -> None:
    local, runner = version
    for _ in range(10):
        _answer(local)

    def ran_inline() -> bool:
        loop = _answer(local)[1]
        return runner.threads[-1] == loop

    assert ran_inline()
    backlog.waiting = 2  # others wait: the hop lets the loop read and answer them in bursts
    assert not ran_inline()
    backlog.waiting, backlog.counted = 0, False  # nobody counts: no inline call
    assert not ran_inline()
    backlog.counted = True
    assert ran_inline()


def test_loading_measures_a_cheap_model_so_its_first_request_runs_inline(
        version: tuple[LocalVersion, ThreadNoting]) -> None:
    local, runner = version
    local.warm()
    assert local.run_time.calls == 8 and len(runner.threads) == 8
    _, loop = _answer(local)
    assert runner.threads[-1] == loop  # ready means measured: no pool default at first


def test_loading_stops_measuring_a_slow_model_within_its_budget(
        version: tuple[LocalVersion, ThreadNoting]) -> None:
    from serving.backends import WARM_BUDGET_S

    local, runner = version
    runner.cost_s = WARM_BUDGET_S * 0.4 / 4  # a warm-up call holds one row of 4 elements
    local.warm()
    assert local.run_time.calls == 3 < 8  # the third call is the one that ends past the budget
    assert runner.now == pytest.approx(WARM_BUDGET_S * 1.2)
    _, loop = _answer(local)
    assert runner.threads[-1] != loop  # unmeasured and slow: the pool


def test_a_model_gets_read_only_inputs_of_its_own_whatever_the_body_was() -> None:
    """A binary input was read-only or not by its alignment in the body (the request id's
    length decided: 200, 500, 200 for one model), and a model changing its inputs in place
    changed what drift monitoring and the shadow saw."""
    from serving.protocol import decode_request
    from tests.unit.serving.test_held_bytes import padded_binary_body

    class Scaling:
        can_batch = False
        is_async = False

        def __init__(self) -> None:
            self.writable: list[bool] = []

        def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.writable.append(bool(arrays["input"].flags.writeable))
            arrays["input"] = arrays["input"] * 100  # its own dict: the caller's is not touched
            return {"probabilities": np.zeros((len(arrays["input"]), 3), np.float32)}

    signature = linear_classifier_manifest()["signature"]
    config = VersionConfig(version=1, model="m", artifact_url="http://unused", digest="0" * 64,
                           inputs=signature["inputs"], outputs=signature["outputs"])
    runner = Scaling()
    local = LocalVersion(config, runner, ThreadPoolExecutor(1))  # type: ignore[arg-type]
    sent = [{"input": np.ones((2, 4), np.float32)}]  # as JSON decodes: writable
    for pad in range(4):  # binary inputs at each alignment in their bodies
        body, headers = padded_binary_body(100 + pad)
        sent.append({i.name: i.data for i in decode_request(body, headers).inputs})
    for arrays in sent:
        asyncio.run(local.infer(arrays))
        np.testing.assert_array_equal(arrays["input"], np.ones((2, 4), np.float32))
    assert runner.writable == [False] * len(sent)
    writable = np.ones((2, 4), np.float32)
    assert writable.flags.writeable  # the caller's own array keeps its flags
    asyncio.run(local.infer({"input": writable}))
    assert writable.flags.writeable
