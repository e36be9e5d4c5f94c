"""When the Monitor cannot answer, alerts keep their state and say their data is stale."""

from __future__ import annotations

import pytest

from control_plane.alerts import AlertService
from control_plane.alerts.schemas import AlertRuleSpec
from control_plane.errors import MonitorUnavailableError
from control_plane.metrics import render
from control_plane.store import Database
from serving.monitoring import VersionSnapshot
from tests.snapshots import drifting


class Monitor:
    """A Monitor that can be up (drifting or not), gone, or freshly restarted (empty)."""

    def __init__(self) -> None:
        self.mode = "drift"

    def __call__(self, endpoint: str, window_s: float) -> dict[int, VersionSnapshot]:
        if self.mode == "gone":
            raise MonitorUnavailableError("the Monitor did not answer within 2s")
        if self.mode == "empty":
            return {}
        return {1: drifting("drift", ["income"]) if self.mode == "drift" else drifting("ok")}


@pytest.fixture
def service(db: Database):
    svc = AlertService(db)
    svc.put_rule(AlertRuleSpec(name="input-drift", metric="drift", comparison="==", threshold=1,
                               every_s=1), "alice")
    yield svc
    svc.stop()


def states(svc: AlertService) -> list[str]:
    return [e.state for e in reversed(svc.history(limit=100).items)]


@pytest.mark.parametrize("outage", ["gone", "empty"])
def test_an_unanswering_monitor_keeps_a_firing_alert_firing_and_marks_it_stale(service, outage) -> None:
    monitor = Monitor()
    service.evaluate(monitor, lambda: ["churn"], now=0.0)
    assert states(service) == ["firing"]
    monitor.mode = outage
    for now in (1.0, 2.0, 3.0):
        service.evaluate(monitor, lambda: ["churn"], now=now)
    assert states(service) == ["firing"]  # no false "resolved"
    [alert] = service.active()
    assert alert.state == "firing" and alert.stale
    assert "Monitor" in alert.stale and alert.data["stale_since"]
    monitor.mode = "drift"  # a Monitor answers again: the same alert, fresh, not re-notified
    service.evaluate(monitor, lambda: ["churn"], now=4.0)
    [alert] = service.active()
    assert alert.stale is None and states(service) == ["firing"]
    monitor.mode = "ok"
    service.evaluate(monitor, lambda: ["churn"], now=5.0)
    assert states(service) == ["firing", "resolved"] and service.active() == []


def test_a_restarted_service_still_knows_the_alert_is_stale(db: Database, service) -> None:
    monitor = Monitor()
    service.evaluate(monitor, lambda: ["churn"], now=0.0)
    monitor.mode = "gone"
    service.evaluate(monitor, lambda: ["churn"], now=1.0)
    second = AlertService(db)
    try:
        second.evaluate(monitor, lambda: ["churn"], now=2.0)
        [alert] = second.active()
        assert alert.state == "firing" and alert.stale
    finally:
        second.stop()


def test_an_undeployed_endpoint_still_resolves_its_alerts(service) -> None:
    monitor = Monitor()
    service.evaluate(monitor, lambda: ["churn"], now=0.0)
    service.evaluate(monitor, lambda: [], now=1.0)
    assert states(service) == ["firing", "resolved"]


def test_metrics_say_whether_the_monitor_answered() -> None:
    assert b"modelplane_monitor_up 0.0" in render([], [], {}, None, monitor_up=False)
    assert b"modelplane_monitor_up 1.0" in render([], [], {}, None, monitor_up=True)
    assert b"modelplane_monitor_up" not in render([], [], {}, None)


def test_without_ray_the_monitor_reads_are_empty_not_errors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane import observability
    from control_plane.observability import endpoint_stats, monitor_totals, version_stats

    # The whole suite runs in one process, where the integration tiers may have started Ray.
    monkeypatch.setattr(observability, "_ray_ready", lambda: False)

    assert version_stats("churn", 60) == {} and endpoint_stats("churn", 60) == {}
    assert monitor_totals() == []


def test_a_monitor_of_an_older_release_is_no_reason_to_refuse_the_other_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Monitor left running by an older modelplane has no `served`: the missing method
    was taken for a Monitor that does not answer, and every read for the next seconds
    (the rollout's statistics among them) was refused."""
    import ray

    from control_plane import observability
    from serving.monitoring import monitor as monitor_module

    class OlderMonitor:
        class snapshot:  # named as the actor method it stands for
            @staticmethod
            def remote(*args: object) -> str:
                return "snapshot"

    monkeypatch.setattr(observability, "_ray_ready", lambda: True)
    monkeypatch.setattr(observability, "_unavailable", None)
    monkeypatch.setattr(monitor_module, "get_monitor", lambda: OlderMonitor())
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: {1: ref})
    assert observability.served_config("churn") is None
    assert observability.read_version_stats("churn", 60) == {1: "snapshot"}
