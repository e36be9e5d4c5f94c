"""Serving under faults, on the test session's real Ray + Serve, under a background load.

Each scenario reports four figures (requests sent, answered correctly, failed with their
causes, and the time until failures stopped) and asserts its target:

- a replica SIGKILLed (colocated, then isolated): failures bounded by what was in flight
  on it, none once Serve has replaced it, and the replacement serves the same route table;
- graceful drain: scaling down, removing a version at 0% and undeploying under load fail
  no request (after an undeploy, the endpoint's absence is a clean 404, not a failure).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from control_plane.client import Client
from control_plane.errors import NotFoundError
from tests.load import Answer, BackgroundLoad
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.processes import replica_pids
from tests.waiting import wait_for

SMALL = {"num_cpus": 0.05}
WORKERS = 3


def report(name: str, load: BackgroundLoad, fault_at: float) -> float:
    """Print the scenario's four figures; returns seconds from the fault to the last failure."""
    failed = load.failures()
    causes = Counter((a.error or "")[:80] for a in failed)
    recovery = max((a.at for a in failed), default=fault_at) - fault_at
    print(f"\n{name}: sent {len(load.answers)}, answered {len(load.answers) - len(failed)}, "
          f"failed {len(failed)} {dict(causes)}, failures stopped {max(recovery, 0):.2f} s "
          "after the fault")
    return recovery


def _status(url: str) -> int | None:
    """The status a GET of ``url`` answers, None where none came (a replica being
    replaced, a loaded host): a wait asks again."""
    try:
        return httpx.get(url, timeout=30).status_code
    except httpx.TransportError:
        return None


@pytest.fixture
def endpoint(platform: Platform, request: pytest.FixtureRequest) -> Iterator[tuple[str, Client]]:
    name = f"fault-{request.node.name.removeprefix('test_')[:40].replace('_', '-')}"
    client = platform.client()
    client.register_version(name, linear_classifier(seed=1), linear_classifier_manifest())
    yield name, client
    with contextlib.suppress(NotFoundError):  # the test may have undeployed it itself
        client.undeploy(name)
    client.close()


def _kill_one_replica_under_load(platform: Platform, name: str, app: str) -> None:
    wait_for(lambda: len(replica_pids(app)) == 2, 120, f"two replicas of {app}")
    before_weights = platform.served_weights(name)
    with BackgroundLoad(platform.url, name, workers=WORKERS) as load:
        time.sleep(2)
        victim = replica_pids(app)[0]
        fault_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(p := replica_pids(app)) == 2 and victim not in p, 120,
                 "Serve to replace the killed replica")
        replaced_at = time.monotonic()
        wait_for(lambda: _status(f"{platform.url}/v2/models/{name}/ready") == 200, 60,
                 "the endpoint to be ready")
        time.sleep(3)
    recovery = report(f"replica SIGKILL ({app})", load, fault_at)
    failed = load.failures()
    # At most one request per load worker can be in flight on the killed replica.
    assert len(failed) <= WORKERS, [a.error for a in failed]
    assert all(a.at < replaced_at for a in failed), "a request failed after the replacement"
    assert recovery < replaced_at - fault_at + 1
    after = [a for a in load.answers if a.at > replaced_at]
    assert after and all(a.ok and a.version == 1 for a in after)
    assert platform.served_weights(name) == before_weights


def test_replica_sigkill_colocated(platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    client.deploy(name, f"{name}:1", scaling={**SMALL, "replicas": 2})
    platform.wait_endpoint(name, {1})
    _kill_one_replica_under_load(platform, name, f"endpoint-{name}")


def test_replica_sigkill_isolated(platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    client.deploy(name, f"{name}:1", placement="isolated", scaling={**SMALL, "replicas": 2})
    platform.wait_endpoint(name, {1})
    _kill_one_replica_under_load(platform, name, f"endpoint-{name}-v1")


def _clean(answers: list[Answer]) -> list[Answer]:
    """Failures other than the endpoint being gone (a 404 that says so) after an undeploy."""
    return [a for a in answers
            if not a.ok and not (a.status == 404 and "no endpoint named" in (a.error or ""))]


def test_graceful_drain_scale_down_version_removal_and_undeploy(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    client.deploy(name, f"{name}:1", scaling={**SMALL, "replicas": 2})
    platform.wait_endpoint(name, {1})
    client.deploy(name, f"{name}:2")
    platform.wait_endpoint(name, {1, 2})
    with BackgroundLoad(platform.url, name, workers=WORKERS) as load:
        time.sleep(1)
        client.set_traffic(name, {1: 0, 2: 100})
        platform.wait_weights(name, {1: 0.0, 2: 100.0})
        # One replica answered with the new table; the other takes it on its own long-poll.
        time.sleep(3)
        removal = len(load.answers)
        client.set_traffic(name, {2: 100})  # v1 leaves the route table: drained, then unloaded
        platform.wait_endpoint(name, {2})
        time.sleep(1)
        scale_down = len(load.answers)
        client.deploy(name, f"{name}:2", scaling={**SMALL, "replicas": 1})
        app = f"endpoint-{name}"
        wait_for(lambda: len(replica_pids(app)) == 1, 120, "one replica left")
        time.sleep(2)
        undeploy = len(load.answers)
        client.undeploy(name)
        wait_for(lambda: _status(f"{platform.url}/v2/models/{name}") == 404, 60,
                 "the endpoint to be gone")
        time.sleep(1)
    report("graceful drain", load, time.monotonic())
    assert [a for a in load.since(0)[:removal] if not a.ok] == []
    assert [a for a in load.since(removal)[: scale_down - removal] if not a.ok] == []
    assert [a for a in load.since(scale_down)[: undeploy - scale_down] if not a.ok] == []
    assert _clean(load.since(undeploy)) == []
    assert {a.version for a in load.since(removal)[: undeploy - removal] if a.ok} == {2}
