"""What the job's stall watch reads of a run moves with every report, epochs run again
after a restart from a checkpoint included."""

from __future__ import annotations

import pytest

from control_plane.errors import ConflictError, ControlPlaneUnavailableError, RequestInProgressError
from control_plane.schemas import MetricBatch, MetricPoint, RunCreate
from control_plane.tracking import Tracker
from tests.unit.control_plane.conftest import ALICE
from training import callbacks
from training.callbacks import REPORTS_METRIC, TrackerCallback


class Forward:
    """The control plane's client, as the callback uses it, over a real tracker: ``mode``
    "up", "down" (cannot be reached), "lost" (stores the batch, its answer is lost) or
    "refusing"; a batch sent again under its key is stored once, as the control plane's
    idempotency keys make it."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.mode = "up"
        self.calls = 0
        self.replies: dict[str, int] = {}

    def log_points(self, run_id: str, points: list[MetricPoint], *, key: str | None = None) -> int:
        self.calls += 1
        if self.mode == "down":
            raise ControlPlaneUnavailableError("cannot reach the control plane (ConnectError)")
        if self.mode == "refusing":
            raise ConflictError("run holds 10,000 metric points and a run may hold at most 10,000")
        if self.mode == "in progress":  # the key's first send still runs, or died holding it
            raise RequestInProgressError("a request with this key is in progress")
        if key is not None and key in self.replies:
            return self.replies[key]
        stored = self.tracker.log_metrics(run_id, MetricBatch(metrics=points), ALICE)
        if key is not None:
            self.replies[key] = stored
        if self.mode == "lost":
            raise ControlPlaneUnavailableError("did not answer within 5 s and may have acted")
        return stored


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _callback(tracker: Tracker, epochs: int = 10, stall_s: float | None = None
              ) -> tuple[TrackerCallback, Forward, Clock, str]:
    run = tracker.start_run(RunCreate(experiment="digits"), ALICE)
    callback = TrackerCallback("http://control-plane", None, run.id, epochs=epochs,
                               stall_s=stall_s)
    forward, clock = Forward(tracker), Clock()
    callback._client, callback._clock, callback._sleep = forward, clock, clock.sleep
    return callback, forward, clock, run.id


def _report(callback: TrackerCallback, epoch: int, **more: float) -> None:
    callback.after_report(None, [{"epoch": epoch, "train_loss": 0.5, "val_loss": 1 / epoch,
                                  **more}], None)


def _steps(tracker: Tracker, run_id: str, key: str = "val_loss") -> list[int]:
    return [point.step for point in tracker.metric_history(run_id, key)]


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


def test_figures_held_while_the_tracker_is_away_are_stored_once_when_it_answers(
        tracker: Tracker, capsys: pytest.CaptureFixture[str]) -> None:
    """A control plane that hung made every epoch wait the client's timeout (the next
    report waits for the callback), and one that was down lost every epoch's figures."""
    callback, forward, clock, run_id = _callback(tracker, epochs=20)
    for epoch in (1, 2, 3):
        _report(callback, epoch)
    forward.mode = "lost"  # stored, but the answer does not come back
    clock.now += 0.3
    _report(callback, 4)
    forward.mode = "down"
    calls = forward.calls
    for epoch in range(5, 15):  # 0.3 s an epoch: 3 s
        clock.now += 0.3
        _report(callback, epoch)
    # One try per pause (2 s, then 4 s), not one per epoch.
    assert forward.calls - calls == 1
    assert "epoch(s) of figures held" in capsys.readouterr().err
    forward.mode = "up"
    clock.now += 4
    _report(callback, 15)
    assert _steps(tracker, run_id) == list(range(1, 16))  # epoch 4 once, though sent twice
    assert tracker.get_run(run_id).latest_metrics[REPORTS_METRIC] == 15
    assert callback._held == []


def test_figures_the_tracker_refuses_are_dropped_not_held(
        tracker: Tracker, capsys: pytest.CaptureFixture[str]) -> None:
    callback, forward, _, run_id = _callback(tracker)
    forward.mode = "refusing"
    _report(callback, 1)
    assert callback._held == [] and "refused 1 epoch(s) of figures, dropped" in capsys.readouterr().err
    forward.mode = "up"
    _report(callback, 2)  # at once: a refusal starts no pause
    assert _steps(tracker, run_id) == [2]


def test_the_last_report_is_sent_through_the_pauses(tracker: Tracker) -> None:
    """Nothing in the controller runs after the last report to send what is held: it is
    tried every FINAL_TRY_EVERY_S, however long the pause an outage had grown to."""
    callback, forward, clock, run_id = _callback(tracker, epochs=40)
    forward.mode = "down"
    for epoch in range(1, 39):  # 10 s an epoch: the pause grows to its most, 60 s
        _report(callback, epoch)
        clock.now += 10
    clock.now = callback._next_try
    _report(callback, 39)  # tried, and failed: the next try is a minute away
    assert callback._pause_s == callbacks.MAX_PAUSE_S and callback._next_try == clock.now + 60
    started = clock.now

    def back_after_a_while(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now - started > 25:
            forward.mode = "up"

    callback._sleep = back_after_a_while
    _report(callback, 40)
    assert _steps(tracker, run_id) == list(range(1, 41))


def test_an_early_stop_is_a_last_report_and_its_wait_is_bounded(
        tracker: Tracker, capsys: pytest.CaptureFixture[str]) -> None:
    callback, forward, clock, run_id = _callback(tracker, epochs=50)
    forward.mode = "down"
    _report(callback, 7, stopped_early=1.0)
    assert clock.now - 100.0 == callbacks.LAST_REPORT_WAIT_S  # its last try at the deadline
    assert forward.calls == 1 + callbacks.LAST_REPORT_WAIT_S / callbacks.FINAL_TRY_EVERY_S
    assert len(callback._held) == 1 and _steps(tracker, run_id) == []
    assert "1 epoch(s) of figures could not be logged" in capsys.readouterr().err


def test_an_epoch_drains_what_an_outage_held_for_a_request_s_time_at_most(
        tracker: Tracker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callbacks, "BATCH_POINTS", 3)  # a batch an epoch
    callback, forward, clock, run_id = _callback(tracker, epochs=50)
    forward.mode = "down"
    for epoch in range(1, 9):
        _report(callback, epoch)
    forward.mode = "up"
    answered = forward.log_points

    def slow(*args: object, **kwargs: object) -> int:
        clock.now += 2  # a control plane that answers, slowly
        return answered(*args, **kwargs)

    forward.log_points = slow  # type: ignore[method-assign]
    clock.now += 60
    calls = forward.calls
    _report(callback, 9)
    assert 1 < forward.calls - calls <= 1 + callbacks.TRACKER_TIMEOUT_S / 2
    for epoch in range(10, 14):
        _report(callback, epoch)
    assert _steps(tracker, run_id) == list(range(1, 14)) and callback._held == []


def test_figures_held_when_workers_fail_are_sent_then(tracker: Tracker) -> None:
    callback, forward, _, run_id = _callback(tracker, epochs=50)
    forward.mode = "down"
    _report(callback, 1)
    _report(callback, 2)
    forward.mode = "up"
    callback.after_exception(None, {0: RuntimeError("worker died")})
    assert _steps(tracker, run_id) == [1, 2]


def test_a_send_whose_key_is_still_in_progress_is_held_not_dropped(tracker: Tracker) -> None:
    """A 409 for a key whose first send still runs (or whose process died holding it for
    minutes) said nothing against the figures: dropped, those epochs were gone."""
    callback, forward, clock, run_id = _callback(tracker, epochs=20)
    forward.mode = "in progress"
    _report(callback, 1)
    assert sum(batch.epochs for batch in callback._held) == 1
    forward.mode = "up"
    clock.now += callbacks.FIRST_PAUSE_S
    _report(callback, 2)
    assert _steps(tracker, run_id) == [1, 2]


def test_held_figures_go_in_batches_a_request_can_carry(
        tracker: Tracker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Merged into one, a long outage's epochs made a request the API refuses (over
    MetricBatch's 10,000 points), and the refusal dropped all of them."""
    monkeypatch.setattr(callbacks, "BATCH_POINTS", 7)  # two epochs of 3 points a batch
    callback, forward, clock, run_id = _callback(tracker, epochs=20)
    forward.mode = "down"
    for epoch in range(1, 6):
        _report(callback, epoch)
    assert [batch.epochs for batch in callback._held] == [1, 2, 2]
    forward.mode = "up"
    clock.now += 60
    _report(callback, 6)
    assert _steps(tracker, run_id) == [1, 2, 3, 4, 5, 6]


def test_the_pause_is_a_quarter_of_the_stall_timeout_at_most(tracker: Tracker) -> None:
    """The driver's stall watch sees the epochs held through an outage only once they are
    sent: a 60 s pause against a 60 s stall timeout stopped a job that trained on."""
    callback, forward, clock, _ = _callback(tracker, epochs=50, stall_s=60)
    forward.mode = "down"
    for epoch in range(1, 30):
        _report(callback, epoch)
        clock.now += 5
    assert callback._pause_s == 15


def test_held_figures_are_bounded(tracker: Tracker, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(callbacks, "MAX_HELD_POINTS", 10)  # an epoch here is 3 points
    callback, forward, _, _ = _callback(tracker, epochs=20)
    forward.mode = "down"
    for epoch in range(1, 6):
        _report(callback, epoch)
    assert sum(batch.epochs for batch in callback._held) == 3
    assert "2 epoch(s) of figures dropped" in capsys.readouterr().err
