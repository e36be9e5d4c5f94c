"""What the job's stall watch reads of a run moves with every report, epochs run again
after a restart from a checkpoint included."""

from __future__ import annotations

import pytest

from control_plane.schemas import MetricBatch, MetricPoint, RunCreate
from control_plane.tracking import Tracker
from tests.unit.control_plane.conftest import ALICE
from training.callbacks import TrackerCallback


class Forward:
    """The control plane's client, as the callback uses it, over a real tracker."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def log_points(self, run_id: str, points: list[MetricPoint]) -> int:
        return self.tracker.log_metrics(run_id, MetricBatch(metrics=points), ALICE)


def test_epochs_run_again_after_a_restart_move_the_run_s_progress(
        tracker: Tracker, capsys: pytest.CaptureFixture[str]) -> None:
    """Its latest figures are its highest step's: epochs 6-8 run again from epoch 5's
    checkpoint after a lost node changed none of them, and the stall watch stopped a
    recovering job as stuck."""
    run = tracker.start_run(RunCreate(experiment="digits"), ALICE)
    callback = TrackerCallback("http://control-plane", None, run.id, epochs=10)
    callback._client = Forward(tracker)

    def progress() -> tuple:
        return tuple(sorted(tracker.get_run(run.id).latest_metrics.items()))

    def report(epoch: int) -> None:
        callback.after_report(None, [{"epoch": epoch, "train_loss": 0.5, "val_loss": 0.4}], None)

    for epoch in range(1, 9):
        report(epoch)
    seen = {progress()}
    for epoch in (6, 7, 8):  # the workers restarted from epoch 5's checkpoint
        report(epoch)
        assert progress() not in seen
        seen.add(progress())
