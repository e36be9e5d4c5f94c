"""Runs whose training job ended without saying so.

Only a training job's driver ends its run. A driver that is killed (SIGKILL, the OOM
killer, its node lost), or that cannot reach the control plane as it ends, left its run
``running`` for good: no ``training.failed`` notification, and an experiment that shows it
live. The leader asks the cluster's job API about every running run a submitted job
started, and ends those whose job Ray reports ended at least ``grace_s`` ago (the driver's
own last report has landed by then or never will): a job that failed, or succeeded
without ending its run, leaves it ``failed``; a stopped one, ``killed``. Why is kept as
the run's ``failure_reason``. A job the cluster does not know (one submitted to another
cluster that reports here) is left alone, as is every run while the job API cannot answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from control_plane.auth import Principal
from control_plane.schemas import Role, RunStatus
from control_plane.tracking import Tracker

log = logging.getLogger(__name__)

SWEEPER = Principal(name="run-sweeper", role=Role.ADMIN)
ENDED = {"FAILED": RunStatus.FAILED, "SUCCEEDED": RunStatus.FAILED, "STOPPED": RunStatus.KILLED}


class AbandonedRuns:
    """The leader's sweep of runs whose Ray job ended without ending them."""

    def __init__(self, tracker: Tracker, job_client: Callable[[], Any], *,
                 grace_s: float = 30.0, now: Callable[[], float] = time.time) -> None:
        self._tracker, self._job_client = tracker, job_client
        self._grace_s, self._now = grace_s, now

    def sweep(self) -> list[str]:
        """End the runs whose job has ended; returns their ids."""
        from training.errors import JobSubmissionError

        running = self._tracker.running_job_runs()
        if not running:
            return []
        try:
            client = self._job_client()
        except JobSubmissionError as error:
            log.info("cannot look for abandoned runs: %s", error.message)
            return []
        ended: list[str] = []
        for run_id, job_id, run_started in running:
            try:
                info = client.info(job_id)
            except JobSubmissionError:
                continue  # not this cluster's job, or the job API is away: not an answer
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
            if self._tracker.end_abandoned(run_id, ENDED[status], reason, SWEEPER):
                log.warning("run %s ended %s: %s", run_id, ENDED[status].value, reason)
                ended.append(run_id)
        return ended


def _ran_within(run_started: datetime, job_started_ms: int | None, job_ended_ms: int) -> bool:
    """Whether a run started while the job ran (a second either side for the clocks)."""
    started = run_started.timestamp()
    begun = (job_started_ms or 0) / 1000
    return begun - 1.0 <= started <= job_ended_ms / 1000 + 1.0
