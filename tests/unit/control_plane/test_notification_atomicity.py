"""A change and the notifications it raises are one write: a control plane killed while
keeping them leaves both or neither in the store, never a fired alert whose page is lost.

The kill is simulated where it hurts, as the notification is written to the outbox: an
exception no handler catches (like the process's end) leaves the store as a kill -9 would.
Real store (SQLite, and PostgreSQL where one is given), real receiver on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from control_plane.alerts import AlertService
from control_plane.alerts.outbox import Outbox
from control_plane.alerts.schemas import ReceiverSpec
from control_plane.notifications.events import Event, EventKind, Subject
from control_plane.notifications.service import NotificationService, notify_on_commit
from control_plane.store import Database
from control_plane.store.models import ExperimentRow
from tests.unit.control_plane.test_alerts import Stats, drift_rule
from tests.webhooks import Receiver


class Killed(BaseException):
    """The process ends here: no ``except Exception`` sees it."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def kill_at_the_outbox(monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        raise Killed()

    monkeypatch.setattr(Outbox, "put", killed)
    monkeypatch.setattr(Outbox, "put_in", killed)


def test_an_alert_killed_while_paging_fires_again_and_pages_after_the_restart(
        db: Database, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = Stats()
    stats.drift("churn", 1, "drift", ["income"])
    dying = AlertService(db)
    dying.put_rule(drift_rule(), "alice")
    dying.put_receiver(ReceiverSpec(name="pager", url=receiver.url), "alice")
    dying.catch_up()
    with monkeypatch.context() as patched:
        kill_at_the_outbox(patched)
        with pytest.raises(Killed):
            dying.evaluate(stats, stats.endpoints, now=0.0)
    dying.notifier.close()  # its threads gone, as in a crash
    # Firing without its page would stay so: the successor reads it as already paged.
    assert dying.store.load_active() == [] and dying.history().items == []
    successor = AlertService(db)
    try:
        successor.catch_up()
        successor.evaluate(stats, stats.endpoints, now=1.0)
        [page] = receiver.wait(1)
        assert page["status"] == "firing" and page["alert"]["name"] == "input-drift"
        assert [a.state.value for a in successor.store.load_active()] == ["firing"]
    finally:
        successor.stop()


def test_a_change_killed_while_its_event_is_kept_is_not_committed_without_it(
        db: Database, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.alerts.notify import Notifier
    from control_plane.alerts.store import AlertStore

    pager = ReceiverSpec(name="pager", url=receiver.url, events=["*"])
    AlertStore(db).put_receiver(pager, "alice")  # only the stored settings send
    service = NotificationService(Notifier(db)).install()
    service.notifier.configure([pager])
    event = Event(EventKind.STAGE_CHANGED, Subject("model", "m", 1), "moved to production")
    try:
        with monkeypatch.context() as patched:
            kill_at_the_outbox(patched)
            with pytest.raises(Killed), db.session() as session:
                session.add(ExperimentRow(name="moved", description="", tags={}, created_by="t"))
                notify_on_commit(session, event)
        with db.session(readonly=True) as session:
            committed = session.scalar(select(ExperimentRow.id).where(
                ExperimentRow.name == "moved")) is not None
        assert not committed and Outbox(db).count("pager") == 0
        # Unharmed, the change and its event land together, and the event is sent.
        with db.session() as session:
            session.add(ExperimentRow(name="moved", description="", tags={}, created_by="t"))
            notify_on_commit(session, event)
            assert Outbox(db).count("pager") == 0  # nothing kept before the commit
        [sent] = receiver.wait(1)
        assert sent["kind"] == "registry.stage_changed" and sent["summary"] == "moved to production"
    finally:
        service.uninstall()
        service.notifier.close()


def test_a_store_error_keeping_a_rollout_s_events_is_not_hidden_from_its_transition(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rollout's transition and its events are one transaction: a store error keeping
    the events was logged and swallowed, and on PostgreSQL the transaction it aborted was
    taken for a stored transition."""
    from types import SimpleNamespace

    from sqlalchemy.exc import OperationalError

    from control_plane.alerts.notify import Notifier
    from control_plane.notifications.sources import rollout_transition

    service = NotificationService(Notifier(db)).install()

    def store_fails(session: object, item: object) -> None:
        raise OperationalError("INSERT INTO notification_outbox", {}, Exception("disk I/O error"))

    monkeypatch.setattr(service.notifier, "keep_in", store_fails)
    row = SimpleNamespace(id=7, model_id=1, endpoint="churn", candidate_version=2,
                          stable_version=1, strategy="canary")
    try:
        with pytest.raises(OperationalError), db.session() as session:
            rollout_transition(session, row, "progressing", "rolled_back", "controller", "slow")
    finally:
        service.uninstall()
