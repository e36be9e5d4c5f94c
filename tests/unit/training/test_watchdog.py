"""The training's deadlines, judged on a clock and a run the test moves."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.waiting import wait_for
from training.watchdog import Watchdog


class Run:
    """What the control plane holds of the run: epochs so far, or an outage."""

    def __init__(self) -> None:
        self.epochs = 0
        self.away = False
        self.refused: Exception | None = None

    def progress(self) -> int:
        if self.away:
            raise ConnectionError("cannot reach the control plane")
        if self.refused is not None:
            raise self.refused
        return self.epochs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _watch(run: Run, clock: Clock, **limits: float | None) -> Watchdog:
    limits = {"stall_s": None, "max_s": None, **limits}
    return Watchdog(run.progress, lambda reason: None, clock=clock, **limits)


def test_a_run_whose_epochs_stop_coming_is_overdue_once_the_stall_limit_passes() -> None:
    run, clock = Run(), Clock()
    watchdog = _watch(run, clock, stall_s=60)
    for _ in range(5):  # an epoch every 50 s: never stalled, however long it runs
        clock.now += 50
        run.epochs += 1
        assert watchdog.check() is None
    clock.now += 60
    assert watchdog.check() is None  # 60 s: at the limit, not past it
    clock.now += 1
    reason = watchdog.check()
    assert reason is not None and reason.startswith(
        "no epoch was reported for 61 s, past resources.stall_timeout_s (60 s)")


def test_the_time_ray_train_may_take_to_place_the_workers_is_no_stall() -> None:
    """An autoscaling cluster booting nodes for the workers (placement_timeout_s 3600), or
    a group restarted after a node died: no epoch can come meanwhile, and a stall window of
    1800 s stopped the healthy job as stuck."""
    run, clock = Run(), Clock()
    watchdog = _watch(run, clock, stall_s=1800, start_s=3600)
    assert watchdog.check() is None  # no epoch yet
    clock.now += 5400
    assert watchdog.check() is None
    clock.now += 1
    reason = watchdog.check()
    assert reason is not None and reason.startswith(
        "no epoch was reported for 5401 s, past resources.stall_timeout_s (1800 s) and the "
        "workers' start (3600 s)")


def test_an_unreachable_control_plane_is_no_evidence_of_a_stall() -> None:
    run, clock = Run(), Clock()
    watchdog = _watch(run, clock, stall_s=60)
    run.away = True
    for _ in range(4):
        clock.now += 25
        assert watchdog.check() is None  # 100 s without an answer: nobody blamed
    run.away = False
    clock.now += 59
    assert watchdog.check() is None  # the clock restarted at the last look it had no answer
    run.epochs = 1
    clock.now += 1
    assert watchdog.check() is None
    clock.now += 61
    assert "a worker is stuck" in (watchdog.check() or "")  # answering, no epoch for 61 s


@pytest.mark.parametrize("outage", ["flapping", "for good"])
def test_an_outage_forgives_one_stall_window_at_most(outage: str) -> None:
    """A control plane that flaps (or answers 5xx for good) restarted the stall clock at
    every look it failed: a stuck worker held the job for ever."""
    run, clock = Run(), Clock()
    watchdog = _watch(run, clock, stall_s=60)
    assert watchdog.check() is None  # epoch 0 seen
    reasons = []
    for look in range(12):  # 360 s, no epoch
        clock.now += 30
        run.away = outage == "for good" or look % 2 == 0
        reasons.append(watchdog.check())
    fired = [index for index, reason in enumerate(reasons) if reason is not None]
    assert fired and (fired[0] + 1) * 30 <= 150, reasons  # by twice the window (and a look)
    assert "twice resources.stall_timeout_s" in reasons[fired[0]]


@pytest.mark.parametrize("answer", ["expired", "unavailable"])
def test_a_refusal_is_no_outage_and_the_stall_clock_runs_on(answer: str) -> None:
    from control_plane.errors import AuthenticationError, ControlPlaneError

    run, clock = Run(), Clock()
    watchdog = _watch(run, clock, stall_s=60)
    run.refused = (AuthenticationError("token 'job-7' expired at 2026-12-04T10:00:00+00:00")
                   if answer == "expired" else
                   ControlPlaneError("the store did not answer", detail={"status": 503}))
    clock.now += 61
    reason = watchdog.check()
    if answer == "unavailable":  # a 5xx is the control plane away: nobody blamed
        assert reason is None
        return
    assert reason is not None and "refused to show the run's progress for 61 s" in reason
    assert "expired at" in reason and "--token-hours" in reason


def test_the_run_time_limit_holds_however_the_epochs_come() -> None:
    run, clock = Run(), Clock()
    watchdog = _watch(run, clock, max_s=300)
    while clock.now < 400:
        clock.now += 10
        run.epochs += 1
        assert watchdog.check() is None
    clock.now += 1
    reason = watchdog.check()
    assert reason is not None and "resources.max_run_time_s (300 s)" in reason


def test_the_thread_calls_back_once_with_the_reason_and_stops() -> None:
    run = Run()
    called: list[str] = []
    overdue = threading.Event()

    def on_overdue(reason: str) -> None:
        called.append(reason)
        overdue.set()

    watchdog = Watchdog(run.progress, on_overdue, stall_s=0.3, max_s=None).start()
    try:
        assert overdue.wait(10), "the deadline never fired"
        watchdog._thread.join(5)  # type: ignore[union-attr]
        assert called == [watchdog.reason] and "stall_timeout_s (0.3 s)" in called[0]
    finally:
        watchdog.stop()


def test_a_stall_whose_stop_is_not_heeded_ends_the_process_after_the_grace() -> None:
    """The interrupt reaches Ray Train's own stop, which waits on its controller with no
    deadline: a controller stuck too held the job, its run "running", for good."""
    overdue: list[str] = []
    stuck: list[str] = []
    gave_up = threading.Event()
    watchdog = Watchdog(Run().progress, overdue.append, stall_s=0.2, max_s=None,
                        on_stuck=lambda why: (stuck.append(why), gave_up.set()),
                        grace_s=0.2).start()
    try:
        assert gave_up.wait(10), "the watchdog never gave up"
        assert len(overdue) == 1 and "stall_timeout_s (0.2 s)" in overdue[0]
        assert len(stuck) == 1 and stuck[0].startswith(overdue[0]) and "did not heed" in stuck[0]
    finally:
        watchdog.stop()
    heeded = Watchdog(Run().progress, overdue.append, stall_s=0.2, max_s=None,
                      on_stuck=stuck.append, grace_s=5).start()
    wait_for(lambda: len(overdue) == 2, 10, "the heeded deadline", interval=0.02)
    heeded.stop()  # fit() unwound: the job is ending
    threading.Event().wait(0.3)
    assert len(stuck) == 1


@pytest.mark.parametrize("limits", [{"stall_s": None, "max_s": None}])
def test_no_limit_starts_no_thread(limits: dict[str, None]) -> None:
    watchdog = Watchdog(Run().progress, lambda reason: None, **limits).start()
    assert watchdog._thread is None and watchdog.check() is None


def test_a_deadline_found_as_the_training_ends_is_not_acted_on() -> None:
    """The look that finds the deadline passed may wait on the control plane while the
    training ends; once stop() has returned, nothing is interrupted any more (an interrupt
    then would land in the export or the registration of a finished job)."""
    looking, answer = threading.Event(), threading.Event()
    called: list[str] = []

    def slow_progress() -> int:
        looking.set()
        answer.wait(10)
        return 0

    watchdog = Watchdog(slow_progress, called.append, stall_s=None, max_s=0.01,
                        poll_s=0.02).start()
    assert looking.wait(10), "the watchdog never looked"
    watchdog.stop()  # the training ended while the look waited
    answer.set()
    watchdog._thread.join(5)  # type: ignore[union-attr]
    assert not watchdog._thread.is_alive()  # type: ignore[union-attr]
    assert called == [] and watchdog.reason is None


def _run_out(deadline_type: Any, phase: str) -> tuple[list[str], list[str]]:
    """A 0.2 s deadline of ``deadline_type`` in ``phase``, run out and past its grace:
    what it said when overdue, and when stuck."""
    overdue: list[str] = []
    stuck: list[str] = []
    finished = threading.Event()
    deadline = deadline_type(0.2, overdue.append,
                             lambda why: (stuck.append(why), finished.set()), grace_s=0.2)
    deadline.start().enter(phase)
    assert finished.wait(10), "the deadline never gave up"
    return overdue, stuck


def test_the_work_after_training_is_bounded_and_names_its_step() -> None:
    """After fit() nothing reported epochs and the alive beats went on: an export or a read
    that hung held the job, and its run, running for good."""
    from training.watchdog import FinishDeadline

    overdue, stuck = _run_out(FinishDeadline, "exporting to ONNX and checking it against torch")
    assert len(overdue) == 1 and "still exporting to ONNX" in overdue[0]
    assert "resources.finish_timeout_s (0.2 s)" in overdue[0]
    assert len(stuck) == 1 and stuck[0].startswith(overdue[0]) and "did not heed" in stuck[0]
    heeded = FinishDeadline(0.1, overdue.append, stuck.append, grace_s=5).start()
    wait_for(lambda: len(overdue) == 2, 10, "the heeded deadline", interval=0.02)
    heeded.stop()  # the interrupt was heeded: the job is ending
    wait_until = threading.Event()
    wait_until.wait(0.3)
    assert len(overdue) == 2 and len(stuck) == 1
    quick = FinishDeadline(5, overdue.append, stuck.append).start()
    quick.stop()  # registered in time (a loaded host may take a second between the two)
    wait_until.wait(0.5)
    assert len(overdue) == 2 and len(stuck) == 1


@pytest.mark.parametrize(("stuck", "stop_asked", "tracker_hung"),
                         [(False, False, False), (True, False, False), (True, True, False),
                          (True, False, True)],
                         ids=["interruptible", "past-an-interrupt", "past-an-interrupt-stopped",
                              "past-an-interrupt-tracker-hung"])
def test_a_job_hung_after_training_ends_whatever_holds_it(stuck: bool, stop_asked: bool,
                                                         tracker_hung: bool, tmp_path) -> None:
    """The driver's own wiring (training.runner's callbacks), in a process of its own: a
    step that heeds the interrupt fails as a deadline; one stuck in native code (a lock
    no signal wakes) is ended with its process, the run's end tried first: killed where a
    person asked the job to stop meanwhile, as the main thread would have ended it. A
    control plane that does not answer those last calls either (each waited its 60 s and
    their tries, minutes) does not hold the end."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import functools, threading, time
        from training import job_token, runner
        from training.watchdog import FinishDeadline

        job_token.revoke_job_token = lambda name: print("revoked", name, flush=True)
        runner.GIVE_UP_WAIT_S = 1.0

        class Client:
            def log_params(self, run_id, params):
                print("log_params", run_id, params["failure_reason"], flush=True)
            def end_run(self, run_id, status):
                print("end_run", run_id, status, flush=True)
                if {tracker_hung}:
                    threading.Event().wait()  # a control plane that never answers

        deadline = FinishDeadline(0.3, runner._interrupt_main,
                                  functools.partial(runner._give_up, Client(), "run-1"),
                                  grace_s=0.5).start()
        deadline.enter("exporting to ONNX and checking it against torch")
        if {stop_asked}:
            runner.STOP_REQUESTED.set()  # as SIGTERM from `ray job stop` sets it
        try:
            if {stuck}:
                held = threading.Lock()
                held.acquire()
                held.acquire()  # no interrupt reaches this
            else:
                end = time.monotonic() + 30
                while time.monotonic() < end:  # Python's own work: the interrupt lands
                    pass
        except KeyboardInterrupt:
            deadline.stop()
            print("interrupted:", runner.OVERDUE[0], flush=True)
            raise SystemExit(2)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path), env={
                              **__import__("os").environ, "PYTHONPATH": _repo(),
                              "MODELPLANE_JOB_TOKEN_NAME": "job-7"})
    if stuck:
        assert done.returncode == (130 if stop_asked else 1), done.stdout + done.stderr
        assert "log_params run-1 the work after training was still exporting" in done.stdout
        ended = "killed" if stop_asked else "failed"
        assert f"end_run run-1 {ended}" in done.stdout and "did not heed the stop" in done.stderr
        if not tracker_hung:
            assert "revoked job-7" in done.stdout
    else:
        assert done.returncode == 2, done.stdout + done.stderr
        assert "interrupted: the work after training was still exporting" in done.stdout
        assert "end_run" not in done.stdout


def test_the_work_before_training_is_bounded_and_names_its_step() -> None:
    from training.watchdog import SetupDeadline

    overdue, stuck = _run_out(SetupDeadline, "loading the data")
    assert overdue == ["the job's setup was still loading the data after "
                       "resources.setup_timeout_s (0.2 s); the job was stopped before its "
                       "training began"]
    assert len(stuck) == 1 and stuck[0].startswith(overdue[0]) and "did not heed" in stuck[0]


@pytest.mark.parametrize("stuck", [False, True], ids=["interruptible", "past-an-interrupt"])
def test_a_job_hung_before_its_run_starts_fails_saying_where(stuck: bool, tmp_path) -> None:
    """Before the run exists nothing else watched the job: no alive beats, nothing for the
    control plane's sweep to end. A data read that never answered held the job, running,
    for good. Through the job's own entrypoint, in a process of its own: a step that heeds
    the interrupt fails with the deadline's reason (not as stopped); one stuck in native
    code (a lock no signal wakes) has its process ended, its token revoked first."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "job.yaml").write_text(textwrap.dedent("""
        experiment: {name: setup-hang}
        model: {architecture: mlp_classifier}
        data: {dataset: breast_cancer}
        resources: {num_workers: 1, setup_timeout_s: 0.3}
    """))
    script = textwrap.dedent(f"""
        import functools, sys, threading, time
        import control_plane.client
        from training import job, job_token, runner
        from training.watchdog import SetupDeadline

        job_token.revoke_job_token = lambda name: print("revoked", name, flush=True)
        control_plane.client.Client.health = lambda self: None
        runner.SetupDeadline = functools.partial(SetupDeadline, grace_s=0.5)

        def never_answers(*args, **kwargs):
            if {stuck}:
                held = threading.Lock()
                held.acquire()
                held.acquire()  # no interrupt reaches this
            end = time.monotonic() + 30
            while time.monotonic() < end:  # a read that waits in Python: the interrupt lands
                time.sleep(0.01)
            print("the read was never interrupted", flush=True)

        runner.load_dataset = never_answers
        sys.exit(job.main(["--config", "job.yaml"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path), env={
                              **__import__("os").environ, "PYTHONPATH": _repo(),
                              "MODELPLANE_HOME": str(tmp_path / "home"),
                              "MODELPLANE_JOB_TOKEN_NAME": "job-7"})
    said = ("the job's setup was still loading the data after resources.setup_timeout_s "
            "(0.3 s); the job was stopped before its training began")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: {said}" in done.stderr and "revoked job-7" in done.stdout, done.stderr
    assert "never interrupted" not in done.stdout
    assert ("did not heed the stop" in done.stderr) == stuck


def _repo() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[3])
