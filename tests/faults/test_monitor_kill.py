"""The Monitor killed, or wedged, under load in the middle of a rollout.

Serving never waits on the Monitor, so no request fails; while it is gone (or answers
nothing) every analysis the rollout records is inconclusive (never a pass or a failure
built on missing data) and the rollout neither advances nor rolls back; once a Monitor
runs again, the replicas' statistics reach it again and analyses pass again.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from typing import Any

import httpx
import ray

from control_plane.client import Client
from tests.load import BackgroundLoad
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.waiting import wait_for

ANALYSIS = {"interval_s": 1, "window_s": 3, "min_samples": 15, "failures_to_rollback": 1,
            "max_p95_ms": 5000, "max_p95_ratio": None}


def _analysis_at(record: dict) -> float:
    return datetime.fromisoformat(record["at"]).timestamp()


def _serving_version_1_of_2(platform: Platform, name: str) -> Client:
    client: Client = platform.client()
    client.register_version(name, linear_classifier(seed=1), linear_classifier_manifest())
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    client.deploy(name, f"{name}:1", scaling={"num_cpus": 0.05})
    platform.wait_endpoint(name, {1})
    return client


def _rollout_passing(client: Client, name: str) -> Any:
    """A rollout of version 2 at its first step, once an analysis passed."""
    rollout = client.start_rollout({"endpoint": name, "model_ref": f"{name}:2",
                                    "steps": [50, 100], "step_duration_s": 600,
                                    "analysis": ANALYSIS})
    wait_for(lambda: client.get_rollout(rollout.id).last_analysis.get("verdict") == "pass",
             90, "a passing analysis before the fault")
    return rollout


def test_monitor_killed_mid_rollout(platform: Platform) -> None:
    from serving.monitoring.monitor import ensure_monitor, get_monitor

    name = "fault-monitor-kill"
    client = _serving_version_1_of_2(platform, name)
    try:
        with BackgroundLoad(platform.url, name) as load:
            rollout = _rollout_passing(client, name)

            killed_at = time.time()
            ray.kill(get_monitor(), no_restart=True)
            wait_for(lambda: get_monitor() is None, 30, "the Monitor to be gone")
            gone_at = time.time()  # ray.kill returns before the actor has died
            seen: dict[str, str] = {}
            until = time.monotonic() + 30  # a busy host may run the analyses late
            while time.monotonic() < until and len(seen) < 3:
                record = client.get_rollout(rollout.id).last_analysis
                if record and _analysis_at(record) > gone_at:
                    seen[record["at"]] = record["verdict"]
                time.sleep(0.3)
            assert seen, "no analysis ran while the Monitor was gone"
            assert set(seen.values()) == {"inconclusive"}, seen
            during = client.get_rollout(rollout.id)
            assert during.state == "progressing" and during.step_index == 0

            ensure_monitor()
            # Measured from when the new Monitor answers (its process takes seconds to start).
            ray.get(get_monitor().snapshot.remote(name, 1.0), timeout=60)
            restarted = time.monotonic()

            def fresh_requests() -> int:
                answer = httpx.get(f"{platform.url}/api/endpoints/{name}/stats",
                                   params={"window": 2}, timeout=30)
                if answer.status_code != 200:
                    return 0
                return sum((v or {}).get("requests", 0) for v in answer.json()["versions"].values())

            wait_for(fresh_requests, 60, "statistics from the new Monitor")
            resumed_s = time.monotonic() - restarted
            wait_for(lambda: client.get_rollout(rollout.id).last_analysis.get("verdict") == "pass",
                     60, "a passing analysis on the new Monitor's statistics")
        events = client.rollout_events(rollout.id)
        after_kill = [e for e in events if e.created_at.timestamp() > killed_at]
        assert [e.kind for e in after_kill if e.kind in ("analysis_failed", "step")] == []
        assert client.get_rollout(rollout.id).state == "progressing"
        failed = load.failures()
        print(f"\nMonitor killed: sent {len(load.answers)}, failed {len(failed)}, "
              f"{len(seen)} inconclusive analyses while down, statistics resumed "
              f"{resumed_s:.2f} s after the new Monitor started")
        assert failed == [], failed[:3]
        # Replicas look the Monitor up again on their next shipment (about a second); the
        # bound is generous for a loaded machine, the figure above is what was seen.
        assert resumed_s < 30
    finally:
        ensure_monitor()
        for active in client.list_rollouts(endpoint=name, active=True):
            client.rollout_action(active.id, "abort", "test finished")
        client.undeploy(name)
        client.close()


def _monitor_pid() -> int:
    from serving.monitoring.monitor import get_monitor

    def getpid(_monitor: object) -> int:
        import os

        return os.getpid()

    return int(ray.get(get_monitor().__ray_call__.remote(getpid), timeout=30))


WEDGED_S = 15.0


def test_a_wedged_monitor_costs_no_request_decides_nothing_and_loses_no_second(
        platform: Platform) -> None:
    """The Monitor's process stopped (SIGSTOP: alive, answering nothing) for 15 s. Each
    replica keeps taking its statistics at its interval, each with its time, and the
    Monitor files every second of the stop in its own second once it runs again: a
    replica waiting 5 s on each unanswered shipment took one every 6 s, so the stop read
    as a second of six seconds' traffic after five empty ones. And every answered request
    is counted exactly once, though each kept shipment was sent again until answered."""
    from serving.monitoring.monitor import get_monitor

    name = "fault-monitor-wedge"
    client = _serving_version_1_of_2(platform, name)
    try:
        with BackgroundLoad(platform.url, name) as load:
            rollout = _rollout_passing(client, name)
            pid = _monitor_pid()
            stopped_at = time.time()
            os.kill(pid, signal.SIGSTOP)
            seen: dict[str, str] = {}
            try:
                until = time.monotonic() + WEDGED_S
                while time.monotonic() < until:
                    record = client.get_rollout(rollout.id).last_analysis
                    # An analysis recorded a loaded moment after a read made before the stop
                    # may still pass: only those well past it must be inconclusive.
                    if record and _analysis_at(record) > stopped_at + 3:
                        seen[record["at"]] = record["verdict"]
                    time.sleep(0.3)
            finally:
                os.kill(pid, signal.SIGCONT)
            resumed_at = time.time()
            assert set(seen.values()) <= {"inconclusive"}, seen
            during = client.get_rollout(rollout.id)
            assert during.state == "progressing" and during.step_index == 0
            wait_for(lambda: client.get_rollout(rollout.id).last_analysis.get("verdict") == "pass",
                     90, "a passing analysis once the Monitor runs again")
        events = client.rollout_events(rollout.id)
        assert [e.kind for e in events if e.created_at.timestamp() > stopped_at
                and e.kind in ("analysis_failed", "step")] == []
        failed = load.failures()
        assert failed == [], failed[:3]

        answered = sum(1 for answer in load.answers if answer.ok)

        def counted() -> int:
            totals = ray.get(get_monitor().totals.remote(), timeout=30)
            return sum(sum(t.codes.values()) for t in totals if t.endpoint == name)

        # The replicas' last shipments land within a few intervals of the load's end.
        wait_for(lambda: counted() >= answered, 60, "every answered request counted",
                 seen=lambda: (counted(), answered))
        time.sleep(3)  # and nothing more lands: a shipment sent again is merged once
        assert counted() == answered

        history = ray.get(get_monitor().history.remote(name, 120.0, 1.0), timeout=30)
        per_second: dict[float, int] = {}
        for points in history.values():
            for point in points:
                per_second[round(point["t"])] = per_second.get(round(point["t"]), 0) + point["requests"]
        # The stop's seconds but its edges: the second the first kept shipment was sent in
        # (its first call, queued in the stopped process, is the one merged, filed by its age
        # when sent), and the last two (a shipment younger than two intervals when it
        # arrives is filed in the Monitor's current second).
        inside = [count for end, count in sorted(per_second.items())
                  if stopped_at + 2 <= end <= resumed_at - 2]
        to_wall = time.time() - time.monotonic()
        answered_in: dict[int, int] = {}
        for answer in load.answers:
            second = int(answer.at + to_wall)
            answered_in[second] = answered_in.get(second, 0) + 1
        print(f"\nMonitor wedged {resumed_at - stopped_at:.1f} s: {len(seen)} inconclusive "
              f"analyses; requests per second filed over the stop: {inside}; answered per "
              f"second then: {[answered_in.get(second, 0) for second in range(int(stopped_at) + 2, int(resumed_at) - 1)]}")
        assert len(inside) >= WEDGED_S - 5, inside
        busy = sorted(inside)[len(inside) // 2]
        assert busy > 0 and sum(1 for count in inside if count > 0) >= 0.8 * len(inside), inside
        assert max(inside) <= 4 * busy, inside  # a stalled second folds into the next
    finally:
        for active in client.list_rollouts(endpoint=name, active=True):
            client.rollout_action(active.id, "abort", "test finished")
        client.undeploy(name)
        client.close()
