"""Version backends: a model in this replica (colocated) or behind a Serve handle (isolated)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from serving.errors import ModelNotReadyError
from serving.runners import Runner, load_runner
from serving.schemas import VersionConfig

__all__ = ["LocalVersion", "RemoteVersion", "UnloadableVersion", "load_runner"]


class LocalVersion:
    """A version whose model lives in this process, batched with ``serve.batch``."""

    def __init__(self, config: VersionConfig, runner: Runner, executor: ThreadPoolExecutor):
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
        if self.runner.is_async:
            return await self.runner.run_async(arrays)  # type: ignore[attr-defined,no-any-return]
        # ONNX Runtime and torch release the GIL; the event loop keeps accepting requests.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.runner.run, arrays)


class UnloadableVersion:
    """A version this replica could not load: it answers 503 with the cause while the
    endpoint's other versions go on serving (a failed load never restarts the replica)."""

    def __init__(self, config: VersionConfig, error: BaseException) -> None:
        self.config = config
        self.error = f"{type(error).__name__}: {error}"[:2000]

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ModelNotReadyError(
            f"{self.config.model}:{self.config.version} could not be loaded on this replica: "
            f"{self.error}", detail={"version": self.config.version, "reason": "load_failed"})


class RemoteVersion:
    """A version served by its own ModelServer deployment, reached through a handle."""

    def __init__(self, config: VersionConfig, handle: Any) -> None:
        self.config = config
        self._handle = handle

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self._handle.infer.remote(arrays)  # type: ignore[no-any-return]
