"""A colocated shadow shares the replica's thread pool with the versions it mirrors, and
takes one of its threads at most: however slow the shadow, a primary call never waits
behind it for a thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from serving.backends import LocalVersion
from serving.runners.onnx import OnnxRunner
from serving.schemas import VersionConfig
from tests.onnx_models import linear_classifier, linear_classifier_manifest


class Stuck:
    """A model whose every call waits until it is let go (a shadow far slower than its
    primary)."""

    can_batch = False
    is_async = False

    def __init__(self) -> None:
        self.released = threading.Event()
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.released.wait(10)
        with self._lock:
            self.running -= 1
        return {"probabilities": np.zeros((len(arrays["input"]), 3), np.float32)}


def _config(version: int) -> VersionConfig:
    signature = linear_classifier_manifest()["signature"]
    return VersionConfig(version=version, model="m", artifact_url="http://unused",
                         digest="0" * 64, inputs=signature["inputs"],
                         outputs=signature["outputs"])


def test_a_slow_shadow_never_takes_the_threads_its_primary_needs(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(linear_classifier(seed=1))
    pool = ThreadPoolExecutor(2)
    primary = LocalVersion(_config(1), OnnxRunner(_config(1), path), pool)
    stuck = Stuck()
    shadow = LocalVersion(_config(2), stuck, pool)  # type: ignore[arg-type]
    arrays = {"input": np.ones((1, 4), np.float32)}

    async def run() -> None:
        mirrored = [asyncio.create_task(shadow.mirror(arrays)) for _ in range(8)]
        await asyncio.sleep(0.2)
        try:
            answer = await asyncio.wait_for(primary.infer(arrays), 5)
            assert answer["probabilities"].shape == (1, 3)
        finally:
            stuck.released.set()
        answers = [await task for task in mirrored]
        assert all(answer["probabilities"].shape == (1, 3) for answer in answers)

    try:
        asyncio.run(run())
    finally:
        stuck.released.set()
        pool.shutdown(wait=True)
    assert stuck.most_running == 1
