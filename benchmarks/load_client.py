"""A small load client for the serving benchmarks: sequential latency and closed-loop throughput.

    python -m benchmarks.load_client URL BODY_FILE [--sequential N] [--concurrency C] [--seconds S]

Prints one JSON object. Run it pinned to its own core (``taskset -c 1``) so it does not
compete with the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import time
from urllib.parse import urlparse


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
    samples.sort()
    return {
        "p50_ms": 1000 * samples[len(samples) // 2],
        "p99_ms": 1000 * samples[min(len(samples) - 1, int(len(samples) * 0.99))],
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with open(args.body_file, "rb") as handle:
        body = handle.read()
    result = sequential(args.url, body, args.sequential) if args.sequential else {}
    if args.seconds > 0:
        result.update(asyncio.run(closed_loop(args.url, body, args.concurrency, args.seconds)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
