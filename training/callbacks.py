"""The Ray Train callback that logs every epoch to the experiment tracker.

It runs in the Train controller, which Ray places on the driver's node: whatever
control-plane address the job's driver can reach, the callback can too, while workers on
other nodes might not.

The controller runs the callback between its polls of the workers, and a worker's next
report waits for it: a tracker call that waits holds the training. So a call waits
:data:`TRACKER_TIMEOUT_S` (not again on a failed connection), and while the control
plane does not answer, the epochs' figures are held here and sent once it does (a batch
that may have landed again under its own idempotency key, so it is stored once), with a
pause between tries: a control plane that hung made every epoch wait the client's 60 s,
and one that was down lost the figures of every epoch meanwhile. Figures the tracker
refuses (a run's limit, a revoked token) are dropped, saying so: sending them again would
be refused again.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ray.train import UserCallback

from training.tracking import epoch_metrics, progress_line

REPORTS_METRIC = "train_reports"  # how many reports the run has had: it moves with every one
TRACKER_TIMEOUT_S = 5.0  # the longest an epoch waits on the tracker
# Between tries while it does not answer; at most a quarter of the job's stall timeout, so
# the figures held through an outage reach the driver's stall watch in time.
FIRST_PAUSE_S, MAX_PAUSE_S = 2.0, 60.0
# Held while the tracker is away, every key of every epoch together (a run stores at most
# control_plane.tracking.MAX_METRIC_POINTS): past it, later epochs' figures are dropped.
MAX_HELD_POINTS = 200_000
BATCH_POINTS = 10_000  # a request's most (control_plane.schemas.MetricBatch)
# The last report is tried every FINAL_TRY_EVERY_S for this long, whatever the pause:
# nothing runs after it in the controller that would send what is held. After workers
# failed (the group restarts, or the run ends), for less.
LAST_REPORT_WAIT_S, FAILURE_WAIT_S, FINAL_TRY_EVERY_S = 30.0, 10.0, 2.0


@dataclass
class HeldBatch:
    """Figures not yet stored. Once sent, a batch keeps its points and its key: the
    control plane may have stored it and not answered, and stores a key's batch once."""

    points: list[Any] = field(default_factory=list)
    key: str | None = None  # set when first sent
    epochs: int = 0


class TrackerCallback(UserCallback):
    """Logs every epoch's metrics to the run (step = epoch) and prints a progress line."""

    def __init__(self, url: str, token: str | None, run_id: str, epochs: int, *,
                 stall_s: float | None = None) -> None:
        self.url, self.token, self.run_id, self.epochs = url, token, run_id, epochs
        self.max_pause_s = min(MAX_PAUSE_S, stall_s / 4) if stall_s else MAX_PAUSE_S
        self._client: Any = None
        self._failures = 0
        self._reports = 0  # every report, epochs run again after a restart included
        self._held: list[HeldBatch] = []
        self._dropped_epochs = 0
        self._pause_s, self._next_try = 0.0, 0.0
        self._clock, self._sleep = time.monotonic, time.sleep

    def __getstate__(self) -> dict[str, Any]:
        # The callback is shipped to the controller actor; its HTTP client is made there.
        return {**self.__dict__, "_client": None}

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics or "epoch" not in metrics[0]:
            return
        first = metrics[0]  # all ranks report the same all-reduced values
        epoch = int(first["epoch"])
        values = epoch_metrics(first)
        if checkpoint is not None:
            values["checkpoint_epoch"] = float(epoch)
        print(progress_line(epoch, self.epochs, values), flush=True)
        self._reports += 1
        try:
            from control_plane.schemas import MetricPoint

            points = [MetricPoint(key=key, value=value, step=epoch) for key, value in values.items()]
            # The run's latest figures are its highest step's: epochs run again from a
            # checkpoint after a lost node change none of them, and the driver's stall
            # watch (which reads them) would take a recovering job for a stuck one.
            points.append(MetricPoint(key=REPORTS_METRIC, value=float(self._reports),
                                      step=self._reports))
        except Exception as error:  # a figure the tracker cannot take must not stop training
            self._warn(f"could not log epoch {epoch} to the tracker at {self.url}: {error}")
            return
        self._hold(points)
        last = epoch >= self.epochs or bool(values.get("stopped_early"))
        self.send_held(wait_s=LAST_REPORT_WAIT_S if last else 0.0)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        # The workers restart from a checkpoint, or the run ends: what is held goes now.
        self.send_held(wait_s=FAILURE_WAIT_S)

    def send_held(self, *, wait_s: float = 0.0) -> None:
        """Send what is held, oldest first, unless a pause after a failure runs; with
        ``wait_s``, at once and then every FINAL_TRY_EVERY_S for that long, whatever the
        pause. Never raises."""
        if wait_s <= 0:
            # What an outage held goes a batch an epoch past the first: a slow control
            # plane draining many would hold this epoch for a request each.
            started = self._clock()
            if started >= self._next_try:
                while self._held and self._send_oldest() and \
                        self._clock() - started < TRACKER_TIMEOUT_S:
                    pass
            return
        deadline = self._clock() + wait_s
        while self._held:
            settled = self._send_oldest()
            left = deadline - self._clock()
            if left <= 0:
                if self._held:
                    self._warn(f"{self._held_epochs} epoch(s) of figures could not be "
                               f"logged to the tracker at {self.url}: lost")
                return
            if not settled:
                self._sleep(min(FINAL_TRY_EVERY_S, left))

    def _send_oldest(self) -> bool:
        """Whether the oldest batch was settled (stored, or refused and dropped)."""
        from control_plane.errors import RequestInProgressError
        from control_plane.idempotency import new_key
        from training.watchdog import control_plane_away

        batch = self._held[0]
        batch.key = batch.key or new_key()
        try:
            self._tracker().log_points(self.run_id, batch.points, key=batch.key)
        except Exception as error:
            # Still in progress: its first send runs, or its process died holding the key
            # (freed in minutes). Neither is a refusal of the figures.
            if control_plane_away(error) or isinstance(error, RequestInProgressError):
                self._pause_s = min(max(self._pause_s * 2, FIRST_PAUSE_S), self.max_pause_s)
                self._next_try = self._clock() + self._pause_s
                self._warn(f"the tracker at {self.url} did not answer ({error}); "
                           f"{self._held_epochs} epoch(s) of figures held, sent again in "
                           f"{self._pause_s:g} s")
                return False
            self._held.pop(0)
            self._warn(f"the tracker at {self.url} refused {batch.epochs} epoch(s) of "
                       f"figures, dropped: {error}")
            return True
        self._held.pop(0)
        self._pause_s, self._next_try = 0.0, 0.0
        return True

    def _hold(self, points: list[Any]) -> None:
        """Add an epoch's points: to the newest batch where it was never sent (one request
        then carries every epoch held while the tracker was away), else to a new one."""
        if sum(len(b.points) for b in self._held) + len(points) > MAX_HELD_POINTS:
            self._dropped_epochs += 1
            self._warn(f"{self._dropped_epochs} epoch(s) of figures dropped: "
                       f"{MAX_HELD_POINTS:,} points are held already for the tracker at "
                       f"{self.url}")
            return
        newest = self._held[-1] if self._held else None
        if newest is None or newest.key is not None or \
                len(newest.points) + len(points) > BATCH_POINTS:
            self._held.append(HeldBatch())
        self._held[-1].points.extend(points)
        self._held[-1].epochs += 1

    @property
    def _held_epochs(self) -> int:
        return sum(batch.epochs for batch in self._held)

    def _warn(self, message: str) -> None:
        self._failures += 1
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def _tracker(self) -> Any:
        if self._client is None:
            from control_plane.client import Client

            self._client = Client(self.url, self.token, timeout=TRACKER_TIMEOUT_S, retries=0)
        return self._client
