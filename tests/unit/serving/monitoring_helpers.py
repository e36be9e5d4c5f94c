"""A small classifier and its training data, for the monitoring tests (no ONNX needed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np

from serving.core import InferenceCore
from serving.monitoring.profiles import build_reference_profile
from serving.schemas import EndpointConfig, RouteTable, TensorSignature, VersionConfig

FEATURES = ("age", "income", "tenure", "score")
TRAINING_ROWS = 5000
WEIGHTS = np.random.default_rng(7).normal(size=(4, 3))


def predict(x: np.ndarray) -> np.ndarray:
    """softmax(x @ W): the same function the fake backend serves."""
    z = np.asarray(x, dtype=np.float64) @ WEIGHTS
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def training_data(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(TRAINING_ROWS, len(FEATURES)))


def reference_profile() -> dict[str, Any]:
    data = training_data()
    return build_reference_profile(data, predict(data), task="classification", feature_names=FEATURES)


def version_config(version: int = 1, *, profile: dict[str, Any] | None = None,
                   task: str = "classification", outputs: int = 3) -> VersionConfig:
    return VersionConfig(
        version=version, model="churn", artifact_url="http://unused", digest=f"{version:064x}",
        inputs=[TensorSignature(name="input", dtype="float32", shape=[None, 4])],
        outputs=[TensorSignature(name="probabilities", dtype="float32", shape=[None, outputs])],
        task=task, reference_profile=profile,
    )


class ModelBackend:
    """Serves :func:`predict` in-process."""

    def __init__(self, config: VersionConfig) -> None:
        self.config = config

    async def mirror(self, arrays):  # a shadow's call: the same answer
        return await self.infer(arrays)

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"probabilities": predict(arrays["input"]).astype(np.float32)}


def make_core(profile: dict[str, Any] | None = None, **kwargs: Any) -> InferenceCore:
    config = version_config(profile=profile)
    endpoint = EndpointConfig(endpoint="churn", versions=[config], routes=RouteTable(weights={1: 100}))
    return InferenceCore(endpoint, {1: ModelBackend(config)}, **kwargs)


def infer_body(rows: np.ndarray, request_id: str | None = None, **parameters: Any) -> bytes:
    body: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                        "data": rows.ravel().tolist()}]}
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode()


def send(core: InferenceCore, rows: np.ndarray, request_id: str | None = None, **parameters: Any):
    return asyncio.run(core.handle("POST", "/infer", {}, infer_body(rows, request_id, **parameters)))


async def send_many(core: InferenceCore, batches: list[np.ndarray], prefix: str = "r") -> list[Any]:
    return [await core.handle("POST", "/infer", {}, infer_body(rows, f"{prefix}{i}"))
            for i, rows in enumerate(batches)]
