"""Alert rules against monitoring snapshots: states, deduplication, events, history, restarts."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy import select

from control_plane.alerts import AlertService
from control_plane.alerts.schemas import AlertRuleSpec, AlertsFile
from control_plane.alerts.service import RULES_REFRESH_S
from control_plane.alerts.signals import SIGNALS
from control_plane.alerts.states import Alert, AlertState
from control_plane.errors import StoreUnavailableError
from control_plane.leadership import LEASE_S, Lease
from control_plane.store import Database
from control_plane.store.database import fenced_writes
from serving.monitoring import VersionSnapshot
from tests.snapshots import drifting


class Stats:
    """What the Monitor would answer: per endpoint, per version, a snapshot section."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[int, VersionSnapshot]] = {}
        self.reads: list[tuple[str, float]] = []

    def drift(self, endpoint: str, version: int, verdict: str, drifted: list[str] = ()) -> None:
        self.versions.setdefault(endpoint, {})[version] = drifting(
            verdict, drifted, requests=500, samples=500, prediction="ok")

    def __call__(self, endpoint: str, window_s: float) -> dict[int, VersionSnapshot]:
        self.reads.append((endpoint, window_s))
        return self.versions.get(endpoint, {})

    def endpoints(self) -> list[str]:
        return sorted(self.versions)


def drift_rule(**overrides: Any) -> AlertRuleSpec:
    fields = {"name": "input-drift", "metric": "drift", "comparison": "==", "threshold": 1,
              "window_s": 10, "every_s": 1, "for_s": 0, "severity": "critical",
              "labels": {"team": "risk"}}
    return AlertRuleSpec(**{**fields, **overrides})


@pytest.fixture
def service(db: Database):
    svc = AlertService(db)
    yield svc
    svc.stop()


def store_away(svc: AlertService, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The store cannot take an alert's state while the flag returned holds True."""
    save, away = svc.store.save, [True]

    def blip(*args: Any, **kwargs: Any) -> Any:
        if away[0]:
            raise StoreUnavailableError("the store cannot be reached")
        return save(*args, **kwargs)

    monkeypatch.setattr(svc.store, "save", blip)
    return away


def history(svc: AlertService) -> list[tuple[str, str, str]]:
    return [(e.name, e.state, e.kind) for e in reversed(svc.history(limit=500).items)]


def test_the_state_machine_waits_for_the_duration_then_fires_once_and_resolves_once() -> None:
    alert = Alert("f", "rule", {}, "warning")
    assert alert.step(True, 0.0, for_s=10) is None and alert.state == AlertState.PENDING
    assert alert.step(True, 5.0, for_s=10) is None
    assert alert.step(True, 10.0, for_s=10) == AlertState.FIRING
    assert [alert.step(True, t, for_s=10) for t in (11.0, 12.0)] == [None, None]
    assert alert.step(False, 13.0, for_s=10) == AlertState.RESOLVED
    assert alert.step(False, 14.0, for_s=10) is None


def test_a_condition_that_stops_while_pending_is_never_notified() -> None:
    alert = Alert("f", "rule", {}, "warning")
    alert.step(True, 0.0, for_s=10)
    assert alert.step(False, 5.0, for_s=10) is None and alert.state == AlertState.INACTIVE
    alert.step(True, 6.0, for_s=10)
    assert alert.started_at == 6.0  # the duration starts over


def test_a_drifting_version_fires_once_names_the_feature_and_resolves(service, caplog) -> None:
    stats = Stats()
    stats.drift("churn", 1, "ok")
    stats.drift("churn", 2, "drift", ["income"])
    service.put_rule(drift_rule(for_s=2), "alice")
    caplog.set_level(logging.INFO, logger="modelplane.alerts")
    for now in range(0, 6):  # due every second; pending at 0, firing at 2, then quiet
        service.evaluate(stats, stats.endpoints, now=float(now))
    assert history(service) == [("input-drift", "firing", "rule")]
    [active] = service.active()
    assert active.state == "firing" and active.labels == {
        "team": "risk", "alertname": "input-drift", "endpoint": "churn", "version": "2",
        "severity": "critical"}
    assert "income" in active.summary and active.data["drifted_features"] == ["income"]
    assert "alert input-drift firing [critical]" in caplog.text
    stats.drift("churn", 2, "ok")
    service.evaluate(stats, stats.endpoints, now=6.0)
    assert history(service)[-1] == ("input-drift", "resolved", "rule")
    assert service.active() == []


def test_rules_are_evaluated_at_their_own_interval_over_their_window(service) -> None:
    stats = Stats()
    stats.drift("churn", 1, "ok")
    service.put_rule(drift_rule(every_s=5, window_s=30), "alice")
    assert [service.evaluate(stats, stats.endpoints, now=t) for t in (0.0, 1.0, 4.9, 5.0)] == [1, 0, 0, 1]
    assert stats.reads == [("churn", 30.0), ("churn", 30.0)]


def test_rules_over_windows_cut_alike_share_one_read_and_rules_are_bounded(
        service, monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.alerts import store
    from control_plane.errors import ConflictError

    stats = Stats()
    stats.drift("churn", 1, "ok")
    for index, window in enumerate((29.2, 29.9, 30.0)):  # each cut as 30 one-second slots
        service.put_rule(drift_rule(name=f"drift-{index}", window_s=window), "alice")
    assert service.evaluate(stats, stats.endpoints, now=0.0) == 3
    assert stats.reads == [("churn", 30.0)]
    monkeypatch.setattr(store, "MAX_RULES", 3)
    with pytest.raises(ConflictError, match="3 alert rules exist, at most 3"):
        service.put_rule(drift_rule(name="one-too-many"), "alice")
    service.put_rule(drift_rule(name="drift-0", threshold=0), "alice")  # replacing is fine


def test_no_evidence_never_fires(service) -> None:
    stats = Stats()
    stats.drift("churn", 1, "insufficient")
    service.put_rule(drift_rule(), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    assert service.active() == [] and history(service) == []


def test_a_firing_alert_whose_evidence_runs_out_stays_firing_and_says_so(service) -> None:
    """Traffic stops (or labels, or enough rows for a verdict): the window holds no
    evidence, which is no answer. The alert keeps firing, marked stale, and resolves only
    once the evidence says the condition has ended."""
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    stats.drift("churn", 1, "insufficient")
    for now in (1.0, 2.0, 3.0):
        service.evaluate(stats, stats.endpoints, now=now)
    [active] = service.active()
    assert active.state == "firing" and active.data["stale"].startswith("no evidence")
    assert history(service) == [("input-drift", "firing", "rule")]  # no resolved page
    stats.drift("churn", 1, "drift", ["age"])
    service.evaluate(stats, stats.endpoints, now=4.0)
    [active] = service.active()
    assert "stale" not in active.data and active.data["drifted_features"] == ["age"]
    stats.drift("churn", 1, "ok")
    service.evaluate(stats, stats.endpoints, now=5.0)
    assert history(service) == [("input-drift", "firing", "rule"), ("input-drift", "resolved", "rule")]


def test_a_version_with_no_requests_has_no_error_rate() -> None:
    from dataclasses import replace

    from serving.monitoring.snapshot import Traffic

    quiet = replace(drifting("ok", [], requests=500, samples=500, prediction="ok"),
                    traffic=Traffic())
    assert SIGNALS["error_rate"].read(quiet) == (None, {})  # not 0.0: nothing was answered
    assert SIGNALS["requests"].read(quiet) == (0.0, {})  # while no traffic is a value


def test_an_undeployed_version_resolves_its_alert(service) -> None:
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    stats.versions.clear()
    service.evaluate(stats, stats.endpoints, now=1.0)
    assert history(service) == [("input-drift", "firing", "rule"), ("input-drift", "resolved", "rule")]


def test_a_deleted_endpoint_resolves_the_alert_of_a_rule_pinned_to_it(service) -> None:
    """The Monitor still holds a deleted endpoint's statistics: read for the rule pinned to
    it, the alert stayed firing for good."""
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(endpoint="churn"), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    service.evaluate(stats, lambda: [], now=1.0)  # deleted; its statistics still there
    assert history(service) == [("input-drift", "firing", "rule"), ("input-drift", "resolved", "rule")]


def test_a_rule_scoped_to_an_endpoint_and_version_ignores_the_others(service) -> None:
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    stats.drift("churn", 2, "drift", ["age"])
    stats.drift("fraud", 1, "drift", ["age"])
    service.put_rule(drift_rule(endpoint="churn", version=2), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    assert [(a.labels["endpoint"], a.labels["version"]) for a in service.active()] == [("churn", "2")]


def test_a_restarted_service_remembers_firing_alerts_and_does_not_refire(db: Database) -> None:
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    first = AlertService(db)
    first.put_rule(drift_rule(), "alice")
    first.evaluate(stats, stats.endpoints, now=0.0)
    first.stop()
    second = AlertService(db)
    second.evaluate(stats, stats.endpoints, now=1.0)
    assert history(second) == [("input-drift", "firing", "rule")]
    stats.drift("churn", 1, "ok")
    second.evaluate(stats, stats.endpoints, now=2.0)
    assert history(second)[-1] == ("input-drift", "resolved", "rule")
    second.stop()


def test_a_pending_alert_read_from_the_store_waits_its_whole_duration_from_the_first_look(
        db: Database) -> None:
    """Pending when its control plane stopped, and an hour later one drifted window: how
    long the drift held meanwhile is unknown, so it fires only after for_s more, as seen
    by the control plane that evaluates it now. (One process evaluating all along keeps
    its wait, as before.)"""
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    first = AlertService(db)
    first.put_rule(drift_rule(for_s=600), "alice")
    first.evaluate(stats, stats.endpoints, now=1000.0)
    assert [a.state for a in first.active()] == ["pending"]
    first.stop()
    second = AlertService(db)
    second.evaluate(stats, stats.endpoints, now=4600.0)
    assert [(a.state, a.started_at.timestamp()) for a in second.active()] == [("pending", 4600.0)]
    reader = AlertService(db)
    assert [(a.state, a.started_at.timestamp()) for a in reader.active()] == [
        ("pending", 4600.0)]  # as stored
    reader.stop()
    second.evaluate(stats, stats.endpoints, now=5199.0)
    assert [a.state for a in second.active()] == ["pending"]
    second.evaluate(stats, stats.endpoints, now=5200.0)
    assert [a.state for a in second.active()] == ["firing"]
    assert history(second) == [("input-drift", "firing", "rule")]
    third = AlertService(db)  # a firing alert read from the store stays firing
    third.evaluate(stats, stats.endpoints, now=9000.0)
    assert [a.state for a in third.active()] == ["firing"]
    assert history(third) == [("input-drift", "firing", "rule")]
    for service in (second, third):
        service.stop()


def test_a_control_plane_taking_the_lead_reads_what_the_last_leader_did(db: Database) -> None:
    """Two control planes, one leading at a time. A fires an alert and resolves it while B
    follows, holding what it loaded at its start (the alert firing). When B takes over and
    the condition holds again, the alert fires again, paged; and a receiver added through
    A's API is one B notifies."""
    from control_plane.alerts.schemas import ReceiverSpec

    stats = Stats()
    a = AlertService(db)
    a.put_rule(drift_rule(), "alice")
    stats.drift("churn", 1, "drift", ["age"])
    a.tick(stats, stats.endpoints, leading=True)
    b = AlertService(db)  # starts while the alert fires
    b.tick(stats, stats.endpoints, leading=False)
    stats.drift("churn", 1, "ok")
    a._due.clear()
    a.tick(stats, stats.endpoints, leading=True)
    assert history(a)[-1] == ("input-drift", "resolved", "rule")
    a.put_receiver(ReceiverSpec(name="pager", url="http://127.0.0.1:9/hook"), "alice")
    a.stop()

    stats.drift("churn", 1, "drift", ["age"])
    b.tick(stats, stats.endpoints, leading=True)  # B leads now
    assert [state for _, state, _ in history(b)] == ["firing", "resolved", "firing"]
    assert [alert.state for alert in b.active()] == ["firing"]
    assert "pager" in b.notifier._channels
    b.stop()


def test_a_follower_knows_the_leaders_alerts_and_receivers_and_leaves_resolving_to_it(
        db: Database) -> None:
    """B serves the API beside A, which leads. B's metrics and the events it delivers follow
    the store (not what B loaded at its start), and a rule deleted through B is resolved
    once, by A, not again from B's stale copy of the alert."""
    from control_plane.alerts.schemas import ReceiverSpec

    clock = [0.0]
    stats = Stats()
    a, b = AlertService(db, clock=lambda: clock[0]), AlertService(db, clock=lambda: clock[0])
    b.tick(stats, stats.endpoints, leading=False)
    a.put_rule(drift_rule(), "alice")
    stats.drift("churn", 1, "drift", ["age"])
    a.tick(stats, stats.endpoints, leading=True)
    a.put_receiver(ReceiverSpec(name="pager", url="http://127.0.0.1:9/hook"), "alice")
    clock[0] += RULES_REFRESH_S
    b.tick(stats, stats.endpoints, leading=False)
    assert b.metrics()["active"] == [("input-drift", "critical", "firing")]
    assert "pager" in b.notifier._channels

    b.delete_rule("input-drift", "alice")
    assert history(b) == [("input-drift", "firing", "rule")]  # B writes no resolution
    clock[0] += RULES_REFRESH_S
    a.tick(stats, stats.endpoints, leading=True)
    a.tick(stats, stats.endpoints, leading=True)
    assert history(a) == [("input-drift", "firing", "rule"), ("input-drift", "resolved", "rule")]
    assert a.active() == []
    clock[0] += RULES_REFRESH_S
    b.tick(stats, stats.endpoints, leading=False)
    assert b.metrics()["active"] == []
    a.stop()
    b.stop()


def test_an_alert_the_store_could_not_take_is_stored_on_a_later_pass_and_paged_once(
        service, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store blip as an alert fires: its receivers hear at once, and its state and history
    land when the store is back (they were dropped: no active alert, no history for the
    drift-triggered retrain, a page again after a restart). A firing then a resolution
    queued behind it land in that order."""
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    sent: list[str] = []
    monkeypatch.setattr(service.notifier, "announce", lambda n: sent.append(n.status))
    failing = store_away(service, monkeypatch)
    service.tick(stats, stats.endpoints, leading=True)
    assert sent == ["firing"] and service.active() == [] and history(service) == []
    stats.drift("churn", 1, "ok")
    service._due.clear()
    service.tick(stats, stats.endpoints, leading=True)  # resolves, still unstored
    assert sent == ["firing", "resolved"] and history(service) == []
    failing[0] = False
    service._due.clear()
    service.tick(stats, stats.endpoints, leading=True)
    assert history(service) == [("input-drift", "firing", "rule"), ("input-drift", "resolved", "rule")]
    assert service.active() == [] and sent == ["firing", "resolved"]


def test_a_firing_alert_stored_late_is_active_and_not_paged_again_after_a_restart(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    first = AlertService(db)
    first.put_rule(drift_rule(), "alice")
    failing = store_away(first, monkeypatch)
    first.tick(stats, stats.endpoints, leading=True)
    failing[0] = False
    first.tick(stats, stats.endpoints, leading=True)
    [active] = first.active()
    assert active.state == "firing"
    first.stop()
    second = AlertService(db)
    second.tick(stats, stats.endpoints, leading=True)
    assert history(second) == [("input-drift", "firing", "rule")]  # not fired a second time
    second.stop()


def test_a_process_that_stops_leading_drops_its_unstored_alert_states_but_not_its_events(
        service, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    failing = store_away(service, monkeypatch)
    service.tick(stats, stats.endpoints, leading=True)
    service.fire_event("rollout-rolled-back", severity="critical", labels={"rollout": "7"},
                       summary="v2 rolled back")
    failing[0] = False
    service.tick(stats, stats.endpoints, leading=False)  # the new leader judges the rule
    assert history(service) == [("rollout-rolled-back", "firing", "event")]


@pytest.mark.parametrize("meanwhile", ["nobody led", "another led"])
def test_a_lead_lapsed_in_a_store_outage_keeps_the_pages_it_sent_within_its_term(
        service, monkeypatch: pytest.MonkeyPatch, meanwhile: str) -> None:
    """The store away longer than the lease: the lead lapsed with an alert paged from
    memory and not stored. Its state was dropped, so once the store was back and the same
    process led again, the alert read back missing was paged a second time (resolved
    meanwhile, its resolution was never sent). Kept within the lease's term; dropped where
    another process held the lease in between (it derived the states itself, and may have
    stored newer ones). Meanwhile an event raised through the API on this process, which
    does not lead, writes only itself."""
    clock = [1_000_000.0]
    this, other = (Lease(service.store.db, holder=holder, clock=lambda: clock[0],
                         monotonic=lambda: clock[0]) for holder in ("this", "other"))
    assert this.hold()
    service.lease_term = lambda: this.term
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    sent: list[str] = []
    monkeypatch.setattr(service.notifier, "announce", lambda n: sent.append(n.status)
                        if n.alert["name"] == "input-drift" else None)
    failing = store_away(service, monkeypatch)
    service.tick(stats, stats.endpoints, leading=True)
    assert sent == ["firing"] and history(service) == []  # paged from memory
    clock[0] += LEASE_S + 1  # the lease runs out while the store is away
    service.tick(stats, stats.endpoints, leading=False)
    if meanwhile == "another led":
        assert other.hold()
        clock[0] += LEASE_S + 1
    failing[0] = False
    service.fire_event("operator-note", severity="info", labels={}, summary="back")
    assert history(service) == [("operator-note", "firing", "event")]
    assert this.hold()  # leads again: in its own term, or in a new one after another's
    failing[0] = True  # the first write as the lead fails: nothing is read back, or paged
    service._due.clear()
    service.tick(stats, stats.endpoints, leading=True)
    assert (len(sent) == 2 if meanwhile == "another led" else sent == ["firing"]), sent
    failing[0] = False
    service._due.clear()
    service.tick(stats, stats.endpoints, leading=True)
    # Another's term: the old state dropped (this pass derived the state anew, and paged:
    # it had no page to know of), never written over what the other may have stored.
    assert sent == ["firing"] * (2 if meanwhile == "another led" else 1)
    assert history(service) == [("operator-note", "firing", "event"),
                                ("input-drift", "firing", "rule")]
    if meanwhile == "another led":
        return
    stats.drift("churn", 1, "ok")
    service._due.clear()
    service.tick(stats, stats.endpoints, leading=True)
    assert sent == ["firing", "resolved"] and service.active() == []


def test_an_evaluation_that_outlived_its_lead_stores_and_sends_nothing(
        service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluator writes behind the control loops' lease. A pass that lost the lease
    stores no alert state and pages no receiver (the new leader derives the states and
    pages them itself: a late page would be a second one), and it stops; an event raised in
    it is dropped the same way, and not held back as a duplicate of the new leader's."""
    from control_plane.store.database import FencedOut

    clock = [1_000_000.0]
    stale, successor = (Lease(service.store.db, holder=holder, clock=lambda: clock[0],
                              monotonic=lambda: clock[0]) for holder in ("stale", "successor"))
    assert stale.hold()
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    sent: list[str] = []
    monkeypatch.setattr(service.notifier, "announce", lambda n: sent.append(n.alert["name"]))
    clock[0] += LEASE_S + 1
    assert successor.hold()
    with fenced_writes(stale.fence):
        service.fire_event("rollout-rolled-back", severity="critical", labels={"rollout": "7"},
                           summary="v2 rolled back")
        with pytest.raises(FencedOut):  # the drift rule fires: refused, and the pass ends
            service.tick(stats, stats.endpoints, leading=True)
    assert history(service) == [] and service.active() == [] and sent == []
    service.tick(stats, stats.endpoints, leading=False)
    assert history(service) == [] and sent == []
    service.fire_event("rollout-rolled-back", severity="critical", labels={"rollout": "7"},
                       summary="v2 rolled back")  # not taken for a repeat of the dropped one
    assert sent == ["rollout-rolled-back"]
    assert history(service) == [("rollout-rolled-back", "firing", "event")]


def test_a_write_the_store_refuses_is_dropped_and_holds_up_no_later_one(
        service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept for later is only what the store could not take (away, or a transaction lost):
    a write it refuses, kept first in line, stopped every later alert from being stored."""
    import math

    from control_plane.alerts.schemas import EventCreate

    save, refused = service.store.save, []

    def refusing(alert: Any, **kwargs: Any) -> None:
        if alert.data.get("bad"):
            refused.append(alert.name)
            raise ValueError("Out of range float values are not JSON compliant")
        save(alert, **kwargs)

    monkeypatch.setattr(service.store, "save", refusing)
    service.fire_event("bad-event", severity="warning", labels={"n": "1"}, summary="x",
                       data={"bad": True})
    service.fire_event("good-event", severity="warning", labels={"n": "2"}, summary="y")
    assert refused == ["bad-event"]
    assert history(service) == [("good-event", "firing", "event")]
    with pytest.raises(ValueError, match="data"):
        EventCreate(name="x", data={"v": math.nan})


def test_deleting_a_rule_resolves_its_alerts(service) -> None:
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    service.delete_rule("input-drift", "alice")
    assert history(service)[-1] == ("input-drift", "resolved", "rule")
    assert service.rules() == [] and service.active() == []


def test_disabling_a_rule_resolves_its_alerts(service) -> None:
    """Nothing evaluates a disabled rule: its alert stayed firing, listed and exported, and
    its receivers never heard it end."""
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    assert service.metrics()["active"] == [("input-drift", "critical", "firing")]
    service.put_rule(drift_rule().model_copy(update={"enabled": False}), "alice")
    service.evaluate(stats, stats.endpoints, now=1.0)
    assert service.active() == [] and service.metrics()["active"] == []
    assert history(service)[-1] == ("input-drift", "resolved", "rule")


def test_a_rule_or_receiver_this_version_cannot_read_stops_no_other(
        service, db: Database) -> None:
    """A newer version sharing the store wrote a field this one does not know: every rule
    stopped being evaluated, on every control plane, and the API's list answered 500."""
    from control_plane.alerts.schemas import ReceiverSpec
    from control_plane.store.models import AlertReceiverRow, AlertRuleRow

    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    service.put_rule(drift_rule(name="also-drift"), "alice")
    service.put_receiver(ReceiverSpec(name="ops", url="https://hooks.example.com/ops"), "alice")
    service.put_receiver(ReceiverSpec(name="pager", url="https://hooks.example.com/p"), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    with db.session() as session:
        for row in session.scalars(select(AlertRuleRow).where(AlertRuleRow.name == "also-drift")):
            row.spec = {**row.spec, "runbook_url": "https://wiki.example.com/drift"}
        for row in session.scalars(select(AlertReceiverRow).where(AlertReceiverRow.name == "ops")):
            row.spec = {**row.spec, "headers": {"x-team": "risk"}}
    service.put_rule(drift_rule(threshold=2), "alice")  # and this one changed since
    assert service.evaluate(stats, stats.endpoints, now=1.0) == 1
    assert [r.name for r in service.rules()] == ["input-drift"]
    assert [r.name for r in service.receivers()] == ["pager"]
    # The rule it cannot read keeps its alert as it was, rather than resolved as gone.
    assert ("also-drift", "critical", "firing") in service.metrics()["active"]
    assert ("input-drift", "resolved", "rule") in history(service)


def test_a_rule_deleted_while_its_pass_reads_the_monitor_leaves_no_alert_behind(service) -> None:
    """The evaluator reads the Monitor outside its lock; a rule deleted meanwhile must not
    have its alert fire again from that reading, with no rule left to resolve it."""
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    service.put_rule(drift_rule(), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)

    def read_while_deleted(endpoint: str, window_s: float) -> dict[int, VersionSnapshot]:
        service.delete_rule("input-drift", "alice")  # an API call landing mid-pass
        return stats(endpoint, window_s)

    service.evaluate(read_while_deleted, stats.endpoints, now=1.0)
    service.evaluate(stats, stats.endpoints, now=2.0)
    assert service.active() == [] and service.metrics()["active"] == []
    assert history(service) == [("input-drift", "firing", "rule"), ("input-drift", "resolved", "rule")]


def test_a_rule_deleted_through_another_control_plane_resolves_its_alerts(db: Database) -> None:
    leader, other = AlertService(db), AlertService(db)
    stats = Stats()
    stats.drift("churn", 1, "drift", ["age"])
    leader.put_rule(drift_rule(), "alice")
    leader.evaluate(stats, stats.endpoints, now=0.0)
    other.store.delete_rule("input-drift", "alice")  # its API, its store: not the leader's state
    leader.evaluate(stats, stats.endpoints, now=1.0)
    assert leader.metrics()["active"] == [("input-drift", "critical", "firing")]  # not read yet
    leader.evaluate(stats, stats.endpoints, now=1.0 + RULES_REFRESH_S)
    assert leader.active() == [] and leader.metrics()["active"] == []
    assert history(leader)[-1] == ("input-drift", "resolved", "rule")
    leader.stop()
    other.stop()


def test_events_fire_at_once_are_kept_in_history_and_deduplicated(service) -> None:
    labels = {"endpoint": "churn", "rollout": "7"}
    service.fire_event("rollout-rolled-back", severity="critical", labels=labels,
                       summary="candidate v2 failed its analysis", data={"error_rate": 0.2})
    service.fire_event("rollout-rolled-back", severity="critical", labels=labels, summary="again")
    service.fire_event("rollout-rolled-back", severity="critical", labels={**labels, "rollout": "8"},
                       summary="another rollout")
    assert history(service) == [("rollout-rolled-back", "firing", "event")] * 2
    [_, oldest] = service.history(endpoint="churn").items
    assert oldest.data == {"error_rate": 0.2} and oldest.summary == "candidate v2 failed its analysis"
    assert service.counters["events_deduplicated"] == 1
    assert service.active() == []  # events never resolve, so they are not listed as active


def test_an_event_never_raises_into_its_caller(db: Database) -> None:
    service = AlertService(db)
    db.dispose()
    service.store.db = Database.__new__(Database)  # a store that fails on every call
    service.fire_event("rollout-rolled-back", severity="critical", labels={}, summary="x")
    service.notifier.close()


def test_history_filters_and_pages(service) -> None:
    for index in range(5):
        service.fire_event(f"event-{index % 2}", severity="info",
                           labels={"endpoint": "a" if index < 3 else "b", "n": str(index)}, summary="")
    assert service.history(name="event-0").total == 3
    assert service.history(endpoint="b").total == 2
    page = service.history(limit=2, offset=1)
    assert page.total == 5 and [e.labels["n"] for e in page.items] == ["3", "2"]


def test_rule_specs_name_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match="unknown metric 'drfit'; use one of"):
        drift_rule(metric="drfit")
    with pytest.raises(ValidationError, match="comparison"):
        drift_rule(comparison="=>")
    with pytest.raises(ValidationError, match="window_s"):
        drift_rule(window_s=0)


def test_a_rules_file_parses_into_rules_and_receivers() -> None:
    document = yaml.safe_load("""
receivers:
  - {name: ops, url: "http://127.0.0.1:9/hook"}
rules:
  - {name: slow, metric: p95_ms, threshold: 250, for_s: 60}
  - {name: accuracy-drop, metric: accuracy, comparison: "<", threshold: 0.8, window_s: 300}
""")
    parsed = AlertsFile.model_validate(document)
    assert [r.name for r in parsed.rules] == ["slow", "accuracy-drop"]
    assert parsed.receivers[0].max_attempts == 4


def test_every_signal_reads_a_real_monitor_snapshot() -> None:
    import asyncio

    import numpy as np

    from serving.monitoring.monitor import MonitorState
    from serving.monitoring.observations import attach_profiles
    from tests.unit.serving.monitoring_helpers import make_core, reference_profile, send_many

    state = MonitorState()
    core = make_core(reference_profile())
    rows = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    answers = asyncio.run(send_many(core, [r[None, :] for r in rows]))
    delta = core.take_stats().to_delta()
    attach_profiles(delta, core.monitoring, set())
    state.record("churn", "replica", delta, sequence=1)
    ids = [a.headers["x-modelplane-request-id"] for a in answers]  # feedback joins on these
    state.feedback("churn", [(ids[i], [i % 3]) for i in range(50)])
    snapshot = state.snapshot("churn", 60)[1]
    values = {name: signal.read(snapshot)[0] for name, signal in SIGNALS.items()}
    assert values["requests"] == 200 and values["drift"] == 0.0 and values["labelled"] == 50
    assert 0 <= values["accuracy"] <= 1 and values["drift_p_value"] > 0.005
    assert values["missing_rate"] == 0.0 and values["rejected"] == 0
    assert values["mae"] is None  # a classifier has no regression error
    assert values["latency_anomaly"] is None  # no baseline yet: no verdict
    assert values["silent_replicas"] == 0  # the one replica reported
    assert SIGNALS["silent_replicas"].read(type(snapshot)())[0] is None  # none reported


def test_a_silenced_rule_is_evaluated_and_recorded_but_notifies_no_one(db: Database, caplog) -> None:
    from control_plane.alerts.schemas import SilenceCreate
    from control_plane.errors import NotFoundError

    clock = [1_800_000_000.0]
    svc = AlertService(db, clock=lambda: clock[0])
    try:
        stats = Stats()
        stats.drift("churn", 2, "drift", ["income"])
        svc.put_rule(drift_rule(), "alice")
        muted = svc.silence("input-drift", SilenceCreate(duration_s=60, reason="known shift"), "bob")
        assert muted.silence.reason == "known shift" and muted.silence.created_by == "bob"
        assert muted.silence.until.timestamp() == clock[0] + 60
        caplog.set_level(logging.INFO, logger="modelplane.alerts")
        svc.evaluate(stats, stats.endpoints, now=clock[0])
        # Evaluated, listed and recorded; no receiver (the log included) told.
        assert history(svc) == [("input-drift", "firing", "rule")]
        [active] = svc.active()
        assert active.state == "firing" and active.silenced_until == muted.silence.until
        assert "alert input-drift firing" not in caplog.text
        assert svc.counters["notifications_silenced"] == 1
        # Putting the rule again (alerts apply) keeps its silence.
        assert svc.put_rule(drift_rule(), "alice").silence is not None
        # Resolved once the silence ended: recorded, but no receiver hears of the end of
        # what it never heard fire. An ended silence is not listed.
        clock[0] += 61
        stats.drift("churn", 2, "ok")
        svc.evaluate(stats, stats.endpoints, now=clock[0])
        assert history(svc)[-1] == ("input-drift", "resolved", "rule")
        assert "alert input-drift resolved" not in caplog.text
        assert svc.rules()[0].silence is None
        # Silenced and unsilenced at once: it notifies again.
        svc.silence("input-drift", SilenceCreate(duration_s=3600), "bob")
        assert svc.unsilence("input-drift", "alice").silence is None
        stats.drift("churn", 2, "drift", ["income"])
        clock[0] += 5
        svc.evaluate(stats, stats.endpoints, now=clock[0])
        assert "alert input-drift firing" in caplog.text
        with pytest.raises(NotFoundError, match="no alert rule named 'nope'"):
            svc.silence("nope", SilenceCreate(duration_s=60), "bob")
        svc.silence("input-drift", SilenceCreate(duration_s=60), "bob")
        svc.delete_rule("input-drift", "alice")  # its silence goes with it
        svc.put_rule(drift_rule(), "alice")
        assert svc.rules()[0].silence is None
    finally:
        svc.stop()


def test_an_alert_that_fired_under_a_silence_is_heard_once_the_silence_ends(
        db: Database, caplog) -> None:
    """Muted when it fired, and nothing tells of a state that stays: once the silence
    ended, its receivers heard nothing of it until it resolved, and then only that."""
    from control_plane.alerts.schemas import SilenceCreate

    clock = [1_800_000_000.0]
    svc = AlertService(db, clock=lambda: clock[0])
    caplog.set_level(logging.INFO, logger="modelplane.alerts")
    stats = Stats()
    stats.drift("churn", 2, "drift", ["income"])
    try:
        svc.put_rule(drift_rule(), "alice")
        svc.silence("input-drift", SilenceCreate(duration_s=60, reason="known shift"), "bob")
        svc.evaluate(stats, stats.endpoints, now=clock[0])
        assert "alert input-drift firing" not in caplog.text
        assert svc.active()[0].data.get("fired_while_silenced") is True
    finally:
        svc.stop()
    clock[0] += 61  # and the lead passed meanwhile: the next leader reads it from the store
    successor = AlertService(db, clock=lambda: clock[0])
    try:
        successor.catch_up()
        successor.evaluate(stats, stats.endpoints, now=clock[0])
        assert caplog.text.count("alert input-drift firing") == 1
        clock[0] += 5
        successor.evaluate(stats, stats.endpoints, now=clock[0])
        assert caplog.text.count("alert input-drift firing") == 1  # once
        assert "fired_while_silenced" not in successor.active()[0].data
        stats.drift("churn", 2, "ok")
        clock[0] += 5
        successor.evaluate(stats, stats.endpoints, now=clock[0])
        assert "alert input-drift resolved" in caplog.text  # heard firing: hears it end
    finally:
        successor.stop()


def test_a_silence_names_a_duration_in_range() -> None:
    from control_plane.alerts.schemas import SilenceCreate
    from control_plane.cli.monitoring import parse_duration

    for bad in (0, -5, 31 * 86400):
        with pytest.raises(ValidationError, match="duration_s"):
            SilenceCreate(duration_s=bad)
    assert [parse_duration(t) for t in ("90s", "30m", "2h", "1d", "45")] == [90, 1800, 7200, 86400, 45]
    import typer

    for bad in ("soon", "0m", "31d", ""):
        with pytest.raises(typer.BadParameter):
            parse_duration(bad)


def test_every_change_to_alerting_is_recorded_with_who_made_it(service: AlertService) -> None:
    """A deployer can disable, re-threshold, silence or delete anyone's rule: each of
    those leaves who did it and what the rule became, in the change's own transaction."""
    from control_plane.alerts.schemas import ReceiverSpec, SilenceCreate

    service.put_rule(drift_rule(), "alice-ci", subject="alice")
    service.put_rule(drift_rule(), "alice-ci", subject="alice")  # the same spec: no change
    changed = service.put_rule(drift_rule(enabled=False, threshold=2), "mallory-laptop",
                               subject="mallory")
    assert (changed.created_by, changed.updated_by) == ("alice-ci", "mallory-laptop")
    service.silence("input-drift", SilenceCreate(duration_s=600, reason="noisy"), "bob")
    service.unsilence("input-drift", "carol")
    service.unsilence("input-drift", "carol")  # no silence left: nothing ended
    service.delete_rule("input-drift", "mallory-laptop", subject="mallory")
    assert service.rules() == []
    page = service.changes("rule", name="input-drift")
    assert page.total == 5
    assert [(c.action, c.actor, c.subject) for c in page.items] == [
        ("deleted", "mallory-laptop", "mallory"), ("unsilenced", "carol", "carol"),
        ("silenced", "bob", "bob"), ("replaced", "mallory-laptop", "mallory"),
        ("created", "alice-ci", "alice")]
    deleted, unsilenced, silenced, replaced, _ = page.items
    assert replaced.spec is not None and replaced.spec["enabled"] is False
    assert replaced.spec["threshold"] == 2 and deleted.spec == replaced.spec
    assert silenced.detail["reason"] == "noisy"
    assert unsilenced.detail["ended"]["by"] == "bob"
    assert service.changes("rule", limit=2, offset=1).items[0].action == "unsilenced"

    secret = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    service.put_receiver(ReceiverSpec(name="pager", url=secret, format="slack"), "admin")
    service.delete_receiver("pager", "admin")
    receivers = service.changes("receiver").items
    assert [c.action for c in receivers] == ["deleted", "created"]
    assert all(c.spec is not None and c.spec["url"] == "https://hooks.slack.com/…"
               for c in receivers)
    assert "SECRET" not in str([c.model_dump() for c in receivers])


@pytest.mark.parametrize("url", ["https://h:99999/x", "https://h:abc/x", "https://[::1/x"])
def test_a_receiver_whose_url_urlsplit_refuses_is_still_recorded_and_deletable(
        service: AlertService, url: str) -> None:
    from control_plane.alerts.schemas import ReceiverSpec

    service.put_receiver(ReceiverSpec(name="odd", url=url), "admin")
    service.delete_receiver("odd", "admin")
    assert [c.action for c in service.changes("receiver", name="odd").items] == ["deleted", "created"]
    assert all(c.spec is not None and c.spec["url"].endswith("/…") and "/x" not in c.spec["url"]
               for c in service.changes("receiver").items)


def test_a_served_version_without_traffic_reads_zero_and_a_part_window_is_no_evidence_of_few(
        service: AlertService) -> None:
    """A version no request reached is served all the same: `requests < 1` fires for it
    once the Monitor has seen a whole window, and not before (just after the Monitor
    restarted, a minute's window holds seconds of requests)."""
    from serving.monitoring.monitor import MonitorState
    from serving.monitoring.stats import ServedConfig, StatsRecorder

    now = [1000.0]
    state = MonitorState(clock=lambda: now[0])

    def ship() -> None:
        recorder = StatsRecorder()
        for _ in range(50):
            recorder.record(1, 200, 0.01)
        state.record("churn", "replica", recorder.to_delta(), ServedConfig("i", 1, (1, 2)))

    ship()
    snapshot = state.snapshot("churn", 10)
    assert sorted(snapshot) == [1, 2] and snapshot[2].traffic.requests == 0
    for name, comparison, threshold in (("dead", "<", 1), ("quiet", "<", 1000),
                                        ("busy", ">", 20)):
        service.put_rule(drift_rule(name=name, metric="requests", comparison=comparison,
                                    threshold=threshold, window_s=10), "alice")

    def firing() -> set[tuple[str, str]]:
        service.evaluate(lambda e, w: {str(v): s for v, s in state.snapshot(e, w).items()},
                         lambda: ["churn"], now=now[0])
        return {(a.name, a.labels["version"]) for a in service.active() if a.state == "firing"}

    # Two seconds seen of a ten-second window: a count that only grows shows "busy", and
    # nothing about "dead" or "quiet".
    now[0] += 1.5
    ship()
    assert firing() == {("busy", "1")}
    for _ in range(10):
        now[0] += 1.0
        ship()
    assert firing() == {("busy", "1"), ("dead", "2"), ("quiet", "1"), ("quiet", "2")}


def _counted(requests: int, *, observed_s: float, window_s: float = 60.0) -> VersionSnapshot:
    from dataclasses import replace

    from tests.snapshots import served

    snapshot = served(requests)
    return replace(snapshot, traffic=replace(snapshot.traffic, window_s=window_s,
                                             observed_s=observed_s))


def test_a_count_over_part_of_the_window_never_resolves_what_it_cannot_disprove(
        service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Firing on 5,000 requests a minute, then the Monitor restarts and has seen 3 s of the
    minute: 250 so far is a lower bound, no evidence that the rate fell. The alert resolved
    and fired again after every restart, paging twice."""
    sent: list[str] = []
    monkeypatch.setattr(service.notifier, "announce", lambda n: sent.append(n.status))
    stats = Stats()
    service.put_rule(drift_rule(name="busy", metric="requests", comparison=">",
                                threshold=1000, window_s=60), "alice")
    for now, requests, observed in ((0.0, 5000, 60.0), (2.0, 250, 3.0), (4.0, 1500, 30.0),
                                    (6.0, 900, 60.0)):
        stats.versions["churn"] = {1: _counted(requests, observed_s=observed)}
        service.evaluate(stats, stats.endpoints, now=now)
    assert history(service) == [("busy", "firing", "rule"), ("busy", "resolved", "rule")]
    assert sent == ["firing", "resolved"]  # the 900 over the whole minute resolved it


def test_a_pending_alert_waits_its_whole_duration_again_after_a_gap_without_evidence(
        service) -> None:
    """Pending on one drifted window, then ten minutes without traffic: the next drifted
    window fired it at once (its wait counted across the gap), and a drift alert starts a
    pipeline's retrain."""
    stats = Stats()
    service.put_rule(drift_rule(for_s=300), "alice")
    stats.drift("churn", 1, "drift", ["income"])
    service.evaluate(stats, stats.endpoints, now=0.0)
    assert [a.state for a in service.active()] == ["pending"]
    stats.drift("churn", 1, "insufficient")  # no traffic: no verdict
    service.evaluate(stats, stats.endpoints, now=300.0)
    stats.versions.clear()  # the Monitor restarted: nothing for the endpoint
    service.evaluate(stats, lambda: ["churn"], now=450.0)
    stats.drift("churn", 1, "drift", ["income"])
    service.evaluate(stats, stats.endpoints, now=601.0)
    assert [a.state for a in service.active()] == ["pending"]
    service.evaluate(stats, stats.endpoints, now=901.0)  # held its whole duration: fires
    assert [a.state for a in service.active()] == ["firing"]


def test_a_paged_alert_that_resolves_under_a_silence_is_heard_to_end(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paged, then silenced, then resolved: its receivers never heard it end, and the
    incident the page opened stayed open for good."""
    from control_plane.alerts.schemas import SilenceCreate

    clock = [1_800_000_000.0]
    svc = AlertService(db, clock=lambda: clock[0])
    sent: list[str] = []
    monkeypatch.setattr(svc.notifier, "announce", lambda n: sent.append(n.status))
    try:
        stats = Stats()
        stats.drift("churn", 2, "drift", ["income"])
        svc.put_rule(drift_rule(), "alice")
        svc.evaluate(stats, stats.endpoints, now=clock[0])
        svc.silence("input-drift", SilenceCreate(duration_s=600), "bob")
        clock[0] += 5
        stats.drift("churn", 2, "ok")
        svc.evaluate(stats, stats.endpoints, now=clock[0])
        assert sent == ["firing", "resolved"]
        assert svc.counters.get("notifications_silenced", 0) == 0
    finally:
        svc.stop()


def test_an_events_data_and_the_history_listing_are_bounded(
        service, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event's data is kept for good and listed to anyone: megabytes of it made one
    page of history gigabytes."""
    from control_plane import listings
    from control_plane.alerts.schemas import MAX_EVENT_DATA_BYTES, EventCreate

    with pytest.raises(ValidationError, match=f"at most {MAX_EVENT_DATA_BYTES:,}") as refused:
        EventCreate(name="note", data={"x": "A" * MAX_EVENT_DATA_BYTES})
    assert refused.value.errors()[0]["loc"] == ("data",)
    for index in range(3):
        service.fire_event(f"note-{index}", severity="info", labels={}, summary="s",
                           data={"x": "A" * (MAX_EVENT_DATA_BYTES - 100)})
    whole = service.history(limit=50)
    assert len(whole.items) == 3 and whole.limit == 50
    one = len(whole.items[0].model_dump_json())
    monkeypatch.setattr(listings, "LISTING_MAX_BYTES", 2 * one + one // 2)
    first = service.history(limit=50)
    assert [e.name for e in first.items] == ["note-2", "note-1"] and first.limit == 2
    assert [e.name for e in service.history(limit=50, offset=2).items] == ["note-0"]


def test_a_restarted_monitors_silent_replicas_over_part_of_the_window_resolve_nothing(
        service) -> None:
    """A replica crashed and its alert fires; the Monitor restarts and hears only the live
    replicas: its 0 over the 5 s it has seen of the window resolved the crash's alert."""
    from dataclasses import replace

    from serving.monitoring.snapshot import Replicas

    stats = Stats()
    silent = replace(VersionSnapshot(), replicas=Replicas(reporting=2, silent=1, silent_for_s=4.0))
    stats.versions["churn"] = {1: silent}
    service.put_rule(drift_rule(name="crashes", metric="silent_replicas", comparison=">",
                                threshold=0), "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    assert [a.state for a in service.active()] == ["firing"]
    restarted = replace(silent, replicas=Replicas(reporting=2, silent=0, silent_for_s=0.0),
                        traffic=replace(silent.traffic, window_s=10.0, observed_s=5.0))
    stats.versions["churn"] = {1: restarted}
    service.evaluate(stats, stats.endpoints, now=1.0)
    assert [a.state for a in service.active()] == ["firing"]
    whole = replace(restarted, traffic=replace(restarted.traffic, observed_s=10.0))
    stats.versions["churn"] = {1: whole}
    service.evaluate(stats, stats.endpoints, now=2.0)
    assert service.active() == []


def test_an_endpoint_wide_signal_is_one_alert_per_endpoint_not_one_per_version(service) -> None:
    """A crashed replica is the endpoint's figure, in every version's snapshot alike: read
    per version, one crash paged once per version of a canary."""
    from dataclasses import replace

    from control_plane.errors import InvalidInputError
    from serving.monitoring.snapshot import Replicas

    stats = Stats()
    silent = replace(VersionSnapshot(), replicas=Replicas(reporting=2, silent=1, silent_for_s=4.0))
    stats.versions["churn"] = {1: silent, 2: silent}
    stats.versions["fraud"] = {3: replace(VersionSnapshot(),
                                          replicas=Replicas(reporting=1, silent=0, silent_for_s=0.0))}
    rule = drift_rule(name="crashes", metric="silent_replicas", comparison=">", threshold=0)
    service.put_rule(rule, "alice")
    service.evaluate(stats, stats.endpoints, now=0.0)
    active = service.active()
    assert [(a.labels["endpoint"], a.labels["version"]) for a in active] == [("churn", "all")]
    assert active[0].summary == "churn: silent_replicas = 1 (> 0)"
    stats.versions["churn"] = {1: replace(silent, replicas=Replicas(reporting=2, silent=0,
                                                                    silent_for_s=0.0))}
    service.evaluate(stats, stats.endpoints, now=1.0)
    assert service.active() == []
    with pytest.raises(InvalidInputError, match="version: silent_replicas is the endpoint's figure"):
        service.put_rule(drift_rule(name="v2-crashes", metric="silent_replicas", version=2), "alice")
