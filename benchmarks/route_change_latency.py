"""What a client sees while a route table changes: latency around each weight change.

    python -m benchmarks.route_change_latency [--changes 8] [--spacing 7]

A two-version endpoint of the small MLP behind the fast ingress ``modelplane up`` picks
(HAProxy), the server side pinned to core 0. One client on core 1 sends sequential
requests for the whole run and records each one's send time, latency and status (a
transport error or an unexpected body counts as a failure); meanwhile the weights change
``--changes`` times, ``--spacing`` seconds apart, through the control plane. Requests in
the two seconds after each change, in quarter-second bins, are compared with the steady
state (requests more than three seconds from any change) measured in the same run: how many
were answered and their p50 and p99.
Results: benchmarks/results/route_change_latency.json and .md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from benchmarks.serving import SMALL, body, fast_platform, manifest, mlp, wait_serving

RESULTS = Path(__file__).parent / "results"
AFTER_S = 2.0  # the window after a change that is compared with the steady state
STEADY_GAP_S = 3.0  # steady requests are at least this far from any change
BIN_S = 0.25


class SequentialClient(threading.Thread):
    """Sequential requests until stopped: (sent at, seconds, ok) for each one."""

    def __init__(self, url: str, payload: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.payload = urlparse(url), payload
        self.samples: list[tuple[float, float, bool]] = []
        self.failures: list[str] = []
        self.crashed: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            os.sched_setaffinity(0, {1})
            connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
            while not self._stop_event.is_set():
                sent = time.monotonic()
                try:
                    connection.request("POST", self.url.path, self.payload,
                                       {"content-type": "application/json"})
                    response = connection.getresponse()
                    answer = response.read()
                    ok = response.status == 200 and b'"outputs"' in answer
                    if not ok:
                        self.failures.append(f"HTTP {response.status}: {answer[:200]!r}")
                except (OSError, http.client.HTTPException) as error:
                    ok = False
                    self.failures.append(f"{type(error).__name__}: {error}")
                    connection.close()
                    connection = http.client.HTTPConnection(self.url.hostname, self.url.port,
                                                            timeout=30)
                self.samples.append((sent, time.monotonic() - sent, ok))
        except BaseException as error:  # a dead client must fail the run, not shorten it
            self.crashed = error

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)
        if self.crashed is not None:
            raise RuntimeError(f"the load client died: {self.crashed!r}")


def summarise(samples: list[tuple[float, float, bool]], changes: list[float]) -> dict[str, Any]:
    """The steady state against the seconds after each change (see the module docstring)."""
    sent = np.array([s[0] for s in samples])
    latency = np.array([s[1] for s in samples]) * 1000
    distance = np.min(np.abs(sent[:, None] - np.array(changes)[None, :]), axis=1)
    steady = distance > STEADY_GAP_S
    steady_seconds = float(np.sum(np.diff(sent)[steady[1:]]))
    bins = []
    for start in np.arange(0.0, AFTER_S, BIN_S):
        counts, p50s, p99s = [], [], []
        for at in changes:
            inside = (sent >= at + start) & (sent < at + start + BIN_S)
            counts.append(int(inside.sum()))
            if inside.any():
                p50s.append(float(np.median(latency[inside])))
                p99s.append(float(np.percentile(latency[inside], 99)))
        bins.append({"from_s": float(start), "requests": float(np.median(counts)),
                     "p50_ms": float(np.median(p50s)) if p50s else float("nan"),
                     "p99_ms": float(np.median(p99s)) if p99s else float("nan")})
    return {
        "steady": {"requests": int(steady.sum()),
                   "per_bin": float(steady.sum()) / max(steady_seconds, 1e-9) * BIN_S,
                   "p50_ms": float(np.median(latency[steady])),
                   "p99_ms": float(np.percentile(latency[steady], 99))},
        "after_change": bins,
        "failures": int(sum(1 for s in samples if not s[2])),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from serving.names import endpoint_url

    with fast_platform("mprc") as (_, settings, client):
        for seed in (1, 2):
            client.register_version("route-bench", mlp(SMALL, seed), manifest(SMALL))
        scaling = {"num_cpus": 0.5, "max_ongoing_requests": 64}
        client.deploy("rc", "route-bench:1", scaling=scaling)
        client.deploy("rc", "route-bench:2", scaling=scaling)
        weights = {1: 90.0, 2: 10.0}
        client.set_traffic("rc", weights)
        wait_serving(endpoint_url(settings.url, "rc"), {1, 2}, weights)
        load = SequentialClient(endpoint_url(settings.url, "rc", "infer"), body(SMALL[0]))
        load.start()
        changes: list[float] = []
        time.sleep(args.spacing)
        for index in range(args.changes):
            share = 10.0 + 10.0 * ((index + 1) % 5)  # 20, 30, 40, 50, 10, 20 …
            changes.append(time.monotonic())
            client.set_traffic("rc", {1: 100.0 - share, 2: share})
            time.sleep(args.spacing)
        load.stop()
        return {"summary": summarise(load.samples, changes),
                "failure_examples": load.failures[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=8)
    parser.add_argument("--spacing", type=float, default=7.0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # the server side; the client thread moves itself to core 1
    result = run(args)
    summary = result["summary"]
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": vars(args), **result}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "route_change_latency.json").write_text(json.dumps(report, indent=2))
    steady = summary["steady"]
    lines = [
        "# Latency around route changes", "",
        f"Run {report['when']}; small MLP, two versions, fast ingress; server on core 0, one "
        f"sequential client on core 1; {args.changes} weight changes {args.spacing:g} s apart. "
        f"Each row after a change is the median over the changes of one {BIN_S:g} s bin.", "",
        f"| requests sent | requests per {BIN_S:g} s | p50 ms | p99 ms |", "|---|---|---|---|",
        f"| steady (over {STEADY_GAP_S:g} s from a change) | {steady['per_bin']:.0f} | "
        f"{steady['p50_ms']:.2f} | {steady['p99_ms']:.2f} |",
        *(f"| {b['from_s']:.2f}-{b['from_s'] + BIN_S:.2f} s after a change | {b['requests']:.0f} | "
          f"{b['p50_ms']:.2f} | {b['p99_ms']:.2f} |" for b in summary["after_change"]),
        "", f"Failures: {summary['failures']}.", "",
    ]
    (RESULTS / "route_change_latency.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
