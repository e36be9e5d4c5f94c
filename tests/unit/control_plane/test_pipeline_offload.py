"""Work a pipeline pass hands off (reading and checking data, scoring held-out rows, the
data trigger's digest): a read that hangs fails its own stage at its deadline and holds
no other pipeline. The hanging read is real: a named pipe that nobody writes to, which
blocks its reader in ``open`` as a stalled mount would."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from control_plane.deployments import Deployments
from control_plane.pipelines.data_sources import dataset_digest
from control_plane.pipelines.gates import ValidateDataStage
from control_plane.pipelines.offload import Done, Offload, Pending, WorkOverdue
from control_plane.pipelines.records import RunState, StageState
from control_plane.pipelines.service import Pipelines
from control_plane.pipelines.spec import parse_pipeline_spec
from control_plane.registry import Registry
from tests.unit.control_plane.conftest import ALICE
from tests.unit.control_plane.test_pipeline_runner import Clock, all_passing, spec_document
from tests.waiting import wait_for


class Monotonic:
    """The offload's clock, moved by the test: deadlines without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stalled(tmp_path: Path) -> Iterator[Path]:
    """A CSV path whose reader blocks until the test lets it go (then reads a header)."""
    fifo = tmp_path / "stalled.csv"
    os.mkfifo(fifo)
    yield fifo
    # Let every reader still blocked in open() go, so no thread outlives the test.
    for _ in range(8):
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader left
            return
        try:
            os.write(writer, b"a,b\n")
        except BrokenPipeError:  # that reader read nothing and left
            pass
        finally:
            os.close(writer)


def tick_within(pipelines: Pipelines, seconds: float = 60.0) -> None:
    """One pass, which must end: a pass held by a read is the bug these tests are about."""
    failures: list[BaseException] = []

    def tick() -> None:
        try:
            pipelines.tick()
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "a pipeline pass was held by a read that does not answer"
    assert not failures, failures


def test_work_is_started_once_and_its_result_or_error_kept_for_whoever_asks() -> None:
    offload, calls = Offload(), []
    release = threading.Event()

    def work() -> int:
        calls.append(1)
        release.wait(30)
        return 42

    first = offload.poll("k", work, deadline_s=60, what="work")
    assert isinstance(first, Pending) and first.started
    assert isinstance(offload.poll("k", work, deadline_s=60, what="work"), Pending)
    release.set()
    wait_for(lambda: offload.running == 0, 10, "the work to end")
    # Kept, not handed over once: a pass whose write failed finds it again.
    assert offload.poll("k", work, deadline_s=60, what="work") == Done(42)
    assert offload.poll("k", work, deadline_s=60, what="work") == Done(42)
    assert calls == [1]

    def broken() -> None:
        raise OSError("the bucket is gone")

    offload.poll("bad", broken, deadline_s=60, what="reading")
    wait_for(lambda: offload.running == 0, 10, "the work to end")
    for _ in range(2):
        with pytest.raises(OSError, match="the bucket is gone"):
            offload.poll("bad", broken, deadline_s=60, what="reading")


def test_work_that_met_passing_trouble_is_started_again_on_the_next_poll() -> None:
    """The store away for a moment while the work read it: kept, that error was raised on
    every pass until the stage's deadline, which then failed it as work that never ended."""
    from control_plane.errors import StoreUnavailableError
    from control_plane.pipelines.stages import PASSING_TROUBLE

    offload, calls = Offload(), []

    def champion() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise StoreUnavailableError("the store cannot be reached")
        return "v3"

    def poll() -> Any:
        return offload.poll("evaluate", champion, deadline_s=60, what="scoring",
                            again_after=PASSING_TROUBLE)

    poll()
    wait_for(lambda: offload.running == 0, 10, "the work to end")
    with pytest.raises(StoreUnavailableError):
        poll()
    assert isinstance(poll(), Pending)  # started anew
    wait_for(lambda: offload.running == 0, 10, "the work to end")
    assert poll() == Done("v3") and calls == [1, 1]


def test_work_that_hangs_is_given_up_at_its_deadline_and_threads_stay_bounded() -> None:
    clock, hang = Monotonic(), threading.Event()
    offload = Offload(max_threads=2, clock=clock)
    try:
        for key in ("a", "b"):
            assert offload.poll(key, hang.wait, deadline_s=30, what=f"reading {key}").started
        waiting = offload.poll("c", lambda: "c", deadline_s=30, what="reading c")
        assert isinstance(waiting, Pending) and not waiting.started
        assert "waiting for a free thread" in waiting.describe("reading c")
        clock.now += 30
        for _ in range(2):  # overdue stays overdue
            with pytest.raises(WorkOverdue, match="reading a did not finish within 30 s"):
                offload.poll("a", hang.wait, deadline_s=30, what="reading a")
        with pytest.raises(WorkOverdue, match="all 2 threads were busy"):
            offload.poll("c", lambda: "c", deadline_s=30, what="reading c")
        assert offload.running == 2  # a thread cannot be stopped: it keeps its slot
        assert not offload.poll("d", lambda: "d", deadline_s=30, what="reading d").started
    finally:
        hang.set()
    # A freed thread takes the waiting work itself (c was given up; d was still waiting).
    wait_for(lambda: offload.running == 0, 10, "the hung work to return, and d to run")
    assert offload.poll("d", lambda: "never called", deadline_s=30, what="reading d") == Done("d")


def test_a_source_that_hangs_holds_one_thread_however_often_it_is_asked_for() -> None:
    """A data trigger looks again every interval and a pipeline may run again: without a
    bound per source, each look on a hung mount took another thread until none was left."""
    clock, hang = Monotonic(), threading.Event()
    offload = Offload(max_threads=2, clock=clock)
    try:
        for look in range(5):
            key = ("digest", "bc", "nfs://stuck.csv", look)
            answer = offload.poll(key, hang.wait, deadline_s=30, what="reading nfs://stuck.csv",
                                  resource="nfs://stuck.csv")
            assert answer.started == (look == 0)
            clock.now += 30
            with pytest.raises(WorkOverdue) as overdue:
                offload.poll(key, hang.wait, deadline_s=30, what="reading nfs://stuck.csv",
                             resource="nfs://stuck.csv")
            if look:
                assert "an earlier piece of work on the same data" in str(overdue.value)
            assert offload.running == 1
        other = offload.poll("other", lambda: "fine", deadline_s=30, what="reading s3://ok.csv",
                             resource="s3://ok.csv")
        assert other.started  # the other thread is still to be had
    finally:
        hang.set()
    wait_for(lambda: offload.running == 0, 10, "the hung read to return")


def test_waiting_work_starts_oldest_first_whoever_looks_first() -> None:
    clock, hold_a, hold_b = Monotonic(), threading.Event(), threading.Event()
    offload = Offload(max_threads=1, clock=clock)
    try:
        assert offload.poll("a", hold_a.wait, deadline_s=600, what="a").started
        clock.now += 1
        assert not offload.poll("b", hold_b.wait, deadline_s=600, what="b").started
        clock.now += 1
        assert not offload.poll("c", lambda: "c", deadline_s=600, what="c").started
        hold_a.set()
        wait_for(lambda: offload.poll("b", hold_b.wait, deadline_s=600, what="b").started, 10,
                 "b, asked for first, to start")
        # c looked at more often changes nothing: b holds the one thread.
        assert not offload.poll("c", lambda: "c", deadline_s=600, what="c").started
    finally:
        hold_a.set()
        hold_b.set()
    wait_for(lambda: offload.running == 0, 10, "b and c to run")
    assert offload.poll("c", lambda: "c", deadline_s=600, what="c") == Done("c")


def test_work_nobody_looks_at_is_forgotten() -> None:
    clock = Monotonic()
    offload = Offload(clock=clock, forget_after_s=600)
    offload.poll("cancelled run", lambda: "old", deadline_s=10_000, what="reading")
    wait_for(lambda: offload.running == 0, 10, "the work to end")
    clock.now += 600
    answer = offload.poll("cancelled run", lambda: "new", deadline_s=10_000, what="reading")
    assert isinstance(answer, Pending)  # started afresh, not the result nobody took


def test_a_data_read_that_hangs_fails_its_stage_at_the_deadline_and_holds_no_other_pipeline(
        registry: Registry, stalled: Path) -> None:
    clock = Monotonic()
    offload = Offload(clock=clock)
    services = SimpleNamespace(registry=registry, artifacts=registry.artifacts,
                               deployments=Deployments(registry.db, registry, base_url="http://cp:8000"))
    stages: dict[str, Any] = all_passing(validate_data=ValidateDataStage(services, offload))
    pipelines = Pipelines(registry.db, stages, now=Clock(), offload=offload)
    pipelines.apply(parse_pipeline_spec(spec_document(
        name="st", deploy={"endpoint": "st"}, data={"uri": str(stalled), "timeout_s": 60})), ALICE)
    pipelines.apply(parse_pipeline_spec(spec_document(
        data={"uri": "sklearn://breast_cancer"})), ALICE)
    pipelines.start_run("st", ALICE)
    pipelines.start_run("bc", ALICE)

    def bc_ended() -> bool:
        tick_within(pipelines)
        return pipelines.run("bc").state.terminal

    wait_for(bc_ended, 120, "the other pipeline's run to end")
    run = pipelines.run("bc")
    assert run.state is RunState.SUCCEEDED, run.reason
    checked = next(s for s in run.stages if s.name == "validate_data")
    assert checked.outputs["rows"] == 569 and checked.progress == {}
    stalled_run = pipelines.run("st")
    reading = stalled_run.stages[0]
    assert stalled_run.state is RunState.RUNNING and reading.state is StageState.RUNNING
    assert reading.progress == {"offloaded": f"reading and checking {stalled}: under way"}
    clock.now += 60
    tick_within(pipelines)
    stalled_run = pipelines.run("st")
    assert stalled_run.state is RunState.FAILED
    assert f"WorkOverdue: reading and checking {stalled} did not finish within 60 s" in stalled_run.reason
    assert stalled_run.stages[0].progress == {}
    assert offload.running == 1  # the read itself is still blocked, on its own thread


def test_a_restarted_control_plane_does_not_grant_a_hung_read_a_new_deadline(
        registry: Registry, stalled: Path) -> None:
    services = SimpleNamespace(registry=registry, artifacts=registry.artifacts,
                               deployments=Deployments(registry.db, registry, base_url="http://cp:8000"))
    wall = Clock()

    def control_plane() -> tuple[Pipelines, Offload]:
        offload = Offload()
        stages: dict[str, Any] = all_passing(validate_data=ValidateDataStage(services, offload))
        return Pipelines(registry.db, stages, now=wall, offload=offload), offload

    first, _ = control_plane()
    first.apply(parse_pipeline_spec(spec_document(
        data={"uri": str(stalled), "timeout_s": 60})), ALICE)
    first.start_run("bc", ALICE)
    for _ in range(3):
        tick_within(first)
    assert first.run("bc").stages[0].state is StageState.RUNNING
    wall.now += timedelta(seconds=61)
    restarted, fresh = control_plane()  # it never asked for the read
    tick_within(restarted)
    run = restarted.run("bc")
    assert run.state is RunState.FAILED and "did not finish within 60 s" in run.reason
    assert fresh.running == 0  # nor started it again


def test_a_data_trigger_whose_read_hangs_says_so_and_holds_no_pass(db: Any, stalled: Path) -> None:
    clock, wall = Monotonic(), Clock()
    offload = Offload(clock=clock)
    pipelines = Pipelines(db, all_passing(), now=wall, digest=dataset_digest, offload=offload)
    pipelines.apply(parse_pipeline_spec(spec_document(
        triggers={"data_check_interval_s": 60},
        data={"uri": str(stalled), "timeout_s": 30})), ALICE)
    tick_within(pipelines)
    tick_within(pipelines)
    assert "data_check_error" not in pipelines.get("bc").triggers  # still under way
    pipelines.start_run("bc", ALICE)  # a person's run goes through meanwhile
    wait_for(lambda: (tick_within(pipelines), pipelines.run("bc").state.terminal)[1], 60,
             "the manual run to end")
    assert pipelines.run("bc").state is RunState.SUCCEEDED
    clock.now += 30
    tick_within(pipelines)
    error = pipelines.get("bc").triggers["data_check_error"]
    assert f"WorkOverdue: reading {stalled} did not finish within 30 s" in error
    # The next interval's look waits for the hung read rather than taking another thread.
    wall.now += timedelta(seconds=60)
    tick_within(pipelines)
    clock.now += 30
    tick_within(pipelines)
    error = pipelines.get("bc").triggers["data_check_error"]
    assert "an earlier piece of work on the same data" in error
    assert offload.running == 1


def test_a_poll_waits_a_moment_for_running_work_never_for_work_that_cannot_start() -> None:
    """Quick work is taken on the pass that asked for it; slow work costs that pass the
    wait, and work queued behind its resource costs it nothing."""
    offload = Offload()
    release = threading.Event()
    quick = offload.poll("quick", lambda: 7, deadline_s=60, what="quick", wait_s=5.0)
    assert quick == Done(7)
    slow = offload.poll("slow", lambda: release.wait(30), deadline_s=60, what="slow",
                        resource="api", wait_s=0.2)
    assert isinstance(slow, Pending) and slow.started
    queued = offload.poll("queued", lambda: 8, deadline_s=60, what="queued", resource="api",
                          wait_s=30.0)  # would hold this test for 30 s if it waited
    assert isinstance(queued, Pending) and not queued.started
    release.set()
    assert offload.poll("slow", lambda: None, deadline_s=60, what="slow", resource="api",
                        wait_s=5.0) == Done(True)
    assert wait_for(lambda: isinstance(offload.poll("queued", lambda: 8, deadline_s=60,
                                                    what="queued", resource="api"), Done),
                    10, "the queued work to run")


def test_work_writes_under_the_fence_of_the_pass_that_asked_for_it(db: Any) -> None:
    """A thread starts in a context of its own: work a pass handed off (a job's token
    minted, a rollout aborted) wrote unfenced, so a control plane that had lost the lead
    still wrote through it."""
    from control_plane.store.database import FencedOut, fenced_writes

    def another_leads(session: Any) -> None:
        raise FencedOut("another control plane holds the lease")

    def write() -> str:
        with db.session():
            return "written"

    offload = Offload()
    with fenced_writes(another_leads), pytest.raises(FencedOut):
        offload.poll("fenced", write, deadline_s=60, what="a write", wait_s=10.0)
    assert offload.poll("unfenced", write, deadline_s=60, what="a write", wait_s=10.0) == \
        Done("written")
    # Refused for another's lead is no answer kept: once this process leads again, the
    # same key runs the work anew (kept, it was raised on every pass for good).
    assert offload.poll("fenced", write, deadline_s=60, what="a write", wait_s=10.0) == \
        Done("written")
