"""Version backends: a model in this replica (colocated) or behind a Serve handle (isolated)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.settings import get_settings
from serving.artifact_cache import fetch_artifact
from serving.model_runner import ModelRunner
from serving.schemas import VersionConfig


def load_runner(config: VersionConfig, *, cache_dir: Path | None = None) -> ModelRunner:
    """Download (or reuse) the version's artifact, build its session and warm it up."""
    # In a replica MODELPLANE_TOKEN is the replicas' read-only token, when reads need one.
    path = fetch_artifact(config.artifact_url, config.digest, cache_dir=cache_dir,
                          token=get_settings().token)
    runner = ModelRunner(config, path)
    runner.warmup()
    return runner


class LocalVersion:
    """A version whose ONNX session lives in this process, batched with ``serve.batch``."""

    def __init__(self, config: VersionConfig, runner: ModelRunner, executor: ThreadPoolExecutor):
        self.config = config
        self.runner = runner
        self._executor = executor
        self._batched: Any = None
        batching = config.batching
        if runner.can_batch and batching.max_batch_size > 1:
            from ray import serve

            async def run_many(items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, runner.run_batch, items)

            self._batched = serve.batch(
                max_batch_size=batching.max_batch_size,
                batch_wait_timeout_s=batching.batch_wait_timeout_ms / 1000,
            )(run_many)

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._batched is not None:
            return await self._batched(arrays)  # type: ignore[no-any-return]
        # ONNX Runtime releases the GIL; the event loop keeps accepting requests meanwhile.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.runner.run, arrays)


class RemoteVersion:
    """A version served by its own ModelServer deployment, reached through a handle."""

    def __init__(self, config: VersionConfig, handle: Any) -> None:
        self.config = config
        self._handle = handle

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self._handle.infer.remote(arrays)  # type: ignore[no-any-return]
