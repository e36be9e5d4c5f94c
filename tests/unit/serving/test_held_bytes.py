"""What a request keeps alive while the replica holds on to it for its shadow or its
monitoring: a binary input is a view of the whole request body, so a 32-byte tensor sent
beside a large JSON part holds all of it. Counted by the array's size alone, the bounds on
both were never reached while the replica filled with bodies."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

import serving.core
from serving.monitoring.stats import StatsRecorder
from serving.protocol import decode_request
from serving.protocol.tensors import held_bytes
from tests.unit.serving.test_core import FakeBackend, make_core

PAD = 2 << 20


def padded_binary_body(pad: int = PAD) -> tuple[bytes, dict[str, str]]:
    """A 2x4 FP32 tensor in the binary part, after a JSON part ``pad`` bytes long."""
    header = json.dumps({"id": "r1", "parameters": {"note": "x" * pad},
                         "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 32}}]}).encode()
    return header + np.ones((2, 4), np.float32).tobytes(), {
        "inference-header-content-length": str(len(header))}


def test_a_view_holds_its_whole_body_once_and_strings_count_too() -> None:
    body, headers = padded_binary_body()
    arrays = {i.name: i.data for i in decode_request(body, headers).inputs}
    assert arrays["input"].nbytes == 32
    assert held_bytes(arrays.values()) == len(body)
    whole = arrays["input"]
    assert held_bytes([whole, whole[0], whole.reshape(8)]) == len(body)  # one body, once
    own = np.zeros(10, np.float64)
    assert held_bytes([own]) == 80
    texts = np.array([b"abc", "de"], dtype=object)
    assert held_bytes([texts]) == texts.nbytes + 5


def test_observing_requests_whose_bodies_are_large_ships_them_early() -> None:
    due: list[bool] = []
    recorder = StatsRecorder(when_full=lambda: due.append(True))
    body, headers = padded_binary_body(9 << 20)
    for number in range(2):
        arrays = {i.name: i.data for i in decode_request(body, headers).inputs}
        recorder.observe(1, f"r{number}", arrays, {"probabilities": np.zeros((2, 3))})
    assert due == [True]  # 18 MiB held, past PENDING_BYTES_LIMIT's 16, though 64 bytes of tensors


def test_slow_shadows_hold_a_bounded_number_of_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stuck(FakeBackend):
        async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            await asyncio.Event().wait()  # never answers
            raise AssertionError("unreachable")

    monkeypatch.setattr(serving.core, "MAX_SHADOW_BYTES", 16 << 20)
    core = make_core({1: 100}, shadows=(2,), backends={1: FakeBackend(1, answer=0),
                                                      2: Stuck(2, answer=0)})
    body, headers = padded_binary_body()

    async def traffic() -> None:
        for _ in range(20):
            assert (await core.handle("POST", "/infer", headers, body)).status == 200
            await asyncio.sleep(0)

    asyncio.run(traffic())
    held = (16 << 20) // len(body)  # each shadow holds its request's whole body
    assert core.shadows_dropped == 20 - held > 0


def test_a_request_larger_than_the_bound_is_mirrored_when_no_other_shadow_holds_any(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint takes bodies that large: never mirroring them failed the shadow's
    rollout on its drops alone."""
    monkeypatch.setattr(serving.core, "MAX_SHADOW_BYTES", 1 << 20)
    core = make_core({1: 100}, shadows=(2,))
    body, headers = padded_binary_body()  # 2 MiB, twice the bound

    async def traffic() -> None:
        for _ in range(3):
            assert (await core.handle("POST", "/infer", headers, body)).status == 200
            await asyncio.sleep(0.05)  # the shadow answers before the next request

    asyncio.run(traffic())
    assert core.shadows_dropped == 0
