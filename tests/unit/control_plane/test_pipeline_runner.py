"""The pipeline runner on a real store, with stages scripted by the test: order, stops,
resumption after a restart, cancellation, one run at a time, and the triggers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from control_plane.errors import ConflictError, WorkNotStoppedError
from control_plane.pipelines.cron import CronSchedule
from control_plane.pipelines.records import RunState, StageRecord, StageState, Trigger
from control_plane.pipelines.service import Pipelines
from control_plane.pipelines.spec import (
    STAGES,
    InvalidPipelineSpecError,
    PipelineSpec,
    data_mismatch,
    load_pipeline_spec,
    parse_pipeline_spec,
)
from control_plane.pipelines.stages import Outcome, StageContext
from control_plane.store import Database
from tests.unit.control_plane.conftest import ALICE, READER
from tests.unit.control_plane.together import meanwhile, selects_from
from tests.waiting import wait_for

EXAMPLES = Path(__file__).parents[3] / "examples"


def spec_document(**changes: Any) -> dict[str, Any]:
    """The breast cancer pipeline; a data section's uri is the job's data too."""
    job = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
    uri = (changes.get("data") or {}).get("uri")
    if uri is not None:
        job["data"] = ({"dataset": uri.removeprefix("sklearn://")} if uri.startswith("sklearn://")
                       else {"path": uri, "target": "target"})
    return {"name": "bc", "training": {"job": job}, "deploy": {"endpoint": "bc"}, **changes}


class Scripted:
    """A stage that answers with ``outcomes`` in turn (the last one repeats)."""

    def __init__(self, name: str, *outcomes: Outcome) -> None:
        self.name = name
        self.outcomes = list(outcomes) or [Outcome(StageState.PASSED, outputs={"by": name})]
        self.calls: list[StageContext] = []
        self.cancelled: list[StageContext] = []

    def advance(self, context: StageContext) -> Outcome:
        self.calls.append(context)
        return self.outcomes[min(len(self.calls), len(self.outcomes)) - 1]

    def cancel(self, context: StageContext) -> None:
        self.cancelled.append(context)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def runner(db: Database, stages: dict[str, Scripted], clock: Clock, **options: Any) -> Pipelines:
    return Pipelines(db, stages, now=clock, **options)


def all_passing(**overrides: Scripted) -> dict[str, Scripted]:
    return {name: overrides.get(name) or Scripted(name) for name in STAGES}


def tick_and_read(pipelines: Pipelines) -> None:
    """A pass, and another once the data reads it started off the pass have ended (their
    results are taken on the next pass)."""
    pipelines.tick()
    wait_for(lambda: pipelines._offload.running == 0, 30, "the pass's data reads")
    pipelines.tick()


def drive(pipelines: Pipelines, until: Callable[[], bool], passes: int = 40) -> None:
    for _ in range(passes):
        if until():
            return
        pipelines.tick()
    assert until(), "the run did not get there"


def test_a_run_passes_every_stage_in_order_and_keeps_their_outputs(db: Database) -> None:
    stages, clock = all_passing(), Clock()
    pipelines = runner(db, stages, clock)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    run = pipelines.start_run("bc", ALICE)
    assert run.number == 1 and run.state is RunState.PENDING
    pipelines.tick()  # stages that end at once follow each other in one pass, not one a loop
    done = pipelines.run("bc")
    assert done.state is RunState.SUCCEEDED
    assert all(len(stage.calls) == 1 for stage in stages.values())
    assert [s.name for s in done.stages] == list(STAGES)
    assert all(s.state is StageState.PASSED and s.outputs == {"by": s.name} for s in done.stages)
    assert all(s.started_at is not None and s.finished_at is not None for s in done.stages)
    # Each stage saw the ones before it finished.
    deploy_saw = stages["deploy"].calls[0].run.stages
    assert [s.state for s in deploy_saw[:-1]] == [StageState.PASSED] * (len(STAGES) - 1)


def test_a_failing_stage_stops_the_run_and_no_later_stage_runs(db: Database) -> None:
    failing = Scripted("evaluate", Outcome(StageState.FAILED, reason="candidate 0.91 < champion 0.95"))
    stages, clock = all_passing(evaluate=failing), Clock()
    pipelines = runner(db, stages, clock)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc").state.terminal)
    run = pipelines.run("bc")
    assert run.state is RunState.FAILED and "candidate 0.91 < champion 0.95" in run.reason
    states = {s.name: s.state for s in run.stages}
    assert states["evaluate"] is StageState.FAILED
    assert states["benchmark"] is states["approve"] is states["deploy"] is StageState.SKIPPED
    assert not stages["benchmark"].calls and not stages["deploy"].calls


def test_a_restarted_runner_resumes_the_stage_with_its_progress(db: Database) -> None:
    submitted: list[str] = []

    class Train(Scripted):
        def advance(self, context: StageContext) -> Outcome:
            self.calls.append(context)
            progress = context.record.progress
            if "job" not in progress:
                return Outcome(StageState.RUNNING, progress={"job": "j-1"})
            if progress["job"] not in submitted:
                submitted.append(progress["job"])
            if len(self.calls) < 6:
                return Outcome(StageState.RUNNING, outputs={"status": "RUNNING"})
            return Outcome(StageState.PASSED, outputs={"version": 2})

    clock = Clock()
    first = runner(db, all_passing(train=Train("train")), clock)
    first.apply(parse_pipeline_spec(spec_document()), ALICE)
    first.start_run("bc", ALICE)
    drive(first, lambda: bool(submitted))
    assert first.run("bc").current.name == "train"
    # A new control plane on the same store: the same job is followed, not submitted again.
    second_train = Train("train")
    second = runner(db, all_passing(train=second_train), clock)
    drive(second, lambda: second.run("bc").state.terminal)
    assert second.run("bc").state is RunState.SUCCEEDED and submitted == ["j-1"]
    assert second_train.calls[0].record.progress == {"job": "j-1"}


def test_cancel_stops_the_current_stage_and_a_cancelled_write_is_refused(db: Database) -> None:
    train = Scripted("train", Outcome(StageState.RUNNING, progress={"job": "j-9"}))
    stages, clock = all_passing(train=train), Clock()
    pipelines = runner(db, stages, clock)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc").stages[1].state is StageState.RUNNING)
    pipelines.tick()
    cancelled = pipelines.cancel("bc", ALICE, "wrong data")
    assert cancelled.state is RunState.CANCELLED and cancelled.reason == "wrong data"
    assert train.cancelled and train.cancelled[0].record.progress == {"job": "j-9"}
    assert {s.state for s in cancelled.stages[1:]} == {StageState.CANCELLED}
    pipelines.tick()  # nothing moves a cancelled run
    assert pipelines.run("bc").state is RunState.CANCELLED
    with pytest.raises(ConflictError, match="no run under way"):
        pipelines.cancel("bc", ALICE)


class SubmitsWhileCancelled(Scripted):
    """A train stage that submits a job while a deployer cancels the run through another
    control plane (``other``); its stop of the job fails while ``stop_fails``."""

    def __init__(self, other: Pipelines | None = None, *, stop_fails: bool = False) -> None:
        super().__init__("train", Outcome(StageState.RUNNING, progress={"job": "j-1"}))
        self.other, self.stop_fails = other, stop_fails

    def advance(self, context: StageContext) -> Outcome:
        if context.record.state is StageState.RUNNING and not self.calls:
            assert self.other is not None
            self.other.cancel("bc", ALICE, "wrong data")  # lands before the job is recorded
        return super().advance(context)

    def cancel(self, context: StageContext) -> None:
        if context.record.progress and self.stop_fails:
            raise RuntimeError("Ray's job API did not answer")
        super().cancel(context)


def cancelled_while_submitting(db: Database, train: SubmitsWhileCancelled) -> Pipelines:
    """The leader, after the pass in which ``train`` submitted its job and lost the race."""
    clock = Clock()
    leader = runner(db, all_passing(train=train), clock)
    train.other = runner(db, all_passing(), clock)
    leader.apply(parse_pipeline_spec(spec_document()), ALICE)
    leader.start_run("bc", ALICE)
    leader.tick()
    return leader


def test_work_a_stage_starts_while_another_control_plane_cancels_the_run_is_stopped(
        db: Database) -> None:
    """The leader's train stage submits a job while a deployer cancels the run through
    another control plane: the cancellation finds no job in the run's record (it is not
    written yet), and the leader's record of the job loses the race. The leader stops the
    job it started rather than leaving it to run for a cancelled run."""
    train = SubmitsWhileCancelled()
    leader = cancelled_while_submitting(db, train)
    run = leader.run("bc")
    assert run.state is RunState.CANCELLED and run.reason == "wrong data"
    assert [c.record.progress for c in train.cancelled] == [{"job": "j-1"}]
    leader.tick()
    assert len(train.calls) == 1 and leader.run("bc").state is RunState.CANCELLED


def test_work_started_while_the_run_was_cancelled_whose_stop_fails_is_owed(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, but the leader's stop of the job it started fails (Ray's job API away for
    a moment): it was only logged, and the job trained and registered for a cancelled run.
    The run now owes the stop, with the job it names, and the loop makes it."""
    from control_plane.pipelines import service

    monkeypatch.setattr(service, "STOP_RETRY_S", 0.0)  # the loop's next try comes at once
    train = SubmitsWhileCancelled(stop_fails=True)
    leader = cancelled_while_submitting(db, train)
    [owed] = [stage for stage in leader.run("bc").stages if stage.name == "train"]
    assert owed.stop_owed and owed.progress == {"job": "j-1"}
    train.stop_fails = False
    leader.tick()
    assert [c.record.progress for c in train.cancelled][-1] == {"job": "j-1"}
    [settled] = [stage for stage in leader.run("bc").stages if stage.name == "train"]
    assert not settled.stop_owed and leader.run("bc").state is RunState.CANCELLED


def test_a_cancel_through_another_control_plane_ends_the_run_cancelled_not_failed(
        db: Database) -> None:
    """A deployer cancels through a control plane that does not lead; the leader's pass
    finds the training job stopped while the cancellation is under way. The cancellation is
    stored before the job is stopped, so that pass finds the run over. (Stopped first, the
    pass took the stopped job for a failure: the run ended failed, failure was announced,
    and the deployer was told the pipeline had no run under way.)"""
    clock, stopped, told = Clock(), [], []

    class Job(Scripted):  # the leader's view of the job: running until it is stopped
        def advance(self, context: StageContext) -> Outcome:
            self.calls.append(context)
            if stopped:
                return Outcome(StageState.FAILED, reason="training job j-1 ended STOPPED")
            return Outcome(StageState.RUNNING, progress={"job": "j-1"})

    leader = runner(db, all_passing(train=Job("train")), clock,
                    listener=lambda run, kind, stage, reason: told.append(kind))

    class StopsTheJob(Scripted):
        def cancel(self, context: StageContext) -> None:
            super().cancel(context)
            stopped.append(context.record.progress["job"])
            leader.tick()  # the leader's pass, with the job stopped

    other = runner(db, all_passing(train=StopsTheJob("train")), clock)
    leader.apply(parse_pipeline_spec(spec_document()), ALICE)
    leader.start_run("bc", ALICE)
    drive(leader, lambda: leader.run("bc").stages[1].progress == {"job": "j-1"})
    cancelled = other.cancel("bc", ALICE, "wrong data")
    assert cancelled.state is RunState.CANCELLED and stopped == ["j-1"]
    run = leader.run("bc")
    assert run.state is RunState.CANCELLED and run.reason == "wrong data"
    assert "failed" not in told and "stage_failed" not in told


def test_a_cancel_that_cannot_stop_the_work_says_so_and_stays_cancelled(db: Database) -> None:
    class Unstoppable(Scripted):
        def cancel(self, context: StageContext) -> None:
            raise ConnectionError("Ray's job API did not answer")

    train = Unstoppable("train", Outcome(StageState.RUNNING, progress={"job": "j-4"}))
    pipelines = runner(db, all_passing(train=train), Clock())
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc").stages[1].progress == {"job": "j-4"})
    with pytest.raises(WorkNotStoppedError, match="is cancelled, but stopping") as raised:
        pipelines.cancel("bc", ALICE, "wrong data")
    assert "j-4" in raised.value.message and "modelplane train stop" in raised.value.message
    assert pipelines.run("bc").state is RunState.CANCELLED


def test_a_stop_owed_is_tried_again_however_many_runs_ended_after_it(db: Database) -> None:
    """The loop looked for owed stops among the newest 500 runs that ended in the last
    day: one owed by a run older than those (a pipeline a minute failing at its data) was
    never tried again, and a cancelled run's job or rollout went on."""
    from control_plane.store.models import PipelineRunRow

    class StopsOnceUp(Scripted):
        up = False

        def cancel(self, context: StageContext) -> None:
            self.cancelled.append(context)
            if not StopsOnceUp.up:
                raise ConnectionError("Ray's job API did not answer")

    train = StopsOnceUp("train", Outcome(StageState.RUNNING, progress={"job": "j-9"}))
    pipelines = runner(db, all_passing(train=train), Clock())
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    first = pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc").stages[1].progress == {"job": "j-9"})
    with pytest.raises(WorkNotStoppedError):
        pipelines.cancel("bc", ALICE, "wrong data")
    now = pipelines._now()
    with db.session() as session:  # 600 runs of another pipeline ended since
        session.add_all([PipelineRunRow(pipeline="nightly", number=n, state="failed",
                                        trigger="schedule", spec={}, stages=[],
                                        created_by="alice", finished_at=now)
                         for n in range(1, 601)])
    StopsOnceUp.up = True  # Ray's job API answers again
    pipelines._stop_retry_at.clear()  # and the pause between tries is over
    tried = len(train.cancelled)
    pipelines.tick()
    assert len(train.cancelled) == tried + 1
    assert not any(stage.stop_owed for stage in pipelines.run("bc", first.number).stages)


def test_a_stage_that_fails_owing_a_stop_has_its_work_stopped_by_the_loop(db: Database) -> None:
    """A training stage past its timeout while Ray's job API did not answer failed and left
    its job running: the job trained on, holding the cluster's workers, until its stall
    timeout found its revoked token."""
    train = Scripted("train", Outcome(StageState.RUNNING, progress={"job": "j-5"}),
                     Outcome(StageState.FAILED, reason="job API away past training.timeout_s",
                             stop_owed=True))
    pipelines = runner(db, all_passing(train=train), Clock())
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    run = pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc", run.number).state is RunState.FAILED)
    pipelines.tick()
    # Stopped by the pass that failed it (its owed stops are tried at the end), once.
    assert [context.record.progress for context in train.cancelled] == [{"job": "j-5"}]
    assert not any(stage.stop_owed for stage in pipelines.run("bc", run.number).stages)


def test_one_run_at_a_time_and_readers_cannot_start_one(db: Database) -> None:
    from control_plane.errors import PermissionDeniedError

    stages, clock = all_passing(train=Scripted("train", Outcome(StageState.RUNNING))), Clock()
    pipelines = runner(db, stages, clock)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("bc", ALICE)
    with pytest.raises(ConflictError, match="already running"):
        pipelines.start_run("bc", ALICE)
    with pytest.raises(PermissionDeniedError):
        pipelines.start_run("bc", READER)
    with pytest.raises(ConflictError, match="under way"):
        pipelines.delete("bc", ALICE)


def test_a_stage_that_raises_fails_the_run_with_the_error(db: Database) -> None:
    class Broken(Scripted):
        def advance(self, context: StageContext) -> Outcome:
            raise RuntimeError("Ray's job API is down")

    pipelines = runner(db, all_passing(train=Broken("train")), Clock())
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc").state.terminal)
    assert "RuntimeError: Ray's job API is down" in pipelines.run("bc").reason


def test_schedule_data_and_drift_triggers_start_runs_within_the_cool_down(
        db: Database, tmp_path: Path) -> None:
    digests = {"uri": "d1"}
    alerts: list[datetime] = []
    clock = Clock()
    pipelines = runner(db, all_passing(), clock, digest=lambda uri: digests["uri"],
                       drift_alerts=lambda endpoint, since: [t for t in alerts if t > since])
    triggers = {"schedule": "0 * * * *", "data_check_interval_s": 60, "on_drift_alert": True,
                "cooldown_s": 600}
    pipelines.apply(parse_pipeline_spec(spec_document(
        triggers=triggers, data={"uri": f"file://{tmp_path}/data.csv"})), ALICE)
    tick_and_read(pipelines)
    assert pipelines.get("bc").last_run is None  # first look: digest remembered, nothing due

    def finish() -> None:
        drive(pipelines, lambda: pipelines.run("bc").state.terminal)

    clock.now += timedelta(minutes=61)  # past 07:00
    tick_and_read(pipelines)
    assert pipelines.run("bc").trigger is Trigger.SCHEDULE
    finish()
    digests["uri"] = "d2"
    clock.now += timedelta(minutes=2)
    tick_and_read(pipelines)
    assert pipelines.run("bc").number == 1  # new data, but within the cool-down
    clock.now += timedelta(minutes=9)
    digests["uri"] = "d3"
    tick_and_read(pipelines)
    run = pipelines.run("bc")
    assert run.number == 2 and run.trigger is Trigger.DATA and run.trigger_detail["digest"] == "d3"
    finish()
    clock.now += timedelta(minutes=11)
    alerts.append(clock.now - timedelta(seconds=5))
    tick_and_read(pipelines)
    run = pipelines.run("bc")
    assert run.number == 3 and run.trigger is Trigger.ALERT
    finish()
    clock.now += timedelta(minutes=11)
    tick_and_read(pipelines)
    assert pipelines.run("bc").number == 3  # the same alert starts nothing twice


def test_new_data_seen_within_the_cool_down_starts_its_run_once_it_is_over(
        db: Database, tmp_path: Path) -> None:
    """The digest seen then was kept as seen: once the cool-down (or a run under way) was
    over, the data that came in it was never trained on."""
    digests = {"uri": "d1"}
    clock = Clock()
    pipelines = runner(db, all_passing(), clock, digest=lambda uri: digests["uri"])
    pipelines.apply(parse_pipeline_spec(spec_document(
        triggers={"data_check_interval_s": 60, "cooldown_s": 600},
        data={"uri": f"file://{tmp_path}/data.csv"})), ALICE)
    tick_and_read(pipelines)  # first look: d1 remembered
    digests["uri"] = "d2"
    clock.now += timedelta(minutes=2)
    tick_and_read(pipelines)
    run = pipelines.run("bc")
    assert run.number == 1 and run.trigger is Trigger.DATA
    drive(pipelines, lambda: pipelines.run("bc").state.terminal)
    digests["uri"] = "d3"  # within the cool-down, and then no more changes
    clock.now += timedelta(minutes=2)
    tick_and_read(pipelines)
    assert pipelines.run("bc").number == 1
    clock.now += timedelta(minutes=9)
    tick_and_read(pipelines)
    run = pipelines.run("bc")
    assert run.number == 2 and run.trigger is Trigger.DATA
    assert (run.trigger_detail["digest"], run.trigger_detail["previous"]) == ("d3", "d2")


def test_a_drift_alert_within_the_cool_down_starts_its_run_once_it_is_over(db: Database) -> None:
    """An alert fires once an episode: one seen in the cool-down (or while a run waited for
    approval) was used up, and the drift it told of was never trained away."""
    alerts: list[datetime] = []
    clock = Clock()
    pipelines = runner(db, all_passing(), clock,
                       drift_alerts=lambda endpoint, since: [t for t in alerts if t > since])
    pipelines.apply(parse_pipeline_spec(spec_document(
        triggers={"on_drift_alert": True, "cooldown_s": 600})), ALICE)
    tick_and_read(pipelines)
    clock.now += timedelta(seconds=30)
    alerts.append(clock.now - timedelta(seconds=1))
    tick_and_read(pipelines)
    assert pipelines.run("bc").number == 1
    drive(pipelines, lambda: pipelines.run("bc").state.terminal)
    clock.now += timedelta(minutes=2)
    alerts.append(clock.now - timedelta(seconds=1))  # within the cool-down, and no more
    tick_and_read(pipelines)
    assert pipelines.run("bc").number == 1
    clock.now += timedelta(minutes=9)
    tick_and_read(pipelines)
    run = pipelines.run("bc")
    assert run.number == 2 and run.trigger is Trigger.ALERT
    assert run.trigger_detail["fired_at"] == alerts[-1].isoformat()
    clock.now += timedelta(minutes=11)
    tick_and_read(pipelines)
    assert pipelines.run("bc").number == 2  # and once


def test_data_that_cannot_be_read_is_looked_at_once_an_interval_and_stops_no_trigger(
        db: Database) -> None:
    looks: list[datetime] = []
    alerts: list[datetime] = []
    clock = Clock()

    def unreachable(uri: str) -> str:
        looks.append(clock.now)
        raise OSError(f"cannot reach {uri}")

    pipelines = runner(db, all_passing(), clock, digest=unreachable,
                       drift_alerts=lambda endpoint, since: [t for t in alerts if t > since])
    pipelines.apply(parse_pipeline_spec(spec_document(
        triggers={"data_check_interval_s": 60, "on_drift_alert": True},
        data={"uri": "https://data.example/bc.csv"})), ALICE)
    for _ in range(30):  # thirty passes a second apart: one look
        tick_and_read(pipelines)
        clock.now += timedelta(seconds=1)
    assert len(looks) == 1
    assert "OSError: cannot reach" in pipelines.get("bc").triggers["data_check_error"]
    alerts.append(clock.now - timedelta(seconds=1))
    tick_and_read(pipelines)
    assert pipelines.run("bc").trigger is Trigger.ALERT  # the drift trigger still fires
    clock.now += timedelta(seconds=31)
    tick_and_read(pipelines)
    assert len(looks) == 2


def test_a_trigger_whose_run_could_not_be_stored_is_not_used_up(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule moved on in one transaction and the run was made in another: a store
    that failed (or a process that died) between them lost the 07:00 run for good."""
    from control_plane.errors import StoreUnavailableError

    clock = Clock()
    pipelines = runner(db, all_passing(), clock)
    pipelines.apply(parse_pipeline_spec(spec_document(triggers={"schedule": "0 * * * *"})), ALICE)
    pipelines.tick()  # the first look: the next 07:00 remembered
    clock.now += timedelta(minutes=61)
    start_run, failing = pipelines.start_run, [True]

    def store_blip(*args: Any, **kwargs: Any) -> Any:
        if failing[0]:
            raise StoreUnavailableError("the store cannot be reached")
        return start_run(*args, **kwargs)

    monkeypatch.setattr(pipelines, "start_run", store_blip)
    pipelines.tick()
    assert pipelines.get("bc").last_run is None
    failing[0] = False
    pipelines.tick()
    run = pipelines.run("bc")
    assert run.number == 1 and run.trigger is Trigger.SCHEDULE


def test_a_pipeline_whose_stored_spec_no_longer_reads_stops_no_other(db: Database) -> None:
    """After an upgrade one stored spec (or a run of it) fails validation: the others'
    triggers and runs go on (every spec was read in one list, before any run advanced)."""
    from sqlalchemy import text

    clock = Clock()
    pipelines = runner(db, all_passing(), clock)
    pipelines.apply(parse_pipeline_spec(spec_document(name="old", triggers={
        "schedule": "0 * * * *"})), ALICE)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("old", ALICE)
    pipelines.start_run("bc", ALICE)
    with db.session() as session:
        session.execute(text("UPDATE pipelines SET spec = '{\"name\": 5}' WHERE name = 'old'"))
        session.execute(text("UPDATE pipeline_runs SET stages = '[{\"name\": 5}]' "
                             "WHERE pipeline = 'old'"))
    drive(pipelines, lambda: pipelines.run("bc").state.terminal)
    assert pipelines.run("bc").state is RunState.SUCCEEDED


def test_a_run_whose_stages_a_newer_version_wrote_goes_on_and_can_be_cancelled(
        db: Database) -> None:
    """During an upgrade a newer control plane writes a field this one does not know into
    a run's stages: refused, the run was neither advanced nor cancellable (500), and its
    pipeline took no other run for good."""
    from sqlalchemy import select

    from control_plane.store.models import PipelineRunRow

    stages, clock = all_passing(train=Scripted("train", Outcome(StageState.RUNNING))), Clock()
    pipelines = runner(db, stages, clock)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("bc", ALICE)
    tick_and_read(pipelines)
    with db.session() as session:
        row = session.scalar(select(PipelineRunRow).where(PipelineRunRow.pipeline == "bc"))
        row.stages = [{**stage, "attempts_by_zone": {"a": 1}} for stage in row.stages]
    assert pipelines.run("bc").current.name == "train"
    calls = len(stages["train"].calls)
    pipelines.tick()
    assert len(stages["train"].calls) == calls + 1  # advanced as before
    cancelled = pipelines.cancel("bc", ALICE, "upgrade")
    assert cancelled.state is RunState.CANCELLED
    pipelines.start_run("bc", ALICE)  # the pipeline takes runs again


def test_spec_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidPipelineSpecError, match="deploy") as caught:
        parse_pipeline_spec({"name": "bc", "training": spec_document()["training"]})
    assert caught.value.detail["field"] == "deploy"
    with pytest.raises(InvalidPipelineSpecError, match="5 fields"):
        parse_pipeline_spec(spec_document(triggers={"schedule": "0 3 * *"}))
    with pytest.raises(InvalidPipelineSpecError, match="data section"):
        parse_pipeline_spec(spec_document(triggers={"data_check_interval_s": 60}))
    bad_job = spec_document()
    bad_job["training"]["job"]["hyperparameters"]["learning_rate"] = -1
    with pytest.raises(InvalidPipelineSpecError, match="learning_rate"):
        parse_pipeline_spec(bad_job)
    (tmp_path / "job.yaml").write_text((EXAMPLES / "breast_cancer.yaml").read_text())
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(
        {"name": "bc", "training": {"job": "job.yaml"}, "deploy": {"endpoint": "bc"}}))
    spec = load_pipeline_spec(tmp_path / "pipeline.yaml")
    assert spec.model_name == "breast-cancer" and spec.training.job["experiment"]["name"] == "breast-cancer"
    (tmp_path / "pipeline.yaml").write_text("name: [unclosed")
    with pytest.raises(InvalidPipelineSpecError, match="not valid YAML"):
        load_pipeline_spec(tmp_path / "pipeline.yaml")


def test_a_data_stage_that_would_check_other_data_than_the_job_reads_is_refused(
        db: Database, tmp_path: Path) -> None:
    """The stage's verdict, its digest and the data trigger stand for the training data:
    checking one file while the job trains on another would pass data nobody trained on."""
    from control_plane.errors import InvalidInputError
    from control_plane.pipelines.gates import ValidateDataStage

    pipelines = runner(db, all_passing(), Clock())
    other = spec_document(data={"uri": "sklearn://breast_cancer"})
    other["data"] = {"uri": str(tmp_path / "fresh.csv")}  # the job still reads the bundled set
    with pytest.raises(InvalidInputError, match="not the data the training job reads") as caught:
        pipelines.apply(parse_pipeline_spec(other), ALICE)
    assert caught.value.detail == {"field": "data.uri"}
    assert pipelines.list() == []
    # The same file by its file:// URL or an unnormalised path is the same data.
    (tmp_path / "fresh.csv").write_text("a,target\n1,x\n")
    for uri in (f"file://{tmp_path}/fresh.csv", f"{tmp_path}/./fresh.csv"):
        same = spec_document(data={"uri": str(tmp_path / "fresh.csv")})
        same["data"]["uri"] = uri
        pipelines.apply(parse_pipeline_spec(same), ALICE)
    # A spec stored before the rule: its data stage fails, saying why, before reading.
    stage = ValidateDataStage(services=None)
    run = SimpleNamespace(stages=[])
    context = StageContext(run=run, spec=PipelineSpec.model_validate(other),  # type: ignore[arg-type]
                           record=None, now=Clock().now)  # type: ignore[arg-type]
    outcome = stage.advance(context)
    assert outcome.state is StageState.FAILED
    assert "not the data the training job reads" in outcome.reason
    assert "modelplane pipeline apply" in outcome.reason


@pytest.mark.parametrize("case", ["bundled", "local", "stops-early"])
def test_held_out_rows_the_candidate_was_fitted_or_stopped_on_are_refused(
        db: Database, tmp_path: Path, case: str) -> None:
    """Scored on the rows it trained on, a candidate beats any champion's margin; scored on
    the rows early stopping chose its epoch on, it is judged in its own favour. Refused at
    apply, naming the field; a spec stored before the rule loads, and its run fails at its
    first stage, before hours are spent (and at evaluation, for one already training),
    saying why."""
    from control_plane.errors import InvalidInputError
    from control_plane.pipelines.gates import EvaluateStage, ValidateDataStage
    from control_plane.pipelines.stages import TrainStage

    rows = tmp_path / "rows.csv"
    rows.write_text("a,target\n1,0\n")
    document, field, says = {
        "bundled": (spec_document(evaluate={"data_uri": "sklearn://breast_cancer"}),
                    "evaluate.data_uri", "'sklearn://breast_cancer' is the data the training job trains on"),
        "local": (spec_document(data={"uri": str(rows)},
                                evaluate={"data_uri": f"file://{tmp_path}/./rows.csv"}),
                  "evaluate.data_uri", "rows it learned from"),
        "stops-early": (spec_document(data={"uri": "sklearn://breast_cancer"}, evaluate={}),
                        "training.job.data.test_split", "choosing its epoch on its validation rows"),
    }[case]
    if case == "stops-early":
        document["training"]["job"]["data"].pop("test_split", None)
    spec = parse_pipeline_spec(document)  # it parses: a stored one must load
    pipelines = runner(db, all_passing(), Clock())
    with pytest.raises(InvalidInputError, match=says) as caught:
        pipelines.apply(spec, ALICE)
    assert caught.value.detail == {"field": field} and pipelines.list() == []
    record = StageRecord(name="train")
    run = SimpleNamespace(stages=[StageRecord(name="validate_data"), record])
    context = StageContext(run=run, spec=spec, record=record, now=Clock().now)  # type: ignore[arg-type]
    stages = [TrainStage(services=None), EvaluateStage(services=None)]
    if spec.data is not None:  # the first stage says so, before the data is read
        stages.insert(0, ValidateDataStage(services=None))
    for stage in stages:
        outcome = stage.advance(context)
        assert outcome.state is StageState.FAILED and says in outcome.reason
        assert "modelplane pipeline apply" in outcome.reason


def test_rows_the_candidate_never_saw_are_accepted(db: Database, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("a,target\n1,0\n")
    pipelines = runner(db, all_passing(), Clock())
    other = spec_document(data={"uri": str(rows)}, evaluate={"data_uri": str(tmp_path / "held.csv")})
    assert pipelines.apply(parse_pipeline_spec(other), ALICE).spec["evaluate"]["data_uri"] \
        == str(tmp_path / "held.csv")
    assert spec_document()["training"]["job"]["data"]["test_split"] > 0  # the example's own
    tested = spec_document(data={"uri": "sklearn://breast_cancer"}, evaluate={})
    tested["training"]["job"]["data"]["test_split"] = 0.2
    pipelines.apply(parse_pipeline_spec({**tested, "name": "tested"}), ALICE)
    calm = spec_document(data={"uri": "sklearn://breast_cancer"}, evaluate={})
    calm["training"]["job"].pop("early_stopping")  # nothing chosen on the validation rows
    pipelines.apply(parse_pipeline_spec({**calm, "name": "calm"}), ALICE)
    assert [p.name for p in pipelines.list()] == ["bc", "calm", "tested"]


def test_local_data_paths_in_a_pipeline_file_are_relative_to_it(tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    job = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
    job["data"] = {"path": "rows.csv", "target": "target"}
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    (folder / "pipeline.yaml").write_text(yaml.safe_dump({
        "name": "bc", "training": {"job": "job.yaml"}, "deploy": {"endpoint": "bc"},
        "data": {"uri": "rows.csv"}, "evaluate": {"data_uri": "held/out.csv"}}))
    spec = load_pipeline_spec(folder / "pipeline.yaml")
    assert spec.data is not None and spec.evaluate is not None
    assert spec.data.uri == str(folder / "rows.csv") == spec.training.job["data"]["path"]
    assert spec.evaluate.data_uri == str(folder / "held" / "out.csv")
    assert data_mismatch(spec) is None


@pytest.mark.parametrize(("section", "uri", "said"), [
    ("data", "ssh://db-host/etc/app/creds.csv", "ssh:// is not a protocol pipelines read"),
    ("data", "simplecache::https://example.com/a.csv", "chains URLs"),
    ("data", "memory://shared/rows.csv", "memory:// is not"),
    ("evaluate", "ftp://internal/held-out.csv", "ftp:// is not"),
    ("job", "reference://refs.json", "reference:// is not"),
])
def test_the_control_plane_reads_pipeline_data_from_storage_urls_only(
        tmp_path: Path, section: str, uri: str, said: str) -> None:
    """Pipelines read their data in the control plane's process, with its credentials, for
    anyone with a deployer token: fsspec's other protocols and chained URLs reach further."""
    document = spec_document(data={"uri": "sklearn://breast_cancer"})
    if section == "data":
        document["data"] = {"uri": uri}
    elif section == "evaluate":
        document["evaluate"] = {"data_uri": uri}
    else:  # the evaluate stage reads the job's own held-out rows
        document["evaluate"] = {}
        document["training"]["job"]["data"] = {"path": uri, "target": "target"}
    with pytest.raises(InvalidPipelineSpecError, match=said):
        parse_pipeline_spec(document)
    from control_plane.errors import InvalidInputError
    from control_plane.pipelines.data_sources import load_dataset

    with pytest.raises(InvalidInputError, match=said):  # a spec stored before the rule
        load_dataset(uri)
    for fine in ("s3://bucket/rows.parquet", "https://example.com/a.csv", str(tmp_path / "a.csv"),
                 f"file://{tmp_path}/a.csv", "sklearn://wine"):
        parse_pipeline_spec(spec_document(data={"uri": fine}))


@pytest.mark.parametrize(("text", "after", "expected"), [
    ("0 3 * * *", "2026-11-30T06:00", "2026-12-01T03:00"),
    ("*/15 * * * *", "2026-11-30T06:07", "2026-11-30T06:15"),
    ("0 9 * * 1-5", "2026-12-04T10:00", "2026-12-07T09:00"),  # Friday → Monday
    ("30 2 1 * *", "2026-11-30T06:00", "2026-12-01T02:30"),
    ("0 0 29 2 *", "2026-03-01T00:00", "2028-02-29T00:00"),
    ("0 12 13 * 5", "2026-11-30T06:00", "2026-12-04T12:00"),  # either day field matches
])
def test_cron_next_times(text: str, after: str, expected: str) -> None:
    moment = datetime.fromisoformat(after).replace(tzinfo=UTC)
    assert CronSchedule.parse(text).next_after(moment) == datetime.fromisoformat(expected).replace(tzinfo=UTC)


@pytest.mark.parametrize("text", ["60 * * * *", "* * * * 8", "a * * * *", "*/0 * * * *", "5-1 * * * *"])
def test_bad_cron_fields_are_refused(text: str) -> None:
    with pytest.raises(Exception, match="schedule"):
        CronSchedule.parse(text)


@pytest.mark.parametrize("text", ["0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_a_schedule_on_a_day_that_never_comes_is_refused(db: Database, text: str) -> None:
    from control_plane.errors import InvalidInputError

    pipelines = runner(db, all_passing(), Clock())
    document = spec_document()
    document["triggers"] = {"schedule": text}
    with pytest.raises(InvalidInputError, match="never start a run") as refused:
        pipelines.apply(parse_pipeline_spec(document), ALICE)  # one stored before still reads
    assert refused.value.detail["field"] == "triggers.schedule"
    document["triggers"] = {"schedule": "0 0 31 1-12 *"}  # some months have the day
    assert pipelines.apply(parse_pipeline_spec(document), ALICE).name == "bc"


def test_every_run_event_reaches_the_listener_once(db: Database) -> None:
    events: list[tuple[int, str, str | None]] = []
    failing = Scripted("benchmark", Outcome(StageState.FAILED, reason="3x slower"))
    pipelines = runner(db, all_passing(benchmark=failing), Clock(),
                       listener=lambda run, kind, stage, reason: events.append((run.number, kind, stage)))
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc").state.terminal)
    for _ in range(3):
        pipelines.tick()  # nothing more to tell
    assert events == [(1, "started", None), (1, "stage_passed", "validate_data"),
                      (1, "stage_passed", "train"), (1, "stage_passed", "evaluate"),
                      (1, "stage_failed", "benchmark"), (1, "failed", "benchmark")]


def test_a_pipeline_s_author_cannot_approve_what_its_runs_register(registry: Any) -> None:
    """A run's job acts for whoever last applied the pipeline's training code and data:
    an approver who writes a pipeline cannot approve the version it trains (every run used
    to act as `pipeline:<name>`, a subject nobody approves as)."""
    from control_plane.auth import TokenService
    from control_plane.errors import PermissionDeniedError
    from control_plane.pipelines.stages import run_principal
    from control_plane.schemas import ApprovalCreate, Role, TokenCreate, VersionCreate
    from tests.onnx_models import linear_classifier, linear_classifier_manifest
    from tests.unit.control_plane.conftest import BOB

    pipelines = runner(registry.db, all_passing(), Clock())
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    assert pipelines.get("bc").author == "alice"
    changed = spec_document()
    changed["training"]["job"]["hyperparameters"]["epochs"] += 1  # bob's training now
    pipelines.apply(parse_pipeline_spec(changed), BOB)
    # Changing what does not make the model (a description, the gates, the rollout) does
    # not make one its author: the author of the training could then approve its model.
    changed["description"] = "described by alice"
    changed["deploy"]["endpoint"] = "bc-2"
    pipelines.apply(parse_pipeline_spec(changed), ALICE)
    run = pipelines.start_run("bc", ALICE)
    assert pipelines.get("bc").author == run.author == "bob"
    tokens = TokenService(registry.db)
    job_token = tokens.create(TokenCreate(name="bc-run-1", role=Role.TRAINER,
                                          expires_in_minutes=60), run_principal(run))
    job = tokens.authenticate(job_token.token)
    assert (job.role, job.subject) == (Role.TRAINER, "bob")
    info = registry.artifacts.put([linear_classifier(seed=1)])
    version = registry.register_version("bc", VersionCreate(
        artifact_digest=info.digest, manifest=linear_classifier_manifest()), job).version
    with pytest.raises(PermissionDeniedError, match="'bob' registered bc"):
        registry.approve("bc", version, ApprovalCreate(decision="approved"), BOB)


def test_pipelines_are_bounded_in_number(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pipeline's triggers are looked at every second: their number is bounded, and
    a spec replaced in place is not a new one."""
    import control_plane.pipelines.service as service

    monkeypatch.setattr(service, "MAX_PIPELINES", 2)
    pipelines = runner(db, all_passing(), Clock())
    for name in ("one", "two"):
        pipelines.apply(parse_pipeline_spec(spec_document(name=name)), ALICE)
    with pytest.raises(ConflictError, match="2 pipelines exist, at most 2") as refused:
        pipelines.apply(parse_pipeline_spec(spec_document(name="three")), ALICE)
    assert refused.value.detail == {"field": "name", "limit": 2}
    pipelines.apply(parse_pipeline_spec(spec_document(name="two", description="changed")), ALICE)
    pipelines.delete("one", ALICE)
    assert pipelines.apply(parse_pipeline_spec(spec_document(name="three")), ALICE).name == "three"


def test_a_pipeline_deleted_while_its_run_starts_leaves_no_run_behind(db: Database) -> None:
    """Another control plane deletes the pipeline as a trigger starts its run: the deletion
    waits and is refused (a run is under way), never a run whose pipeline is gone, still
    training and deploying while `runs` and `logs` answer 404."""
    clock = Clock()
    pipelines = runner(db, all_passing(), clock)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    other = Database(db.url, migrate=False)
    try:
        with meanwhile(db.engine, selects_from("pipelines"),
                       lambda: runner(other, all_passing(), clock).delete("bc", ALICE)) as deleted:
            started = pipelines.start_run("bc", ALICE)
    finally:
        other.dispose()
    assert isinstance(deleted[0], ConflictError) and "run under way" in str(deleted[0])
    assert pipelines.get("bc").name == "bc" and pipelines.run("bc").number == started.number


def test_a_trigger_read_before_its_pipeline_changed_leaves_the_new_spec_alone(db: Database) -> None:
    """The schedule changes from :00 to :30 while a pass reads the old spec: the old spec's
    next time (07:00) must not become the new one's (06:30), nor start a run."""
    clock = Clock()  # 06:00
    pipelines = runner(db, all_passing(), clock)
    pipelines.apply(parse_pipeline_spec(spec_document(triggers={"schedule": "0 * * * *"})), ALICE)
    other = Database(db.url, migrate=False)
    changed = parse_pipeline_spec(spec_document(triggers={"schedule": "30 * * * *"}))
    try:
        with meanwhile(db.engine, selects_from("pipelines"),
                       lambda: runner(other, all_passing(), clock).apply(changed, ALICE)) as applied:
            pipelines.tick()
    finally:
        other.dispose()
    assert not isinstance(applied[0], Exception), applied
    pipelines.tick()
    assert pipelines.get("bc").triggers["next_scheduled_at"] == "2026-11-30T06:30:00+00:00"
    clock.now += timedelta(minutes=31)
    pipelines.tick()
    assert pipelines.run("bc").trigger is Trigger.SCHEDULE


def test_a_cancel_does_not_wait_for_a_pass_held_up_by_the_job_api(db: Database) -> None:
    """The pass asks Ray's job API, which may take half a minute to fail; a cancel meanwhile
    was queued behind it (more than the CLI waits with two runs in training)."""
    import threading

    clock, entered, release = Clock(), threading.Event(), threading.Event()

    class SlowJobApi(Scripted):
        def advance(self, context: StageContext) -> Outcome:
            self.calls.append(context)
            if len(self.calls) > 1:  # the job was submitted; asking about it hangs
                entered.set()
                release.wait(30)
            return Outcome(StageState.RUNNING, progress={"job": "j-1"})

    train = SlowJobApi("train")
    pipelines = runner(db, all_passing(train=train), clock)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc").stages[1].progress == {"job": "j-1"})
    passing = threading.Thread(target=pipelines.tick)
    passing.start()
    try:
        assert entered.wait(10)
        cancelled = pipelines.cancel("bc", ALICE, "wrong data")  # while the pass waits
        assert cancelled.state is RunState.CANCELLED and passing.is_alive()
    finally:
        release.set()
        passing.join(30)
    assert not passing.is_alive()
    run = pipelines.run("bc")
    assert run.state is RunState.CANCELLED and run.reason == "wrong data"


def test_stages_are_timed_on_the_store_s_clock(db: Database,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage's start stored by one leader is held against its deadline by the next: on
    its own clock, minutes ahead, the next failed healthy jobs as overdue."""
    store_clock = Clock()
    monkeypatch.setattr(db, "now", store_clock)
    stages = all_passing()
    pipelines = Pipelines(db, stages)
    pipelines.apply(parse_pipeline_spec(spec_document()), ALICE)
    run = pipelines.start_run("bc", ALICE)
    drive(pipelines, lambda: pipelines.run("bc", run.number).state is RunState.SUCCEEDED)
    done = pipelines.run("bc", run.number)
    assert {stage.started_at for stage in done.stages if stage.started_at} == {store_clock.now}


def test_a_stage_finds_what_it_made_on_a_machine_whose_clock_runs_behind_the_store() -> None:
    """Its start is on the store's clock, a rollout's or a benchmark's on the machine's that
    made it: 5 s behind, the rollout read as made before the stage began, was not found
    after a crash, and a second one started. A record of an earlier run is not taken."""
    from control_plane.pipelines.records import StageRecord
    from control_plane.pipelines.stages import run_principal

    start = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    run = SimpleNamespace(pipeline="bc", number=2, author="alice")
    context = StageContext(run=run, spec=parse_pipeline_spec(spec_document()),  # type: ignore[arg-type]
                           record=StageRecord(name="deploy", state=StageState.RUNNING,
                                              started_at=start), now=start)
    me = run_principal(run).name  # type: ignore[arg-type]
    assert context.made_here(me, start - timedelta(seconds=5))
    assert not context.made_here(me, start - timedelta(minutes=10))  # the last run's
    assert not context.made_here("someone-else", start + timedelta(seconds=5))
