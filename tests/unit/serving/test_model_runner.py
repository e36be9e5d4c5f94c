"""Where a version's run happens: inline on the event loop when it is shorter than the
hand-off to a worker thread, in the pool otherwise; the answers are the same either way."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.serving import mlp
from serving.backends import LocalVersion
from serving.model_runner import INLINE_RUN_LIMIT_S, ModelRunner
from serving.schemas import TensorSignature, VersionConfig
from tests.onnx_models import linear_classifier, linear_classifier_manifest


def runner_for(model: bytes, tmp_path: Path, inputs: list[dict], outputs: list[dict]) -> ModelRunner:
    path = tmp_path / f"{hashlib.sha256(model).hexdigest()[:8]}.onnx"
    path.write_bytes(model)
    config = VersionConfig(version=1, model="m", artifact_url="http://unused",
                           digest=hashlib.sha256(model).hexdigest(),
                           inputs=[TensorSignature(**spec) for spec in inputs],
                           outputs=[TensorSignature(**spec) for spec in outputs])
    runner = ModelRunner(config, path)
    runner.warmup()
    return runner


@pytest.fixture
def small(tmp_path: Path) -> tuple[ModelRunner, bytes]:
    model = linear_classifier(n_features=4, n_classes=3, seed=3)
    signature = linear_classifier_manifest()["signature"]
    return runner_for(model, tmp_path, signature["inputs"], signature["outputs"]), model


def expected(model: bytes, rows: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": rows})[0]


def infer_on(runner: ModelRunner, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """The answer of a LocalVersion, and how many worker threads it started to get it."""
    executor = ThreadPoolExecutor(max_workers=2)
    try:
        version = LocalVersion(runner.config, runner, executor)
        answer = asyncio.run(version.infer({"input": rows}))
        return answer["probabilities"], len(executor._threads)
    finally:
        executor.shutdown()


def test_a_model_shorter_than_the_hand_off_runs_inline_with_the_same_answer(small) -> None:
    runner, model = small
    assert runner.inline_rows >= 1
    rows = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    answer, threads = infer_on(runner, rows)
    assert threads == 0
    np.testing.assert_allclose(answer, expected(model, rows), rtol=1e-6)


def test_a_request_of_more_rows_than_fit_inline_goes_to_the_pool(small) -> None:
    runner, model = small
    rows = np.random.default_rng(1).normal(size=(runner.inline_rows + 1, 4)).astype(np.float32)
    answer, threads = infer_on(runner, rows)
    assert threads == 1
    np.testing.assert_allclose(answer, expected(model, rows), rtol=1e-6)


def test_a_model_slower_than_the_limit_never_runs_inline(tmp_path: Path) -> None:
    sizes = (256, 2048, 2048, 10)  # ~1 ms a row here: twenty times the limit
    runner = runner_for(mlp(sizes, 1), tmp_path,
                        [{"name": "input", "dtype": "float32", "shape": [None, 256]}],
                        [{"name": "output", "dtype": "float32", "shape": [None, 10]}])
    assert INLINE_RUN_LIMIT_S < 1e-3
    assert runner.inline_rows == 0
    assert runner.rows_of({"input": np.zeros((1, 256), np.float32)}) == 1
