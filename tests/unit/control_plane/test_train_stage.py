"""The training stage against a job API that stalls or fails: every call has a deadline,
and not being able to ask Ray is not taken for an answer about the job."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray
import yaml

from control_plane.pipelines import stages
from control_plane.pipelines.records import StageRecord, StageState
from control_plane.pipelines.spec import parse_pipeline_spec
from control_plane.pipelines.stages import VALIDATED_DIGEST, StageContext, TrainStage
from tests.waiting import wait_for
from training import submission
from training.errors import JobSubmissionError
from training.schemas import JobSpec
from training.submission import JobClient, no_such_job

EXAMPLES = Path(__file__).parents[3] / "examples"
STARTED = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def answers_taken_on_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass takes the job API's answer when it comes within the wait, and these tests
    read each pass's outcome: on a loaded machine a fake API's answer (a token written to
    SQLite) may take longer than the second a pass waits in service."""
    monkeypatch.setattr(stages, "JOB_API_WAIT_S", 30.0)


class StallingDashboard(BaseHTTPRequestHandler):
    """Answers the version check as Ray's dashboard does, then never answers a job call."""

    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/api/version":
            body = json.dumps({"version": "x", "ray_version": ray.__version__,
                               "ray_commit": "x"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.release.wait(60)  # taken, never answered

    def do_POST(self) -> None:
        self.release.wait(60)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stalling_dashboard(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(submission, "JOB_API_TIMEOUT_S", (2.0, 0.5))
    StallingDashboard.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StallingDashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        StallingDashboard.release.set()
        server.shutdown()
        server.server_close()


def _within(seconds: float, call: Any) -> BaseException | None:
    """Run ``call`` on a thread; fail the test if it is still running after ``seconds``."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call still waits after {seconds} s"
    return raised[0] if raised else None


def test_a_job_api_that_takes_the_call_and_never_answers_is_given_up_on(
        stalling_dashboard: str) -> None:
    client = JobClient(stalling_dashboard)
    for call in (lambda: client.status("job-1"), lambda: client.stop("job-1"),
                 lambda: client.logs("job-1")):
        error = _within(15, call)
        assert isinstance(error, JobSubmissionError), error
        assert "did not answer within 0.5 s" in error.message
        assert stalling_dashboard in error.message


def test_a_dashboard_that_never_answers_its_version_check_is_given_up_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submission, "JOB_API_TIMEOUT_S", (2.0, 0.5))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel takes the connection; nobody ever reads it
    try:
        error = _within(15, lambda: JobClient(f"http://127.0.0.1:{listener.getsockname()[1]}"))
    finally:
        listener.close()
    assert isinstance(error, JobSubmissionError), error
    assert "cannot reach Ray's job API" in error.message


class JobApi:
    """Ray's job API as the stage sees it: a status, or a failure to answer, on connecting
    (the client's version check) or on the call itself."""

    def __init__(self) -> None:
        self.status_now = "RUNNING"
        self.failing: JobSubmissionError | None = None
        self.fails_at = "status"
        self.stopped: list[str] = []
        self.jobs: dict[str, Any] = {}
        self.submissions: list[str] = []  # the job token each submission carried
        self.takes_submissions = True
        self.submit_fails: JobSubmissionError | None = None
        self.specs: list[dict[str, Any]] = []

    def connect(self) -> JobApi:
        if self.failing is not None and self.fails_at == "connect":
            raise self.failing
        return self

    def status(self, job_id: str) -> str:
        if self.failing is not None:
            raise self.failing
        return self.status_now

    def stop(self, job_id: str) -> bool:
        if self.failing is not None:
            raise self.failing
        self.stopped.append(job_id)
        return True

    def info(self, job_id: str) -> Any:
        if self.failing is not None:
            raise self.failing
        if job_id not in self.jobs:
            raise no_such_job(job_id, "http://head:8265")
        return self.jobs[job_id]

    def submit(self, entrypoint: str, runtime_env: dict[str, Any], *, submission_id: str,
               metadata: dict[str, str]) -> str:
        self.submissions.append(metadata["modelplane_token"])
        spec = Path(runtime_env["working_dir"]) / "job.yaml"  # the job's own spec, as sent
        self.specs.append(yaml.safe_load(spec.read_text()) if spec.exists() else {})
        if self.takes_submissions:
            self.jobs[submission_id] = metadata
        if self.submit_fails is not None:
            raise self.submit_fails
        return submission_id


def _context(after_s: float, timeout_s: float = 600) -> StageContext:
    job = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
    spec = parse_pipeline_spec({"name": "bc", "training": {"job": job, "timeout_s": timeout_s},
                                "deploy": {"endpoint": "bc"}})
    record = StageRecord(name="train", state=StageState.RUNNING, started_at=STARTED,
                         progress={"submission_id": "pipeline-bc-1-ab", "submitted": True})
    return StageContext(run=None, spec=spec, record=record,  # type: ignore[arg-type]
                        now=STARTED + timedelta(seconds=after_s))


def _stage(api: JobApi) -> TrainStage:
    return TrainStage(services=None, job_client=api.connect)


@pytest.mark.parametrize("fails_at", ["connect", "status"])
def test_a_job_api_that_cannot_answer_leaves_the_stage_running_until_its_timeout(
        db: Any, fails_at: str) -> None:
    api = JobApi()
    stage = TrainStage(Services(db), job_client=api.connect)
    submitted = {"submission_id": "pipeline-bc-1-ab", "submitted": True}
    assert stage.advance(_fresh(60, submitted)).state is StageState.RUNNING
    api.failing = JobSubmissionError("Ray's job API at http://head:8265 did not answer within "
                                     "30 s", detail={})
    api.fails_at = fails_at
    during = stage.advance(_fresh(120, submitted))
    assert during.state is StageState.RUNNING  # the job runs on; the stage asks again
    assert during.outputs["status"].startswith("UNKNOWN: ") and "30 s" in during.outputs["status"]
    after = stage.advance(_fresh(601, submitted))
    assert after.state is StageState.FAILED
    assert "did not answer within 30 s" in after.reason
    assert "training.timeout_s (600 s) has passed" in after.reason
    assert "modelplane train stop pipeline-bc-1-ab" in after.reason
    assert after.stop_owed  # the control loop stops the job once Ray's job API answers
    api.failing = None  # back: an overdue job is stopped as before
    overdue = stage.advance(_fresh(602, submitted))
    assert overdue.state is StageState.FAILED and api.stopped == ["pipeline-bc-1-ab"]


def test_a_job_the_cluster_no_longer_knows_fails_the_stage_at_once() -> None:
    api = JobApi()
    api.failing = no_such_job("pipeline-bc-1-ab", "http://head:8265")
    outcome = _stage(api).advance(_context(after_s=30))
    assert outcome.state is StageState.FAILED and "no job pipeline-bc-1-ab" in outcome.reason


def test_a_pass_over_a_stalled_dashboard_comes_back_at_once_and_the_look_goes_on_off_it(
        stalling_dashboard: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the real client: one pipeline's pass waits a moment for Ray's
    job API, never the client's deadline (every pipeline's pass waited on it); the look
    goes on off the pass, and its failure to answer is what a later pass says."""
    monkeypatch.setattr(submission, "JOB_API_TIMEOUT_S", (2.0, 1.5))
    monkeypatch.setattr(stages, "JOB_API_WAIT_S", 1.0)  # as in service
    stage = TrainStage(services=None, job_client=lambda: JobClient(stalling_dashboard))
    context = _context(after_s=60)
    other = dataclasses.replace(context, record=context.record.model_copy(update={
        "progress": {"submission_id": "pipeline-other-1-cd", "submitted": True}}))
    for passing in (context, other):  # the second waits for the API's one thread
        started = time.monotonic()
        outcome = stage.advance(passing)
        assert time.monotonic() - started < 5.0, "the pass waited on the job API"
        assert outcome.state is StageState.RUNNING and "status" not in outcome.outputs
    assert stage.job_api.running == 1  # one call to the job API at a time

    def said() -> Any:
        outcome = stage.advance(context)
        return outcome if "status" in outcome.outputs else None

    outcome = wait_for(said, 20, "the look to come back", interval=0.2)
    assert outcome.state is StageState.RUNNING
    assert outcome.outputs["status"].startswith("UNKNOWN: ")
    assert "did not answer within 1.5 s" in outcome.outputs["status"]


NO_ANSWER = JobSubmissionError("Ray's job API at http://head:8265 did not answer within 30 s",
                               detail={"address": "http://head:8265", "answered": False})


class Services:
    """What the stage uses of the control plane: its tokens (on a real store)."""

    def __init__(self, db: Any) -> None:
        from control_plane.auth import TokenService

        self.db, self.tokens = db, TokenService(db)

    def active_tokens(self) -> list[str]:
        return [t.name for t in self.tokens.list() if t.revoked_at is None and
                t.name.startswith("job-")]


def _fresh(after_s: float, progress: dict[str, Any],
           earlier: list[StageRecord] | None = None) -> StageContext:
    context = _context(after_s)
    run = SimpleNamespace(pipeline="bc", number=1, author="alice", stages=earlier or [])
    record = context.record.model_copy(update={"progress": progress})
    return StageContext(run=run, spec=context.spec, record=record,  # type: ignore[arg-type]
                        now=context.now)


@pytest.mark.parametrize("ray_took_it", [True, False])
def test_a_submission_ray_gave_no_answer_to_is_found_by_its_id_or_made_again(
        db: Any, ray_took_it: bool) -> None:
    api, services = JobApi(), Services(db)
    stage = TrainStage(services, job_client=api.connect)
    api.takes_submissions, api.submit_fails = ray_took_it, NO_ANSWER
    first = stage.advance(_fresh(10, {"submission_id": "pipeline-bc-1-ab"}))
    assert first.state is StageState.RUNNING and first.outputs["status"].startswith("UNKNOWN")
    assert "did not answer within 30 s" in first.outputs["status"]
    assert first.progress is not None and not first.progress.get("submitted")
    # The job may hold the token it was sent with: it is not revoked.
    assert services.active_tokens() == ["job-pipeline-bc-1-ab"]
    # It acts for the pipeline's author, on the job's model only.
    minted = {t.name: t for t in services.tokens.list()}["job-pipeline-bc-1-ab"]
    trained = JobSpec.model_validate(_context(10).spec.training.job).model_name
    assert (minted.subject, minted.model) == ("alice", trained)
    api.submit_fails = None
    second = stage.advance(_fresh(11, first.progress))
    assert second.state is StageState.RUNNING and second.progress["submitted"] is True
    if ray_took_it:  # found by its id: not submitted twice
        assert api.submissions == ["job-pipeline-bc-1-ab"]
        assert services.active_tokens() == ["job-pipeline-bc-1-ab"]
    else:  # submitted again, with a token of its own; the unused one is revoked
        assert api.submissions == ["job-pipeline-bc-1-ab", "job-pipeline-bc-1-ab.2"]
        assert services.active_tokens() == ["job-pipeline-bc-1-ab.2"]


@pytest.mark.parametrize("cancelled", ["never", "before", "during", "during-unanswered"])
def test_a_run_cancelled_while_its_job_was_submitted_has_that_job_stopped(
        db: Any, cancelled: str) -> None:
    """The submission runs off the pass, and a cancel does not wait for the pass: a run
    ended meanwhile is never looked at again, so the submission itself makes no job for
    an ended run, and stops the one Ray took while the run was cancelled (answered or not)."""
    from control_plane.store.models import PipelineRunRow

    with db.session() as session:
        session.add(PipelineRunRow(pipeline="bc", number=1, trigger="manual", spec={},
                                   created_by="alice",
                                   state="cancelled" if cancelled == "before" else "running"))
    api = JobApi()
    taking = api.submit

    def cancelled_meanwhile(*args: Any, **kwargs: Any) -> str:
        with db.session() as session:
            session.query(PipelineRunRow).update({"state": "cancelled"})
        return taking(*args, **kwargs)

    if cancelled.startswith("during"):
        api.submit = cancelled_meanwhile  # type: ignore[method-assign]
        api.submit_fails = NO_ANSWER if cancelled == "during-unanswered" else None
    stage = TrainStage(Services(db), job_client=api.connect)
    try:
        outcome = stage.advance(_fresh(10, {"submission_id": "pipeline-bc-1-ab"}))
    except JobSubmissionError as error:  # the stage fails (its run has ended anyway)
        assert cancelled == "before" and "ended before its job was submitted" in error.message
        assert api.submissions == [] and api.stopped == []
        return
    assert api.submissions == ["job-pipeline-bc-1-ab"]
    assert outcome.state is StageState.RUNNING
    assert api.stopped == ([] if cancelled == "never" else ["pipeline-bc-1-ab"])


def test_the_job_is_sent_the_digest_of_the_data_its_run_checked(db: Any) -> None:
    """Held to it only once it had trained: a file changed after the data stage cost the
    whole training before the version was refused. The job refuses other data at once
    (training.data.load_dataset, data.digest)."""
    api, services = JobApi(), Services(db)
    checked = StageRecord(name="validate_data", state=StageState.PASSED,
                          outputs={VALIDATED_DIGEST: "c" * 64})
    outcome = TrainStage(services, job_client=api.connect).advance(
        _fresh(10, {"submission_id": "pipeline-bc-1-ab"}, [checked]))
    assert outcome.state is StageState.RUNNING, outcome.reason
    assert api.specs[-1]["data"]["digest"] == "c" * 64
    TrainStage(services, job_client=api.connect).advance(
        _fresh(10, {"submission_id": "pipeline-bc-1-cd"}))  # a run without a data stage
    assert "digest" not in api.specs[-1]["data"]


@pytest.mark.parametrize("ends", ["cancelled", "timed out"])
def test_a_submission_ray_may_take_late_finds_its_token_revoked_once_the_stage_is_over(
        db: Any, ends: str) -> None:
    """Ray gave no answer, so the token was kept (the job may hold it); cancelled then, or
    failed at training.timeout_s, a job Ray took late trained and registered a version,
    and moved its alias, for a run that was over."""
    api, services = JobApi(), Services(db)
    stage = TrainStage(services, job_client=api.connect)
    api.takes_submissions, api.submit_fails = False, NO_ANSWER
    first = stage.advance(_fresh(10, {"submission_id": "pipeline-bc-1-ab"}))
    assert services.active_tokens() == ["job-pipeline-bc-1-ab"]
    if ends == "cancelled":
        stage.cancel(_fresh(20, first.progress))
    else:
        over = stage.advance(_fresh(10**6, first.progress))
        assert over.state is StageState.FAILED and "token is revoked" in over.reason
    assert services.active_tokens() == []


def test_a_cancel_ray_cannot_be_asked_about_revokes_every_token_the_job_may_hold(
        db: Any) -> None:
    """The job API away at the cancel: the job, which ran on, trained and registered for a
    cancelled run. The record said one attempt; a second, whose record did not land, had
    minted a token too."""
    api, services = JobApi(), Services(db)
    stage = TrainStage(services, job_client=api.connect)
    api.takes_submissions, api.submit_fails = False, NO_ANSWER
    first = stage.advance(_fresh(10, {"submission_id": "pipeline-bc-1-ab"}))
    api.submit_fails = None
    api.takes_submissions = True
    second = stage.advance(_fresh(11, first.progress))
    assert second.progress is not None and second.progress["attempt"] == 2
    assert services.active_tokens() == ["job-pipeline-bc-1-ab.2"]
    from control_plane.pipelines.stages import run_principal
    from control_plane.schemas import Role, TokenCreate

    trained = JobSpec.model_validate(_context(10).spec.training.job).model_name
    services.tokens.create(TokenCreate(name="job-pipeline-bc-1-abc", role=Role.TRAINER,
                                       model=trained, expires_in_minutes=60),
                           run_principal(_fresh(0, {}).run))  # another job's, alike in name
    api.failing = NO_ANSWER
    with pytest.raises(JobSubmissionError):
        stage.cancel(_fresh(20, first.progress))  # the record as it stood: attempt 1
    assert services.active_tokens() == ["job-pipeline-bc-1-abc"]


def test_once_a_submission_is_taken_every_earlier_attempt_s_token_is_revoked(db: Any) -> None:
    api, services = JobApi(), Services(db)
    stage = TrainStage(services, job_client=api.connect)
    api.takes_submissions, api.submit_fails = False, NO_ANSWER
    progress: dict[str, Any] = {"submission_id": "pipeline-bc-1-ab"}
    for second in (10, 11):  # two submissions Ray gave no answer to, nor took
        progress = stage.advance(_fresh(second, progress)).progress or progress
    api.takes_submissions, api.submit_fails = True, None
    taken = stage.advance(_fresh(12, progress))
    assert taken.progress is not None and taken.progress["submitted"] is True
    assert services.active_tokens() == ["job-pipeline-bc-1-ab.3"]


def test_a_submission_ray_took_late_is_followed_with_the_token_it_carries(db: Any) -> None:
    """Ray gave no answer, and its head was slow to list the job at the next look: the
    stage revoked the token the job carried, submitted again, took Ray's "already exists"
    for a refusal and failed, while the job trained on unable to register."""
    api, services = JobApi(), Services(db)
    stage = TrainStage(services, job_client=api.connect)
    api.takes_submissions, api.submit_fails = False, NO_ANSWER
    first = stage.advance(_fresh(10, {"submission_id": "pipeline-bc-1-ab"}))
    api.submit_fails = JobSubmissionError(
        "Ray's job API at http://head:8265 failed: Job with submission_id pipeline-bc-1-ab "
        "already exists", detail={"answered": True})
    late = {"modelplane_token": api.submissions[0]}  # the first submission, with its token

    def taken_late(*args: Any, **kwargs: Any) -> str:
        api.jobs["pipeline-bc-1-ab"] = late  # listed only now
        raise api.submit_fails  # type: ignore[misc]

    api.submit = taken_late  # type: ignore[method-assign]
    second = stage.advance(_fresh(11, first.progress))
    assert second.state is StageState.RUNNING and second.progress["submitted"] is True
    assert services.active_tokens() == ["job-pipeline-bc-1-ab"]  # the late job's own


def test_a_submission_ray_refuses_fails_the_stage_and_revokes_its_token(db: Any) -> None:
    api, services = JobApi(), Services(db)
    api.takes_submissions = False
    api.submit_fails = JobSubmissionError("Ray's job API at http://head:8265 failed: "
                                          "runtime_env is invalid", detail={"answered": True})
    with pytest.raises(JobSubmissionError, match="runtime_env is invalid"):
        TrainStage(services, job_client=api.connect).advance(
            _fresh(10, {"submission_id": "pipeline-bc-1-ab"}))
    assert services.active_tokens() == []


def test_the_version_the_stage_passes_is_the_one_its_own_job_registered(registry: Any,
                                                                        tracker: Any) -> None:
    """Another trainer token reads the job id (pipeline runs are open to readers), tags a
    run of its own with it, and registers versions naming that run or the job's own run as
    their lineage, after the job's: the stage passes the job's version, not a later one."""
    from control_plane.auth import TokenService
    from control_plane.errors import PermissionDeniedError
    from control_plane.pipelines.stages import pipeline_principal
    from control_plane.schemas import Role, RunCreate, TokenCreate, VersionCreate
    from tests.onnx_models import linear_classifier, linear_classifier_manifest
    from tests.unit.control_plane.conftest import ADMIN

    job_id = "pipeline-bc-1-ab"
    tokens = TokenService(registry.db)
    minted = tokens.create(TokenCreate(name=f"job-{job_id}", role=Role.TRAINER,
                                       expires_in_minutes=60), pipeline_principal("bc"))
    job = tokens.authenticate(minted.token)
    other = tokens.authenticate(tokens.create(TokenCreate(
        name="another-job", role=Role.TRAINER, expires_in_days=1), ADMIN).token)

    def register(actor: Any, run_id: str, seed: int) -> int:
        digest = registry.artifacts.put([linear_classifier(seed=seed)]).digest
        manifest = linear_classifier_manifest(lineage={"run_id": run_id,
                                                       "dataset_digest": "a" * 64})
        return registry.register_version("breast-cancer", VersionCreate(
            artifact_digest=digest, manifest=manifest), actor).version

    tagged = {"ray_job_submission_id": job_id}
    run = tracker.start_run(RunCreate(experiment="bc", tags=tagged), job)
    mine = register(job, run.id, seed=1)
    forged = tracker.start_run(RunCreate(experiment="bc", tags=tagged), other)
    register(other, forged.id, seed=2)
    with pytest.raises(PermissionDeniedError, match="only a run it started"):
        register(other, run.id, seed=3)  # a claim on another job's run

    api = JobApi()
    api.status_now, api.jobs[job_id] = "SUCCEEDED", {}
    services = SimpleNamespace(db=registry.db, tokens=tokens)
    outcome = TrainStage(services, job_client=api.connect).advance(_fresh(60, {
        "submission_id": job_id, "submitted": True, "attempt": 1}))
    assert outcome.state is StageState.PASSED, outcome.reason
    assert (outcome.outputs["run_id"], outcome.outputs["version"]) == (run.id, mine)
    # Killed after it registered (its process lost, the OOM killer), the job ends FAILED
    # with its version standing: a failed stage had the pipeline train another. A job
    # stopped (cancelled) passes nothing.
    api.logs = lambda job_id: "Traceback ...\nKilled"  # type: ignore[attr-defined]
    for status, passed in (("FAILED", True), ("STOPPED", False)):
        api.status_now = status
        outcome = TrainStage(services, job_client=api.connect).advance(_fresh(60, {
            "submission_id": job_id, "submitted": True, "attempt": 1}))
        assert (outcome.state is StageState.PASSED) is passed, outcome.reason
        if passed:
            assert outcome.outputs["version"] == mine and outcome.outputs["status"] == "FAILED"
        else:
            assert outcome.reason == f"training job {job_id} ended STOPPED: Killed"

    # The data stage checked the bytes the job then trained on: passed. Trained on other
    # bytes (the file changed between the two stages: rows nobody validated), the stage
    # fails and the version is rejected, so nobody deploys it by hand either.
    api.status_now = "SUCCEEDED"
    services.registry = registry
    for checked, passed in (("a" * 64, True), ("b" * 64, False)):
        data_stage = StageRecord(name="validate_data", state=StageState.PASSED,
                                 inputs={"uri": "rows.csv"}, outputs={VALIDATED_DIGEST: checked})
        outcome = TrainStage(services, job_client=api.connect).advance(_fresh(60, {
            "submission_id": job_id, "submitted": True, "attempt": 1}, [data_stage]))
        assert (outcome.state is StageState.PASSED) is passed, outcome.reason
        assert outcome.outputs["version"] == mine
    assert "trained on other data than the data stage checked" in outcome.reason
    assert "changed between the two stages" in outcome.reason
    rejected = registry.get_version("breast-cancer", mine)
    assert rejected.status == "rejected" and "pipeline bc run #1, train" in rejected.status_reason


def test_only_the_job_api_s_own_404_says_a_job_is_missing() -> None:
    import requests

    client = object.__new__(JobClient)
    client.address = "http://head:4040"

    def failing(error: Exception) -> JobSubmissionError:
        def call(job_id: str) -> None:
            raise error
        with pytest.raises(JobSubmissionError) as raised:
            client._call(call, "pipeline-nightly-404-0a1b2c3d")
        return raised.value

    refused = failing(requests.ConnectionError(
        "HTTPConnectionPool(host='head', port=4040): Max retries exceeded with url: "
        "/api/jobs/pipeline-nightly-404-0a1b2c3d (Caused by NewConnectionError('refused'))"))
    assert not submission.job_missing(refused) and refused.detail["answered"] is False
    server = failing(RuntimeError("Request failed with status code 500: job 404 broke."))
    assert not submission.job_missing(server) and server.detail["answered"] is True
    missing = failing(RuntimeError(
        "Request failed with status code 404: Job pipeline-nightly-404-0a1b2c3d does not exist."))
    assert submission.job_missing(missing) and "no job pipeline-nightly-404" in missing.message


@pytest.mark.parametrize("fails", ["connect", "info"])
def test_a_job_api_away_before_the_submission_leaves_the_stage_running(fails: str) -> None:
    api = JobApi()
    api.fails_at = "connect" if fails == "connect" else "status"
    api.failing = JobSubmissionError(
        "cannot reach Ray's job API at http://head:8265" if fails == "connect" else
        "Ray's job API at http://head:8265 failed: Request failed with status code 503",
        detail={"address": "http://head:8265", "answered": fails != "connect"})
    outcome = _stage(api).advance(_fresh(30, {"submission_id": "pipeline-bc-1-ab"}))
    assert outcome.state is StageState.RUNNING, outcome.reason
    assert outcome.outputs["status"].startswith("UNKNOWN: ")


def test_a_dashboard_that_refuses_connections_is_not_a_refused_submission() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens once it is closed
    with pytest.raises(JobSubmissionError) as raised:
        JobClient(f"http://127.0.0.1:{port}")
    assert raised.value.detail["answered"] is False and not raised.value.detail.get("refused")


@pytest.fixture(autouse=True)
def fresh_job_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own job-log gate: a log shared for seconds is not another test's."""
    from control_plane.pipelines import stages

    monkeypatch.setattr(stages, "_JOB_LOGS", stages.ReadGate(
        1, 5.0, busy=lambda: RuntimeError("busy")))


def test_a_runs_job_output_is_its_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's output over days of epochs was fetched whole and sent on every look."""
    from control_plane.pipelines import stages
    from control_plane.pipelines.stages import LOG_TAIL_CHARS

    monkeypatch.setattr(stages, "JOB_LOG_WAIT_S", 60.0)  # every asker waits for the one read
    api = JobApi()
    lines = [f"epoch {i}: loss 0.{i:06d}" for i in range(200_000)]
    asked: list[str] = []

    def logs(job_id: str) -> str:
        asked.append(job_id)
        time.sleep(0.2)
        return "\n".join(lines)

    api.logs = logs  # type: ignore[attr-defined]
    record = _context(after_s=30).record
    shown: list[str] = []
    # Many asking at once: the job API is asked once, and each gets the one tail (a whole
    # log each held the process's memory many times over).
    readers = [threading.Thread(target=lambda: shown.append(_stage(api).logs(record)))
               for _ in range(8)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=60)
    assert len(shown) == 8 and len(set(shown)) == 1 and len(asked) == 1
    assert len(shown[0]) < LOG_TAIL_CHARS + 100 and shown[0].endswith(lines[-1])
    assert shown[0].startswith(f"({len(chr(10).join(lines)) - LOG_TAIL_CHARS} characters before")
    monkeypatch.setattr(stages, "_JOB_LOGS", stages.ReadGate(1, 0.0, busy=RuntimeError))
    api.logs = lambda job_id: "short"  # type: ignore[attr-defined]
    assert _stage(api).logs(record) == "short"


def test_a_failed_job_whose_logs_cannot_be_read_fails_its_stage_at_once(registry: Any) -> None:
    """The job's last line is a courtesy: a log download that kept timing out held the
    ended job's stage running until training.timeout_s."""
    api = JobApi()
    api.status_now, api.jobs["pipeline-bc-1-ab"] = "FAILED", {}

    def logs(job_id: str) -> str:
        raise JobSubmissionError("Ray's job API at http://head:8265 did not answer within "
                                 "30 s", detail={})

    api.logs = logs  # type: ignore[attr-defined]
    stage = TrainStage(SimpleNamespace(db=registry.db), job_client=api.connect)
    outcome = stage.advance(_fresh(60, {"submission_id": "pipeline-bc-1-ab", "submitted": True,
                                        "attempt": 1}))
    assert outcome.state is StageState.FAILED, outcome.reason
    assert outcome.reason == "training job pipeline-bc-1-ab ended FAILED"
