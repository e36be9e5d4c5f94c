"""Runs whose training job ended without ending them: the leader's sweep ends them from
what Ray's job API says of the job, on a real store; the job API is the test's."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from control_plane.abandoned_runs import SWEEPER, AbandonedRuns
from control_plane.ray_clusters import head_host
from control_plane.schemas import RunCreate, RunStatus
from control_plane.tracking import RayCluster, Tracker
from tests.unit.control_plane.conftest import ALICE, READER
from training.errors import JobSubmissionError
from training.submission import no_such_job

NOW_S = 1_800_000_000.0


def job_info(status: str, end_time: int | None = None, message: str = "",
             start_time: int | None = None, metadata: dict[str, str] | None = None) -> Any:
    """Ray's own record of a job; times in milliseconds, as Ray keeps them (a job started
    a minute before the test's runs, unless ``start_time`` says otherwise)."""
    from ray.job_submission import JobInfo as RayJobInfo
    from ray.job_submission import JobStatus

    if start_time is None:
        start_time = int((datetime.now(UTC).timestamp() - 60) * 1000)
    return RayJobInfo(status=JobStatus(status), entrypoint="python -m training.job",
                      start_time=start_time, end_time=end_time, message=message,
                      metadata=metadata)


class JobApi:
    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.reachable = True
        self.asked: list[str] = []

    def connect(self) -> JobApi:
        if not self.reachable:
            raise JobSubmissionError("cannot reach Ray's job API at http://head:8265", detail={})
        return self

    def info(self, job_id: str) -> Any:
        self.asked.append(job_id)
        if job_id not in self.jobs:
            raise no_such_job(job_id, "http://head:8265")
        return self.jobs[job_id]


def _job_run(tracker: Tracker, job_id: str | None) -> str:
    tags = {"ray_train_run": f"exp-{job_id}"} | ({"ray_job_submission_id": job_id} if job_id else {})
    return tracker.start_run(RunCreate(experiment="exp", tags=tags), ALICE).id


def _ended_s_ago(seconds: float, status: str = "FAILED", message: str = "") -> Any:
    return job_info(status, int((NOW_S - seconds) * 1000), message)


@pytest.fixture
def api() -> JobApi:
    return JobApi()


@pytest.fixture
def sweep(tracker: Tracker, api: JobApi) -> AbandonedRuns:
    return AbandonedRuns(tracker, api.connect, grace_s=30, now=lambda: NOW_S)


def test_a_job_killed_after_it_registered_leaves_its_run_finished_not_to_resubmit(
        tracker: Tracker, registry: Any, api: JobApi, sweep: AbandonedRuns,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its version registered and its alias moved, then the OOM killer or a lost node: the
    run read failed, and its reason's advice to resubmit made a second version. A stopped
    job stays killed: the stop was someone's word."""
    from control_plane.ray_clusters import RayCluster
    from control_plane.schemas import VersionCreate
    from tests.onnx_models import linear_classifier, linear_classifier_manifest

    killed, stopped, lost = (_job_run(tracker, job) for job in ("job-1", "job-2", "job-3"))
    for seed, run_id in enumerate((killed, stopped, lost)):
        digest = registry.artifacts.put([linear_classifier(seed=seed)]).digest
        registry.register_version("iris", VersionCreate(artifact_digest=digest,
                                  manifest=linear_classifier_manifest(
                                      lineage={"run_id": run_id})), ALICE)
    api.jobs = {"job-1": _ended_s_ago(60, "FAILED", "Job entrypoint command failed with exit "
                                      "code -9"), "job-2": _ended_s_ago(60, "STOPPED")}
    assert sorted(sweep.sweep()) == sorted([killed, stopped])
    ended = tracker.get_run(killed)
    assert ended.status is RunStatus.FINISHED and "failure_reason" not in ended.params
    assert "exit code -9; it had registered iris:1 from this run first: its work was done" \
        in ended.params["ended_by"]
    assert tracker.get_run(stopped).status is RunStatus.KILLED
    # A run whose cluster restarted under it, after it registered: finished, not resubmitted.
    before = RayCluster("head:6379", "head-a", "session_1")
    monkeypatch.setattr(tracker, "running_job_runs", lambda: [
        (lost, "job-3", tracker.get_run(lost).start_time, before, None)])
    restarted = AbandonedRuns(tracker, api.connect, grace_s=30, now=lambda: NOW_S,
                              cluster=lambda: RayCluster("head:6379", "head-a", "session_2"))
    assert restarted.sweep() == [lost]
    reason = tracker.get_run(lost).params["ended_by"]
    assert "its work was done" in reason and "Resubmit" not in reason


def test_a_run_whose_job_ended_without_ending_it_is_ended_with_the_reason(
        tracker: Tracker, api: JobApi, sweep: AbandonedRuns,
        caplog: pytest.LogCaptureFixture) -> None:
    failed, stopped, succeeded = (_job_run(tracker, job) for job in ("job-1", "job-2", "job-3"))
    api.jobs = {"job-1": _ended_s_ago(45, "FAILED", "Job entrypoint command failed with exit "
                                      "code -9"),
                "job-2": _ended_s_ago(31, "STOPPED"), "job-3": _ended_s_ago(600, "SUCCEEDED")}
    with caplog.at_level(logging.INFO, logger="modelplane.notifications"):
        assert sorted(sweep.sweep()) == sorted([failed, stopped, succeeded])
    runs = {run_id: tracker.get_run(run_id) for run_id in (failed, stopped, succeeded)}
    assert runs[failed].status is RunStatus.FAILED and runs[failed].end_time is not None
    assert runs[stopped].status is RunStatus.KILLED
    assert runs[succeeded].status is RunStatus.FAILED  # it never said it finished
    reason = runs[failed].params["failure_reason"]
    assert "its Ray job job-1 ended FAILED without ending the run" in reason
    assert "exit code -9" in reason
    said = [r.getMessage() for r in caplog.records if r.name == "modelplane.notifications"]
    assert any("training job job-1 failed" in line and "exit code -9" in line for line in said)
    assert sweep.sweep() == []  # once


def test_a_succeeded_job_that_registered_its_version_leaves_its_run_finished(
        tracker: Tracker, registry: Any, api: JobApi, sweep: AbandonedRuns) -> None:
    """Registered, then the control plane was away for the job's last word: failed, the
    run read as no candidate while its version, and the alias it moved, stood. A version
    another token registered naming the run is not the job's."""
    from control_plane.schemas import VersionCreate
    from tests.onnx_models import linear_classifier, linear_classifier_manifest
    from tests.unit.control_plane.conftest import BOB

    registered, claimed = _job_run(tracker, "job-1"), _job_run(tracker, "job-2")
    for run_id, actor in ((registered, ALICE), (claimed, BOB)):
        digest = registry.artifacts.put([linear_classifier(seed=len(run_id))]).digest
        registry.register_version("iris", VersionCreate(
            artifact_digest=digest, manifest=linear_classifier_manifest(lineage={"run_id": run_id})),
            actor)
    api.jobs = {"job-1": _ended_s_ago(60, "SUCCEEDED"), "job-2": _ended_s_ago(60, "SUCCEEDED")}
    assert sorted(sweep.sweep()) == sorted([registered, claimed])
    finished = tracker.get_run(registered)
    assert finished.status is RunStatus.FINISHED and "failure_reason" not in finished.params
    assert "succeeded and registered iris:1" in finished.params["ended_by"]
    assert tracker.get_run(claimed).status is RunStatus.FAILED


def test_a_run_whose_own_process_is_gone_is_ended_and_others_are_not(
        tracker: Tracker, sweep: AbandonedRuns) -> None:
    """`train run` killed left its run running for good: only submitted jobs were swept."""
    import os
    import subprocess

    from control_plane.schemas import PROCESS_TAG
    from modelplane.process_names import new_process_name

    ended = subprocess.Popen(["true"])
    ended.wait()
    mine = new_process_name()
    gone = mine.replace(f":{os.getpid()}:", f":{ended.pid}:")
    elsewhere = gone.replace(mine.split(":")[0], "another-host", 1)
    runs = {process: tracker.start_run(RunCreate(experiment="exp", tags={PROCESS_TAG: process}),
                                       ALICE).id for process in (gone, mine, elsewhere)}
    assert sweep.sweep() == [runs[gone]]
    killed = tracker.get_run(runs[gone])
    assert killed.status is RunStatus.FAILED
    assert "its job's process ended without ending the run" in killed.params["failure_reason"]
    assert str(ended.pid) not in killed.params["failure_reason"]  # a token's to read
    assert tracker.get_run(runs[mine]).status is RunStatus.RUNNING
    assert tracker.get_run(runs[elsewhere]).status is RunStatus.RUNNING


def test_a_gone_process_whose_job_registered_its_version_leaves_its_run_finished(
        tracker: Tracker, registry: Any, sweep: AbandonedRuns) -> None:
    import os
    import subprocess

    from control_plane.schemas import PROCESS_TAG, VersionCreate
    from modelplane.process_names import new_process_name
    from tests.onnx_models import linear_classifier, linear_classifier_manifest

    ended = subprocess.Popen(["true"])
    ended.wait()
    gone = new_process_name().replace(f":{os.getpid()}:", f":{ended.pid}:")
    run = tracker.start_run(RunCreate(experiment="exp", tags={PROCESS_TAG: gone}), ALICE).id
    digest = registry.artifacts.put([linear_classifier(seed=3)]).digest
    registry.register_version("iris", VersionCreate(
        artifact_digest=digest, manifest=linear_classifier_manifest(lineage={"run_id": run})),
        ALICE)
    assert sweep.sweep() == [run]
    finished = tracker.get_run(run)
    assert finished.status is RunStatus.FINISHED
    assert "its job registered iris:1" in finished.params["ended_by"]


def test_runs_whose_job_is_live_unknown_or_only_just_ended_are_left_running(
        tracker: Tracker, api: JobApi, sweep: AbandonedRuns) -> None:
    running = _job_run(tracker, "job-1")
    just_ended = _job_run(tracker, "job-2")  # its driver's last report may be on its way
    elsewhere = _job_run(tracker, "job-3")  # submitted to another cluster
    local = _job_run(tracker, None)  # `train run`: no job to ask about
    api.jobs = {"job-1": job_info("RUNNING"), "job-2": _ended_s_ago(5)}
    assert sweep.sweep() == []
    for run_id in (running, just_ended, elsewhere, local):
        assert tracker.get_run(run_id).status is RunStatus.RUNNING
    assert sorted(api.asked) == ["job-1", "job-2", "job-3"]


def test_a_job_id_that_names_another_job_here_leaves_the_run_alone(
        tracker: Tracker, api: JobApi, sweep: AbandonedRuns) -> None:
    """A submission id reused (by hand, or on a cluster that lost its jobs' history): the
    ended job this cluster knows started after the run did, so it is not the run's job."""
    run_id = _job_run(tracker, "job-1")
    later = int((datetime.now(UTC).timestamp() + 30) * 1000)
    api.jobs = {"job-1": job_info("FAILED", later + 1000, start_time=later)}
    assert sweep.sweep() == []
    assert tracker.get_run(run_id).status is RunStatus.RUNNING


def test_the_sweep_reads_every_running_run_not_a_first_page(tracker: Tracker) -> None:
    for index in range(7):  # runs of notebooks and Client.start_run, left running
        tracker.start_run(RunCreate(experiment="exp", tags={"n": str(index)}), ALICE)
    job_runs = {_job_run(tracker, f"job-{index}") for index in range(3)}
    found = tracker.running_job_runs(page=2)
    assert {run.run_id for run in found} == job_runs


def test_nothing_is_ended_while_the_job_api_cannot_answer(
        tracker: Tracker, api: JobApi, sweep: AbandonedRuns) -> None:
    run_id = _job_run(tracker, "job-1")
    api.jobs = {"job-1": _ended_s_ago(600)}
    api.reachable = False
    assert sweep.sweep() == []
    assert tracker.get_run(run_id).status is RunStatus.RUNNING
    api.reachable = True
    assert sweep.sweep() == [run_id]


def test_a_run_its_job_ended_meanwhile_keeps_the_job_s_own_end(
        tracker: Tracker, api: JobApi, sweep: AbandonedRuns) -> None:
    from control_plane.abandoned_runs import SWEEPER
    from control_plane.schemas import RunUpdate

    run_id = _job_run(tracker, "job-1")
    api.jobs = {"job-1": _ended_s_ago(60, "SUCCEEDED")}
    tracker.update_run(run_id, RunUpdate(status=RunStatus.FINISHED), ALICE)
    assert not tracker.end_abandoned(run_id, RunStatus.FAILED, "late", SWEEPER)
    assert sweep.sweep() == []
    run = tracker.get_run(run_id)
    assert run.status is RunStatus.FINISHED and "failure_reason" not in run.params


def test_only_a_deployer_or_the_sweeper_ends_an_abandoned_run(tracker: Tracker) -> None:
    from control_plane.errors import PermissionDeniedError

    run_id = _job_run(tracker, "job-1")
    with pytest.raises(PermissionDeniedError):
        tracker.end_abandoned(run_id, RunStatus.FAILED, "forged", READER)
    assert tracker.get_run(run_id).status is RunStatus.RUNNING


def test_a_run_whose_cluster_restarted_under_it_is_ended_and_another_cluster_s_is_not(
        tracker: Tracker, api: JobApi) -> None:
    def run_on(job_id: str, address: str | None, session: str, head: str = "head-a") -> str:
        cluster = {"address": address, "head": head, "session": session} if address else {}
        return tracker.start_run(RunCreate(
            experiment="exp", tags={"ray_job_submission_id": job_id},
            environment={"ray_cluster": cluster}), ALICE).id

    lost = run_on("job-lost", "10.0.0.5:6379", "session_2026-12-04_10-00-00_1")
    elsewhere = run_on("job-elsewhere", "10.0.0.7:6379", "session_2026-12-04_10-00-00_1")
    # The same private address on another machine (a local cluster, a Docker bridge).
    same_address = run_on("job-same-address", "10.0.0.5:6379", "session_2026-12-04_10-00-00_3",
                          head="head-b")
    head_unrecorded = run_on("job-head-unrecorded", "10.0.0.5:6379",
                             "session_2026-12-04_10-00-00_1", head="")
    here_now = run_on("job-here-now", "10.0.0.5:6379", "session_2026-12-04_11-00-00_2")
    unrecorded = run_on("job-unrecorded", None, "")
    sweep = AbandonedRuns(tracker, api.connect, grace_s=30, now=lambda: NOW_S,
                          cluster=lambda: RayCluster("10.0.0.5:6379", "head-a",
                                                     "session_2026-12-04_11-00-00_2"))
    assert sweep.sweep() == [lost]  # Ray knows none of the jobs
    run = tracker.get_run(lost)
    reason = run.params["failure_reason"]
    assert run.status == RunStatus.FAILED and "before it restarted" in reason
    assert "resume_from" in reason
    for run_id in (elsewhere, same_address, head_unrecorded, here_now, unrecorded):
        assert tracker.get_run(run_id).status == RunStatus.RUNNING
    unknown = AbandonedRuns(tracker, api.connect, grace_s=30, now=lambda: NOW_S,
                            cluster=lambda: None)  # not connected to Ray: nothing concluded
    assert unknown.sweep() == []


def test_the_head_is_the_node_holding_ray_s_head_resource() -> None:
    worker = {"NodeManagerHostname": "worker-1", "Resources": {"CPU": 2.0}}
    head = {"NodeManagerHostname": "head-a", "Resources": {"CPU": 2.0, "node:__internal_head__": 1.0}}
    assert head_host([worker, head]) == "head-a"
    assert head_host([worker]) == ""  # none says: runs recorded so are never taken for lost


def test_a_run_whose_driver_fell_silent_where_the_sweep_cannot_look_is_ended(
        tracker: Tracker, api: JobApi) -> None:
    """A `train run` on a laptop against the team's control plane, or a job submitted to
    another Ray cluster: killed, its run was left running for good, since the sweep can
    look at neither. Its driver says it is alive once a minute; silent too long, it ends."""
    import time

    from control_plane.abandoned_runs import SILENT_S
    from control_plane.errors import ConflictError
    from control_plane.schemas import JOB_TAG, PROCESS_TAG, RunUpdate

    def run(tags: dict[str, str]) -> str:
        return tracker.start_run(RunCreate(experiment="exp", tags=tags), ALICE).id

    laptop = run({PROCESS_TAG: "laptop:1.abc:4242:deadbeef"})
    other_cluster = run({JOB_TAG: "job-of-cluster-b"})
    older_driver = run({PROCESS_TAG: "laptop:1.abc:4343:deadbeef"})  # never says so
    for run_id in (laptop, other_cluster):
        tracker.run_alive(run_id, ALICE)
    clock = {"now": time.time()}
    sweep = AbandonedRuns(tracker, api.connect, now=lambda: clock["now"])
    assert sweep.sweep() == []  # its first: silence counts from here at the earliest
    clock["now"] += 60
    assert sweep.sweep() == []
    clock["now"] += SILENT_S
    # A control plane that was itself away all that while (no driver could say it was
    # alive to it) counts silence from its own start.
    assert AbandonedRuns(tracker, api.connect, now=lambda: clock["now"]).sweep() == []
    assert sorted(sweep.sweep()) == sorted([laptop, other_cluster])
    for run_id, unseen in ((laptop, "its process is not one this machine can see ended"),
                           (other_cluster, "Ray job job-of-cluster-b is not this cluster's")):
        ended = tracker.get_run(run_id)
        reason = ended.params["failure_reason"]
        assert ended.status is RunStatus.FAILED and "last said it was alive 16 minutes ago" in reason
        assert unseen in reason
    assert tracker.get_run(older_driver).status is RunStatus.RUNNING
    with pytest.raises(ConflictError, match="already ended"):
        tracker.run_alive(laptop, ALICE)
    # A driver that spoke between the sweep's look and its end keeps its run.
    tracker.run_alive(older_driver, ALICE)
    spoke_at = tracker.get_run(older_driver)
    assert not tracker.end_abandoned(older_driver, RunStatus.FAILED, "silent", SWEEPER,
                                     silent_since=datetime(2020, 1, 1, tzinfo=UTC))
    assert spoke_at.status is RunStatus.RUNNING
    tracker.update_run(older_driver, RunUpdate(status=RunStatus.FINISHED), ALICE)


def test_a_silent_driver_s_run_ends_while_ray_s_job_api_cannot_be_asked(
        tracker: Tracker, api: JobApi) -> None:
    """A dead dashboard answered nothing about the job a killed driver left: its run stayed
    running until the dashboard came back, maybe never. The beats reach the control plane,
    not Ray: silence decides, as for a job Ray does not know."""
    import time

    from control_plane.abandoned_runs import SILENT_S, UNASKED_SILENT_S

    unreachable, timing_out = _job_run(tracker, "job-1"), _job_run(tracker, "job-2")
    for run_id in (unreachable, timing_out):
        tracker.run_alive(run_id, ALICE)
    clock = {"now": time.time()}
    sweep = AbandonedRuns(tracker, api.connect, now=lambda: clock["now"])
    assert sweep.sweep() == []
    api.reachable = False
    clock["now"] += SILENT_S + 60
    # Silent past what ends a job Ray does not know, but the control plane may be the one
    # cut off: a partition silences every driver and the job API at once.
    assert sweep.sweep() == []
    clock["now"] += UNASKED_SILENT_S - SILENT_S
    assert sorted(sweep.sweep()) == sorted([unreachable, timing_out])
    for run_id in (unreachable, timing_out):
        ended = tracker.get_run(run_id)
        assert ended.status is RunStatus.FAILED and "alive 61 minutes ago" in \
            ended.params["failure_reason"]
        assert "Ray's job API could not be asked (cannot reach Ray's job API" in \
            ended.params["failure_reason"]
    # Answering, but not about this job (a timeout): the same.
    asked = _job_run(tracker, "job-3")
    tracker.run_alive(asked, ALICE)
    api.reachable = True

    def times_out(job_id: str) -> Any:
        raise JobSubmissionError("Ray's job API at http://head:8265 did not answer in 10 s",
                                 detail={})

    api.info = times_out  # type: ignore[method-assign]
    clock["now"] = time.time()
    sweep = AbandonedRuns(tracker, api.connect, now=lambda: clock["now"])
    assert sweep.sweep() == []
    clock["now"] += UNASKED_SILENT_S + 60
    assert sweep.sweep() == [asked]
    assert "did not answer in 10 s" in tracker.get_run(asked).params["failure_reason"]


def test_an_ended_job_s_token_is_revoked_where_its_own_revoke_was_missed(
        db: Any, tracker: Tracker, api: JobApi) -> None:
    """Killed, or ending while the control plane was away, a job revokes neither its run
    nor its token, which stood until it expired. Its metadata names the token, but is the
    submitter's to write: only the token that started the job's run, and only a trainer's."""
    from control_plane.auth import Principal, TokenService
    from control_plane.schemas import Role, TokenCreate
    from training.job_token import JOB_TOKEN_METADATA

    tokens = TokenService(db)
    for name, role in (("job-exp-1", Role.TRAINER), ("job-exp-2", Role.TRAINER),
                       ("ops", Role.ADMIN)):
        tokens.create(TokenCreate(name=name, role=role), SWEEPER)
    jobs = {}
    for job_id, starter, named in (("job-1", "job-exp-1", "job-exp-1"),
                                   ("job-2", "job-exp-2", "job-exp-1"),  # names another job's
                                   ("job-3", "ops", "ops")):  # names an admin's
        role = Role.ADMIN if starter == "ops" else Role.TRAINER
        tracker.start_run(RunCreate(experiment="exp", tags={"ray_job_submission_id": job_id}),
                          Principal(name=starter, role=role))
        jobs[job_id] = job_info("FAILED", int((NOW_S - 60) * 1000),
                                metadata={JOB_TOKEN_METADATA: named})
    api.jobs = jobs
    assert len(AbandonedRuns(tracker, api.connect, grace_s=30, now=lambda: NOW_S,
                             tokens=tokens).sweep()) == 3
    revoked = {t.name for t in tokens.list() if t.revoked_at is not None}
    assert revoked == {"job-exp-1"}


def test_the_sweep_starts_with_its_store_away_and_judges_by_the_clock_it_is_given(
        tracker: Tracker, api: JobApi) -> None:
    """Drivers' beats are dated by the store's clock: judged by a leader's own clock,
    14 minutes fast, a healthy run read as silent. The sweep takes the clock it is given
    (the store's) from its first sweep, so one built while the store is away starts."""
    from control_plane.schemas import PROCESS_TAG

    run_id = tracker.start_run(RunCreate(experiment="exp", tags={
        PROCESS_TAG: "laptop:1.abc:4242:deadbeef"}), ALICE).id
    tracker.run_alive(run_id, ALICE)
    beat = tracker.db.now().timestamp()
    away = {"now": None}

    def store_clock() -> float:
        if away["now"] is None:
            raise ConnectionError("the store cannot be reached")
        return away["now"]

    sweep = AbandonedRuns(tracker, api.connect, now=store_clock)  # built while it is away
    away["now"] = beat + 30
    assert sweep.sweep() == []
    away["now"] = beat + 300  # five minutes on the store's clock: alive, whatever ours says
    assert sweep.sweep() == [] and tracker.get_run(run_id).status is RunStatus.RUNNING
