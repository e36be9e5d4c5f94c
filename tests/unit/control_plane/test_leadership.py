"""The control loops' lease: one holder at a time on a real store (SQLite, and PostgreSQL
where one is given), a holder that stops acting before anyone else may start, a takeover
once a lease runs out, a hand-over at release, and a store outage that costs the lease."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from control_plane.leadership import (
    LEASE_S,
    SURE_SHARE,
    Lease,
    LeaseLost,
    read_lease,
    request_apply,
    take_apply_requests,
)
from control_plane.service import ControlPlane
from control_plane.store import Database
from control_plane.store.database import fenced_writes
from control_plane.store.models import ApplyRequestRow
from modelplane.process_names import new_process_name
from modelplane.settings import Settings
from tests.waiting import wait_for


class Clocks:
    """A wall clock and a monotonic clock that move together, when told to."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - 999_000.0  # another origin, as a real monotonic clock has


def lease(db: Database, holder: str, clocks: Clocks) -> Lease:
    return Lease(db, holder=holder, clock=clocks.wall, monotonic=clocks.monotonic)


def test_one_holder_until_its_lease_runs_out_then_the_next_term(db: Database) -> None:
    clocks = Clocks()
    first, second = lease(db, "first", clocks), lease(db, "second", clocks)
    assert first.hold() and first.held and first.term == 1
    assert not second.hold() and not second.held and second.term is None

    clocks.now += 5
    assert first.hold() and not second.hold()  # renewed: its lease now ends at 15 s
    clocks.now += LEASE_S - 0.5
    assert not second.hold()
    assert not first.held  # it has not renewed for two thirds of the lease: it stopped acting

    clocks.now += 1  # 10.5 s since the last renewal
    assert second.hold() and second.term == 2
    assert not first.hold() and not first.held
    stored = read_lease(db)
    assert stored is not None and stored.holder == "second" and stored.term == 2
    assert stored.expires_at == clocks.now + LEASE_S


def test_a_holder_stops_acting_before_another_may_take_over(db: Database) -> None:
    clocks = Clocks()
    first, second = lease(db, "first", clocks), lease(db, "second", clocks)
    assert first.hold()
    sure_for = LEASE_S * SURE_SHARE
    clocks.now += sure_for - 0.01
    assert first.held
    clocks.now += 0.02
    assert not first.held
    clocks.now = clocks.now - sure_for + LEASE_S - 0.02  # just before the lease runs out
    assert not second.hold()
    clocks.now += 0.04
    assert second.hold()


def test_release_hands_the_lease_over_at_once(db: Database) -> None:
    clocks = Clocks()
    first, second = lease(db, "first", clocks), lease(db, "second", clocks)
    assert first.hold()
    first.release()
    assert not first.held and first.term is None
    assert not first.hold()  # given up for good: a process stopping does not take it back
    assert second.hold() and second.term == 2
    first.release()  # not the holder: changes nothing
    assert second.hold() and read_lease(db).holder == "second"


def test_a_holder_whose_process_is_gone_from_this_machine_is_taken_over_at_once(
        db: Database) -> None:
    clocks = Clocks()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    host, namespace, _, tag = new_process_name().split(":")

    def holder(on_host: str, pid: int) -> str:
        return ":".join([on_host, namespace, str(pid), tag])

    def taken_at_once(first: str, name: str) -> bool:
        assert Lease(db, name=name, holder=first, clock=clocks.wall,
                     monotonic=clocks.monotonic).hold()
        return Lease(db, name=name, holder="successor", clock=clocks.wall,
                     monotonic=clocks.monotonic).hold()

    assert taken_at_once(holder(host, ended.pid), "gone")
    assert read_lease(db, "gone").term == 2
    # A process that still runs, one on another machine, or a holder id of another shape
    # keeps its lease until it runs out.
    assert not taken_at_once(holder(host, os.getpid()), "alive")
    assert not taken_at_once(holder("elsewhere", ended.pid), "elsewhere")
    # Another machine of the same name, in its first PID namespace as this one may be: its
    # boot differs, and its pid means nothing here (it was taken, both ways, each renewal).
    namespace_only = namespace.split(".")[0]
    assert not taken_at_once(":".join([host, f"{namespace_only}.0000000000000000",
                                       str(ended.pid), tag]), "same-name")
    assert not taken_at_once(":".join([host, namespace_only, str(ended.pid), tag]), "no-boot")
    assert not taken_at_once(f"{host}:{ended.pid}", "old-shape")


def test_a_store_that_cannot_be_reached_costs_the_lease_when_it_runs_out(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    db = Database(f"sqlite:///{folder / 'modelplane.db'}")
    clocks = Clocks()
    holder = lease(db, "holder", clocks)
    assert holder.hold()
    db.dispose()
    shutil.rmtree(folder)
    (folder / "modelplane.db").mkdir(parents=True)  # a database file SQLite cannot open
    clocks.now += 3
    assert holder.hold() and holder.held  # kept: still within what it was sure of
    clocks.now += LEASE_S * SURE_SHARE
    assert not holder.hold() and not holder.held
    db.dispose()


def race(db: Database, contenders: int = 6) -> list[Lease]:
    """``contenders`` fresh holders ask for the lease at once; those that got it."""
    leases = [Lease(db) for _ in range(contenders)]
    start = threading.Barrier(contenders)
    won: list[Lease] = []
    errors: list[BaseException] = []

    def contend(candidate: Lease) -> None:
        try:
            start.wait(timeout=10)
            if candidate.hold():
                won.append(candidate)
        except BaseException as error:  # a dead thread must fail the test
            errors.append(error)

    threads = [threading.Thread(target=contend, args=(c,)) for c in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads), errors
    return won


def test_racing_processes_take_one_term_at_a_time(db: Database) -> None:
    terms: list[int] = []
    for _ in range(4):
        won = race(db)
        assert len(won) == 1, [c.holder for c in won]
        assert read_lease(db).holder == won[0].holder
        terms.append(won[0].term)
        won[0].release()
    assert terms == [1, 2, 3, 4]


def test_of_two_control_planes_on_one_store_one_leads_and_the_other_takes_over(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")})
    first = ControlPlane.start(settings)
    second = ControlPlane.start(settings)
    try:
        # Renewed every 2 s and sure for 4: a renewal 2 s late on a busy host still holds.
        first.start_control_loops(lease_s=6.0)
        second.start_control_loops(lease_s=6.0)
        assert first.leading and not second.leading
        assert first.apply() is None and second.apply() is None  # no Serve attached here
        pause = threading.Event()
        for _ in range(8):  # more than a lease length: the leader keeps renewing
            pause.wait(1.0)
            assert first.leading and not second.leading
        first.close()  # a graceful stop gives the lease up: taken at the next renewal
        wait_for(lambda: second.leading, 30, "the second control plane to take the lease")
        assert not first.leading
        stored = read_lease(second.db)
        assert stored.holder == second.lease.holder and stored.term == 2
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("release_lands", ["after the renewal commits", "before it commits"])
def test_a_release_during_a_renewal_leaves_the_lease_given_up(db: Database,
                                                               release_lands: str) -> None:
    """A control plane shutting down releases the lease on one thread while its lease loop
    renews on another: whichever lands first in the store, the process never acts as the
    holder again and the store says the lease is free, so a successor takes it at once."""
    clocks = Clocks()
    first, second = lease(db, "first", clocks), lease(db, "second", clocks)
    assert first.hold() and first.term == 1
    claim = first._claim

    def renewal_racing_a_release(now: float) -> int | None:
        if release_lands == "before it commits":
            first.release()
            return claim(now)
        term = claim(now)
        first.release()
        return term

    first._claim = renewal_racing_a_release  # type: ignore[method-assign]
    clocks.now += 2
    assert first.hold() is False
    assert not first.held and first.term is None
    assert read_lease(db).expires_at <= clocks.now
    assert first.hold() is False  # released for good
    assert second.hold() and second.term == 2


@pytest.mark.parametrize("running", ["a control pass", "an alert evaluation"])
def test_stepping_down_hands_the_lease_over_only_once_the_pass_in_flight_ends(
        tmp_path: Path, running: str) -> None:
    """Serve stops a control plane gracefully while one of its passes runs (a reconcile
    deploying to Serve, or the alert rules being evaluated): its successor may take the
    lease only once that pass has ended, or two control planes would act on Serve (or page
    for one alert) at once."""
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")})
    leader = ControlPlane.start(settings)
    in_pass, finish = threading.Event(), threading.Event()

    def long_pass(*_: Any) -> None:
        in_pass.set()
        finish.wait(30)

    try:
        if running == "an alert evaluation":
            leader.alerts.evaluate = long_pass
        leader.start_control_loops(lease_s=6.0)
        assert leader.leading
        if running == "a control pass":
            leader._every(0.05, leader._leading(long_pass), "long pass")
        assert in_pass.wait(10), "the pass never started"
        stepping_down = threading.Thread(target=leader.step_down)
        stepping_down.start()
        stepping_down.join(0.5)
        successor = Lease(leader.db, length_s=6.0)
        assert stepping_down.is_alive() and not successor.hold()
        finish.set()
        stepping_down.join(10)
        assert not stepping_down.is_alive() and not leader.leading
        assert successor.hold() and successor.term == 2
    finally:
        finish.set()
        leader.close()


def test_a_serve_slow_to_answer_the_takeovers_apply_does_not_cost_the_lease(
        tmp_path: Path) -> None:
    """Taking the lease applies every endpoint to Serve: on the reconciler's thread, so a
    Serve controller that does not answer holds that pass, not the lease's renewals (the
    lease ran out under a live leader, and every control loop stopped with it)."""
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")})
    leader = ControlPlane.start(settings)
    applying, answer = threading.Event(), threading.Event()

    def stalled(endpoint: str | None = None) -> None:
        applying.set()
        answer.wait(60)

    leader.reconciler = SimpleNamespace(reconcile=stalled, reconcile_pending=lambda: None,
                                        forget_applied=lambda: None)
    try:
        starting = threading.Thread(target=leader.start_control_loops, kwargs={"lease_s": 6.0})
        starting.start()
        starting.join(10)
        assert not starting.is_alive(), "taking the lease waited for Serve"
        assert applying.wait(10), "the takeover's apply never ran"
        pause = threading.Event()
        for _ in range(8):  # more than a lease length, Serve still silent
            pause.wait(1.0)
            assert leader.leading and read_lease(leader.db).holder == leader.lease.holder
    finally:
        answer.set()
        leader.close()


def test_taking_the_lease_forgets_what_was_applied_before_applying_again(
        tmp_path: Path) -> None:
    """What this process gave Serve before another held the lease is no guide to what
    Serve runs now (test_reconciler's test_a_lead_taken_back_gives_serve_everything_again)."""
    leader = ControlPlane.start(Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")}))
    calls: list[str] = []
    leader.reconciler = SimpleNamespace(
        reconcile=lambda endpoint=None: calls.append("reconcile"),
        reconcile_pending=lambda: None, forget_applied=lambda: calls.append("forget"))
    try:
        leader.start_control_loops(lease_s=6.0)
        wait_for(lambda: "forget" in calls[:-1], 10, "the takeover's apply")
        assert calls[calls.index("forget") + 1] == "reconcile"
    finally:
        leader.close()


def test_a_write_behind_the_fence_is_refused_once_another_holds_the_lease(
        db: Database) -> None:
    """A control pass that began while its process led, and outlived the lead (a stalled
    store call, a pause), stores nothing once another process holds the lease: the
    successor may already have made the same decision, or a later one."""
    clocks = Clocks()
    first, second = lease(db, "first", clocks), lease(db, "second", clocks)
    assert first.hold()
    with fenced_writes(first.fence):
        request_apply(db, "iris")
    clocks.now += LEASE_S + 1
    assert second.hold() and second.term == 2
    with fenced_writes(first.fence), pytest.raises(LeaseLost, match="second"):
        request_apply(db, "fraud")
    assert not first.held and first.term is None
    with fenced_writes(first.fence), pytest.raises(LeaseLost, match="does not hold"):
        request_apply(db, "fraud")
    request_apply(db, "api")  # the API's writes are not the loops': every process serves it
    assert take_apply_requests(db) == {"iris", "api"}


def test_a_takeover_waits_for_the_holders_write_in_flight(db: Database) -> None:
    """The fence holds the lease row until its transaction ends: a process taking the lease
    over waits for the holder's write in flight and then sees it, never a write that lands
    after it took over. On PostgreSQL a write that stalls costs the taker that renewal (a
    lock timeout), not its lease thread for as long as the write stalls."""
    clocks = Clocks()
    first, second = lease(db, "first", clocks), lease(db, "second", clocks)
    assert first.hold()
    in_write, finish = threading.Event(), threading.Event()

    def write() -> None:
        with fenced_writes(first.fence), db.session() as session:
            session.add(ApplyRequestRow(endpoint="iris", requested_at=clocks.now))
            session.flush()
            in_write.set()
            finish.wait(60)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert in_write.wait(10)
        clocks.now += LEASE_S + 1
        took: list[bool] = []
        taker = threading.Thread(target=lambda: took.append(second.hold()))
        taker.start()
        taker.join(1.0)
        assert taker.is_alive() and not took, "the takeover did not wait for the write"
        if not db.is_sqlite:  # SQLite's writers wait out its busy timeout instead
            taker.join(30)
            assert took == [False], "the takeover's renewal waited for the stalled write"
    finally:
        finish.set()
        writer.join(10)
    taker.join(30)
    assert second.hold() and second.term == 2
    assert take_apply_requests(db) == {"iris"}


def test_a_pass_begun_in_an_earlier_term_is_refused_after_the_lease_comes_back(
        db: Database) -> None:
    """A pass that stalled through a takeover and back (its process holds the lease again,
    in a later term) stores nothing: what it read is from before the other holder acted."""
    clocks = Clocks()
    first, second = lease(db, "first", clocks), lease(db, "second", clocks)
    assert first.hold() and first.term == 1
    stalled_pass = functools.partial(first.fence, term=first.term)
    clocks.now += LEASE_S + 1
    assert second.hold()
    second.release()
    assert first.hold() and first.term == 3
    with fenced_writes(stalled_pass), pytest.raises(LeaseLost, match="term 1"):
        request_apply(db, "stale")
    with fenced_writes(functools.partial(first.fence, term=first.term)):
        request_apply(db, "fresh")
    assert take_apply_requests(db) == {"fresh"}


def test_the_control_loops_write_behind_the_lease(tmp_path: Path) -> None:
    """Every pass of the control loops runs behind the lease's fence: one that finds the
    lease taken mid-pass stores nothing more and stops leading at once."""
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")})
    leader = ControlPlane.start(settings)
    try:
        leader.start_control_loops(lease_s=60.0)  # no renewal during the test
        assert leader.leading
        clocks = Clocks()
        clocks.now = read_lease(leader.db).expires_at + 1  # as if the leader had stalled
        successor = lease(leader.db, "successor", clocks)

        def pass_that_outlived_its_lead() -> None:
            request_apply(leader.db, "before")
            assert successor.hold()
            request_apply(leader.db, "after")

        with pytest.raises(LeaseLost):
            leader._leading(pass_that_outlived_its_lead)()
        assert not leader.leading
        assert take_apply_requests(leader.db) == {"before"}
    finally:
        leader.close()


def test_changes_made_by_a_follower_reach_the_leader_once(db: Database) -> None:
    assert take_apply_requests(db) == set()
    request_apply(db, "iris")
    request_apply(db, "iris")
    request_apply(db, "fraud")
    assert take_apply_requests(db) == {"iris", "fraud"}
    assert take_apply_requests(db) == set()  # taken: not applied twice
    request_apply(db, None)
    assert take_apply_requests(db) == {None}


@pytest.mark.parametrize("length", [0.0, -1.0])
def test_a_lease_needs_a_length(db: Database, length: float) -> None:
    with pytest.raises(ValueError, match="length"):
        Lease(db, length_s=length)


def test_the_api_names_the_holder_and_says_when_no_one_ever_held_the_lease(
        tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from control_plane.api import build_api

    plane = ControlPlane.start(Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")}))
    try:
        token = plane.settings.admin_token_path.read_text().strip()
        api = TestClient(build_api(plane), headers={"authorization": f"Bearer {token}"})
        assert TestClient(build_api(plane)).get("/leadership").status_code == 401  # hosts, pids
        never = api.get("/leadership").json()
        assert never["holder"] is None and never["term"] is None and never["expires_at"] is None
        plane.start_control_loops()
        held = api.get("/leadership").json()
        assert held["holder"] == held["this_process"] == plane.lease.holder
        assert held["term"] == 1 and held["leading"] and held["expires_at"] > held["renewed_at"]
    finally:
        plane.close()


def test_on_a_shared_store_the_lease_keeps_the_stores_time_not_a_hosts(db: Database) -> None:
    """Each host compared the lease's expiry with its own clock: one running a minute
    ahead (or stepped by NTP) took the lease while its holder still acted."""
    if db.is_sqlite:
        pytest.skip("SQLite serves one machine: its clock is the store's")
    holder = Lease(db, name="skewed")
    assert holder.hold()
    ahead = Lease(db, name="skewed", clock=lambda: time.time() + 60.0,  # its clock a minute
                  store_clock=True)  # ahead, as another machine's may be
    assert not ahead.hold() and holder.hold()
    assert read_lease(db, "skewed").expires_at < time.time() + 2 * holder.length_s


def test_up_is_refused_a_store_led_from_another_ray_cluster_until_that_leader_stops(
        db: Database, db_url: str, tmp_path: Path) -> None:
    """`modelplane up` on a second Ray cluster with the first one's store made its control
    plane lead every endpoint there once the first restarted: the first cluster's were
    then left unreconciled, its rollouts judged on an empty Monitor."""
    from control_plane.errors import OwnershipConflictError
    from control_plane.leadership import leader_elsewhere
    from control_plane.platform import refuse_store_led_elsewhere

    leader = Lease(db, length_s=3.0, cluster="session-first")  # a loaded host starves renewals
    stop = threading.Event()

    def lead() -> None:
        while not stop.is_set():
            leader.hold()
            stop.wait(0.1)

    renewing = threading.Thread(target=lead, daemon=True)
    renewing.start()
    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home"),
                                  "MODELPLANE_DB_URL": db_url})
    told: list[str] = []
    try:
        wait_for(lambda: leader.held, timeout=10, what="the first cluster's leader")
        assert read_lease(db).cluster == "session-first"  # type: ignore[union-attr]
        assert leader_elsewhere(db, "session-first") is None  # its own cluster: no wait
        with pytest.raises(OwnershipConflictError, match="on another Ray cluster") as refused:
            refuse_store_led_elsewhere(settings, "session-second", take_over=False,
                                       progress=told.append)
        assert refused.value.detail["leader"] == leader.holder
        assert refused.value.detail["leader_cluster"] == "session-first"
        assert "modelplane down" in refused.value.message and told == []
        refuse_store_led_elsewhere(settings, "session-second", take_over=True,
                                   progress=told.append)
        assert len(told) == 1 and "--take-over" in told[0]
        refuse_store_led_elsewhere(settings, None, take_over=False, progress=told.append)
    finally:
        stop.set()
        renewing.join(timeout=10)
    assert not renewing.is_alive()
    # Stopped without a word (its cluster gone): not renewed while watched, so not live.
    assert leader_elsewhere(db, "session-second") is None
    leader.release()
    refuse_store_led_elsewhere(settings, "session-second", take_over=False, progress=told.append)
    assert len(told) == 1


def test_a_holder_elsewhere_that_renews_late_in_its_lease_is_still_live(db: Database) -> None:
    """`up` watched half a lease for a renewal: one late by a lock wait or a pause read
    as a dead holder, and a second cluster started on a store led from the first."""
    from control_plane.leadership import leader_elsewhere

    leader = Lease(db, length_s=30.0, cluster="session-first")
    assert leader.hold()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 20:  # ten seconds of half-second looks in: the renewal comes
            time.sleep(0.01)  # (a later renewal time than the first, on any clock)
            leader.hold()

    found = leader_elsewhere(db, "session-second", sleep=sleep, poll_s=0.5)
    assert found is not None and found.holder == leader.holder and len(waits) == 20
    leader.release()
    assert leader_elsewhere(db, "session-second", sleep=sleep) is None  # run out: no wait
    assert len(waits) == 20
