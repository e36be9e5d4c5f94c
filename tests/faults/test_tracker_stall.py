"""A control plane that stops answering while a job trains: the Train controller's tracker
callback (training.callbacks) holds the epochs' figures instead of waiting on each, and
stores every epoch once when it answers again.

The real ``modelplane api`` process, stopped with SIGSTOP: its socket still takes the
connection and the request, so the first call's answer never comes and the call may have
acted when the process runs again; the batch goes again under its idempotency key.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.client import Client
from tests.servers import ControlPlaneProcess
from training import callbacks
from training.callbacks import REPORTS_METRIC, TrackerCallback

pytestmark = pytest.mark.no_ray


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    server = ControlPlaneProcess(tmp_path / "home").start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


def test_a_stopped_control_plane_holds_no_epoch_and_loses_none(
        control_plane: ControlPlaneProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callbacks, "TRACKER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(callbacks, "FIRST_PAUSE_S", 1.0)
    admin = Client(control_plane.url, control_plane.admin_token)
    run = admin.start_run("stall", capture_environment=False)
    callback = TrackerCallback(control_plane.url, control_plane.admin_token, run.id, epochs=12)
    sent: list[float] = []
    tracker = callback._tracker()
    log_points = tracker.log_points

    def counted(*args: object, **kwargs: object) -> int:
        sent.append(time.monotonic())
        return log_points(*args, **kwargs)

    tracker.log_points = counted

    def report(epoch: int) -> None:
        callback.after_report(None, [{"epoch": epoch, "train_loss": 0.5, "val_loss": 1 / epoch}],
                              None)

    for epoch in (1, 2, 3):
        report(epoch)
    assert control_plane.process is not None
    control_plane.process.send_signal(signal.SIGSTOP)
    try:
        stopped = len(sent)
        for epoch in range(4, 11):  # 7 epochs over about 3 s
            report(epoch)
            time.sleep(0.3)
        # One try, and one a pause later: the tracker was not asked at every epoch.
        assert len(sent) - stopped <= 3, len(sent) - stopped
        assert sum(batch.epochs for batch in callback._held) == 7
    finally:
        control_plane.process.send_signal(signal.SIGCONT)
    report(11)
    report(12)  # the last: sent through any pause
    assert callback._held == []
    steps = [point.step for point in admin.metric_history(run.id, "val_loss")]
    assert steps == list(range(1, 13))  # epoch 4's batch reached the stopped process: once
    assert admin.get_run(run.id).latest_metrics[REPORTS_METRIC] == 12
