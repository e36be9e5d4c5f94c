"""Pipelines and their runs: stored, started, advanced stage by stage, cancelled.

:meth:`Pipelines.tick` is the loop's one pass: it looks at each pipeline's triggers, then
advances every active run by one pass of its current stage. A run's row carries a
revision, so a write that lost a race (a cancel meanwhile, a second control plane) is
refused by the store and the pass starts again from what is stored. A stage's action
happens outside the transaction that records it; stages keep enough in ``progress`` to
find that action again after a crash (see :mod:`control_plane.pipelines.stages`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from control_plane.auth import Principal
from control_plane.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    WorkNotStoppedError,
)
from control_plane.pipelines.cron import CronSchedule
from control_plane.pipelines.offload import Offload, Pending
from control_plane.pipelines.records import (
    ACTIVE_RUN_STATES,
    PipelineOut,
    PipelineRunOut,
    RunState,
    StageRecord,
    StageState,
    Trigger,
    fresh_stages,
    stored_stage,
)
from control_plane.pipelines.spec import PipelineSpec, spec_problem
from control_plane.pipelines.stages import PASSING_TROUBLE, Outcome, Stage, StageContext
from control_plane.schemas import Role
from control_plane.stamps import parse_stamp
from control_plane.store import Database
from control_plane.store.database import FencedOut
from control_plane.store.models import PipelineRow, PipelineRunRow

STOP_RETRY_S = 30.0  # a stop owed by an ended run's stage is tried again this often
# A stop owed runs off the pass; the pass that starts it waits that long for it, and one
# not done within STOP_DEADLINE_S (a job API whose every call takes its whole deadline)
# counts as failed.
STOP_WAIT_S = 1.0
STOP_DEADLINE_S = 150.0

log = logging.getLogger(__name__)


def _model_making(document: dict[str, Any]) -> tuple[Any, Any]:
    """What of a stored spec makes the model (its data and its training): whoever changes
    it is the author of what the runs register, and may not approve it."""
    return document.get("data"), document.get("training")

# (run, kind, stage, reason): what happened to a run, for notifications.
RunListener = Callable[[PipelineRunOut, str, str | None, str], None]
DigestSource = Callable[[str], str]
DriftAlerts = Callable[[str, datetime], list[datetime]]
MAX_PIPELINES = 500


class Pipelines:
    def __init__(self, db: Database, stages: Mapping[str, Stage], *,
                 now: Callable[[], datetime] | None = None,
                 listener: RunListener | None = None, digest: DigestSource | None = None,
                 drift_alerts: DriftAlerts | None = None, offload: Offload | None = None) -> None:
        self.db = db
        self.stages = dict(stages)
        # The store's clock by default: a stage's start stored by one leader is judged
        # against its deadline by the next, whose own clock may be minutes off.
        self._now = now or db.now
        self._listener = listener
        self._digest = digest
        self._drift_alerts = drift_alerts
        # The data's digest is read off the pass: a read that hangs holds no pipeline.
        self._offload = offload or Offload()
        # The owed stops of stages without an offload of their own (a rollout's abort): not
        # on the data reads' threads, which reads that hang may hold.
        self._stops = Offload(max_threads=2)
        self._lock = threading.Lock()  # one pass at a time in this process
        self._stop_retry_at: dict[tuple[int, str], float] = {}  # (run id, stage): monotonic
        self._stopping: set[tuple[int, str]] = set()  # owed stops under way off the pass

    # ------------------------------------------------------------ pipelines

    def apply(self, spec: PipelineSpec, actor: Principal) -> PipelineOut:
        """Create the pipeline or replace its spec (runs under way keep the spec they began with)."""
        actor.require(Role.DEPLOYER)
        _refuse_credentials(spec)
        _refuse_outside_roots(spec)
        problem = spec_problem(spec)
        if problem is not None:
            raise InvalidInputError(problem[1], detail={"field": problem[0]})
        now = self._now()
        if spec.triggers.schedule and CronSchedule.parse(spec.triggers.schedule).next_after(now) is None:
            # Checked here, not where a stored spec is read: one stored before the rule
            # must still load (its runs, its other triggers).
            raise InvalidInputError(
                f"schedule {spec.triggers.schedule!r} names no day that exists (for example "
                "30 February): it would never start a run",
                detail={"field": "triggers.schedule"})
        with self.db.session() as session:
            row = session.scalar(select(PipelineRow).where(PipelineRow.name == spec.name))
            document = spec.model_dump(mode="json")
            if row is None:
                held = session.scalar(select(func.count(PipelineRow.id))) or 0
                if held >= MAX_PIPELINES:  # every pipeline's triggers are looked at every second
                    raise ConflictError(
                        f"{held} pipelines exist, at most {MAX_PIPELINES}; delete some "
                        "(modelplane pipeline delete NAME)",
                        detail={"field": "name", "limit": MAX_PIPELINES})
                row = PipelineRow(name=spec.name, spec=document, state={}, created_by=actor.name,
                                  author_subject=actor.subject, created_at=now, updated_at=now)
                session.add(row)
            elif row.spec != document:
                if _model_making(row.spec) != _model_making(document):
                    row.author_subject = actor.subject
                row.spec, row.updated_at = document, now
                # A changed schedule or data watch starts counting afresh.
                row.state = {k: v for k, v in (row.state or {}).items() if k == "last_started_at"}
            elif row.author_subject is None:  # a pipeline from before authors were kept
                row.author_subject = actor.subject
            session.flush()
            return self._pipeline_out(session, row)

    def get(self, name: str) -> PipelineOut:
        with self.db.session(readonly=True) as session:
            return self._pipeline_out(session, self._row(session, name))

    def list(self) -> list[PipelineOut]:
        with self.db.session(readonly=True) as session:
            rows = session.scalars(select(PipelineRow).order_by(PipelineRow.name)).all()
            return [self._pipeline_out(session, row) for row in rows]

    def delete(self, name: str, actor: Principal) -> None:
        actor.require(Role.DEPLOYER)
        with self.db.session() as session:
            # Locked, as a run's start locks it: a run starting now is seen here (refused),
            # or starts after the pipeline is gone (not found), never orphaned.
            row = self._row(session, name, for_update=True)
            if self._active(session, name) is not None:
                raise ConflictError(f"pipeline {name!r} has a run under way; cancel it first "
                                    f"(`modelplane pipeline cancel {name}`)", detail={"field": "name"})
            session.delete(row)

    # ------------------------------------------------------------ runs

    def start_run(self, name: str, actor: Principal, *, trigger: Trigger = Trigger.MANUAL,
                  detail: dict[str, Any] | None = None,
                  trigger_state: dict[str, Any] | None = None,
                  spec_seen: dict[str, Any] | None = None) -> PipelineRunOut:
        """A new run of ``name`` (pending); refused while another run of it is under way.

        ``trigger_state`` (what a trigger has seen: the next schedule, the data's digest,
        the alerts read) is stored with the run, in its transaction: a trigger is used up
        exactly when its run exists. ``spec_seen``: the spec the trigger read; a pipeline
        changed since is not started (its new spec's triggers decide)."""
        actor.require(Role.DEPLOYER)
        now = self._now()
        with self.db.session() as session:
            pipeline = self._row(session, name, for_update=True)
            if spec_seen is not None and pipeline.spec != spec_seen:
                raise ConflictError(f"pipeline {name!r} changed while its triggers were read",
                                    detail={"field": "spec"})
            active = self._active(session, name)
            if active is not None:
                raise ConflictError(
                    f"pipeline {name!r} is already running (run #{active.number}); wait for it "
                    f"or cancel it (`modelplane pipeline cancel {name}`)", detail={"field": "name"})
            number = (session.scalar(select(func.max(PipelineRunRow.number)).where(
                PipelineRunRow.pipeline == name)) or 0) + 1
            row = PipelineRunRow(
                pipeline=name, number=number, state=RunState.PENDING.value, trigger=trigger.value,
                trigger_detail=detail or {}, spec=pipeline.spec, stages=fresh_stages(),
                reason="", created_by=actor.name, author_subject=pipeline.author_subject,
                created_at=now, updated_at=now)
            session.add(row)
            pipeline.state = {**(pipeline.state or {}), **(trigger_state or {}),
                              "last_started_at": now.isoformat()}
            session.flush()
            run = _run_out(row)
        self._tell(run, "started", None, f"{trigger.value} trigger" + (
            f": {detail['reason']}" if detail and detail.get("reason") else ""))
        return run

    def run(self, name: str, number: int | None = None) -> PipelineRunOut:
        """Run ``number`` of ``name``, or its latest."""
        with self.db.session(readonly=True) as session:
            self._row(session, name)
            query = select(PipelineRunRow).where(PipelineRunRow.pipeline == name)
            if number is not None:
                query = query.where(PipelineRunRow.number == number)
            row = session.scalar(query.order_by(PipelineRunRow.number.desc()).limit(1))
            if row is None:
                raise NotFoundError(f"pipeline {name!r} has no run" + (
                    f" #{number}" if number is not None else " yet") +
                    "; start one with `modelplane pipeline run`", detail={"field": "number"})
            return _run_out(row)

    def runs(self, name: str, *, limit: int = 50) -> list[PipelineRunOut]:
        with self.db.session(readonly=True) as session:
            self._row(session, name)
            rows = session.scalars(select(PipelineRunRow).where(PipelineRunRow.pipeline == name)
                                   .order_by(PipelineRunRow.number.desc()).limit(limit)).all()
            return [_run_out(row) for row in rows]

    def logs(self, name: str, number: int | None = None) -> str:
        """A run's stages with their reasons, then what each stage can show of its own
        work (the training job's output)."""
        run = self.run(name, number)
        lines = [f"pipeline {run.pipeline} run #{run.number}: {run.state.value}"
                 + (f" ({run.reason})" if run.reason else "")]
        for stage in run.stages:
            lines.append(f"  {stage.name:<14} {stage.state.value:<9} {stage.reason}".rstrip())
        for stage in run.stages:
            show = getattr(self.stages.get(stage.name), "logs", None)
            if show is not None and stage.state is not StageState.PENDING:
                try:
                    text = show(stage)
                except Exception as error:  # the logs are a courtesy: say why they are missing
                    text = f"(cannot read them: {getattr(error, 'message', error)})"
                if text:
                    lines += ["", f"--- {stage.name} ---", text.rstrip()]
        return "\n".join(lines) + "\n"

    def cancel(self, name: str, actor: Principal, reason: str = "") -> PipelineRunOut:
        """Cancel the run under way, then stop its stage's work (a job, a rollout).

        The cancellation is stored first: stopped first, the work was seen stopped by the
        loop's pass on the leading control plane, which ended the run failed (and said so)
        before this could end it cancelled. Work the pass starts meanwhile is stopped by the
        pass itself, whose record of it loses to this (``_stop_orphaned_work``).

        It does not wait for this process's pass (which may be a moment on a stage's
        work), and the run's revision orders the two writes anyway, as it does a cancel
        through another control plane."""
        actor.require(Role.DEPLOYER)
        for _ in range(5):
            with self.db.session(readonly=True) as session:
                active = self._active(session, name)
                if active is None:
                    raise ConflictError(f"pipeline {name!r} has no run under way",
                                        detail={"field": "name"})
                run = _loaded(active)
            why = reason or f"cancelled by {actor.name}"
            try:
                # Owed in the same write: a process killed before the stop below is
                # made, or a stop that fails, leaves it to the control loop.
                cancelled = self._finish(run, RunState.CANCELLED, why,
                                         stage_state=StageState.CANCELLED,
                                         owe_stop=self._working(run.out.current))
            except StaleDataError:
                continue  # the loop moved it meanwhile: look again
            self._stop_work(run, cancelled)
            return cancelled
        raise ConflictError(f"pipeline {name!r} kept changing; try again", detail={"field": "name"})

    def _stopped(self, stage: Any, run: LoadedRun, current: StageRecord) -> str | None:
        """Stop the work of a stage that raised, before its run is failed: a failed run
        whose rollout went on could still promote its candidate. None where it could not
        be stopped (it is then owed: :meth:`_stop_owed_work`)."""
        try:
            stage.cancel(self._context(run, current))
        except Exception:
            log.exception("stopping the work of stage %s of %s#%d failed; the control loop "
                          "tries again", current.name, run.out.pipeline, run.out.number)
            return None
        return "its work was stopped"

    def _working(self, record: StageRecord | None) -> bool:
        """Whether ``record``'s stage may have work under way that a stop must end."""
        return record is not None and record.state is StageState.RUNNING and \
            record.name in self.stages

    def _settle_stop(self, run_id: int, stage: str) -> None:
        """The work of ``stage`` of a run that ended is stopped: nothing is owed."""
        with self.db.session() as session:
            row = session.get(PipelineRunRow, run_id, with_for_update=True)
            if row is not None and any(s.get("stop_owed") for s in row.stages):
                row.stages = [{**s, "stop_owed": False} if s["name"] == stage else s
                              for s in row.stages]

    def _stop_owed_work(self) -> None:
        """Stop the work that runs ended in the last day still owe a stop (a process killed
        between a cancel's write and its stop, a stop that failed), each at most every
        STOP_RETRY_S: left, a cancelled run's rollout went on to 100%."""
        now, clock = self._now(), time.monotonic()
        with self.db.session(readonly=True) as session:
            rows = session.scalars(select(PipelineRunRow).where(
                PipelineRunRow.owes_stop.is_(True),
                PipelineRunRow.state.in_((RunState.CANCELLED.value, RunState.FAILED.value)),
                PipelineRunRow.finished_at >= now - timedelta(days=1))
                .order_by(PipelineRunRow.id.desc())).all()
            owed = []
            for row in rows:
                if not any(stage.get("stop_owed") for stage in row.stages):
                    continue
                try:
                    run = _loaded(row)
                except Exception:  # a row an older version wrote: it alone is left
                    log.exception("pipeline run %s#%d cannot be read", row.pipeline, row.number)
                    continue
                owed += [(run, stage["name"]) for stage in row.stages if stage.get("stop_owed")]
        self._stopping &= {(run.out.id, name) for run, name in owed}  # less those settled elsewhere
        for run, name in owed:
            key = (run.out.id, name)
            if self._stop_retry_at.get(key, 0.0) > clock or name not in self.stages:
                continue
            record, stage = next(s for s in run.out.stages if s.name == name), self.stages[name]
            first = key not in self._stopping
            self._stopping.add(key)
            try:
                # Off the pass, as a stage's other calls to the outside are: a job API that
                # never answers held every pipeline's pass, every STOP_RETRY_S, for a day.
                answer = (getattr(stage, "job_api", None) or self._stops).poll(
                    ("stop", *key), functools.partial(stage.cancel, self._context(run, record)),
                    deadline_s=STOP_DEADLINE_S, once=True,
                    resource=getattr(stage, "stop_resource", ("stop", name)),
                    what=f"stopping the {name} stage's work of {run.out.pipeline}#{run.out.number}",
                    wait_s=STOP_WAIT_S if first else 0.0)
                if isinstance(answer, Pending):
                    continue
                self._stopping.discard(key)
                self._settle_stop(run.out.id, name)
            except FencedOut:
                self._stopping.discard(key)  # asked anew once this process leads again
                raise
            except Exception as error:
                self._stopping.discard(key)
                self._stop_retry_at[key] = clock + STOP_RETRY_S
                log.warning("run %s#%d ended, but its %s stage's work could not be stopped yet "
                            "(%s); trying again in %g s", run.out.pipeline, run.out.number,
                            name, getattr(error, "message", None) or error, STOP_RETRY_S)
            else:
                self._stop_retry_at.pop(key, None)
                log.info("run %s#%d: its %s stage's work is stopped", run.out.pipeline,
                         run.out.number, name)

    def _stop_work(self, run: LoadedRun, cancelled: PipelineRunOut) -> None:
        """Stop what the cancelled ``run``'s running stage was doing. Where that fails, the
        run stays cancelled and the caller is told what still runs and how to stop it."""
        current = run.out.current
        if current is None or not self._working(current):
            return
        try:
            self.stages[current.name].cancel(self._context(run, current))
            self._settle_stop(run.out.id, current.name)
        except Exception as error:
            log.exception("run %s#%d is cancelled, but stopping its %s stage's work failed",
                          run.out.pipeline, run.out.number, current.name)
            raise WorkNotStoppedError(
                f"run {run.out.pipeline}#{run.out.number} is cancelled, but stopping its "
                f"{current.name} stage's work ({current.progress or current.outputs}) failed: "
                f"{getattr(error, 'message', None) or error}; the control loop tries again "
                f"every {STOP_RETRY_S:g} s, or stop it by hand (`modelplane train stop "
                "JOB_ID`, `modelplane rollout abort ID`)",
                detail={"run": cancelled.number, "stage": current.name}) from None

    # ------------------------------------------------------------ the loop

    def tick(self) -> None:
        """Triggers first, then a pass of every active run.

        A pass goes on while it moves the run from one stage state to the next (started,
        passed, skipped), so a run does not wait a loop interval between stages; each
        move is its own committed write, so a crash resumes from the last one.
        """
        with self._lock:
            self._check_triggers()
            runs = []
            with self.db.session(readonly=True) as session:
                for row in session.scalars(select(PipelineRunRow).where(
                        PipelineRunRow.state.in_(ACTIVE_RUN_STATES)).order_by(PipelineRunRow.id)):
                    try:
                        runs.append(_loaded(row))
                    except Exception:  # a row an older version wrote: it alone is left
                        log.exception("pipeline run %s#%d cannot be read", row.pipeline, row.number)
            for run in runs:
                try:
                    self._pass(run)
                except StaleDataError:
                    log.info("run %s#%d changed during a pass; next pass", run.out.pipeline,
                             run.out.number)
                except FencedOut:  # another control plane leads: the pass is its now
                    raise
                except Exception:  # one broken run must not stop the others
                    log.exception("advancing pipeline run %s#%d failed", run.out.pipeline,
                                  run.out.number)
            self._stop_owed_work()

    def _pass(self, run: LoadedRun) -> None:
        for _ in range(2 * len(run.out.stages) + 1):  # each stage starts and ends once
            if not self._advance(run):
                return
            reloaded = self._reload(run)
            if reloaded is None:
                return
            run = reloaded

    def _reload(self, run: LoadedRun) -> LoadedRun | None:
        """``run`` as stored now, or None once it has ended."""
        with self.db.session(readonly=True) as session:
            row = session.get(PipelineRunRow, run.out.id)
            return _loaded(row) if row is not None and row.state in ACTIVE_RUN_STATES else None

    def _advance(self, run: LoadedRun) -> bool:
        """One step of ``run``; True when it moved a stage on (started, passed or skipped
        it), so the next stage may be taken at once."""
        current = run.out.current
        if current is None:
            self._finish(run, RunState.SUCCEEDED, "every stage passed or was skipped")
            return False
        if current.state is StageState.PENDING:
            self._write(run, current.model_copy(update={
                "state": StageState.RUNNING, "started_at": self._now()}), RunState.RUNNING)
            return True
        stage = self.stages.get(current.name)
        owed = False  # a failed stage whose work could not be stopped owes a stop
        if stage is None:
            outcome = Outcome(StageState.FAILED, reason=f"stage {current.name} is not available")
        else:
            try:
                outcome = stage.advance(self._context(run, current))
            except FencedOut:  # the stage's own write, refused: not the stage failing
                raise
            except PASSING_TROUBLE as error:
                # The store or the Monitor away for a moment is no verdict on the stage,
                # whose work (a job, a rollout) goes on: asked again next pass.
                log.warning("stage %s of %s#%d could not be advanced (%s); asking again next "
                            "pass", current.name, run.out.pipeline, run.out.number, error)
                return False
            except Exception as error:
                log.warning("stage %s of %s#%d raised: %s", current.name, run.out.pipeline,
                            run.out.number, error)
                message = getattr(error, "message", None) or str(error) or type(error).__name__
                stopped = self._stopped(stage, run, current)
                owed = stopped is None
                outcome = Outcome(StageState.FAILED, reason=f"{type(error).__name__}: "
                                  f"{message}; " + (stopped or "stopping its work failed too; "
                                                    "the control loop tries again"))
            owed = owed or (outcome.stop_owed and outcome.state is StageState.FAILED)
        record = current.model_copy(update={
            "state": outcome.state,
            "outputs": {**current.outputs, **outcome.outputs},
            "progress": outcome.progress if outcome.progress is not None else current.progress,
            "reason": outcome.reason or current.reason,
            "inputs": outcome.inputs if outcome.inputs is not None else current.inputs,
            "logs": outcome.logs or current.logs,
            "finished_at": self._now() if outcome.state.done else None,
            "stop_owed": owed,
        })
        if record == current:
            return False  # nothing new: no write, no revision bump
        if outcome.state is StageState.FAILED:
            self._write(run, record, RunState.FAILED,
                        reason=f"{current.name} failed: {outcome.reason}")
            self._tell(run.out, "stage_failed", current.name, outcome.reason)
            self._tell(run.out, "failed", current.name, outcome.reason)
            return False
        try:
            self._write(run, record, RunState.RUNNING)
        except StaleDataError:
            self._stop_orphaned_work(stage, run, current, record)
            raise
        if outcome.state in (StageState.PASSED, StageState.SKIPPED):
            self._tell(run.out, "stage_passed" if outcome.state is StageState.PASSED
                       else "stage_skipped", current.name, outcome.reason)
            return True
        return False

    def _stop_orphaned_work(self, stage: Any, run: LoadedRun, before: StageRecord,
                            after: StageRecord) -> None:
        """A stage that started work (a training job, a rollout) while the run was ended
        elsewhere (cancelled through another control plane) could not record it: the
        cancellation did not know of that work, and nothing else will, so it is stopped
        here. Where the run still goes on, the next pass finds the work (stages look for
        what they started before starting anything)."""
        if stage is None or after.progress == before.progress or self._reload(run) is not None:
            return
        log.warning("run %s#%d ended while its %s stage started %s; stopping that",
                    run.out.pipeline, run.out.number, after.name, after.progress)
        try:
            stage.cancel(self._context(run, after))
        except Exception:
            log.exception("could not stop what the %s stage of %s#%d started; the control "
                          "loop tries again", after.name, run.out.pipeline, run.out.number)
            try:
                self._owe_stop(run, after)
            except Exception:  # the caller's StaleDataError says what happened to the pass
                log.exception("could not note what the %s stage of %s#%d started: stop %s "
                              "by hand", after.name, run.out.pipeline, run.out.number,
                              after.progress)

    def _owe_stop(self, run: LoadedRun, record: StageRecord) -> None:
        """Keep the work ``record`` started as owed a stop on its run, which ended before
        the work could be recorded (:meth:`_stop_owed_work` tries again). Only logged, a
        cancelled run's rollout went on to 100%, or its job trained and registered."""
        with self.db.session() as session:
            row = session.get(PipelineRunRow, run.out.id, with_for_update=True)
            if row is None:
                return
            row.stages = [{**stage, "progress": record.progress, "stop_owed": True}
                          if stage["name"] == record.name else stage for stage in row.stages]

    def _context(self, run: LoadedRun, record: StageRecord) -> StageContext:
        return StageContext(run=run.out, spec=PipelineSpec.model_validate(run.spec),
                            record=record, now=self._now())

    def _write(self, run: LoadedRun, record: StageRecord, state: RunState, *,
               reason: str = "") -> None:
        """Store ``record`` in place of its stage in ``run`` (and the run's new state); a
        failed stage leaves the later ones skipped."""
        now = self._now()
        with self.db.session() as session:
            row = _locked(session, run)
            stages, after = [], False
            for stage in row.stages:
                if stage["name"] == record.name:
                    stages.append(record.model_dump(mode="json"))
                    after = True
                elif after and state is RunState.FAILED and stage["state"] == StageState.PENDING.value:
                    stages.append({**stage, "state": StageState.SKIPPED.value,
                                   "reason": f"{record.name} failed before it"})
                else:
                    stages.append(stage)
            row.stages, row.state, row.updated_at = stages, state.value, now
            if reason:
                row.reason = reason
            if state.terminal:
                row.finished_at = now

    def _finish(self, run: LoadedRun, state: RunState, reason: str, *,
                stage_state: StageState | None = None, owe_stop: bool = False) -> PipelineRunOut:
        now = self._now()
        with self.db.session() as session:
            row = _locked(session, run)
            if stage_state is not None:
                row.stages = [
                    {**s, "state": stage_state.value, "finished_at": now.isoformat(), "reason": reason,
                     "stop_owed": owe_stop and s["state"] == StageState.RUNNING.value}
                    if s["state"] in (StageState.PENDING.value, StageState.RUNNING.value) else s
                    for s in row.stages]
            row.state, row.reason, row.updated_at, row.finished_at = state.value, reason, now, now
            session.flush()
            finished = _run_out(row)
        self._tell(finished, state.value, None, reason)
        return finished

    # ------------------------------------------------------------ triggers

    def _check_triggers(self) -> None:
        with self.db.session(readonly=True) as session:
            pipelines = [(row.name, row.spec, dict(row.state or {}))
                         for row in session.scalars(select(PipelineRow)).all()]
        for name, stored, state in pipelines:
            try:  # one pipeline's spec that no longer reads stops its triggers alone
                self._trigger(name, PipelineSpec.model_validate(stored), state, stored)
            except FencedOut:
                raise
            except Exception:
                log.exception("checking the triggers of pipeline %s failed", name)

    def _trigger(self, name: str, spec: PipelineSpec, state: dict[str, Any],
                 stored: dict[str, Any]) -> None:
        """Start a run if a trigger of ``spec`` (``stored``, as read) fires; remember what the
        triggers saw, unless the pipeline was changed meanwhile (``apply`` starts its state
        afresh: the old spec's data digest or schedule must not carry into it)."""
        triggers, now = spec.triggers, self._now()
        remember: dict[str, Any] = {}
        start: tuple[Trigger, dict[str, Any]] | None = None
        data_changed = False  # the data's digest moved since the last look
        if triggers.schedule:
            due = parse_stamp(state.get("next_scheduled_at"))
            if due is None:
                upcoming = CronSchedule.parse(triggers.schedule).next_after(now)
                remember["next_scheduled_at"] = upcoming.isoformat() if upcoming else None
            elif now >= due:
                upcoming = CronSchedule.parse(triggers.schedule).next_after(now)
                remember["next_scheduled_at"] = upcoming.isoformat() if upcoming else None
                start = (Trigger.SCHEDULE, {"reason": f"scheduled for {due.isoformat()}"})
        if triggers.data_check_interval_s and spec.data is not None and self._digest is not None:
            checked = parse_stamp(state.get("data_checked_at"))
            if checked is None or (now - checked).total_seconds() >= triggers.data_check_interval_s:
                uri, digest_of = spec.data.uri, self._digest
                try:
                    # One look per interval (the key), one thread per source (the resource):
                    # a source that hangs holds one thread however many intervals pass.
                    answer = self._offload.poll(
                        ("digest", name, uri, state.get("data_checked_at")), lambda: digest_of(uri),
                        deadline_s=spec.data.timeout_s, what=f"reading {uri}", resource=uri)
                except Exception as error:
                    # Looked at again in an interval, not on every pass, and the pipeline's
                    # other triggers still fire: its data away is no reason to stop them.
                    remember["data_checked_at"] = now.isoformat()
                    remember["data_check_error"] = f"{type(error).__name__}: {error}"[:500]
                    log.warning("pipeline %s: cannot read %s to see whether it changed (%s); "
                                "trying again in %gs", name, uri, remember["data_check_error"],
                                triggers.data_check_interval_s)
                else:
                    if not isinstance(answer, Pending):  # else looked at again next pass
                        digest = answer.value
                        remember |= {"data_checked_at": now.isoformat(), "data_digest": digest,
                                     "data_check_error": None}
                        seen = state.get("data_digest")
                        data_changed = seen is not None and seen != digest
                        if data_changed and start is None:
                            start = (Trigger.DATA, {"reason": f"new data at {uri}",
                                                    "digest": digest, "previous": seen})
        alerts_seen: datetime | None = None  # as they were before this look
        if triggers.on_drift_alert and self._drift_alerts is not None:
            since = alerts_seen = parse_stamp(state.get("alerts_seen_until")) or now
            fired = self._drift_alerts(spec.deploy.endpoint, since)
            remember["alerts_seen_until"] = max([since, *fired]).isoformat()
            if fired and start is None:
                start = (Trigger.ALERT, {"reason": f"drift alert on {spec.deploy.endpoint}",
                                         "fired_at": max(fired).isoformat()})
        if start is not None:
            last = parse_stamp(state.get("last_started_at"))
            if last is not None and (now - last).total_seconds() < triggers.cooldown_s:
                log.info("pipeline %s: %s trigger within the cool-down; not started", name, start[0])
                start = None
        if start is not None:
            from control_plane.pipelines.stages import pipeline_principal

            try:
                self.start_run(name, pipeline_principal(name), trigger=start[0], detail=start[1],
                               trigger_state=remember, spec_seen=stored)
                return
            except ConflictError as refused:
                log.info("pipeline %s: %s trigger not started: %s", name, start[0], refused)
        if data_changed:
            # No run took the new data (within the cool-down, or a run under way): it stays
            # unseen, so the next look after them starts the run it is owed.
            remember.pop("data_digest", None)
        if alerts_seen is not None:
            # So do drift alerts: each fires once an episode, and one used up in the
            # cool-down or while a run waited for approval never started its retraining.
            remember["alerts_seen_until"] = alerts_seen.isoformat()
        if remember:
            with self.db.session() as session:
                row = session.scalar(select(PipelineRow).where(
                    PipelineRow.name == name).with_for_update())
                if row is not None and row.spec == stored:
                    row.state = {**(row.state or {}), **remember}

    # ------------------------------------------------------------ helpers

    def _tell(self, run: PipelineRunOut, kind: str, stage: str | None, reason: str) -> None:
        if self._listener is not None:
            try:
                self._listener(run, kind, stage, reason)
            except Exception:  # a notification never stops a run
                log.exception("pipeline notification failed")

    @staticmethod
    def _row(session: Session, name: str, *, for_update: bool = False) -> PipelineRow:
        query = select(PipelineRow).where(PipelineRow.name == name)
        row = session.scalar(query.with_for_update() if for_update else query)
        if row is None:
            raise NotFoundError(f"no pipeline named {name!r}; `modelplane pipeline list` lists "
                                "them, `modelplane pipeline run FILE` creates one",
                                detail={"field": "name"})
        return row

    @staticmethod
    def _active(session: Session, name: str) -> PipelineRunRow | None:
        return session.scalar(select(PipelineRunRow).where(
            PipelineRunRow.pipeline == name, PipelineRunRow.state.in_(ACTIVE_RUN_STATES)).limit(1))

    def _pipeline_out(self, session: Session, row: PipelineRow) -> PipelineOut:
        last = session.scalar(select(func.max(PipelineRunRow.number)).where(
            PipelineRunRow.pipeline == row.name))
        return PipelineOut(name=row.name, description=row.spec.get("description", ""),
                           spec=row.spec, triggers=dict(row.state or {}), created_by=row.created_by,
                           author=row.author_subject, created_at=row.created_at,
                           updated_at=row.updated_at, last_run=last)


@dataclass(frozen=True)
class LoadedRun:
    """A run as read for one pass: what the API shows, the spec it runs and its revision
    (a write that finds another revision lost a race)."""

    out: PipelineRunOut
    spec: dict[str, Any]
    revision: int


def _locked(session: Session, run: LoadedRun) -> PipelineRunRow:
    """``run``'s row, if nobody wrote it since it was read (the store checks the revision
    again when the change is flushed)."""
    row = session.get(PipelineRunRow, run.out.id)
    if row is None or row.revision != run.revision:
        raise StaleDataError("pipeline run changed since it was read")
    return row


def _refuse_credentials(spec: PipelineSpec) -> None:
    """InvalidInputError naming the field where a data URI holds a credential: specs are
    readable by every reader (anonymous ones too, where reads are open). Checked as a spec
    comes in, not where stored ones are read back (those keep working as they were)."""
    from modelplane.uri_credentials import credential_problem
    from training.schemas import JobSpec
    from training.spec import located_fields

    job = JobSpec.model_validate(spec.training.job)
    for field, uri in (("data.uri", spec.data.uri if spec.data else None),
                       ("evaluate.data_uri", spec.evaluate.data_uri if spec.evaluate else None),
                       *((f"training.job.{name}", value) for name, value in located_fields(job))):
        if (problem := credential_problem(field, uri)) is not None:
            raise InvalidInputError(problem, detail={"field": field})


def _refuse_outside_roots(spec: PipelineSpec) -> None:
    """InvalidInputError naming the field whose local file the control plane would read
    outside ``MODELPLANE_DATA_ROOTS`` (it is checked again at every read)."""
    from control_plane.pipelines.data_sources import outside_data_roots

    # The job's own file is read here only for the evaluate stage's default held-out rows,
    # where a data section names the same file (data_mismatch): the workers read it
    # where they run, which may be a path only they have.
    for field, uri in (("data.uri", spec.data.uri if spec.data else None),
                       ("evaluate.data_uri", spec.evaluate.data_uri if spec.evaluate else None)):
        if isinstance(uri, str) and (problem := outside_data_roots(uri)) is not None:
            raise InvalidInputError(problem, detail={"field": field})


def _loaded(row: PipelineRunRow) -> LoadedRun:
    return LoadedRun(_run_out(row), dict(row.spec), int(row.revision))


def _run_out(row: PipelineRunRow) -> PipelineRunOut:
    return PipelineRunOut(
        id=row.id, pipeline=row.pipeline, number=row.number, state=RunState(row.state),
        trigger=Trigger(row.trigger), trigger_detail=row.trigger_detail or {},
        stages=[stored_stage(s) for s in row.stages], reason=row.reason,
        created_by=row.created_by, author=row.author_subject, created_at=row.created_at,
        updated_at=row.updated_at, finished_at=row.finished_at)
