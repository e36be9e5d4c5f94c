"""Reads put in line (control_plane.read_gate): bounded in flight, shared, refused when busy.

The source here is what the Monitor actor is to its callers: one worker answering calls
one at a time, in turn (a one-thread executor), each call taking ``CALL_S``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest

from control_plane.errors import MonitorUnavailableError
from control_plane.read_gate import ReadGate

CALL_S = 0.05


def busy() -> MonitorUnavailableError:
    return MonitorUnavailableError("the source is busy")


def gate_of(slots: int, reuse_s: float) -> ReadGate:
    return ReadGate(slots, reuse_s, busy=busy)


class OneAtATime:
    """Answers calls in turn; counts them and the most ever queued at once."""

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1)
        self._lock = threading.Lock()
        self.calls: list[Any] = []
        self.queued = 0
        self.most_queued = 0
        self.release = threading.Event()
        self.release.set()

    def submit(self, what: Any, *, fail: bool = False) -> Future[Any]:
        with self._lock:
            self.queued += 1
            self.most_queued = max(self.most_queued, self.queued)

        def answer() -> Any:
            self.release.wait()
            time.sleep(CALL_S)
            with self._lock:
                self.calls.append(what)
                self.queued -= 1
            if fail:
                raise RuntimeError(f"{what} failed")
            return f"answer to {what}"

        return self._worker.submit(answer)

    def close(self) -> None:
        self.release.set()
        self._worker.shutdown(wait=True)


@pytest.fixture
def monitor() -> OneAtATime:
    answerer = OneAtATime()
    yield answerer
    answerer.close()


def _crowd(count: int, read: Any) -> tuple[list[Any], list[BaseException]]:
    answers: list[Any] = []
    refusals: list[BaseException] = []
    start = threading.Barrier(count)

    def one(n: int) -> None:
        start.wait()
        try:
            answers.append(read(n))
        except (MonitorUnavailableError, FutureTimeout) as error:
            refusals.append(error)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(answers) + len(refusals) == count  # a reader that died unseen fails here
    return answers, refusals


def test_the_same_read_asked_by_many_at_once_is_asked_once(monitor: OneAtATime) -> None:
    gate = gate_of(2, 60.0)  # (a long reuse: however late a thread starts, it shares)
    answers, refusals = _crowd(20, lambda n: gate.read(
        ("snapshot", "e", 60.0), lambda: monitor.submit("snapshot"), timeout=10))
    assert refusals == [] and answers == ["answer to snapshot"] * 20
    assert len(monitor.calls) == 1


def test_different_reads_keep_at_most_the_slots_queued_and_the_rest_are_refused_as_busy(
        monitor: OneAtATime) -> None:
    gate = gate_of(2, 1.0)
    monitor.release.clear()  # the Monitor is stuck: every read times out
    answers, refusals = _crowd(12, lambda n: gate.read(
        ("snapshot", "e", float(n)), lambda: monitor.submit(n), timeout=0.3))
    assert answers == [] and len(refusals) == 12
    busy = [r for r in refusals if isinstance(r, MonitorUnavailableError)]
    assert len(busy) == 10 and "busy" in busy[0].message
    # Their callers gave up, and still only two calls wait on the Monitor, not twelve.
    assert monitor.most_queued == 2


def test_slots_free_when_the_monitor_answers_even_after_their_callers_gave_up(
        monitor: OneAtATime) -> None:
    gate = gate_of(2, 0.0)
    monitor.release.clear()
    for n in range(2):
        with pytest.raises(FutureTimeout):
            gate.read(("history", n), lambda n=n: monitor.submit(n), timeout=0.05)
    with pytest.raises(MonitorUnavailableError, match="busy"):
        gate.read(("history", 2), lambda: monitor.submit(2), timeout=0.05)
    monitor.release.set()
    assert gate.read(("history", 3), lambda: monitor.submit(3), timeout=10) == "answer to 3"
    assert monitor.calls == [0, 1, 3]


def test_an_answer_is_shared_for_its_reuse_time_and_a_failure_is_not_shared(
        monitor: OneAtATime) -> None:
    now = [0.0]
    gate = ReadGate(2, 1.0, busy=busy, clock=lambda: now[0])
    key = ("totals",)
    assert gate.read(key, lambda: monitor.submit("first"), timeout=10) == "answer to first"
    now[0] = 0.9
    assert gate.read(key, lambda: monitor.submit("second"), timeout=10) == "answer to first"
    now[0] = 1.0
    assert gate.read(key, lambda: monitor.submit("third"), timeout=10) == "answer to third"
    failing = ("snapshot", "broken")
    with pytest.raises(RuntimeError, match="fourth failed"):
        gate.read(failing, lambda: monitor.submit("fourth", fail=True), timeout=10)
    assert gate.read(failing, lambda: monitor.submit("fifth"), timeout=10) == "answer to fifth"
    assert monitor.calls == ["first", "third", "fourth", "fifth"]


def test_a_read_that_cannot_be_made_gives_its_slot_back(monitor: OneAtATime) -> None:
    gate = gate_of(1, 1.0)

    def gone() -> Future[Any]:
        raise MonitorUnavailableError("the Monitor is not running")

    for _ in range(3):
        with pytest.raises(MonitorUnavailableError, match="not running"):
            gate.read(("totals",), gone, timeout=0.1)
    assert gate.read(("totals",), lambda: monitor.submit("back"), timeout=10) == "answer to back"


def test_a_blocking_fetch_asked_by_many_runs_once_in_the_first_asker_s_thread() -> None:
    gate = gate_of(1, 5.0)
    fetched: list[str] = []

    def fetch() -> str:
        fetched.append("fetched")
        time.sleep(0.2)
        return "a whole job log"

    answers, refusals = _crowd(10, lambda n: gate.call(("logs", "job-1"), fetch, timeout=10))
    assert refusals == [] and answers == ["a whole job log"] * 10
    assert fetched == ["fetched"]

    def failing() -> str:
        raise RuntimeError("the job API is down")

    with pytest.raises(RuntimeError, match="down"):
        gate.call(("logs", "job-2"), failing, timeout=1)
    assert gate.call(("logs", "job-2"), lambda: "back", timeout=1) == "back"  # not shared


def test_a_scrape_amid_many_reads_gets_the_last_totals_not_a_monitor_reported_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`/metrics` reported `modelplane_monitor_up 0` whenever the API's reads were in line."""
    from control_plane import observability
    from control_plane.errors import MonitorBusyError

    answers: list[Any] = [MonitorBusyError("busy"), ["totals-1"], MonitorBusyError("busy"),
                          MonitorUnavailableError("gone"), MonitorBusyError("busy"),
                          ["totals-2"], MonitorBusyError("busy")]

    def ask(method: str, *args: Any) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(observability, "_ray_ready", lambda: True)
    monkeypatch.setattr(observability, "_ask_for_api", ask)
    monkeypatch.setattr(observability, "_last_totals", None)
    with pytest.raises(MonitorBusyError):  # nothing to fall back on yet
        observability.monitor_totals()
    assert observability.monitor_totals() == ["totals-1"]
    assert observability.monitor_totals() == ["totals-1"]  # busy: the last totals
    with pytest.raises(MonitorUnavailableError):  # gone is still gone
        observability.monitor_totals()
    with pytest.raises(MonitorBusyError):  # and what it said before it went is forgotten
        observability.monitor_totals()
    assert observability.monitor_totals() == ["totals-2"]
    monkeypatch.setattr(observability, "TOTALS_FRESH_S", -1.0)
    with pytest.raises(MonitorBusyError):  # too old to stand in
        observability.monitor_totals()
