"""Open-loop HTTP load at a fixed rate, and the search for the highest rate that holds a p99.

Open loop: request ``i`` is due at ``start + i / rate`` and is sent then, whether or not
earlier ones have answered, and its latency runs from when it was due. A closed-loop
client waits for an answer before sending again, so a stall delays the requests that
would have queued behind it and they never count the wait (coordinated omission); here
they do, and a server that cannot keep up shows it in its percentiles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from control_plane.benchmarking.schemas import LatencyFigures, RateStep
from kernels.order_statistics import quantile_bound_ranks

REQUEST_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 2048  # beyond this the rate is not held: later requests count as errors
HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}


QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
# Each run's bound at this, so that a ratio of two runs' bounds holds at 95%.
PAIRED_CONFIDENCE = 0.975


def _bounds(ordered_ms: np.ndarray, q: float) -> list[float | None]:
    ranks = quantile_bound_ranks(ordered_ms.size, q, PAIRED_CONFIDENCE)
    return [None if rank is None else float(ordered_ms[rank - 1]) for rank in ranks]


@dataclass
class LoadResult:
    """What one phase of load saw."""

    rate: float
    seconds: float
    latencies_s: list[float] = field(default_factory=list)  # of the 200 answers
    errors: int = 0
    first_error: str = ""
    elapsed_s: float = 0.0  # from the first due time to the last answer

    @property
    def requests(self) -> int:
        return len(self.latencies_s) + self.errors

    @property
    def achieved_rps(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency(self) -> LatencyFigures | None:
        if not self.latencies_s:
            return None
        ms = np.sort(np.asarray(self.latencies_s) * 1000.0)
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return LatencyFigures(p50=float(p50), p95=float(p95), p99=float(p99),
                              mean=float(ms.mean()), max=float(ms.max()), count=ms.size,
                              bounds={name: _bounds(ms, q) for name, q in QUANTILES.items()})

    def holds(self, p99_target_ms: float) -> bool:
        """p99 within target, every request answered, and the answers kept up with the rate."""
        latency = self.latency()
        return (latency is not None and self.errors == 0 and latency.p99 <= p99_target_ms
                and self.achieved_rps >= 0.9 * self.rate)

    def step(self, p99_target_ms: float) -> RateStep:
        latency = self.latency()
        return RateStep(rate=self.rate, achieved_rps=round(self.achieved_rps, 3),
                        p99_ms=latency.p99 if latency else None, errors=self.errors,
                        held=self.holds(p99_target_ms))


def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, *,
              headers: dict[str, str] | None = None) -> LoadResult:
    """Send ``rate`` requests a second for ``seconds`` to ``url``, cycling through ``bodies``
    (with ``headers`` besides the JSON ones)."""
    sent = {**HEADERS, **(headers or {})}
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: a plain thread, the loop is this call's own
        return asyncio.run(_open_loop(url, bodies, rate, seconds, sent))
    # Called from inside an event loop (which must not block on it): a thread of its own.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _open_loop(url, bodies, rate, seconds, sent)).result()


async def _open_loop(url: str, bodies: list[bytes], rate: float, seconds: float,
                     headers: dict[str, str]) -> LoadResult:
    import aiohttp

    result = LoadResult(rate, seconds)
    count = max(1, round(rate * seconds))
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    in_flight = 0

    async def one(session: aiohttp.ClientSession, body: bytes, due: float) -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                if response.status == 200:
                    result.latencies_s.append(time.perf_counter() - due)
                else:
                    _error(result, f"HTTP {response.status}: {payload[:300].decode(errors='replace')}")
        except (aiohttp.ClientError, TimeoutError) as error:
            _error(result, f"{type(error).__name__}: {error}"[:300])
        finally:
            in_flight -= 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        start = time.perf_counter() + 0.05
        for index in range(count):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= MAX_IN_FLIGHT:
                _error(result, f"more than {MAX_IN_FLIGHT} requests in flight")
                continue
            tasks.append(asyncio.create_task(one(session, bodies[index % len(bodies)], due)))
        await asyncio.gather(*tasks)
        result.elapsed_s = max(time.perf_counter() - start, seconds)
    return result


def _error(result: LoadResult, message: str) -> None:
    result.errors += 1
    result.first_error = result.first_error or message


def search_rate(measure: Callable[[float], LoadResult], start: float, p99_target_ms: float,
                steps: int) -> tuple[float | None, list[RateStep]]:
    """The highest rate that holds the p99 target, in ``steps`` measurements at most.

    From ``start`` it doubles while a rate holds (halves while one does not), then bisects
    between the best rate that held and the lowest that did not. ``measure`` puts one
    step's load on the server and returns what it saw.
    """
    tried: list[RateStep] = []
    held: float | None = None
    broke: float | None = None
    rate = start
    for _ in range(steps):
        step = measure(rate).step(p99_target_ms)
        tried.append(step)
        if step.held:
            held = max(held or 0.0, rate)
        else:
            broke = rate if broke is None else min(broke, rate)
        if held is not None and broke is not None:
            rate = (held + broke) / 2
        elif held is not None:
            rate = held * 2
        else:
            rate = rate / 2
        if broke is not None and held is not None and broke - held <= 0.05 * held:
            break  # within 5%: another step would not say more
    return held, tried
