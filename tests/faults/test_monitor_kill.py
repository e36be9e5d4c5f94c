"""The Monitor killed under load, in the middle of a rollout.

Serving never waits on the Monitor, so no request fails; while it is gone every analysis
the rollout records is inconclusive (never a pass or a failure built on missing data) and
the rollout neither advances nor rolls back; once a new Monitor runs, the replicas'
statistics reach it again and analyses pass again.
"""

from __future__ import annotations

import time
from datetime import datetime

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


def test_monitor_killed_mid_rollout(platform: Platform) -> None:
    from serving.monitoring.monitor import ensure_monitor, get_monitor

    name = "fault-monitor-kill"
    client: Client = platform.client()
    client.register_version(name, linear_classifier(seed=1), linear_classifier_manifest())
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    client.deploy(name, f"{name}:1", scaling={"num_cpus": 0.05})
    platform.wait_endpoint(name, {1})
    try:
        with BackgroundLoad(platform.url, name) as load:
            rollout = client.start_rollout({"endpoint": name, "model_ref": f"{name}:2",
                                            "steps": [50, 100], "step_duration_s": 600,
                                            "analysis": ANALYSIS})
            wait_for(lambda: client.get_rollout(rollout.id).last_analysis.get("verdict") == "pass",
                     90, "a passing analysis before the fault")

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
