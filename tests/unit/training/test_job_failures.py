"""What a job says when Ray Train cannot start its workers: one line a person can act on."""

from __future__ import annotations

from typing import Any

import pytest

from training.capacity import ClusterCapacity, NodeCapacity, plan_placement
from training.errors import ResourcesUnavailableError, TrainingError
from training.runner import training_failure
from training.spec import parse_job_spec

SPEC = parse_job_spec({"experiment": {"name": "x"}, "model": {"architecture": "mlp_classifier"},
                       "data": {"dataset": "digits"},
                       "resources": {"num_workers": 1, "placement_timeout_s": 30}})


def cluster(free: float) -> ClusterCapacity:
    return ClusterCapacity("10.0.0.1:6379", (NodeCapacity("n0", {"CPU": 2.0}, {"CPU": free},
                                                          {"CPU": 0.3}),))


PLACEMENT = plan_placement(SPEC.resources, cluster(1.7))


def test_a_placement_timeout_in_ray_train_reads_as_the_jobs_own_with_the_figures_now() -> None:
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    # Free when the job looked; another job took the CPU before Ray Train placed the group.
    error = training_failure(ControllerError(WorkerGroupStartupTimeoutError(1)), SPEC, PLACEMENT,
                             "run-1", read_cluster=lambda where: cluster(0.7))
    assert isinstance(error, ResourcesUnavailableError)
    assert error.message.startswith("resources.placement_timeout_s: the workers (1 worker x 1 "
                                    "CPU) could not be placed within 30 s; the cluster at "
                                    "10.0.0.1:6379 has 2 CPU, of which 0.3 are held by Serve "
                                    "replicas and 1 by other work")
    assert "\n" not in error.message


def test_workers_that_fail_to_start_are_reported_once_with_the_cause() -> None:
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError

    try:
        try:
            raise RuntimeError("The actor died unexpectedly: out of memory\nmore detail")
        except RuntimeError as cause:
            raise WorkerGroupStartupFailedError("At least one worker failed") from cause
    except WorkerGroupStartupFailedError as failed:
        error = training_failure(ControllerError(failed), SPEC, PLACEMENT, "run-1",
                                 read_cluster=pytest.fail)
    assert type(error) is TrainingError
    assert error.message.startswith("the 1 worker x 1 CPU did not start: The actor died "
                                    "unexpectedly: out of memory;")
    assert "\n" not in error.message and error.detail == {"run_id": "run-1"}


class EndingClient:
    """The control plane as a job's driver meets it while it restarts: away, then back."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.ended: list[tuple[str, str]] = []
        self.attempts = 0

    def end_run(self, run_id: str, status: str) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        self.ended.append((run_id, status))


@pytest.fixture
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    from training import patience

    monkeypatch.setattr(patience, "PAUSES_S", (0.0, 0.0, 0.0))


def test_a_run_is_ended_once_the_control_plane_answers_again(no_pauses: None) -> None:
    from control_plane.errors import (
        ControlPlaneError,
        ControlPlaneUnavailableError,
        StoreUnavailableError,
    )
    from training.runner import _end_run

    client = EndingClient(ControlPlaneUnavailableError("cannot reach the control plane"),
                          StoreUnavailableError("the store cannot be reached"),
                          ControlPlaneError("no healthy replica", detail={"status": 503}))
    _end_run(client, "run-1", "finished")
    assert client.ended == [("run-1", "finished")] and client.attempts == 4


def test_a_refused_end_is_not_asked_again_and_an_absent_plane_is_given_up_on(
        no_pauses: None) -> None:
    from control_plane.errors import ConflictError, ControlPlaneUnavailableError
    from training.runner import _end_run

    refused = EndingClient(ConflictError("run run-1 already ended as killed"))
    with pytest.raises(ConflictError):
        _end_run(refused, "run-1", "finished")
    assert refused.attempts == 1
    away = EndingClient(*[ControlPlaneUnavailableError("cannot reach it")] * 10)
    with pytest.raises(ControlPlaneUnavailableError):
        _end_run(away, "run-1", "failed")
    assert away.attempts == 4 and away.ended == []  # three pauses, four asks


def test_a_registered_versions_alias_is_pointed_once_the_control_plane_answers_again(
        no_pauses: None) -> None:
    """The version is registered, then the control plane restarts: the job asks again for
    its alias rather than failing with its version left without one (an endpoint tracking
    the alias would never roll it out)."""
    from types import SimpleNamespace

    from control_plane.errors import ControlPlaneError, ControlPlaneUnavailableError
    from training.registration import register

    class Registry:
        def __init__(self) -> None:
            self.failures = [ControlPlaneUnavailableError("cannot reach the control plane"),
                             ControlPlaneError("no healthy replica", detail={"status": 503})]
            self.registered: list[str] = []
            self.aliased: list[tuple[str, int]] = []
            self.alias_keys: list[str] = []

        def register_version(self, model: str, artifact: bytes, manifest: object, *,
                             description: str, idempotency_key: str) -> object:
            self.registered.append(model)
            return SimpleNamespace(model=model, version=7)

        def set_alias(self, model: str, alias: str, version: int, *,
                      idempotency_key: str) -> object:
            self.alias_keys.append(idempotency_key)
            if self.failures:
                raise self.failures.pop(0)
            self.aliased.append((alias, version))
            return SimpleNamespace(model=model, version=version)

    spec = SimpleNamespace(model_name="bc", experiment=SimpleNamespace(name="bc"),
                           model=SimpleNamespace(architecture="mlp"),
                           registration=SimpleNamespace(alias="challenger", description=""))
    client = Registry()
    version = register(client, spec, b"onnx", manifest=object())  # type: ignore[arg-type]
    assert version.version == 7 and client.registered == ["bc"]  # registered once
    assert client.aliased == [("challenger", 7)]
    # Every try with one key: a move that landed unanswered is answered again, never made
    # again over another job's move made since.
    assert len(client.alias_keys) == 3 and len(set(client.alias_keys)) == 1


def test_a_control_plane_that_takes_calls_and_never_answers_holds_a_job_a_bounded_time() -> None:
    """Each try of a registration may wait out the registry's check (420 s): after one that
    timed out a second is made, not six more (49 minutes of a finished job)."""
    from control_plane.client import REGISTER_TIMEOUT_S
    from control_plane.errors import ControlPlaneUnavailableError
    from training.patience import PATIENCE_S, PAUSES_S, patiently

    now = [0.0]
    tries: list[float] = []

    def wait(seconds: float) -> None:
        now[0] += seconds

    def hung() -> None:
        tries.append(now[0])
        wait(REGISTER_TIMEOUT_S)  # the read timeout
        raise ControlPlaneUnavailableError("the control plane did not answer (ReadTimeout)")

    with pytest.raises(ControlPlaneUnavailableError):
        patiently(hung, give_up_after_s=REGISTER_TIMEOUT_S + PATIENCE_S, clock=lambda: now[0],
                  sleep=wait)
    assert tries == [0.0, REGISTER_TIMEOUT_S + PAUSES_S[0]]
    # Quick failures (a restart: connection refused) are asked again after every pause.
    now[0], tries[:] = 0.0, []

    def refused() -> None:
        tries.append(now[0])
        raise ControlPlaneUnavailableError("connection refused")

    with pytest.raises(ControlPlaneUnavailableError):
        patiently(refused, clock=lambda: now[0], sleep=wait)
    assert len(tries) == len(PAUSES_S) + 1 and now[0] <= PATIENCE_S


class Hiccups:
    """Ray's job API for ``JobClient.follow``: RUNNING, then ``fails`` (the head busy), then
    SUCCEEDED."""

    def __init__(self, fails: list[Exception | None]) -> None:
        self.answers: list[Exception | str] = ["RUNNING", *[f or "RUNNING" for f in fails], "SUCCEEDED"]
        self.info_calls = 0

    def status(self, job_id: str) -> str:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def logs(self, job_id: str) -> str:
        return "epoch 1\n"

    def info(self, job_id: str) -> None:
        self.info_calls += 1


def _follower(api: Hiccups):
    from training.submission import JobClient

    client = JobClient.__new__(JobClient)
    client.status, client.logs, client.info = api.status, api.logs, api.info  # type: ignore[method-assign]
    return client


def test_following_a_job_asks_again_a_job_api_that_could_not_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One 30 s timeout out of hours of following made `train submit --wait` exit 1 for a
    job that went on to succeed."""
    from training.errors import JobSubmissionError

    monkeypatch.setattr("training.submission.time.sleep", lambda seconds: None)
    busy = JobSubmissionError("Ray's job API at http://head:8265 did not answer within 30 s",
                              detail={"answered": False})
    api = Hiccups([busy, busy])
    shown: list[str] = []
    assert _follower(api).follow("raysubmit_1", shown.append, poll_s=0) == "SUCCEEDED"
    assert api.info_calls == 1 and shown == ["epoch 1"]


def test_a_job_seen_succeeded_stays_succeeded_when_its_last_look_goes_unanswered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last look only revokes the job's token: unanswered, it made `train submit --wait`
    fail for a job that had succeeded."""
    from training.errors import JobSubmissionError

    monkeypatch.setattr("training.submission.time.sleep", lambda seconds: None)
    api = Hiccups([])

    def unanswered(job_id: str) -> None:
        api.info_calls += 1
        raise JobSubmissionError("Ray's job API at http://head:8265 did not answer within 30 s",
                                 detail={"answered": False})

    follower = _follower(api)
    follower.info = unanswered  # type: ignore[method-assign]
    assert follower.follow("raysubmit_1", print, poll_s=0) == "SUCCEEDED"
    assert api.info_calls == 1


def test_a_stop_asked_of_an_earlier_job_in_this_process_is_not_this_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook stopped one job with Ctrl-C: the next one trained to its end, then was
    called stopped and registered nothing."""
    from control_plane.errors import ControlPlaneUnavailableError
    from training import runner

    runner.STOP_REQUESTED.set()
    runner.OVERDUE.append("an earlier job's deadline")

    def unreachable(self: object) -> None:  # the job's first call: nothing more runs here
        raise ControlPlaneUnavailableError("connection refused")

    monkeypatch.setattr("control_plane.client.Client.health", unreachable)
    with pytest.raises(ControlPlaneUnavailableError):
        runner.run_job(SPEC)
    assert not runner.STOP_REQUESTED.is_set() and not runner.OVERDUE


def test_following_gives_up_past_its_patience_saying_the_job_may_still_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from training.errors import JobSubmissionError

    monkeypatch.setattr("training.submission.time.sleep", lambda seconds: None)
    busy = JobSubmissionError("Ray's job API at http://head:8265 failed: 503",
                              detail={"answered": True})
    now = [0.0]

    def clock() -> float:
        now[0] += 100.0
        return now[0]

    with pytest.raises(JobSubmissionError, match="may still run: follow it with"):
        _follower(Hiccups([busy] * 10)).follow("raysubmit_1", print, poll_s=0, patience_s=300,
                                               clock=clock)


def test_a_registered_version_whose_alias_cannot_be_moved_is_named_not_lost(
        no_pauses: None) -> None:
    """The version is registered, then the control plane stays away past the job's
    patience: the job failed with "cannot reach the control plane", the version on no run,
    and a resubmission registered the same work a second time."""
    from types import SimpleNamespace

    from control_plane.errors import ControlPlaneUnavailableError
    from training.registration import AliasNotMovedError, register

    class Registry:
        def register_version(self, model: str, artifact: bytes, manifest: object, *,
                             description: str, idempotency_key: str) -> object:
            return SimpleNamespace(model=model, version=7)

        def set_alias(self, model: str, alias: str, version: int, *,
                      idempotency_key: str) -> object:
            raise ControlPlaneUnavailableError("cannot reach the control plane")

    spec = SimpleNamespace(model_name="bc", experiment=SimpleNamespace(name="bc"),
                           model=SimpleNamespace(architecture="mlp"),
                           registration=SimpleNamespace(alias="challenger", description=""))
    with pytest.raises(AliasNotMovedError) as failed:
        register(Registry(), spec, b"onnx", manifest=object())  # type: ignore[arg-type]
    assert failed.value.version.version == 7
    assert failed.value.detail == {"registered_version": "bc:7", "alias": "challenger"}
    assert "do not train again" in failed.value.message
    assert "modelplane models alias bc challenger 7" in failed.value.message


def test_the_calls_after_training_wait_for_a_restarting_control_plane(no_pauses: None) -> None:
    """Training done, the control plane restarting: one refused upload of the run's
    artifacts failed hours of work, and a failed run's reason was dropped."""
    from control_plane.errors import ControlPlaneUnavailableError
    from training.runner import _end_quietly

    class Restarting(EndingClient):
        def __init__(self) -> None:
            super().__init__(ControlPlaneUnavailableError("cannot reach it"))
            self.params: list[dict[str, Any]] = []
            self.refusals = 1

        def log_params(self, run_id: str, params: dict[str, Any]) -> None:
            if self.refusals:
                self.refusals -= 1
                raise ControlPlaneUnavailableError("cannot reach it")
            self.params.append(params)

    client = Restarting()
    _end_quietly(client, "run-1", "failed", "training diverged")
    assert client.params == [{"failure_reason": "training diverged"}]
    assert client.ended == [("run-1", "failed")]


def test_a_job_that_registered_its_version_succeeds_though_its_last_bookkeeping_cannot(
        no_pauses: None) -> None:
    """The version registered and its alias moved, the control plane went away: the job
    exited 1, its pipeline stage failed, while the version (and the alias) stood."""
    from control_plane.errors import ControlPlaneUnavailableError
    from training.runner import JobResult, _end_finished, _note_registered

    away = EndingClient(*[ControlPlaneUnavailableError("cannot reach it")] * 100)
    away.log_params = lambda run_id, params: away.end_run(run_id, "noting")  # type: ignore[attr-defined]
    said: list[str] = []
    _note_registered(away, "run-1", "bc:7", said.append)
    registered = JobResult("run-1", "bc", 7, 3, False, {}, 0.0)
    _end_finished(away, "run-1", registered, said.append)
    assert [line.split(":")[0] for line in said] == ["warning"] * 2
    assert "the control plane ends it once it sees the job ended" in said[1]
    unregistered = JobResult("run-1", "bc", None, 3, False, {}, 0.0)
    with pytest.raises(ControlPlaneUnavailableError):  # nothing stands: the job did not finish
        _end_finished(away, "run-1", unregistered, said.append)


def test_workers_that_may_restart_get_the_whole_placement_time_at_every_start() -> None:
    """Ray Train reads one start deadline for every start of the worker group: a restart
    after a worker died had only what the first start left of the wait (5 s)."""
    from types import SimpleNamespace

    from training.runner import MIN_WORKER_GROUP_START_S, worker_group_start_s

    once = SimpleNamespace(max_failures=0, placement_timeout_s=600)
    restarting = SimpleNamespace(max_failures=2, placement_timeout_s=600)
    assert worker_group_start_s(once, 2.0) == MIN_WORKER_GROUP_START_S
    assert worker_group_start_s(once, 420.0) == 420.0
    assert worker_group_start_s(restarting, 2.0) == 600.0


def test_a_fine_tune_source_the_control_plane_cannot_answer_for_is_no_bad_spec(
        no_pauses: None) -> None:
    """Asked again while the control plane restarts; still away, the job fails saying so,
    not that model.init_from is wrong. A version that does not exist is the spec's fault."""
    from control_plane.errors import ControlPlaneUnavailableError, NotFoundError
    from training.errors import InvalidJobSpecError
    from training.finetune import load_fine_tune_source

    class Resolving:
        def __init__(self, *failures: Exception) -> None:
            self.failures, self.asked = list(failures), 0

        def resolve(self, ref: str) -> Any:
            self.asked += 1
            raise self.failures[min(self.asked, len(self.failures)) - 1]

    shape = {"model_spec": {"architecture": "mlp_classifier"}, "n_features": 4, "n_outputs": 2}
    away = Resolving(ControlPlaneUnavailableError("cannot reach the control plane"))
    with pytest.raises(TrainingError, match="submit the job again") as failed:
        load_fine_tune_source("m:1", away, **shape)
    assert not isinstance(failed.value, InvalidJobSpecError) and away.asked == 4
    missing = Resolving(NotFoundError("no version m:9", detail={"field": "ref"}))
    with pytest.raises(InvalidJobSpecError, match="model.init_from: cannot resolve m:9"):
        load_fine_tune_source("m:9", missing, **shape)
    assert missing.asked == 1


def test_a_deadline_whose_interrupt_ray_turned_into_an_error_of_its_own_fails_saying_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray may turn the deadline's interrupt into its own error: the job failed with that
    error's traceback, or (were it read as a stop) as stopped, never with the deadline's
    reason."""
    from training import job, runner

    (tmp_path / "job.yaml").write_text("experiment: {name: x}\nmodel: {architecture: "
                                       "mlp_classifier}\ndata: {dataset: digits}\n")

    def interrupted_in_ray(*args: Any, **kwargs: Any) -> None:
        runner.OVERDUE.append("the job's setup was still joining Ray after "
                              "resources.setup_timeout_s (1 s)")
        raise RuntimeError("ray.init was interrupted")

    monkeypatch.setattr(runner, "run_job", interrupted_in_ray)
    monkeypatch.setattr(runner, "handle_stop_signal", lambda: None)
    try:
        assert job.run_entrypoint(str(tmp_path / "job.yaml")) == job.EXIT_FAILED
    finally:
        runner.OVERDUE.clear()
    said = capsys.readouterr().err
    assert "error: the job's setup was still joining Ray after resources.setup_timeout_s" in said
    assert "(RuntimeError: ray.init was interrupted)" in said
