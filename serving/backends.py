"""Version backends: a model in this replica (colocated) or behind a Serve handle (isolated)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from serving.backlog import Backlog
from serving.batcher import DynamicBatcher
from serving.errors import ModelNotReadyError, overloaded_error
from serving.link_client import VersionLink
from serving.runners import Runner, load_runner
from serving.runners.base import element_count, read_only
from serving.schemas import VersionConfig

__all__ = ["LocalVersion", "RemoteVersion", "UnloadableVersion", "load_runner"]


# A call expected to take less than this runs on the event loop: handing it to a thread
# (submit, wake a worker, hand the result back) costs 15-50 us, more than a small model's
# whole run (10 us for a 64-256-256-10 MLP), and the loop is blocked no longer than a
# request's own parsing takes.
INLINE_BELOW_S = 0.0002
_WARM_CALLS = 8  # calls measured in the pool before any runs inline
_SMOOTHING = 0.1
# Loading measures this many seconds of runs at most: a model slow enough to spend it
# would never run inline anyway, and its first requests should not wait on the loading.
WARM_BUDGET_S = 0.5


class RunTime:
    """A runner's measured seconds per input element (an exponentially weighted mean),
    which says whether the next call is cheap enough to run inline. Elements, not rows:
    a sequence model's one row may hold millions of tokens. Every call is measured, so a
    model that turns slow goes back to the pool at once: one 50 ms call moves the mean by
    5 ms."""

    __slots__ = ("calls", "per_element_s")

    def __init__(self) -> None:
        self.calls = 0
        self.per_element_s = 0.0

    def cheap(self, elements: int) -> bool:
        return self.calls >= _WARM_CALLS and self.per_element_s * elements < INLINE_BELOW_S

    def record(self, seconds: float, elements: int) -> None:
        per_element = seconds / max(elements, 1)
        if self.calls == 0:
            self.per_element_s = per_element
        elif self.calls < _WARM_CALLS:
            # The warm calls' least time: their mean, or the last of them, would carry a
            # first run's allocations or one call the OS preempted, and hold a cheap model
            # in the pool for dozens of calls while the mean decays.
            self.per_element_s = min(self.per_element_s, per_element)
        else:
            self.per_element_s += _SMOOTHING * (per_element - self.per_element_s)
        self.calls += 1



class LocalVersion:
    """A version whose model lives in this process, batched by a ``DynamicBatcher``; unbatched
    calls run in the thread pool, or inline when they have measured cheap (``RunTime``) and
    no other request waits (``Backlog``)."""

    def __init__(self, config: VersionConfig, runner: Runner, executor: ThreadPoolExecutor,
                 backlog: Backlog | None = None, clock: Callable[[], float] = time.perf_counter):
        self.config = config
        self._clock = clock
        self.runner = runner
        self.run_time = RunTime()
        self._executor = executor
        self._backlog = backlog
        self._batched: DynamicBatcher[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        self._mirroring = asyncio.Semaphore(1)
        batching = config.batching
        if runner.can_batch and batching.max_batch_size > 1:

            async def run_many(items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, runner.run_batch, items)

            self._batched = DynamicBatcher(run_many, max_batch_size=batching.max_batch_size,
                                           max_wait_s=batching.batch_wait_timeout_ms / 1000)

    def warm(self) -> None:
        """Measured runs (the runner's own warm-up input) before the version answers, so its
        first requests already take the path their cost calls for, not the pool by default.
        Called off the event loop, while the version loads."""
        if self._batched is not None or self.runner.is_async:
            return
        deadline = self._clock() + WARM_BUDGET_S
        while self.run_time.calls < _WARM_CALLS and self._clock() < deadline:
            started = self._clock()
            self.runner.warmup()
            self.run_time.record(self._clock() - started, 1)

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A binary input was read-only or not by its alignment in the body (the request
        # id's length decided), and a model that changed its inputs in place changed what
        # drift and the shadow saw.
        arrays = read_only(arrays)
        if self._batched is not None:
            return await self._batched(arrays)
        if self.runner.is_async:
            return await self.runner.run_async(arrays)  # type: ignore[attr-defined,no-any-return]
        elements = element_count(arrays)
        if self._backlog is not None and self._backlog.idle and self.run_time.cheap(elements):
            return self._timed_run(arrays, elements)
        # ONNX Runtime and torch release the GIL; the event loop keeps accepting requests.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed_run, arrays, elements)

    async def mirror(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A shadow's call: its runs take one of the pool's threads at most (a batcher runs
        one batch at a time already), so however slow the shadow, the primaries it mirrors
        never wait behind it for a thread."""
        if self._batched is not None or self.runner.is_async:
            return await self.infer(arrays)
        async with self._mirroring:
            return await self.infer(arrays)

    def _timed_run(self, arrays: dict[str, np.ndarray], elements: int) -> dict[str, np.ndarray]:
        started = self._clock()
        try:
            return self.runner.run(arrays)
        finally:
            self.run_time.record(self._clock() - started, elements)


class UnloadableVersion:
    """A version this replica could not load: it answers 503 with the cause while the
    endpoint's other versions go on serving (a failed load never restarts the replica)."""

    def __init__(self, config: VersionConfig, error: BaseException) -> None:
        self.config = config
        self.error = f"{type(error).__name__}: {error}"[:2000]

    async def mirror(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self.infer(arrays)

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ModelNotReadyError(
            f"{self.config.model}:{self.config.version} could not be loaded on this replica: "
            f"{self.error}", detail={"version": self.config.version, "reason": "load_failed"})


class RemoteVersion:
    """A version served by its own ModelServer deployment: on its link where there is one
    (``serving.link_client``), else, and whenever the link cannot carry a request, through
    Serve's handle."""

    def __init__(self, config: VersionConfig, handle: Any, link: VersionLink | None = None) -> None:
        self.config = config
        self._handle = handle
        self.link = link  # the version's own listeners (serving.version_link), where there

    async def mirror(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Its own replicas' threads, which no primary of this endpoint waits for.
        return await self.infer(arrays)

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ray.exceptions import RayActorError  # ActorDiedError, ActorUnavailableError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
        )

        if self.link is not None:
            answer = await self.link.infer(arrays)
            if answer is not None:
                return answer
        try:
            return await self._handle.infer.remote(arrays)  # type: ignore[no-any-return]
        except BackPressureError:  # the version's own max_queued_requests, enforced by Serve
            raise overloaded_error(None) from None
        except (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError) as error:
            # No replica of the version could take the call (unhealthy, or gone mid-call):
            # the caller may try again shortly, so a 503 with Retry-After, not a bare 500.
            # Still a 5xx: it counts against the version as any failure to answer does.
            raise ModelNotReadyError(
                f"{self.config.model}:{self.config.version} has no replica able to answer "
                f"now ({type(error).__name__}); retry shortly",
                detail={"version": self.config.version, "reason": "replica_unavailable"},
            ) from None
