"""A small load client for the serving benchmarks: sequential latency and closed-loop throughput.

    python -m benchmarks.load_client URL BODY_FILE [--sequential N] [--concurrency C] [--seconds S]
                                     [--rate R]

Closed loop (C requests always in flight: the most a server answers), or with ``--rate``
open loop: R requests a second on a fixed schedule whatever the answers take, at most C
in flight, so two servers (or two modes of one) are compared doing the same work. Prints
one JSON object. Run it pinned to its own core (``taskset -c 1``) so it does not
compete with the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import time
from urllib.parse import urlparse


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds of latencies in seconds; NaN where there are none."""
    if not samples:
        return float("nan"), float("nan")
    ordered = sorted(samples)
    return (1000 * ordered[len(ordered) // 2],
            1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))])


def sequential(url: str, body: bytes, count: int) -> dict[str, float]:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"content-type": "application/json"}
    samples, failures, example = [], 0, ""
    for index in range(count + 20):
        started = time.perf_counter()
        connection.request("POST", parsed.path, body, headers)
        response = connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            failures += 1
            example = example or f"HTTP {response.status}: {payload[:200]!r}"
        if index >= 20:  # the first requests warm connections and caches
            samples.append(elapsed)
    middle, high = percentiles_ms(samples)
    return {
        "p50_ms": middle,
        "p99_ms": high,
        "sequential_failures": failures,
        "failure_example": example,
    }


# aiohttp asks for gzip by default and http.client (the sequential run) for identity: both
# ask for identity, so a server that compresses what it may (Triton, MLServer) does the
# same work in both runs, and none compresses for a client on the same machine.
HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}


async def closed_loop(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    import aiohttp

    done = failures = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, failures
        while time.perf_counter() < deadline:
            async with session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                if response.status == 200:
                    done += 1
                else:
                    failures += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"throughput_rps": done / elapsed, "throughput_failures": failures,
            "throughput_requests": done, "throughput_seconds": elapsed}


async def open_loop(url: str, body: bytes, rate: float, concurrency: int,
                    seconds: float) -> dict[str, float | int | str]:
    """``rate`` requests a second for ``seconds``. A send whose time comes while
    ``concurrency`` requests are in flight waits for one and counts as ``late``; every
    failure is counted: a status other than 200, a transport error, a timeout."""
    import aiohttp

    done = failures = late = 0
    example = ""
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal done, failures, example
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=HEADERS) as response:
                payload = await response.read()
                if response.status == 200:
                    done += 1
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1
                    example = example or f"HTTP {response.status}: {payload[:200]!r}"
        except (TimeoutError, aiohttp.ClientError) as error:
            failures += 1
            example = example or f"{type(error).__name__}: {error}"
        finally:
            slots.release()

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        sends = []
        for index in range(int(rate * seconds)):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots.locked():
                late += 1
            await slots.acquire()
            sends.append(asyncio.create_task(one(session)))
        await asyncio.gather(*sends)
        elapsed = time.perf_counter() - started
    middle, high = percentiles_ms(latencies)
    return {"offered_rps": rate, "throughput_rps": done / elapsed, "throughput_failures": failures,
            "throughput_requests": done, "throughput_seconds": elapsed, "late_sends": late,
            "open_p50_ms": middle, "open_p99_ms": high, "failure_example": example}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests a second, open loop (0: closed loop at --concurrency)")
    args = parser.parse_args()
    if args.rate < 0 or args.concurrency < 1:
        parser.error("--rate must be >= 0 and --concurrency >= 1")
    with open(args.body_file, "rb") as handle:
        body = handle.read()
    result = sequential(args.url, body, args.sequential) if args.sequential else {}
    if args.seconds > 0 and args.rate > 0:
        result.update(asyncio.run(open_loop(args.url, body, args.rate, args.concurrency, args.seconds)))
    elif args.seconds > 0:
        result.update(asyncio.run(closed_loop(args.url, body, args.concurrency, args.seconds)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
