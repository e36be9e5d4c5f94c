"""Alert notifications to real local HTTP receivers: firing and resolved, retries, dead ones."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.alerts import AlertService
from control_plane.alerts.schemas import AlertRuleSpec, ReceiverSpec
from control_plane.store import Database
from serving.monitoring import VersionSnapshot
from tests.snapshots import drifting
from tests.webhooks import Receiver

pytestmark = pytest.mark.no_ray


@pytest.fixture
def service(tmp_path: Path) -> Iterator[AlertService]:
    db = Database(f"sqlite:///{tmp_path / 'alerts.db'}")
    svc = AlertService(db)
    yield svc
    svc.stop()
    db.dispose()


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port whose listener accepts connections and never answers (a hung receiver)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


def eventually(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def drift_stats(verdict: str) -> dict[int, VersionSnapshot]:
    return {1: drifting(verdict, ["income"] if verdict == "drift" else [])}


def test_a_receiver_gets_the_firing_and_the_resolved_notification(service) -> None:
    receiver = Receiver()
    service.put_receiver(ReceiverSpec(name="ops", url=receiver.url), "alice")
    service.put_rule(AlertRuleSpec(name="input-drift", metric="drift", comparison="==", threshold=1,
                                   severity="critical", labels={"team": "risk"}), "alice")
    service.evaluate(lambda e, w: drift_stats("drift"), lambda: ["churn"], now=100.0)
    service.evaluate(lambda e, w: drift_stats("drift"), lambda: ["churn"], now=200.0)  # no repeat
    service.evaluate(lambda e, w: drift_stats("ok"), lambda: ["churn"], now=300.0)
    firing, resolved = receiver.wait(2)
    assert [firing["status"], resolved["status"]] == ["firing", "resolved"]
    alert = firing["alert"]
    assert alert["name"] == "input-drift" and alert["severity"] == "critical"
    assert alert["labels"] == {"team": "risk", "alertname": "input-drift", "endpoint": "churn",
                               "version": "1", "severity": "critical"}
    assert alert["data"]["drifted_features"] == ["income"] and "income" in alert["summary"]
    assert resolved["alert"]["fingerprint"] == alert["fingerprint"]
    assert resolved["alert"]["resolved_at"] is not None
    time.sleep(0.2)
    assert len(receiver.received) == 2  # deduplicated: one firing, one resolved
    receiver.close()


def test_a_failing_receiver_is_retried_with_backoff(service) -> None:
    receiver = Receiver(failures=2)
    service.put_receiver(ReceiverSpec(name="flaky", url=receiver.url, backoff_s=0.05), "alice")
    service.fire_event("rollout-rolled-back", severity="critical", labels={"endpoint": "churn"},
                       summary="candidate failed")
    [delivered] = receiver.wait(1)
    assert receiver.attempts == 3 and delivered["alert"]["kind"] == "event"
    # The receiver records the body before it answers: wait for the sender to see the answer.
    assert eventually(lambda: service.notifier.stats()["flaky"] == {"retries": 2, "sent": 1}), \
        service.notifier.stats()
    receiver.close()


def test_a_receiver_that_refuses_the_payload_is_not_retried(service) -> None:
    receiver = Receiver(failures=10, failure_status=400)
    service.put_receiver(ReceiverSpec(name="strict", url=receiver.url, backoff_s=0.05), "alice")
    service.fire_event("note", severity="info", labels={}, summary="")
    assert eventually(lambda: service.notifier.stats()["strict"] == {"failed": 1}), \
        service.notifier.stats()
    assert receiver.attempts == 1
    receiver.close()


def test_a_hung_receiver_blocks_neither_the_caller_nor_the_other_receivers(service, hanging_port) -> None:
    healthy = Receiver()
    service.put_receiver(ReceiverSpec(name="hung", url=f"http://127.0.0.1:{hanging_port}/hook",
                                      timeout_s=10, max_attempts=3, backoff_s=0.5), "alice")
    service.put_receiver(ReceiverSpec(name="healthy", url=healthy.url), "alice")
    started = time.monotonic()
    for index in range(5):
        service.fire_event(f"event-{index}", severity="warning", labels={}, summary="")
    # Delivering to the hung receiver takes 3 x 10 s plus backoff per notification (31 s
    # for one); the caller returns at once and the healthy receiver hears everything
    # meanwhile. The bounds leave a busy host room, and stay well below one hung delivery.
    assert time.monotonic() - started < 9  # one call held by the hung receiver: 10 s
    assert len(healthy.wait(5, timeout=20)) == 5
    assert time.monotonic() - started < 25
    assert service.notifier.stats()["hung"].get("sent", 0) == 0
    healthy.close()
