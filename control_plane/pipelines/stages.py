"""What each stage does, one pass at a time.

The runner calls a stage's ``advance`` on every pass until it answers with a final
state. A pass must be safe to repeat: a stage keeps what it has done in ``progress``
(persisted before the action it describes, so a crash in between is found and finished
on the next pass, never done twice): the training stage stores its Ray submission id
before submitting, and asks Ray whether that id exists before submitting again; the
deploy stage looks for the rollout it may have started before starting one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import select

from control_plane.auth import Principal
from control_plane.errors import (
    ConflictError,
    ControlPlaneUnavailableError,
    MonitorUnavailableError,
    StoreUnavailableError,
)
from control_plane.job_api import cluster_job_client
from control_plane.pipelines.champion import PIN, pin_at_start
from control_plane.pipelines.offload import Offload, Pending, WorkOverdue
from control_plane.pipelines.records import PipelineRunOut, StageRecord, StageState
from control_plane.pipelines.spec import PipelineSpec, spec_problem
from control_plane.read_gate import ReadGate
from control_plane.schemas import JOB_TAG, Role

log = logging.getLogger(__name__)

# Trouble that passes: a stage meeting it is asked again, not failed.
PASSING_TROUBLE = (StoreUnavailableError, MonitorUnavailableError, ControlPlaneUnavailableError)


def pipeline_principal(pipeline: str, author: str | None = None) -> Principal:
    """Who a run acts as: the pipeline itself, with a deployer's rights (creating or
    changing a pipeline needs them), for the subject of the spec's ``author`` (whoever
    last applied its training code and data). Its job's token carries that subject, so
    the versions it registers are the author's, and the author cannot approve them."""
    return Principal(name=f"pipeline:{pipeline}"[:128], role=Role.DEPLOYER, subject=author or "")


def run_principal(run: PipelineRunOut) -> Principal:
    """The principal ``run`` acts as (see :func:`pipeline_principal`)."""
    return pipeline_principal(run.pipeline, run.author)


MADE_HERE_SKEW = timedelta(seconds=30)


@dataclass(frozen=True)
class Outcome:
    """What one pass of a stage found: still ``running``, or a final state."""

    state: StageState
    outputs: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] | None = None  # replaces the stored progress when given
    reason: str = ""
    inputs: dict[str, Any] | None = None
    logs: str | None = None
    # Failed with its work maybe still running: the control loop stops it (the stage's
    # cancel) until that goes through, as for a stage that raised.
    stop_owed: bool = False


# The data stage's output a version trained on exactly the bytes it checked records as its
# lineage's dataset_digest (data_sources.read_dataset): the training stage holds it to it.
VALIDATED_DIGEST = "training_digest"


@dataclass(frozen=True)
class StageContext:
    run: PipelineRunOut
    spec: PipelineSpec
    record: StageRecord
    now: datetime

    def earlier(self, name: str) -> StageRecord:
        return next(s for s in self.run.stages if s.name == name)

    def made_here(self, created_by: str, created_at: datetime) -> bool:
        """Whether a record (a rollout, a benchmark) was made by this run of this stage: a
        crash, or a store error, may have kept the stage from saying it made it."""
        since = self.record.started_at
        # The stage's start is on the store's clock, the record's on the machine's that
        # made it, which may run behind: a rollout made seconds "before" its stage began was
        # not found, and a second one started. A pipeline's runs are minutes apart.
        return since is not None and created_by == run_principal(self.run).name \
            and created_at >= since - MADE_HERE_SKEW

    @property
    def candidate(self) -> tuple[str, int] | None:
        """The model and version the training stage registered, once it has."""
        outputs = self.earlier("train").outputs
        if "version" not in outputs:
            return None
        return str(outputs["model"]), int(outputs["version"])


def reject_candidate(services: Any, context: StageContext, stage: str,
                     candidate: tuple[str, int], reason: str) -> None:
    """Mark the run's candidate rejected with ``stage``'s reason, so nobody deploys it by
    hand (a rolled-back rollout does the same); a second rejection changes nothing."""
    model, number = candidate
    why = f"pipeline {context.run.pipeline} run #{context.run.number}, {stage}: {reason}"
    principal = run_principal(context.run)
    try:
        services.registry.reject_version(model, number, why[:2000], principal)
    except ConflictError as error:
        rollout = error.detail.get("rollout")
        if rollout is None:
            # In production already (promoted through another way meanwhile): that is the
            # registry's refusal to make, and the stage's own verdict stands as it is.
            log.warning("not rejecting %s:%d: %s", model, number, error.message)
            return
        # An endpoint tracking an alias the job pointed is rolling the candidate out
        # already: that rollout ends first, then the version is rejected.
        services.rollouts.abort(int(rollout), principal, why[:2000], settle=False)
        services.registry.reject_version(model, number, why[:2000], principal)


def refused_at_apply(context: StageContext) -> Outcome | None:
    """The stage's failure where its run's spec, stored before a rule, breaks what
    ``modelplane pipeline apply`` now refuses (``spec.spec_problem``), else None."""
    problem = spec_problem(context.spec)
    if problem is None:
        return None
    return Outcome(StageState.FAILED, reason=f"{problem[1]} (modelplane pipeline apply)",
                   progress={})


class Stage(Protocol):
    name: str

    def advance(self, context: StageContext) -> Outcome: ...

    def cancel(self, context: StageContext) -> None:
        """Undo or stop what the stage has started (a run was cancelled in it)."""


def stage_elapsed_s(context: StageContext) -> float:
    """Seconds since the stage started, as stored (a restart does not reset it)."""
    started = context.record.started_at or context.now
    return (context.now - started).total_seconds()


# ---------------------------------------------------------------- train


JobClientFactory = Callable[[], Any]
T = TypeVar("T")
JOB_API = "ray-job-api"  # the offload's resource: one call to Ray's job API at a time
JOB_API_WAIT_S = 1.0  # how long a pass waits for the job API's answer before going on
# A look makes at most four calls (the client's version check, the status, the info and
# the logs of an ended job) and an ended job's token revoke, a submission three and an
# upload, each within the client's deadlines (training.submission.JOB_API_TIMEOUT_S,
# UPLOAD_TIMEOUT_S).
JOB_LOOK_DEADLINE_S = 240.0
JOB_SUBMIT_DEADLINE_S = 420.0
MAX_SUBMIT_ATTEMPTS = 20  # submissions Ray took no answer on, within training.timeout_s
# A training job's output shown with its run: the end says how it ended, and a long job's
# whole output (every epoch of days) would be sent on every look. (Ray's job API answers
# the whole of it to the control plane all the same.)
LOG_TAIL_CHARS = 1024 * 1024
# So a job's whole log is read from Ray's job API one at a time in this control plane,
# its tail shared by all who ask for it within seconds (control_plane.read_gate): each of
# many callers at once held a whole log, and a verbose job's ran the process out of memory.
# A caller waits that long for the slot or a shared answer, then is told to ask again:
# each waiting caller holds one of the API's threads.
JOB_LOG_WAIT_S = 2.0
_JOB_LOGS = ReadGate(1, 5.0, busy=lambda: ControlPlaneUnavailableError(
    "another job's log is being read (one at a time); ask again in a moment"))


def _tail(text: str) -> str:
    if len(text) <= LOG_TAIL_CHARS:
        return text
    return f"({len(text) - LOG_TAIL_CHARS} characters before these)\n" + text[-LOG_TAIL_CHARS:]


@dataclass(frozen=True)
class JobLook:
    """What Ray's job API said of a submitted job on one look: its status, and once it has
    ended, the last line of its output."""

    status: str
    last_words: str = ""
    stopped: bool = False  # still running past training.timeout_s, and stopped


@dataclass(frozen=True)
class SubmissionTried:
    """A submission made off the pass: the progress it leaves (the attempt it reached),
    and the job API's error where it did not go through."""

    progress: dict[str, Any]
    error: Exception | None = None


class TrainStage:
    """Submit the training job through Ray's job API and follow it to the end; pass with
    the version it registered.

    Ray's job API is asked off the pipelines' pass (:mod:`control_plane.pipelines.offload`),
    on a thread of its own (``job_api``), one call at a time: a dashboard that takes calls
    and never answers held every pipeline's pass for the client's deadline, on every call
    of every training run, pass after pass; and data reads that hang, on the other
    offload's threads, hold none of its calls. A pass waits :data:`JOB_API_WAIT_S` for an
    answer, then looks again on the next one; work past its deadline counts as the API not
    answering."""

    name = "train"
    stop_resource = JOB_API  # the loop's owed stops of its jobs: one job API call at a time

    def __init__(self, services: Any, job_client: JobClientFactory | None = None) -> None:
        self.services = services
        self._job_client = job_client or cluster_job_client
        self.job_api = Offload(max_threads=1)  # the loop's owed stops of its jobs run here too

    def advance(self, context: StageContext) -> Outcome:
        progress = dict(context.record.progress)
        if "submission_id" not in progress:
            refused = refused_at_apply(context)
            if refused is not None:  # before hours of training are spent
                return refused
            # Stored before anything reaches Ray: a crash after submitting finds the job.
            run = context.run
            progress["submission_id"] = f"pipeline-{run.pipeline[:40]}-{run.number}-{secrets.token_hex(4)}"
            return Outcome(StageState.RUNNING, progress=progress,
                           inputs={"job": context.spec.training.job,
                                   PIN: pin_at_start(self.services, context)})
        job_id = str(progress["submission_id"])
        logs = f"modelplane train logs {job_id}"
        from training.errors import JobSubmissionError

        try:
            if not progress.get("submitted"):
                tried = self._ask(job_id, "submitting", JOB_SUBMIT_DEADLINE_S,
                                  lambda: self._submission(context, job_id, progress))
                if tried is None:
                    return Outcome(StageState.RUNNING, outputs={"job_id": job_id}, logs=logs)
                progress = tried.progress
                if tried.error is not None:
                    raise tried.error
                progress["submitted"] = True
                return Outcome(StageState.RUNNING, progress=progress,
                               outputs={"job_id": job_id}, logs=logs)
            look = self._ask(job_id, "looking at", JOB_LOOK_DEADLINE_S,
                             lambda: self._look(job_id, context))
            if look is None:
                return Outcome(StageState.RUNNING, outputs={"job_id": job_id}, logs=logs)
            return self._follow(context, look, job_id, logs)
        except JobSubmissionError as error:
            if not progress.get("submitted") and error.detail.get("refused"):
                raise  # Ray refused the submission: the stage fails, saying why
            # Anything else (no connection, a 5xx, no answer) is asked again next pass.
            return self._unanswered(context, job_id, logs, progress, error)

    def _ask(self, job_id: str, doing: str, deadline_s: float, work: Callable[[], T]) -> T | None:
        """``work`` (calls to Ray's job API) done off the pass: its result once it is
        there, None while it runs. Each answer is taken once, and the next ask is anew;
        work past ``deadline_s`` is raised as the API not answering."""
        from training.errors import JobSubmissionError

        try:
            answer = self.job_api.poll((doing, job_id), work, deadline_s=deadline_s,
                                       what=f"{doing} training job {job_id}", resource=JOB_API,
                                       wait_s=JOB_API_WAIT_S, once=True)
        except WorkOverdue as error:
            raise JobSubmissionError(f"Ray's job API: {error}",
                                     detail={"answered": False}) from None
        return None if isinstance(answer, Pending) else answer.value

    def _look(self, job_id: str, context: StageContext) -> JobLook:
        """The job's status (on the offload's thread); for one that ended, its token is
        revoked and its last line read. A job still running past training.timeout_s is
        stopped here, where Ray's job API is asked."""
        client = self._job_client()
        status = client.status(job_id)
        if status in ("PENDING", "RUNNING"):
            if stage_elapsed_s(context) > context.spec.training.timeout_s:
                client.stop(job_id)
                return JobLook(status, stopped=True)
            return JobLook(status)
        client.info(job_id)  # an ended job's token is revoked
        return JobLook(status, self._last_words(client, job_id) if status != "SUCCEEDED" else "")

    def _submission(self, context: StageContext, job_id: str,
                    progress: dict[str, Any]) -> SubmissionTried:
        """Submit the job unless Ray has it already (on the offload's thread). A cancel
        does not wait for the pass, and a run that ended is never looked at again: so
        nothing is submitted for a run that ended, and a run that ended while its job was
        submitted (whether Ray answered or not) has that job stopped here, or its tokens
        revoked where Ray cannot be asked."""
        from training.errors import JobSubmissionError

        progress = dict(progress)
        reached = False  # whether Ray has, or may have, a job of this id
        try:
            client = self._job_client()
            if self._exists(client, job_id):
                reached = True
            else:
                if self._run_ended(context):
                    return SubmissionTried(progress, JobSubmissionError(
                        "the run ended before its job was submitted", detail={"refused": True}))
                reached = True
                self._submit(context, client, job_id, progress)
        except JobSubmissionError as error:
            tried = SubmissionTried(progress, error)
        else:
            tried = SubmissionTried(progress)
        if reached:
            self._stop_if_run_ended(context, job_id)
        return tried

    def _stop_if_run_ended(self, context: StageContext, job_id: str) -> None:
        """Stop the job of a run that ended while it was submitted; trouble doing so is
        logged, never put in place of what the submission itself came to."""
        try:
            if not self._run_ended(context):
                return
            log.warning("run %s#%d ended while its training job %s was submitted; stopping "
                        "the job", context.run.pipeline, context.run.number, job_id)
            self.cancel(context)  # where Ray cannot be asked, the job's tokens are revoked
        except Exception:
            log.exception("could not stop training job %s of the ended run %s#%d: stop it with "
                          "`modelplane train stop %s`", job_id, context.run.pipeline,
                          context.run.number, job_id)

    def _run_ended(self, context: StageContext) -> bool:
        from control_plane.pipelines.records import ACTIVE_RUN_STATES
        from control_plane.store.models import PipelineRunRow

        with self.services.db.session(readonly=True) as session:
            state = session.scalar(select(PipelineRunRow.state).where(
                PipelineRunRow.pipeline == context.run.pipeline,
                PipelineRunRow.number == context.run.number))
        return state is not None and state not in ACTIVE_RUN_STATES

    def _unanswered(self, context: StageContext, job_id: str, logs: str,
                    progress: dict[str, Any], error: Any) -> Outcome:
        """The job API could not say: the job runs on (or a submission Ray took late is
        found by its id next pass), so the stage asks again next pass, until
        training.timeout_s says it is over."""
        from training.submission import job_missing

        timeout_s = context.spec.training.timeout_s
        if job_missing(error):
            return Outcome(StageState.FAILED, outputs={"job_id": job_id}, logs=logs,
                           reason=f"training job {job_id}: {error.message}")
        if stage_elapsed_s(context) > timeout_s:
            # A job Ray took late (or still runs unseen) must not register for a failed stage,
            # nor hold the cluster's workers: its token is revoked now, and the job stopped
            # once Ray's job API answers (left running, it trained on until its stall timeout).
            self._revoke_tokens(context, job_id)
            return Outcome(StageState.FAILED, outputs={"job_id": job_id}, logs=logs, stop_owed=True,
                           reason=(f"training job {job_id}: {error.message}; training.timeout_s "
                                   f"({timeout_s:g} s) has passed, so the stage fails and its "
                                   "job's token is revoked; the control loop stops the job once "
                                   f"Ray's job API answers (`modelplane train stop {job_id}` "
                                   "does it now)"))
        log.warning("training job %s: %s; asking again next pass", job_id, error.message)
        return Outcome(StageState.RUNNING, progress=progress, logs=logs, outputs={
            "job_id": job_id, "status": f"UNKNOWN: {error.message}"})

    def _follow(self, context: StageContext, look: JobLook, job_id: str, logs: str) -> Outcome:
        """What the submitted job's status says of the stage."""
        status = look.status
        if look.stopped:
            return Outcome(StageState.FAILED, outputs={"job_id": job_id}, logs=logs, reason=(
                f"training job {job_id} still {status} after "
                f"{context.spec.training.timeout_s:g} s (training.timeout_s); stopped"))
        if status in ("PENDING", "RUNNING"):
            return Outcome(StageState.RUNNING, outputs={"job_id": job_id, "status": status}, logs=logs)
        # A job killed after it registered (its process lost, the OOM killer) ended FAILED
        # with its version standing: a failed stage had the pipeline run again for another.
        found = self._registered(context, job_id) if status in ("SUCCEEDED", "FAILED") else None
        if status != "SUCCEEDED" and found is None:
            tail = look.last_words
            return Outcome(StageState.FAILED, outputs={"job_id": job_id, "status": status}, logs=logs,
                           reason=f"training job {job_id} ended {status}" + (f": {tail}" if tail else ""))
        if found is None:
            return Outcome(StageState.FAILED, outputs={"job_id": job_id, "status": status}, logs=logs,
                           reason=f"training job {job_id} succeeded but registered no version of "
                                  f"{context.spec.model_name!r} (is registration switched off?)")
        run_id, version = found
        outputs = {"job_id": job_id, "status": status, "run_id": run_id,
                   "model": context.spec.model_name, "version": version}
        problem = self._unchecked_data(context, version)
        if problem is not None:
            reject_candidate(self.services, context, self.name, (context.spec.model_name, version),
                             problem)
            return Outcome(StageState.FAILED, logs=logs, outputs=outputs, reason=problem)
        return Outcome(StageState.PASSED, logs=logs, outputs=outputs)

    def _unchecked_data(self, context: StageContext, version: int) -> str | None:
        """Why the version the job registered was trained on other data than the data
        stage checked (the file changed between the two: rows nobody validated), or None.
        A run whose data stage did not record the digest (none, or stored before it did)
        has nothing to hold the version to."""
        from control_plane.schemas import ModelManifest

        expected = _validated_digest(context)
        if expected is None:
            return None
        model = context.spec.model_name
        manifest = self.services.registry.get_version(model, version).manifest
        trained_on = ModelManifest.model_validate(manifest).lineage.dataset_digest
        if trained_on == expected:
            return None
        uri = context.spec.data.uri if context.spec.data is not None else "its data"
        return (f"{model}:{version} was trained on other data than the data stage checked: "
                f"its lineage says {(trained_on or 'nothing')[:12]}…, the bytes of {uri} checked "
                f"were {expected[:12]}… ({uri} changed between the two stages, and rows nobody "
                "validated were trained on); start the run again to check and train on the "
                "same data")

    @staticmethod
    def _last_words(client: Any, job_id: str) -> str:
        """The ended job's last line, where Ray's job API answers for its logs: a download
        that kept timing out held a failed job's stage running until training.timeout_s."""
        from training.errors import JobSubmissionError

        try:
            return _last_line(client.logs(job_id))
        except JobSubmissionError as error:
            log.info("training job %s: its logs could not be read (%s)", job_id, error.message)
            return ""

    def logs(self, record: StageRecord) -> str:
        """The job's output, once it was submitted: its last :data:`LOG_TAIL_CHARS`."""
        job_id = record.progress.get("submission_id")
        if not job_id or not record.progress.get("submitted"):
            return ""
        try:
            return str(_JOB_LOGS.call(("logs", str(job_id)),
                                      lambda: _tail(str(self._job_client().logs(str(job_id)))),
                                      JOB_LOG_WAIT_S))
        except FutureTimeout:
            raise ControlPlaneUnavailableError(
                f"job {job_id}'s log is still being read for another caller; ask again in a "
                "moment") from None

    def cancel(self, context: StageContext) -> None:
        job_id = context.record.progress.get("submission_id")
        if job_id:
            try:
                client = self._job_client()
                if self._exists(client, str(job_id)):
                    client.stop(str(job_id))  # the job ends its run killed, with its token
                    return
            except BaseException:
                # Ray's job API could not be asked: the job, if it runs, must find its
                # token revoked, or it trains and registers for a cancelled run.
                self._revoke_tokens(context, str(job_id))
                raise
            # Not there (yet): a submission Ray takes late must find its token revoked too.
            self._revoke_tokens(context, str(job_id))

    def _revoke_tokens(self, context: StageContext, job_id: str, *,
                       keep: str | None = None) -> None:
        """Revoke every job token the stage minted for ``job_id`` but ``keep``."""
        from control_plane.errors import NotFoundError

        with self.services.db.session(readonly=True) as session:
            names = _job_token_names(session, context, job_id)
        for name in names:
            if name == keep:
                continue
            with contextlib.suppress(NotFoundError):
                self.services.tokens.revoke(name, run_principal(context.run))

    @staticmethod
    def _exists(client: Any, job_id: str) -> bool:
        from training.errors import JobSubmissionError
        from training.submission import job_missing

        try:
            client.info(job_id)
        except JobSubmissionError as error:
            if job_missing(error):
                return False
            raise
        return True

    def _submit(self, context: StageContext, client: Any, job_id: str, progress: dict[str, Any]) -> None:
        from pathlib import Path

        from control_plane.errors import AlreadyExistsError
        from control_plane.schemas import TokenCreate
        from training.errors import JobSubmissionError
        from training.job_token import JOB_TOKEN_METADATA, JobToken
        from training.schemas import JobSpec
        from training.submission import job_environment, submit_resolved

        spec = JobSpec.model_validate(context.spec.training.job)
        checked = _validated_digest(context)
        if checked is not None:  # the job refuses other data before it trains, not after
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"digest": checked})})
        lifetime = int(context.spec.training.timeout_s // 60) + 60
        actor = run_principal(context.run)
        earlier = int(progress.get("attempt") or 0)
        while True:
            progress["attempt"] = attempt = int(progress.get("attempt", 0)) + 1
            name = _token_name(job_id, attempt)
            try:
                created = self.services.tokens.create(
                    TokenCreate(name=name, role=Role.TRAINER, expires_in_minutes=lifetime,
                                model=spec.model_name), actor)
                break
            except AlreadyExistsError:
                self.services.tokens.revoke(name, actor)
                if attempt >= MAX_SUBMIT_ATTEMPTS:
                    raise
        token = JobToken(name, created.token)
        env = {**job_environment(Path(__file__).parent), **token.env()}
        metadata = {"experiment": spec.experiment.name, "model": spec.model_name,
                    JOB_TOKEN_METADATA: token.name, "pipeline": context.run.pipeline,
                    "pipeline_run": str(context.run.number)}
        try:
            submit_resolved(client, spec, env, submission_id=job_id, metadata=metadata)
        except JobSubmissionError as error:
            if error.detail.get("answered", True):
                self.services.tokens.revoke(name, actor)  # refused: no job will ever use it
                if self._exists(client, job_id):
                    # Refused as taken: Ray took an earlier submission late (a head slow to
                    # say so at the look before this). That job runs with its own token.
                    return
                raise JobSubmissionError(error.message,
                                         detail={**error.detail, "refused": True}) from None
            raise  # unanswered: Ray may have taken it, and the job its token; asked next pass
        except BaseException:
            self.services.tokens.revoke(name, actor)
            raise
        # Taken: a token an earlier attempt minted, for a submission Ray gave no answer to
        # and had no job of (asked just before), is unused. Revoked only now: revoked
        # before, a submission Ray took late found its token gone.
        if earlier:
            self._revoke_tokens(context, job_id, keep=name)

    def _registered(self, context: StageContext, job_id: str) -> tuple[str, int] | None:
        """The run the job recorded (tagged with its submission id) and the version it
        registered from that run: both written with a job token this stage minted.

        The tag and a version's ``run_id`` are anyone's to write (any trainer token tags a
        run, and a manifest names any run as its lineage); only the token says who wrote
        them. Without that check another job's token took the candidate: a run tagged with
        this job's id, a version naming it, deployed by the pipeline as a deployer.
        """
        from control_plane.store.models import ModelRow, ModelVersionRow, RunRow

        with self.services.db.session(readonly=True) as session:
            minted = _job_token_names(session, context, job_id)
            if not minted:
                return None
            runs = session.scalars(select(RunRow).where(RunRow.created_by.in_(minted))
                                   .order_by(RunRow.start_time.desc())).all()
            run = next((r for r in runs if (r.tags or {}).get(JOB_TAG) == job_id), None)
            if run is None:
                return None
            version = session.scalar(
                select(ModelVersionRow.version).join(ModelRow, ModelRow.id == ModelVersionRow.model_id)
                .where(ModelRow.name == context.spec.model_name, ModelVersionRow.run_id == run.id,
                       ModelVersionRow.created_by.in_(minted))
                .order_by(ModelVersionRow.version.desc()).limit(1))
            return (run.id, int(version)) if version is not None else None


def _validated_digest(context: StageContext) -> str | None:
    """The digest of the bytes the run's data stage checked (None: no data stage, or one
    stored before it recorded the digest)."""
    checked = next((s for s in context.run.stages if s.name == "validate_data"), None)
    return ((checked.outputs or {}).get(VALIDATED_DIGEST) or None) if checked is not None else None


def _token_name(job_id: str, attempt: int) -> str:
    """The job token of a training stage's ``attempt``-th submission of ``job_id``."""
    return (f"job-{job_id}" + (f".{attempt}" if attempt > 1 else ""))[:128]


def _job_token_names(session: Any, context: StageContext, job_id: str) -> list[str]:
    """Every job token this run's stage minted for ``job_id``, whatever attempt the record
    says it reached: a submission whose record did not land minted one too."""
    from control_plane.store.models import TokenRow

    first = _token_name(job_id, 1)
    names = session.scalars(select(TokenRow.name).where(
        TokenRow.name.startswith(first, autoescape=True),
        TokenRow.created_by == run_principal(context.run).name))
    attempt = re.compile(re.escape(first) + r"(\.\d+)?")
    return sorted(name for name in names if attempt.fullmatch(name))


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


# ---------------------------------------------------------------- approve


class ApproveStage:
    """Wait for an approval where the model's policy (or the spec) asks for one."""

    name = "approve"

    def __init__(self, services: Any) -> None:
        self.services = services

    def advance(self, context: StageContext) -> Outcome:
        from control_plane.registry import latest_decision
        from control_plane.rollouts.approvals import POLICY
        from control_plane.store.models import ModelRow, ModelVersionRow

        settings = context.spec.approve
        candidate = context.candidate
        if settings.mode == "never" or candidate is None:
            return Outcome(StageState.SKIPPED, reason="approve.mode is never")
        model, version = candidate
        with self.services.db.session(readonly=True) as session:
            row = session.scalar(select(ModelVersionRow).join(ModelRow).where(
                ModelRow.name == model, ModelVersionRow.version == version))
            if row is None:
                return Outcome(StageState.FAILED, reason=f"{model}:{version} no longer exists")
            required = settings.mode == "always" or bool((row.model.policy or {}).get(POLICY))
            decision = latest_decision(session, row)
        if not required:
            return Outcome(StageState.SKIPPED, reason=f"model {model!r} needs no approval ({POLICY} off)")
        if decision == "approved":
            return Outcome(StageState.PASSED, outputs={"decision": decision})
        if decision == "rejected":
            return Outcome(StageState.FAILED, outputs={"decision": decision},
                           reason=f"{model}:{version} was rejected")
        if stage_elapsed_s(context) > settings.timeout_s:
            return Outcome(StageState.FAILED, reason=f"no approval of {model}:{version} within "
                                                     f"{settings.timeout_s:g} s (approve.timeout_s)")
        return Outcome(StageState.RUNNING, outputs={
            "waiting": f"approve with `modelplane models approve {model}:{version}`"})

    def cancel(self, context: StageContext) -> None:
        return None


# ---------------------------------------------------------------- deploy


class DeployStage:
    """The rollout that takes the candidate to the endpoint, followed to its end; a first
    version on a new endpoint is deployed directly."""

    name = "deploy"

    def __init__(self, services: Any) -> None:
        self.services = services

    def advance(self, context: StageContext) -> Outcome:
        candidate = context.candidate
        if candidate is None:
            return Outcome(StageState.FAILED, reason="no candidate version to deploy")
        model, version = candidate
        endpoint = context.spec.deploy.endpoint
        progress = dict(context.record.progress)
        rollout_id = progress.get("rollout_id") or self._started(context, endpoint, version)
        if rollout_id is None:
            serving = self._serving(endpoint)
            if serving is None:
                return self._first_deploy(context, endpoint, model, version)
            if serving == (model, version, 100.0) and not self.services.rollouts.list(
                    endpoint=endpoint, active=True, limit=1):  # a first deploy before a crash
                return Outcome(StageState.PASSED, outputs={"deployed": f"{model}:{version}",
                                                           "endpoint": endpoint},
                               reason=f"{endpoint} already serves {model}:{version}, all of it")
            rollout = self._start(context, endpoint, model, version)
            progress["rollout_id"] = rollout.id
            return Outcome(StageState.RUNNING, progress=progress,
                           outputs={"rollout_id": rollout.id, "state": rollout.state.value},
                           logs=f"modelplane rollout watch {endpoint}")
        progress["rollout_id"] = rollout_id
        rollout = self.services.rollouts.get(int(rollout_id))
        outputs = {"rollout_id": rollout.id, "state": rollout.state.value, "step": rollout.step_index}
        logs = f"modelplane rollout watch {endpoint}"
        if rollout.state.value == "succeeded":
            return Outcome(StageState.PASSED, progress=progress, outputs=outputs, logs=logs)
        if rollout.state.terminal:
            return Outcome(StageState.FAILED, progress=progress, outputs=outputs, logs=logs,
                           reason=f"rollout #{rollout.id} {rollout.state.value}: {rollout.reason}")
        limit = context.spec.deploy.timeout_s
        if stage_elapsed_s(context) > limit:
            # Waiting on an approval, paused, or never decided: the run (and every trigger
            # of its pipeline, refused while it runs) must not wait for ever.
            why = (f"rollout #{rollout.id} still {rollout.state.value} after {limit:g} s "
                   "(deploy.timeout_s)")
            self.services.rollouts.abort(rollout.id, run_principal(context.run), why,
                                         settle=False)
            return Outcome(StageState.FAILED, progress=progress, outputs=outputs, logs=logs,
                           reason=f"{why}; aborted, traffic back on the stable version")
        return Outcome(StageState.RUNNING, progress=progress, outputs=outputs, logs=logs)

    def cancel(self, context: StageContext) -> None:
        # A rollout started before a crash, or a store that failed, kept its id out of
        # the record is found as advance finds it: left, it went on to 100%.
        rollout_id = context.record.progress.get("rollout_id")
        if not rollout_id and context.candidate is not None:
            rollout_id = self._started(context, context.spec.deploy.endpoint, context.candidate[1])
        if rollout_id:
            rollout = self.services.rollouts.get(int(rollout_id))
            if not rollout.state.terminal:
                self.services.rollouts.abort(
                    int(rollout_id), run_principal(context.run),
                    f"pipeline run {context.run.pipeline}#{context.run.number} ended "
                    "(cancelled, or its deploy stage failed)", settle=False)

    def _serving(self, endpoint: str) -> tuple[str, int, float] | None:
        """(model, version, weight) of the version taking the most of ``endpoint``'s traffic;
        None where it takes none."""
        from control_plane.errors import NotFoundError

        try:
            current = self.services.deployments.get(endpoint)
        except NotFoundError:
            return None
        routes = [route for route in current.routes if route.weight > 0 and not route.shadow]
        if not routes:
            return None
        main = max(routes, key=lambda route: route.weight)
        return current.model, main.version, float(main.weight)

    def _started(self, context: StageContext, endpoint: str, version: int) -> int | None:
        """A rollout of ``version`` this stage started before a crash kept it from saying so."""
        for rollout in self.services.rollouts.list(endpoint=endpoint, limit=5):
            if rollout.candidate_version == version and \
                    context.made_here(rollout.created_by, rollout.created_at):
                return int(rollout.id)
        return None

    def _start(self, context: StageContext, endpoint: str, model: str, version: int) -> Any:
        from control_plane.rollouts.schemas import RolloutCreate

        template = context.spec.deploy.rollout.model_dump()
        spec = RolloutCreate(endpoint=endpoint, model_ref=f"{model}:{version}", **template)
        return self.services.rollouts.start(spec, run_principal(context.run))

    def _first_deploy(self, context: StageContext, endpoint: str, model: str, version: int) -> Outcome:
        from control_plane.leadership import request_apply
        from control_plane.schemas import DeployRequest

        self.services.deployments.deploy(
            DeployRequest(endpoint=endpoint, model_ref=f"{model}:{version}"),
            run_principal(context.run))
        # Applied by the leader's own loop within half a second, not on this pass: Serve's
        # calls have no deadline, and a wedged Serve controller held the pass (and every
        # pipeline with it) for good.
        request_apply(self.services.db, endpoint)
        return Outcome(StageState.PASSED, outputs={"deployed": f"{model}:{version}",
                                                   "endpoint": endpoint},
                       reason="a new endpoint: deployed directly, no rollout")


def now_utc() -> datetime:
    return datetime.now(UTC)
