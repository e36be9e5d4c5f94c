"""The Ray Train callback that logs every epoch to the experiment tracker.

It runs in the Train controller, which Ray places on the driver's node: whatever
control-plane address the job's driver can reach, the callback can too, while workers on
other nodes might not.
"""

from __future__ import annotations

import sys
from typing import Any

from ray.train import UserCallback

from training.tracking import epoch_metrics, progress_line

REPORTS_METRIC = "train_reports"  # how many reports the run has had: it moves with every one


class TrackerCallback(UserCallback):
    """Logs every epoch's metrics to the run (step = epoch) and prints a progress line."""

    def __init__(self, url: str, token: str | None, run_id: str, epochs: int) -> None:
        self.url, self.token, self.run_id, self.epochs = url, token, run_id, epochs
        self._client: Any = None
        self._failures = 0
        self._reports = 0  # every report, epochs run again after a restart included

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
            # checkpoint after a lost node change none of them, and the driver's stall watch
            # (which reads them) would take a recovering job for a stuck one.
            points.append(MetricPoint(key=REPORTS_METRIC, value=float(self._reports),
                                      step=self._reports))
            # One request an epoch: the next report waits for this callback to return
            # (Ray Train's controller runs it between its polls of the workers).
            self._tracker().log_points(self.run_id, points)
        except Exception as error:  # a tracker hiccup must not kill hours of training
            self._failures += 1
            print(f"warning: could not log epoch {epoch} to the tracker at {self.url}: {error}",
                  file=sys.stderr, flush=True)

    def _tracker(self) -> Any:
        if self._client is None:
            from control_plane.client import Client

            self._client = Client(self.url, self.token)
        return self._client
