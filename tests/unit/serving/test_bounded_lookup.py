"""A GCS that does not answer a replica's lookup (of the Monitor, of the route board) held
the replica's loop for as long as it did not: the shipper took no statistics meanwhile,
so all those seconds reached the Monitor as one shipment, and a label batch waited with
no answer. Each lookup is now waited on for a bounded time, and one that outlives its
wait goes on in its one thread for a later attempt to take."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from serving import endpoint
from serving.detached import BoundedLookup
from serving.errors import ModelNotReadyError
from tests.unit.serving.monitoring_helpers import make_core, reference_profile, send_many
from tests.unit.serving.test_early_shipment import (
    Replica,
    StandInMonitor,
    _core_shipping_every,
    until,
)


class HungLookup:
    """A lookup that blocks until released, counting its calls (threads started)."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.released = threading.Event()
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        self.released.wait(30)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_lookup_past_its_wait_runs_once_and_a_later_call_takes_its_answer() -> None:
    hung = HungLookup(answer="handle")

    async def run() -> None:
        lookup = BoundedLookup(hung)
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await lookup("monitor", "ns", timeout_s=0.05)
            assert lookup.waiting
        assert len(hung.calls) == 1  # one thread, however many attempts
        with pytest.raises(TimeoutError):  # no wait at all: only an answer already there
            await lookup("monitor", "ns", timeout_s=0)
        hung.released.set()
        assert await lookup("monitor", "ns", timeout_s=5) == "handle"
        assert not lookup.waiting and len(hung.calls) == 1
        # Taken: the next call looks up afresh (the actor may have been replaced since).
        assert await lookup("monitor", "ns", timeout_s=5) == "handle"
        assert len(hung.calls) == 2
        # Another key is not answered with the lookup of the one before.
        assert await lookup("other", "ns", timeout_s=5) == "handle"
        assert hung.calls[-1] == ("other", "ns")

    asyncio.run(run())


def test_an_answer_no_call_took_while_fresh_is_looked_up_again() -> None:
    """An answer that waited for a taker past ``fresh_s`` may name an actor replaced since."""
    hung = HungLookup(answer="handle")

    async def run() -> None:
        lookup = BoundedLookup(hung, fresh_s=0.05)
        with pytest.raises(TimeoutError):
            await lookup(timeout_s=0.01)
        hung.released.set()
        await until(lambda: not lookup.waiting)
        await asyncio.sleep(0.2)
        assert await lookup(timeout_s=5) == "handle"
        assert len(hung.calls) == 2  # not the stale answer: a lookup of its own

    asyncio.run(run())


def test_a_lookup_takes_no_thread_of_the_loop_s_executor() -> None:
    """The default executor also decodes and encodes large requests: lookups the GCS never
    answers would hold its few threads for good."""
    from concurrent.futures import ThreadPoolExecutor

    busy = threading.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        held = asyncio.ensure_future(asyncio.to_thread(busy.wait, 30))  # its one thread
        try:
            assert await BoundedLookup(lambda: "handle")(timeout_s=5) == "handle"
        finally:
            busy.set()
            await held

    asyncio.run(run())


def test_a_replica_starts_on_serve_s_handles_where_the_gcs_does_not_answer_for_the_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The version's link needs the cluster's secret from the GCS: unanswered, the replica's
    start waited as long; now it starts without the link (the router uses Serve's handle)."""
    from serving import link_auth, version_link

    hung = HungLookup(answer="secret")
    monkeypatch.setattr(link_auth, "_reading", None)
    monkeypatch.setattr(link_auth, "link_secret", hung)
    monkeypatch.setattr(version_link, "link_secret", hung, raising=False)  # where imported
    monkeypatch.setattr(link_auth, "LINK_SECRET_TIMEOUT_S", 0.1)

    async def run() -> None:
        try:
            started = time.monotonic()
            assert await version_link.start_version_link(lambda arrays: arrays) is None
            assert time.monotonic() - started < 10
        finally:
            hung.released.set()

    asyncio.run(run())


def test_the_link_secret_is_read_once_at_a_time_and_filled_in_where_it_came_late(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every caller waits on one read (a GCS that stays away costs one thread, not one per
    reconfigure); a lean ingress started without the secret gets it once the GCS answers,
    where its gRPC calls were refused for the replica's life."""
    from serving import lean_ingress, link_auth

    hung = HungLookup(answer="secret")
    monkeypatch.setattr(link_auth, "_reading", None)
    monkeypatch.setattr(link_auth, "link_secret", hung)
    monkeypatch.setattr(link_auth, "LINK_SECRET_TIMEOUT_S", 0.05)
    app = SimpleNamespace(link_secret=None)

    async def run() -> None:
        filling = asyncio.get_running_loop().create_task(
            lean_ingress.fill_link_secret(app, retry_s=0.01))  # type: ignore[arg-type]
        try:
            for _ in range(3):
                with pytest.raises(TimeoutError):
                    await link_auth.link_secret_bounded()
            assert len(hung.calls) == 1 and app.link_secret is None and not filling.done()
            hung.released.set()
            await until(lambda: app.link_secret is not None)
            assert app.link_secret == "secret"
            assert await link_auth.link_secret_bounded() == "secret"
            assert len(hung.calls) == 1  # read once, for everyone
        finally:
            hung.released.set()
            filling.cancel()

    asyncio.run(run())


def test_an_error_that_comes_after_the_wait_is_raised_to_the_next_call() -> None:
    hung = HungLookup(answer=RuntimeError("the GCS is failing over"))

    async def run() -> None:
        lookup = BoundedLookup(hung)
        with pytest.raises(TimeoutError):
            await lookup(timeout_s=0.05)
        hung.released.set()
        await until(lambda: not lookup.waiting)
        with pytest.raises(RuntimeError, match="failing over"):
            await lookup(timeout_s=0)
        assert len(hung.calls) == 1

    asyncio.run(run())


async def _load_for_ten_intervals(core: Any) -> None:
    rows = [np.zeros((1, 4), np.float32)]
    for batch in range(10):
        await send_many(core, rows * 3, prefix=f"b{batch}-")
        await asyncio.sleep(0.06)


def _answered(monitor: StandInMonitor) -> int:
    return sum(d[1]["codes"].get(200, 0) for _, d in monitor.shipped if 1 in d)


def test_the_shipper_keeps_its_pace_while_the_gcs_does_not_answer_its_lookup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each interval's statistics are taken at the interval and kept, with their seconds,
    while the lookup hangs (its 5 s wait included); once the GCS answers, every kept
    shipment goes, oldest first."""
    monitor = StandInMonitor()
    hung = HungLookup(answer=monitor)
    monkeypatch.setattr(endpoint, "get_monitor", hung)
    core = _core_shipping_every(0.05)

    async def run() -> None:
        replica = Replica(core)
        shipper = asyncio.get_running_loop().create_task(replica._ship_forever())
        try:
            await _load_for_ten_intervals(core)
            kept = list(replica._unsent or ())
            assert len(kept) >= 4, len(kept)  # at its pace (loosely: a loaded host is slow)
            assert len(hung.calls) == 1 and monitor.shipped == []
            hung.released.set()
            await until(lambda: _answered(monitor) >= 30)
        finally:
            shipper.cancel()
            hung.released.set()
        assert _answered(monitor) == 30
        sequences = [sequence for _, sequence, _ in monitor.calls]
        assert sequences == sorted(sequences) and len(sequences) >= len(kept)
        ages = [age for _, _, age in monitor.calls[:len(kept)]]
        assert ages == sorted(ages, reverse=True) and ages[0] > ages[-1]  # each its own time

    asyncio.run(run())


async def _goodbye_took(replica: Replica) -> float:
    """Seconds the replica's goodbye (as Serve stopping it awaits it) took."""
    started = time.monotonic()
    goodbye = replica.__del__()
    assert goodbye is not None
    await goodbye
    return time.monotonic() - started


class WedgedMonitor(StandInMonitor):
    """A Monitor whose process is stopped: every call waits, unanswered, until it runs
    again, and then each is answered (and each delta taken) in the order it was made."""

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.waiting: list[tuple[concurrent.futures.Future[dict[str, Any]], tuple[Any, ...]]] = []

        self.taken: set[int] = set()
        self.sent: list[int] = []  # every call's sequence, sent again or not

    def _record(self, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(kwargs["sequence"])
        if self.running:
            return self._merge_once(args, kwargs)
        answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.waiting.append((answer, (args, kwargs)))
        return SimpleNamespace(future=lambda: answer)

    def _merge_once(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """As the Monitor does: a shipment sent again is answered, not merged again."""
        if kwargs["sequence"] in self.taken:
            answered: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
            answered.set_result({})
            return SimpleNamespace(future=lambda: answered)
        self.taken.add(kwargs["sequence"])
        return super()._record(*args, **kwargs)

    def run_again(self) -> None:
        self.running = True
        for answer, (args, kwargs) in self.waiting:  # in the order they were made
            self._merge_once(args, kwargs)
            if not answer.done():  # the replica stopped waiting: Ray's call still lands
                answer.set_result({})


def test_the_shipper_keeps_its_pace_while_the_monitor_does_not_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A shipment waits for its answer on a task of its own: the next ones are taken at
    the interval meanwhile (a shipper waiting on each took one every six intervals here,
    every 6 s with a real Monitor), and, once the Monitor answers, each lands once."""
    monitor = WedgedMonitor()
    monkeypatch.setattr(endpoint, "get_monitor", lambda *key: monitor)
    monkeypatch.setattr(endpoint, "RECORD_TIMEOUT_S", 0.3)
    core = _core_shipping_every(0.05)

    async def run() -> None:
        replica = Replica(core)
        shipper = asyncio.get_running_loop().create_task(replica._ship_forever())
        try:
            await _load_for_ten_intervals(core)
            assert monitor.waiting and monitor.shipped == []
            assert replica._sequence >= 6, replica._sequence  # taken at the interval
            monitor.run_again()
            await until(lambda: _answered(monitor) >= 30 and not replica._unsent)
        finally:
            shipper.cancel()
        assert _answered(monitor) == 30
        sequences = [sequence for _, sequence, _ in monitor.calls]  # merged, in order
        assert sequences == sorted(set(sequences)) and sequences[0] == 1
        assert monitor.sent.count(1) >= 2  # the first, unanswered, was sent again

    asyncio.run(run())


def test_a_goodbye_while_a_send_waits_on_a_wedged_monitor_keeps_its_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The goodbye stops the sender mid-send and sends everything itself, the one under
    way again under its own number and the last with the goodbye, within its bound."""
    monitor = WedgedMonitor()
    monkeypatch.setattr(endpoint, "get_monitor", lambda *key: monitor)
    monkeypatch.setattr(endpoint, "RECORD_TIMEOUT_S", 60.0)  # the send would wait a minute
    core = _core_shipping_every(0.05)

    async def run() -> float:
        replica = Replica(core)
        replica._in_serve = True
        replica._shipper = asyncio.get_running_loop().create_task(replica._ship_forever())
        await send_many(core, [np.zeros((1, 4), np.float32)] * 5)
        await until(lambda: monitor.waiting and replica._sequence >= 3)
        monitor.running = True  # it answers again: the goodbye's calls are answered
        return await _goodbye_took(replica)

    took = asyncio.run(run())
    assert took < 5, took
    assert monitor.goodbyes == ["replica-1"] and _answered(monitor) == 5
    sequences = [sequence for _, sequence, _ in monitor.calls]
    assert sequences == sorted(set(sequences)) and sequences[0] == 1  # the one under way too


class FeedbackMonitor(StandInMonitor):
    """Answers ``feedback.remote``, or raises as a dead actor's handle does."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Any] = []
        self.feedback = SimpleNamespace(remote=self._feedback)

    def _feedback(self, endpoint_name: str, items: Any) -> Any:
        from ray.exceptions import ActorDiedError

        answered: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        if self.dead:
            answered.set_exception(ActorDiedError())
        else:
            self.batches.append(items)
            answered.set_result({"joined": len(items)})
        return SimpleNamespace(future=lambda: answered)


def test_a_label_batch_goes_on_the_shipper_s_handle_or_the_new_monitor_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No GCS call per label batch where the shipper holds a handle; where that Monitor
    died (replaced by `up`), the batch goes to the new one, and the shipper drops the old."""
    old, new = FeedbackMonitor(), FeedbackMonitor()
    lookups: list[tuple[Any, ...]] = []

    def lookup(*key: Any) -> FeedbackMonitor:
        lookups.append(key)
        return new

    monkeypatch.setattr(endpoint, "get_monitor", lookup)
    core = make_core(reference_profile())

    async def run() -> None:
        replica = Replica(core)
        replica._monitor = old
        assert await replica._send_feedback("e", [("r1", [1])]) == {"joined": 1}
        assert old.batches == [[("r1", [1])]] and lookups == []
        old.dead = True
        assert await replica._send_feedback("e", [("r2", [0])]) == {"joined": 1}
        assert new.batches == [[("r2", [0])]] and len(lookups) == 1
        assert replica._monitor is None  # the shipper looks the new one up too
        new.dead = True  # a looked-up handle that is dead too: 503, no endless retry
        with pytest.raises(ModelNotReadyError, match="did not answer"):
            await replica._send_feedback("e", [("r3", [1])])

    asyncio.run(run())


def test_a_goodbye_keeps_its_bound_while_the_gcs_does_not_answer(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    hung = HungLookup()
    monkeypatch.setattr(endpoint, "get_monitor", hung)
    monkeypatch.setattr(endpoint, "GOODBYE_S", 0.3)
    core = _core_shipping_every(0.05)

    async def run() -> float:
        replica = Replica(core)
        replica._in_serve = True
        replica._shipper = asyncio.get_running_loop().create_task(replica._ship_forever())
        try:
            await asyncio.sleep(0.2)
            return await _goodbye_took(replica)
        finally:
            hung.released.set()

    took = asyncio.run(run())
    assert took < 5, took
    assert "could not say goodbye to the monitor: TimeoutError" in caplog.text


def test_a_label_batch_is_answered_while_the_gcs_does_not_answer_the_lookup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """503 with what to do, within the bound, rather than a call that never ends."""
    hung = HungLookup()
    monkeypatch.setattr(endpoint, "get_monitor", hung)
    monkeypatch.setattr(endpoint, "LOOKUP_TIMEOUT_S", 0.1)
    core = make_core(reference_profile())

    async def run() -> None:
        replica = Replica(core)
        try:
            started = time.monotonic()
            with pytest.raises(ModelNotReadyError, match="could not be looked up.*again"):
                await replica._send_feedback(core.config.endpoint, [("r1", [1])])
            assert time.monotonic() - started < 10
        finally:
            hung.released.set()

    asyncio.run(run())


def test_the_route_follower_goes_on_looking_while_the_gcs_does_not_answer(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    hung = HungLookup()
    monkeypatch.setattr(endpoint, "get_route_board", hung)
    monkeypatch.setattr(endpoint, "LOOKUP_TIMEOUT_S", 0.05)
    monkeypatch.setattr(endpoint, "BOARD_RETRY_S", 0.01)
    core = make_core(reference_profile())

    async def run() -> None:
        replica = Replica(core)
        follower = asyncio.get_running_loop().create_task(replica._follow_routes())
        try:
            await until(lambda: caplog.text.count("could not be looked up") >= 3)
            # Round after round on the one lookup, not stuck in it, nor a thread a round.
            assert caplog.text.count("could not be looked up") >= 3 and len(hung.calls) == 1
            hung.released.set()  # the GCS answers: there is no board yet
            await until(lambda: len(hung.calls) >= 2)
            assert len(hung.calls) >= 2  # looked up again, afresh
        finally:
            follower.cancel()
            hung.released.set()

    asyncio.run(run())
