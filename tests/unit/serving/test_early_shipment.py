"""The replica's shipper takes a recorder holding a busy second's observations at once,
not at its interval, so the request path never runs the monitoring kernels; and it
accounts them on the event loop a step at a time, giving the loop back between steps."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from serving import endpoint
from serving.monitoring import observations, stats
from tests.unit.serving.monitoring_helpers import make_core, reference_profile, send_many

INTERVAL_S = 30.0  # far longer than the test: a shipment within it came early


async def until(check: Any, timeout_s: float = 10.0) -> None:
    """Poll ``check`` on the loop until it holds: a loaded host's thread hops take their time."""
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


class StandInMonitor:
    """Answers ``record.remote(...)`` as the Monitor actor's handle does, keeping each delta."""

    def __init__(self) -> None:
        self.shipped: list[tuple[float, dict[int, Any]]] = []
        self.calls: list[tuple[Any, int | None, float]] = []  # (served, sequence, age_s)
        self.more: list[bool] = []  # per call, whether the replica said newer ones follow
        self.goodbyes: list[str] = []
        self.record = SimpleNamespace(remote=self._record)

    dead = False  # set: its actor died, as a killed Monitor's handle answers

    def _record(self, endpoint_name: str, replica: str, delta: dict[int, Any], served: Any,
                leaving: bool = False, sequence: int | None = None, age_s: float = 0.0,
                more: bool = False) -> Any:
        if self.dead:
            from ray.exceptions import ActorDiedError

            raise ActorDiedError()
        self.shipped.append((time.monotonic(), delta))
        self.calls.append((served, sequence, age_s))
        self.more.append(more)
        if leaving:
            self.goodbyes.append(replica)
        answered: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        answered.set_result({})
        return SimpleNamespace(future=lambda: answered)


def _core_shipping_every(seconds: float) -> Any:
    """A core (one monitored version) whose replica ships every ``seconds``."""
    core = make_core(reference_profile())
    config, backends, _ = core._state
    core.update(config.model_copy(update={"stats_interval_s": seconds}), backends)
    return core


class Replica(endpoint._CoreAdapter):
    def __init__(self, core: Any) -> None:
        self.core = core
        self._replica = "replica-1"


def test_a_full_recorder_is_shipped_before_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (observations, stats):
        monkeypatch.setattr(module, "PENDING_LIMIT", 50)
        monkeypatch.setattr(module, "PENDING_HARD_LIMIT", 10_000)
    monitor = StandInMonitor()
    monkeypatch.setattr(endpoint, "get_monitor", lambda *key: monitor)
    core = _core_shipping_every(INTERVAL_S)
    rows = [np.zeros((1, 4), np.float32)]

    async def run() -> None:
        shipper = asyncio.get_running_loop().create_task(Replica(core)._ship_forever())
        try:
            await until(lambda: monitor.shipped)
            assert [d for _, d in monitor.shipped] == [{}]  # hello, at once
            monitor.shipped.clear()
            await send_many(core, rows * 49)
            await asyncio.sleep(0.5)
            assert monitor.shipped == []  # under the limit: the interval decides
            sent = time.monotonic()
            await send_many(core, rows * 1, prefix="s")
            await until(lambda: monitor.shipped)
        finally:
            shipper.cancel()
        assert monitor.shipped, "the full recorder was not shipped early"
        shipped_at, delta = monitor.shipped[0]
        assert shipped_at - sent < INTERVAL_S / 10
        assert delta[1]["monitoring"]["rows"] == 50 and delta[1]["codes"] == {200: 50}
        assert core.recorder._observed_count == 0 and not core.stats_due.is_set()

    asyncio.run(run())


def test_accounting_in_steps_gives_the_loop_back_and_counts_what_one_pass_counts() -> None:
    """Two versions' observations accounted 128 at a time between other work on the loop
    add up to exactly what one pass over all of them gives."""
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(300)]
    batches[7][0, 2] = np.nan

    def observed() -> stats.StatsRecorder:
        core = make_core(reference_profile())
        asyncio.run(send_many(core, batches))
        recorder = core.take_stats()
        first = recorder._observed[1].part(0, 100)
        for index, request_id in enumerate(first.request_ids):
            recorder.observe(2, request_id, {name: column[index] for name, column in first.inputs.items()},
                             {name: column[index] for name, column in first.outputs.items()},
                             first.ages[index], first.routed[index])
        recorder.monitoring = {1: recorder.monitoring[1], 2: recorder.monitoring[1]}
        return recorder

    whole, stepped_recorder = observed().to_delta(), observed()
    turns = 0

    async def stepped() -> dict[int, Any]:
        nonlocal turns

        async def other_work() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        worker = asyncio.get_running_loop().create_task(other_work())
        await asyncio.sleep(0)
        try:
            return await stepped_recorder.to_delta_in_steps(step=128)
        finally:
            worker.cancel()

    steps = asyncio.run(stepped())
    assert turns >= 3  # 400 requests in steps of 128: the loop ran other work between them
    for version, rows in ((1, 300), (2, 100)):
        mine, theirs = steps[version]["monitoring"], whole[version]["monitoring"]
        assert mine["rows"] == theirs["rows"] == rows
        assert mine["missing_values"] == theirs["missing_values"] == 1  # request 7's NaN
        assert np.array_equal(mine["inputs"]["hist"], theirs["inputs"]["hist"])
        assert np.array_equal(mine["predictions"]["hist"], theirs["predictions"]["hist"])
        # Request 7's NaN answer is kept as no class (NaN) in both.
        np.testing.assert_array_equal([v for _, v in mine["feedback"]],
                                      [v for _, v in theirs["feedback"]])


def test_a_shipper_that_meets_an_unforeseen_error_ships_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup of the Monitor that raised (not "no such actor": a GCS failing over) ended
    the shipper for the replica's life; its statistics were never taken again and grew."""
    monitor = StandInMonitor()
    lookups: list[int] = []

    def lookup(*key: str) -> StandInMonitor:
        lookups.append(1)
        if len(lookups) == 1:
            raise RuntimeError("the GCS is failing over")
        return monitor

    monkeypatch.setattr(endpoint, "get_monitor", lookup)
    monkeypatch.setattr(endpoint, "LOOP_RESTART_S", 0.01)
    core = _core_shipping_every(0.05)
    rows = [np.zeros((1, 4), np.float32)]

    async def run() -> None:
        replica = Replica(core)
        replica._shipper = replica._follower = None
        monkeypatch.setattr(replica, "_follow_routes", asyncio.Event().wait, raising=False)
        replica._ensure_shipping()
        try:
            for attempt in range(400):
                await send_many(core, rows * 2, prefix=f"r{attempt}-")
                if monitor.shipped:
                    break
                await asyncio.sleep(0.01)
        finally:
            replica._shipper.cancel()
            replica._follower.cancel()
        assert len(lookups) >= 2 and monitor.shipped, "the shipper did not start again"

    asyncio.run(run())


def test_statistics_recorded_while_there_is_no_monitor_are_shipped_once_there_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipper took the recorder's statistics and then looked the Monitor up: where
    there was none (starting, or restarting) what it took was dropped, and with it the
    answers (and failures) of those seconds. Each interval's are kept apart, with the
    configuration they were recorded under and their age when sent, so the Monitor files
    them in their own seconds (test_monitor_backlog.py): one recorder holding the whole
    outage was shipped as the last second's, under the newest configuration."""
    monitor = StandInMonitor()
    found: list[StandInMonitor | None] = [None]
    monkeypatch.setattr(endpoint, "get_monitor", lambda *key: found[0])
    core = _core_shipping_every(0.05)
    config, backends, _ = core._state
    rows = [np.zeros((1, 4), np.float32)]

    async def run() -> None:
        shipper = asyncio.get_running_loop().create_task(Replica(core)._ship_forever())
        try:
            await send_many(core, rows * 30)
            await asyncio.sleep(0.5)  # ten intervals without a Monitor
            core.update(core.config.model_copy(update={"generation": config.generation + 1}),
                        backends)
            await asyncio.sleep(0.2)
            found[0] = monitor
            # Until the kept shipments have gone, the newest of them (saying no more follow)
            # and one taken after the change with them: they go one by one, each awaited,
            # so the rows alone can arrive first.
            for _ in range(1000):
                rows_shipped = sum(d[1]["monitoring"]["rows"] for _, d in monitor.shipped
                                   if 1 in d)
                if rows_shipped >= 30 and False in monitor.more and any(
                        served.generation == config.generation + 1
                        for served, _, _ in monitor.calls):
                    break
                await asyncio.sleep(0.01)
        finally:
            shipper.cancel()
        shipped = sum(d[1]["monitoring"]["rows"] for _, d in monitor.shipped if 1 in d)
        assert shipped == 30 and sum(d[1]["codes"].get(200, 0) for _, d in monitor.shipped
                                     if 1 in d) == 30
        kept = [call for call in monitor.calls if call[2] > 0.1]
        assert len(kept) >= 2, monitor.calls  # an interval each, not one recorder
        sequences = [sequence for _, sequence, _ in monitor.calls]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        ages = [age for _, _, age in monitor.calls]
        assert ages[0] >= 0.6 and ages == sorted(ages, reverse=True)  # oldest first
        # Each kept one but the newest says more follow: the Monitor counts the seconds
        # after it as not yet reached (test_monitor_backlog.py). (Counting the kept ones by
        # their age misses on a loaded host, where the newest may be late too.)
        burst = monitor.more.index(False)
        assert burst >= len(kept) - 1 >= 1 and not any(monitor.more[burst:]), monitor.more
        generations = [served.generation for served, _, _ in monitor.calls]
        first_requests = next(i for i, (_, d) in enumerate(monitor.shipped) if 1 in d)
        assert generations[first_requests] == config.generation  # recorded before the change
        assert generations[-1] == config.generation + 1

    asyncio.run(run())


def test_statistics_kept_for_an_absent_monitor_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """One recorder held a whole outage: a latency per request, without bound."""
    monkeypatch.setattr(endpoint, "UNSENT_LIMIT", 5)
    core = make_core(reference_profile())

    async def run() -> Replica:
        replica = Replica(core)
        for _ in range(12):
            await send_many(core, [np.zeros((1, 4), np.float32)])
            assert await replica._ship(core, None, "replica-1") == endpoint.Shipped.UNANSWERED
        return replica

    replica = asyncio.run(run())
    assert replica._unsent is not None and len(replica._unsent) == 5
    assert [sequence for sequence, *_ in replica._unsent] == [8, 9, 10, 11, 12]  # the newest
    assert replica._dropped == 7


def test_an_idle_replica_reports_and_says_goodbye_with_its_last_statistics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without traffic a replica still ships (empty) at its interval, so the Monitor can
    tell one that crashed from one that is idle; stopped by Serve, it ships what it
    recorded since with a goodbye, where the last second's statistics were lost before."""
    monitor = StandInMonitor()
    monkeypatch.setattr(endpoint, "get_monitor", lambda *key: monitor)
    core = _core_shipping_every(0.05)

    async def run() -> None:
        replica = Replica(core)
        replica._in_serve = True
        replica._shipper = asyncio.get_running_loop().create_task(replica._ship_forever())
        await until(lambda: len(monitor.shipped) >= 3)
        assert len(monitor.shipped) >= 3 and all(d == {} for _, d in monitor.shipped)
        await send_many(core, [np.zeros((1, 4), np.float32)] * 7)
        before = len(monitor.shipped)
        goodbye = replica.__del__()
        assert goodbye is not None
        await goodbye
        assert monitor.goodbyes == ["replica-1"] and replica._shipper.done()
        last = [d for _, d in monitor.shipped[before:] if d]
        assert sum(d[1]["codes"].get(200, 0) for d in last) == 7
        assert replica.__del__() is None  # once only, and never at garbage collection
        # A shipper that missed its cancellation ships nothing after the goodbye: the
        # Monitor would take it for a replica come back, then lost.
        shipped = len(monitor.shipped)
        assert await replica._ship(core, monitor, "replica-1") == endpoint.Shipped.SENT
        assert len(monitor.shipped) == shipped

    asyncio.run(run())
    outside = Replica(core)  # not a Serve replica: nothing to await, nothing shipped
    assert outside.__del__() is None


class SlowMonitor:
    """A real MonitorState behind a handle whose answers can be lost: ``plan`` says, per
    call, whether the Monitor takes the delta and whether the replica hears back."""

    def __init__(self, plan: list[tuple[bool, bool]]) -> None:
        from serving.monitoring.monitor import MonitorState

        self.state = MonitorState()
        self.plan = plan
        self.sequences: list[int | None] = []
        self.record = SimpleNamespace(remote=self._record)

    def _record(self, endpoint_name: str, replica: str, delta: dict[int, Any], served: Any,
                leaving: bool = False, sequence: int | None = None, age_s: float = 0.0,
                more: bool = False) -> Any:
        takes, answers = self.plan.pop(0) if self.plan else (True, True)
        self.sequences.append(sequence)
        answered: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        if takes:
            answered.set_result(self.state.record(endpoint_name, replica, delta, served,
                                                  leaving, sequence, age_s, more))
        if not answers:
            answered = concurrent.futures.Future()
            answered.set_exception(TimeoutError("the Monitor did not answer in time"))
        return SimpleNamespace(future=lambda: answered)


@pytest.mark.parametrize("took_it", [True, False], ids=["slow", "gone"])
def test_a_shipment_the_monitor_was_not_seen_to_take_is_sent_again_and_counted_once(
        monkeypatch: pytest.MonkeyPatch, took_it: bool) -> None:
    """A shipment whose answer did not come in time was dropped, and with it a second of
    the replica's answers and failures: the figures read low exactly while the Monitor was
    busiest. Sent again under its number, it is counted once whether the Monitor had taken
    it (slow) or not (gone)."""
    monitor = SlowMonitor([(True, True), (took_it, False)])
    core = make_core(reference_profile())
    rows = [np.zeros((1, 4), np.float32)]

    async def run() -> None:
        replica = Replica(core)
        sent, unanswered = endpoint.Shipped.SENT, endpoint.Shipped.UNANSWERED
        assert await replica._ship(core, monitor, "replica-1") == sent  # hello, nothing yet
        await send_many(core, rows * 7, prefix="a")
        assert await replica._ship(core, monitor, "replica-1") == unanswered
        await send_many(core, rows * 5, prefix="b")
        assert await replica._ship(core, monitor, "replica-1") == sent

    asyncio.run(run())
    assert monitor.sequences == [1, 2, 2, 3]  # the lost one again, before the next
    assert monitor.state.snapshot(core.config.endpoint, 60)[1].traffic.requests == 12


def test_a_slow_monitor_keeps_its_handle_and_a_dead_one_is_looked_up_again() -> None:
    """Any failed shipment made the replica look the Monitor up again: while the GCS
    restarts the lookup fails, and every replica stopped shipping at once (all silent)
    though the Monitor's handle still reached it."""
    from ray.exceptions import ActorDiedError

    class Failing:
        def __init__(self, error: Exception) -> None:
            def record(*args: Any, **kwargs: Any) -> Any:
                failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
                failed.set_exception(error)
                return SimpleNamespace(future=lambda: failed)

            self.record = SimpleNamespace(remote=record)

    core = make_core(reference_profile())

    async def run() -> list[endpoint.Shipped]:
        replica = Replica(core)
        return [await replica._ship(core, Failing(error), "replica-1")
                for error in (TimeoutError("slow"), ActorDiedError())]

    assert asyncio.run(run()) == [endpoint.Shipped.UNANSWERED, endpoint.Shipped.GONE]


def test_a_new_monitor_after_an_outage_gets_the_profiles_with_the_kept_shipments(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiles were attached as a shipment was taken, and the replica still took the
    killed Monitor to hold them: none of the kept shipments carried one, and the new
    Monitor, without it, judged none of their rows for drift."""
    first, second = StandInMonitor(), StandInMonitor()
    found: list[StandInMonitor | None] = [first]
    monkeypatch.setattr(endpoint, "get_monitor", lambda *key: found[0])
    core = _core_shipping_every(0.05)
    rows = [np.zeros((1, 4), np.float32)]

    def profiled(monitor: StandInMonitor) -> list[dict[int, Any]]:
        return [d for _, d in monitor.shipped if 1 in d and "profile" in d[1]]

    async def run() -> None:
        shipper = asyncio.get_running_loop().create_task(Replica(core)._ship_forever())
        try:
            await send_many(core, rows * 5, prefix="a")
            await until(lambda: profiled(first))
            found[0], first.dead = None, True  # killed; no Monitor for a while
            await asyncio.sleep(0.2)
            await send_many(core, rows * 7, prefix="b")
            await asyncio.sleep(0.2)
            found[0] = second  # `up` starts a new one
            await until(lambda: sum(d[1]["codes"].get(200, 0) for _, d in second.shipped
                                    if 1 in d) >= 7)
        finally:
            shipper.cancel()

    asyncio.run(run())
    assert len(profiled(first)) == 1  # once, to the first Monitor
    kept = [d for _, d in second.shipped if 1 in d]
    assert sum(d[1]["codes"].get(200, 0) for d in kept) == 7
    assert "profile" in kept[0][1] and kept[0][1]["monitoring"]["rows"] == 7


def test_kept_shipments_past_the_newest_minute_keep_their_counts_not_their_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint, "UNSENT_OBSERVED", 2)
    core = make_core(reference_profile())

    async def run() -> Replica:
        replica = Replica(core)
        for count in range(1, 6):
            await send_many(core, [np.zeros((1, 4), np.float32)] * count, prefix=f"{count}-")
            assert await replica._ship(core, None, "replica-1") == endpoint.Shipped.UNANSWERED
        return replica

    replica = asyncio.run(run())
    assert replica._unsent is not None
    parts = [delta[1] for _, delta, _, _ in replica._unsent]
    assert [part["codes"][200] for part in parts] == [1, 2, 3, 4, 5]  # every request counted
    assert ["monitoring" in part for part in parts] == [False, False, False, True, True]
    assert [part.get("unobserved_requests", 0) for part in parts] == [1, 2, 3, 0, 0]


def test_the_shipper_stops_when_cancelled_as_its_wait_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11's wait_for returns the awaited result where the cancellation arrives in
    the turn that result does, and the shipper shipped on for ever: a replica's after Serve
    stopped it, and a test whose event loop never closed (asyncio.run awaits its tasks)."""
    monitor = StandInMonitor()
    monkeypatch.setattr(endpoint, "get_monitor", lambda *key: monitor)
    core = _core_shipping_every(INTERVAL_S)

    async def run() -> None:
        shipper = asyncio.get_running_loop().create_task(Replica(core)._ship_forever())
        await until(lambda: len(monitor.calls) == 1)  # its first shipment, at once
        await asyncio.sleep(0.05)  # now waiting for the interval, or for a full recorder
        core.stats_due.set()  # the wait ends ...
        shipper.cancel()  # ... in the same turn as the cancellation
        done, _ = await asyncio.wait({shipper}, timeout=5)
        if not done:  # a second request lands: the test must not hang
            shipper.cancel()
        assert done and shipper.cancelled(), "the shipper went on after it was cancelled"

    asyncio.run(run())


def test_the_batcher_stops_when_cancelled_as_a_request_arrives() -> None:
    """The same for the dynamic batcher's worker, waiting for its batch to fill."""
    from serving.batcher import DynamicBatcher

    async def run() -> None:
        async def answer(items: list[int]) -> list[int]:
            return items

        batcher: DynamicBatcher[int, int] = DynamicBatcher(answer, max_batch_size=8,
                                                           max_wait_s=30)
        first = asyncio.ensure_future(batcher(1))
        await asyncio.sleep(0.05)  # the worker waits for more, up to max_wait_s
        worker = batcher._worker
        assert worker is not None and not worker.done()
        second = asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0)  # the second arrives: the worker's wait ends ...
        worker.cancel()  # ... in the same turn as the cancellation
        done, _ = await asyncio.wait({worker}, timeout=5)
        if not done:
            worker.cancel()
        for call in (first, second):
            call.cancel()
        assert done and worker.cancelled(), "the batcher's worker went on after it was cancelled"

    asyncio.run(run())
