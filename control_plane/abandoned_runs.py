"""Runs whose training job ended without saying so.

Only a training job's driver ends its run. A driver that is killed (SIGKILL, the OOM
killer, its node lost), or that cannot reach the control plane as it ends, left its run
``running`` for good: no ``training.failed`` notification, and an experiment that shows it
live. The leader asks the cluster's job API about every running run a submitted job
started, and ends those whose job Ray reports ended at least ``grace_s`` ago (the driver's
own last report has landed by then or never will): a job that failed, or succeeded
without ending its run, leaves it ``failed`` (``finished`` where it succeeded and had
registered its version); a stopped one, ``killed``. Why is kept as
the run's ``failure_reason``. A job run in a process of its own (`train run`) is ended ``failed`` once that process
is gone from the control plane's machine. A job the cluster does not know is left alone (one submitted
to another cluster that reports here), unless the run says it ran on this cluster (its
address and its head's host name) in an earlier session: the cluster restarted (a head lost, ``modelplane down`` and ``up``)
and took the job's driver and its record with it, so the run ends ``failed``. Where the
sweep cannot look (a process on another machine, a job of another cluster, a job API that
cannot answer), the driver's own word decides: it says it is alive once a minute, to the
control plane, and a run whose driver has been silent for :data:`SILENT_S` ends ``failed``
(:data:`UNASKED_SILENT_S` where the job API cannot answer either; a driver of an older
modelplane, which never says so, is left alone).

A job whose end the control plane missed also missed its token's revoke: the sweep revokes
the token an ended job's metadata names (``train submit`` mints one per job), where that
token started the run and is a trainer's; it would otherwise stand until it expired.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from control_plane.auth import Principal, TokenService
from control_plane.errors import ModelplaneError
from control_plane.ray_clusters import RayCluster, this_ray_cluster
from control_plane.schemas import Role, RunStatus
from control_plane.tracking import Tracker

log = logging.getLogger(__name__)

SWEEPER = Principal(name="run-sweeper", role=Role.ADMIN)
# A job's driver says it is alive once a minute (training.runner): one silent this long is
# gone (killed on another host, or with a Ray cluster this control plane cannot ask), or
# cut off from the control plane for longer than any restart takes.
SILENT_S = 15 * 60.0
# Where Ray's job API cannot be asked either, the control plane may be the one cut off (a
# partition silences every driver and the job API at once): silence counts only past the
# time a driver that cannot reach the control plane stops its job itself (twice the default
# stall_timeout_s, training.watchdog), so that a healthy job is never ended by the sweep.
UNASKED_SILENT_S = 60 * 60.0
ENDED = {"FAILED": RunStatus.FAILED, "SUCCEEDED": RunStatus.FAILED, "STOPPED": RunStatus.KILLED}


class AbandonedRuns:
    """The leader's sweep of runs whose Ray job ended without ending them."""

    def __init__(self, tracker: Tracker, job_client: Callable[[], Any], *,
                 grace_s: float = 30.0, now: Callable[[], float] = time.time,
                 cluster: Callable[[], RayCluster | None] | None = None,
                 tokens: TokenService | None = None) -> None:
        self._tracker, self._job_client, self._tokens = tracker, job_client, tokens
        self._grace_s, self._now = grace_s, now
        self._cluster = cluster or this_ray_cluster
        # Silence is counted from when this sweep began at the earliest: while no control
        # plane answered, drivers could not say they were alive (set at the first sweep,
        # on the clock that judges it).
        self._since: float | None = None

    def sweep(self) -> list[str]:
        """End the runs whose job has ended; returns their ids."""
        from training.errors import JobSubmissionError

        if self._since is None:
            self._since = self._now()
        ended = self._sweep_processes()
        running = self._tracker.running_job_runs()
        if not running:
            return ended
        # Ray's job API away is not an answer; but a driver silent past SILENT_S still ends
        # its run: its beats reach the control plane, not Ray, and a job API that stayed
        # away (a dead dashboard) had left killed jobs' runs running for good.
        client, unreachable = None, None
        try:
            client = self._job_client()
        except JobSubmissionError as error:
            log.info("cannot ask Ray about running jobs: %s", error.message)
            unreachable = error
        from training.submission import job_missing

        this_cluster = functools.cache(self._this_cluster)  # asked once a sweep, if at all
        for run_id, job_id, run_started, ran_on, alive_at in running:
            try:
                if unreachable is not None:
                    raise unreachable  # each run judged as one its own look failed for
                info = client.info(job_id)
            except JobSubmissionError as error:
                # Not this cluster's job, or the job API is away: not an answer; unless the
                # run ran on this cluster before it restarted, or its driver fell silent.
                missing = job_missing(error)
                if missing and ran_on is not None and \
                        (now := this_cluster()) is not None and ran_on.restarted_as(now):
                    ended += self._end_lost(run_id, job_id, ran_on)
                elif self._silent(alive_at, SILENT_S if missing else UNASKED_SILENT_S):
                    ended += self._end_silent(
                        run_id, alive_at, f"Ray job {job_id} is not this cluster's" if missing
                        else f"Ray's job API could not be asked ({error.message})")
                continue
            status = str(getattr(info.status, "value", info.status))
            finished_ms = getattr(info, "end_time", None)
            if status not in ENDED or finished_ms is None or \
                    self._now() - finished_ms / 1000 < self._grace_s:
                continue
            if not _ran_within(run_started, info.start_time, finished_ms):
                continue  # the id names another job here (reused, or another cluster's)
            said = f": {info.message}" if getattr(info, "message", None) else ""
            reason = (f"its Ray job {job_id} ended {status} without ending the run (the job's "
                      f"process was killed, or could not reach the control plane){said}")
            ended += self._conclude(run_id, ENDED[status], reason, finished_by=(
                f"its Ray job {job_id} succeeded and" if status == "SUCCEEDED" else None))
            self._revoke_job_token(run_id, job_id, info)
        return ended

    def _revoke_job_token(self, run_id: str, job_id: str, info: Any) -> None:
        """Revoke the token the ended job acted with. Its metadata is the submitter's to
        write, so only a token that started the job's own run, and only a trainer's."""
        from training.job_token import JOB_TOKEN_METADATA

        name = (getattr(info, "metadata", None) or {}).get(JOB_TOKEN_METADATA)
        if self._tokens is None or not isinstance(name, str) or not name:
            return
        try:
            if self._tracker.get_run(run_id).created_by != name:
                log.warning("Ray job %s names token %r, which did not start its run %s: "
                            "left as it is", job_id, name, run_id)
                return
            if self._tokens.revoke(name, SWEEPER, role=Role.TRAINER).revoked_at is not None:
                log.info("revoked token %r of Ray job %s, which ended", name, job_id)
        except ModelplaneError as error:  # gone, or no trainer's: nothing of the job's to revoke
            log.warning("did not revoke token %r of Ray job %s: %s", name, job_id, error.message)

    def _conclude(self, run_id: str, outcome: RunStatus, reason: str, *,
                  finished_by: str | None = None, advice: str = "",
                  silent_since: datetime | None = None) -> list[str]:
        """End ``run_id`` as ``outcome`` for ``reason`` (and ``advice``); ``finished``
        instead where its job had registered a version from it with its own token, unless
        stopped: its work done, only its last word lost. A failed run read as no candidate
        while its version (and the alias it moved) stood, and its advice to resubmit made
        a second. ``finished_by`` names the job where it ended well but for its last word."""
        registered = self._tracker.registered_from(run_id) if outcome is not RunStatus.KILLED \
            else []
        if registered and finished_by is not None:
            outcome, reason = RunStatus.FINISHED, (
                f"{finished_by} registered {', '.join(registered)}, but could not end the run "
                "itself (the control plane was away)")
        elif registered:
            outcome, reason = RunStatus.FINISHED, (
                f"{reason}; it had registered {', '.join(registered)} from this run first: "
                "its work was done")
        else:
            reason += advice
        if not self._tracker.end_abandoned(run_id, outcome, reason, SWEEPER,
                                           silent_since=silent_since):
            return []
        log.warning("run %s ended %s: %s", run_id, outcome.value, reason)
        return [run_id]

    def _sweep_processes(self) -> list[str]:
        """End the runs of jobs run in a process of their own (`train run`) whose process
        is gone from this machine: killed, it left its run ``running`` for good. A process
        of another machine, or one this machine cannot tell is gone, is left alone."""
        from modelplane.process_names import process_is_gone

        ended = []
        for run_id, process, alive_at in self._tracker.running_process_runs():
            if process_is_gone(process):
                # Which host and process stays in the run's tags (a token's to read).
                ended += self._conclude(run_id, RunStatus.FAILED, (
                    "its job's process ended without ending the run (killed, or could not "
                    "reach the control plane)"), finished_by="its job")
            elif self._silent(alive_at):  # another machine's, or alive here but hung
                ended += self._end_silent(run_id, alive_at, "its process is not one this "
                                          "machine can see ended")
        return ended

    def _silent(self, alive_at: datetime | None, limit_s: float = SILENT_S) -> bool:
        """Whether a driver that last said it was alive at ``alive_at`` has been silent
        past ``limit_s``, counted from this sweep's start at the earliest (a driver that
        never said so, of an older modelplane, is not)."""
        return alive_at is not None and self._since is not None and \
            self._now() - max(alive_at.timestamp(), self._since) > limit_s

    def _end_silent(self, run_id: str, alive_at: datetime | None, why_unseen: str) -> list[str]:
        assert alive_at is not None
        silent_min = (self._now() - alive_at.timestamp()) / 60
        return self._conclude(run_id, RunStatus.FAILED, (
            f"its job's driver last said it was alive {silent_min:.0f} minutes ago "
            f"({alive_at.isoformat(timespec='seconds')}), and {why_unseen} to look at: it "
            "was killed, or cannot reach the control plane"), finished_by="its job",
            silent_since=alive_at)

    def _this_cluster(self) -> RayCluster | None:
        """The Ray cluster this control plane is connected to; None when Ray cannot say
        (nothing is concluded then)."""
        try:
            return self._cluster()
        except Exception as error:
            log.info("cannot tell which Ray cluster this is: %s", error)
            return None

    def _end_lost(self, run_id: str, job_id: str, ran_on: RayCluster) -> list[str]:
        reason = (f"its Ray job {job_id} ran on this Ray cluster ({ran_on.address}, head "
                  f"{ran_on.head}) before it restarted (session {ran_on.session}); the restart "
                  "ended the job's process and Ray's record of it")
        return self._conclude(run_id, RunStatus.FAILED, reason, advice=(
            ". Resubmit the job (checkpoint.resume_from: this run's id goes on from its last "
            "checkpoint)"))


def _ran_within(run_started: datetime, job_started_ms: int | None, job_ended_ms: int) -> bool:
    """Whether a run started while the job ran (a second either side for the clocks)."""
    started = run_started.timestamp()
    begun = (job_started_ms or 0) / 1000
    return begun - 1.0 <= started <= job_ended_ms / 1000 + 1.0
