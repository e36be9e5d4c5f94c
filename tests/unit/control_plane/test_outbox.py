"""The receivers' outbox on a real store (SQLite, and PostgreSQL where one is given), with
real webhook receivers on loopback: what a receiver has not acknowledged outlives the
control plane that took it, is sent once the receiver is back, in order, each with one
idempotency key over all its tries, and by one control plane at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from control_plane.alerts.notify import Notification, Notifier
from control_plane.alerts.outbox import MAX_AGE_S, Outbox
from control_plane.alerts.schemas import ReceiverSpec
from control_plane.errors import StoreUnavailableError
from control_plane.store import Database
from tests.waiting import wait_for
from tests.webhooks import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def page(number: int) -> Notification:
    return Notification("firing", {"name": f"alert-{number}", "labels": {"n": str(number)}})


def spec(receiver: Receiver, db: Database, **fields: object) -> ReceiverSpec:
    """The receiver's settings, stored as the alerts API stores them."""
    from control_plane.alerts.store import AlertStore

    made = ReceiverSpec(name="pager", url=receiver.url, **{"backoff_s": 0.05, "max_attempts": 10,
                                                            **fields})
    AlertStore(db).put_receiver(made, "alice")
    return made


def test_what_a_dead_control_plane_left_reaches_the_receiver_once_it_is_back(
        db: Database, receiver: Receiver) -> None:
    receiver.status = 503  # down
    first = Notifier(db)
    first.configure([spec(receiver, db)])
    for number in range(3):
        first.notify(page(number))
    wait_for(lambda: len(receiver.tries) >= 2, 10, "the first control plane's tries")
    first.close()  # its threads gone with what they held, as in a crash
    assert Outbox(db).count("pager") == 3
    receiver.status = 200
    successor = Notifier(db)
    try:
        successor.configure([spec(receiver, db)])
        bodies = receiver.wait(3)
        assert [body["alert"]["name"] for body in bodies] == ["alert-0", "alert-1", "alert-2"]
        assert len(set(receiver.keys)) == 3 and None not in receiver.keys
        # Every try of the first notification, by either control plane, had its one key.
        assert set(receiver.tries[:2]) == {receiver.keys[0]}
        # A notification is counted once the outbox has let it go: the count comes last.
        wait_for(lambda: successor.stats()["pager"].get("sent") == 3, 10, "three sent")
        assert Outbox(db).count("pager") == 0
    finally:
        successor.close()


def test_two_control_planes_send_each_notification_once(db: Database,
                                                        receiver: Receiver) -> None:
    planes = [Notifier(db), Notifier(db)]
    try:
        for plane in planes:
            plane.configure([spec(receiver, db)])
        for number in range(30):
            planes[number % 2].notify(page(number))
        receiver.wait(30)
        time.sleep(1.5)  # three polls more: a second sending would have come by now
        assert len(receiver.received) == 30 and len(set(receiver.keys)) == 30
        assert sorted(int(b["alert"]["labels"]["n"]) for b in receiver.received) == list(range(30))
    finally:
        for plane in planes:
            plane.close()


def test_a_receiver_trickling_its_answer_does_not_hold_the_send(db: Database) -> None:
    """Its status is all a send needs. Its body read a byte a second, each within the
    timeout, held the send past the claim, and another control plane sent it again."""
    slow = Receiver(trickle_s=0.2)
    plane = Notifier(db)
    try:
        plane.configure([spec(slow, db, timeout_s=1.0)])
        plane.notify(page(1))
        wait_for(lambda: plane.stats()["pager"].get("sent") == 1, 10, "the send")
        assert Outbox(db).count("pager") == 0 and not slow.answered.is_set()
    finally:
        plane.close()
        slow.close()


def test_a_notification_is_in_the_store_when_notify_returns(db: Database) -> None:
    """Queued in memory while the receiver's thread waited on a send, it was lost to a
    kill in that wait: the alert was stored firing, so nothing paged it again."""
    slow = Receiver(delay_s=30)
    plane = Notifier(db)
    try:
        plane.configure([spec(slow, db, timeout_s=60)])
        plane.notify(page(1))
        wait_for(lambda: slow.attempts == 1, 10, "the first send to begin")
        plane.notify(page(2))
        assert Outbox(db).count("pager") == 2
    finally:
        slow.close()
        plane.close()


def test_only_the_stored_settings_send(db: Database, receiver: Receiver) -> None:
    """An operator moves a receiver to a new URL; a control plane that has not read the
    change yet still sends with the old one. What it queues is sent to the new URL by the
    one that has, never to the old one (which refuses it: the notification was dropped)."""
    old = Receiver(status=404)
    behind, current = Notifier(db), Notifier(db)
    try:
        behind.configure([spec(old, db)])
        current.configure([spec(receiver, db)])  # the change, stored after the first
        for number in range(5):
            behind.notify(page(number))
        assert len(receiver.wait(5)) == 5
        time.sleep(1.5)  # three polls more
        assert old.tries == [] and len(receiver.received) == 5
    finally:
        behind.close()
        current.close()
        old.close()


def test_a_receiver_stored_before_a_setting_existed_is_still_notified(
        db: Database, receiver: Receiver) -> None:
    """A row written before ``events`` and ``format`` existed lacks them: compared as it
    was stored, it never matched the settings read from it, and nothing was ever sent."""
    from control_plane.alerts.store import AlertStore
    from control_plane.store.models import AlertReceiverRow

    with db.session() as session:
        session.add(AlertReceiverRow(name="pager", spec={
            "name": "pager", "url": receiver.url, "timeout_s": 5.0, "max_attempts": 10,
            "backoff_s": 0.05, "enabled": True}))
    notifier = Notifier(db)
    try:
        notifier.configure(AlertStore(db).receivers())
        notifier.notify(page(0))
        assert [body["alert"]["name"] for body in receiver.wait(1)] == ["alert-0"]
    finally:
        notifier.close()


def test_a_refused_notification_or_one_out_of_tries_is_given_up_not_kept(
        db: Database, receiver: Receiver) -> None:
    notifier = Notifier(db)
    try:
        receiver.status = 400
        notifier.configure([spec(receiver, db, max_attempts=4)])
        notifier.notify(page(0))
        wait_for(lambda: notifier.stats()["pager"].get("failed") == 1, 10, "the refusal")
        assert len(receiver.tries) == 1  # a refusal is not tried again
        receiver.status = 503
        notifier.notify(page(1))
        wait_for(lambda: notifier.stats()["pager"].get("failed") == 2, 20, "the last try")
        assert len(receiver.tries) == 1 + 4 and len(set(receiver.tries[1:])) == 1
        assert Outbox(db).count("pager") == 0
    finally:
        notifier.close()


def test_a_store_that_cannot_keep_a_notification_sends_it_from_memory(
        db: Database, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    def store_away(self: Outbox, *args: object, **kwargs: object) -> None:
        raise StoreUnavailableError("the store cannot be reached")

    monkeypatch.setattr(Outbox, "put", store_away)
    notifier = Notifier(db)
    try:
        notifier.configure([spec(receiver, db)])
        notifier.notify(page(7))
        assert receiver.wait(1)[0]["alert"]["name"] == "alert-7"
        assert notifier.stats()["pager"]["unstored"] == 1
    finally:
        notifier.close()


def test_a_receiver_keeps_a_bounded_outbox_of_fresh_notifications(db: Database) -> None:
    clock = [1_000_000.0]
    outbox = Outbox(db, clock=lambda: clock[0])
    assert outbox.put("pager", "a", {"n": 1}, limit=2) is not None
    assert outbox.put("pager", "b", {"n": 2}, limit=2) is not None
    assert outbox.put("pager", "c", {"n": 3}, limit=2) is None  # full: dropped
    assert outbox.put("other", "d", {"n": 4}, limit=2) is not None
    clock[0] += MAX_AGE_S + 1
    outbox.put("pager", "e", {"n": 5}, limit=2)  # after the old ones expire
    waiting, expired = outbox.claim("pager", for_s=60)
    assert expired == 2 and waiting is not None and waiting.body == {"n": 5}


def test_deleting_a_receiver_drops_what_waits_for_it(db: Database) -> None:
    from control_plane.alerts import AlertService

    alerts = AlertService(db)
    try:
        alerts.put_receiver(ReceiverSpec(name="pager", url="http://127.0.0.1:9/hook"), "alice")
        Outbox(db).put("pager", "a", {"n": 1}, limit=10)
        alerts.delete_receiver("pager", "alice")
        assert Outbox(db).count("pager") == 0
    finally:
        alerts.stop()


def test_a_claim_holds_against_a_host_whose_clock_runs_ahead(db: Database) -> None:
    """Claims compared each host's own clock: a control plane on a host a minute ahead took
    a notification another was still sending, and it was sent twice."""
    if db.is_sqlite:
        pytest.skip("SQLite serves one machine: its clock is the store's")
    import time

    sender = Outbox(db, holder="sender")
    sender.put("pager", "a", {"n": 1}, limit=10)
    waiting, _ = sender.claim("pager", for_s=30)
    assert waiting is not None
    ahead = Outbox(db, holder="ahead", clock=lambda: time.time() + 60.0, store_clock=True)
    assert ahead.claim("pager", for_s=30) == (None, 0)


def test_an_alert_raised_again_is_one_notification_to_its_receiver(db: Database,
                                                                   receiver: Receiver) -> None:
    """A leader taking over a rollback whose alert was raised, but not yet noted as raised,
    raises it again: each copy had a fresh key, and the receiver paged twice. One alert's
    change now has one key, and a copy of one still waiting is not kept twice."""
    receiver.status = 503  # down: both copies wait in the outbox
    rollback = {"name": "RolloutRolledBack", "kind": "event", "fingerprint": "f-rollout-7",
                "fired_at": "2026-12-05T07:00:00+00:00"}
    again = {**rollback, "fired_at": "2026-12-05T07:00:09+00:00"}  # raised by the next leader
    other = {**rollback, "fingerprint": "f-rollout-8"}
    plane = Notifier(db)
    try:
        plane.configure([spec(receiver, db)])
        for alert in (rollback, again, other):
            plane.notify(Notification("firing", alert))
        wait_for(lambda: Outbox(db).count("pager") == 2, 10, "two notifications kept")
        receiver.status = 200
        receiver.wait(2)
        time.sleep(1.0)  # two polls more: a third would have come by now
        assert len(receiver.received) == 2 and len(set(receiver.keys)) == 2
        fired = Notification("firing", {**rollback, "kind": "rule"})
        resolved = Notification("resolved", {**rollback, "kind": "rule",
                                             "resolved_at": "2026-12-05T07:05:00+00:00"})
        assert fired.idempotency_key("pager") != resolved.idempotency_key("pager")
        assert fired.idempotency_key("pager") != fired.idempotency_key("slack")
    finally:
        plane.close()


def test_one_notification_kept_by_two_leaders_at_once_is_one_row_and_no_error(
        db: Database) -> None:
    """Two leaders keep one alert change (one key) at the same moment, each in the
    transaction of its alert's state: the second insert waited on the first's key, then
    failed its whole transaction, the alert's history row with it."""
    import threading

    first, second = Outbox(db), Outbox(db)
    errors: list[BaseException] = []
    kept = threading.Event()
    with db.session() as session:
        assert first.put_in(session, "pager", "raised", {"n": 1}, limit=10, key="k" * 32)

        def also() -> None:
            try:
                with db.session() as other:  # waits for the first to commit
                    second.put_in(other, "pager", "raised", {"n": 1}, limit=10, key="k" * 32)
            except BaseException as error:
                errors.append(error)
            kept.set()

        racing = threading.Thread(target=also, daemon=True)
        racing.start()
        assert not kept.wait(0.5)  # held behind the first's uncommitted row
    racing.join(30)
    assert kept.is_set() and errors == [] and Outbox(db).count("pager") == 1
