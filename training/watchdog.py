"""The training's deadlines: no epoch for ``resources.stall_timeout_s``, or training longer
than ``resources.max_run_time_s``, and the job stops, failed, saying which.

Ray Train checks that its workers are alive, not that they make progress: a worker stuck
in a collective or in the data path holds ``fit()`` for good (with one worker nothing
bounds it; with several, gloo's 30-minute timeout per collective, once per failure the spec
allows). The driver cannot see the workers' reports (they reach the Train controller, an
actor), but the controller's callback logs every epoch to the run, so the driver watches
the run as the control plane records it. While the control plane cannot answer, the watch
learns nothing and blames nobody: the stall clock restarts when it answers again, but an
outage forgives one stall window at most (no epoch seen for twice ``stall_timeout_s``
stops the job whatever the outages: a control plane that flaps, or answers 5xx for good,
would otherwise hold it for ever). A control plane that answers with a refusal (the job's
token expired or was revoked) is not away: the clock runs on, or a worker stuck after the
refusal would hold the job for good.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Self

log = logging.getLogger(__name__)

POLL_S = 10.0


class Watchdog:
    """Watch a run's progress from a thread; call ``on_overdue`` once with the reason (an
    interrupt of the main thread), and where the training still holds ``grace_s`` later,
    stuck past an interrupt's reach (Ray Train's own stop waits on its controller without
    a deadline), ``on_stuck``, which ends the process: as :class:`FinishDeadline` does."""

    def __init__(self, progress: Callable[[], Hashable], on_overdue: Callable[[str], None], *,
                 stall_s: float | None, max_s: float | None, start_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, poll_s: float | None = None,
                 on_stuck: Callable[[str], None] | None = None, grace_s: float = 60.0) -> None:
        self._progress, self._on_overdue = progress, on_overdue
        self._on_stuck, self.grace_s = on_stuck, grace_s
        self.stall_s, self.max_s, self._clock = stall_s, max_s, clock
        # Ray Train may wait this long to place the workers at each (re)start, before any
        # epoch can come: a stall window that did not allow for it stopped jobs waiting for
        # their nodes as stuck.
        self.start_s = start_s
        limits = [limit for limit in (stall_s, max_s) if limit is not None]
        # A look every POLL_S, or a quarter of a shorter deadline, so none is overrun by much.
        self._poll_s = poll_s or min([POLL_S, *(max(limit / 4, 0.25) for limit in limits)])
        self._started = self._moved = self._changed = clock()  # _changed: outages aside
        self._seen: Hashable = None
        self._stop = threading.Event()
        self._firing = threading.Lock()  # firing and stopping, one at a time
        self._thread: threading.Thread | None = None
        self.reason: str | None = None
        self.refusal: str | None = None  # why the control plane last refused to answer

    def check(self) -> str | None:
        """One look at the run: the reason to stop it, or None while it is within time."""
        now = self._clock()
        try:
            seen = self._progress()
            self.refusal = None
        except Exception as error:
            seen = self._seen
            if control_plane_away(error):  # no evidence either way: the clock restarts when it answers
                log.info("cannot read the run's progress: %s", error)
                self._moved = now
            else:  # refused (the job's token expired or was revoked): the clock runs on
                log.warning("the control plane refuses to show the run's progress: %s", error)
                self.refusal = str(error)[:300]
        if seen != self._seen:
            self._seen, self._moved, self._changed = seen, now, now
        if self.max_s is not None and now - self._started > self.max_s:
            return (f"training ran longer than resources.max_run_time_s ({self.max_s:g} s); "
                    "the job was stopped, its checkpoints kept for a resume")
        if self.stall_s is not None and now - self._moved > self.stall_s + self.start_s:
            allowed = f"resources.stall_timeout_s ({self.stall_s:g} s)" + (
                f" and the workers' start ({self.start_s:g} s)" if self.start_s else "")
            if self.refusal is not None:
                return (f"the control plane refused to show the run's progress for "
                        f"{now - self._moved:.0f} s, past {allowed}: {self.refusal}; the job "
                        "was stopped, its checkpoints kept for a resume (give it a token "
                        "that lasts: `train submit --token-hours`)")
            return (f"no epoch was reported for {now - self._moved:.0f} s, past {allowed}: "
                    "a worker is stuck; the job was stopped, its checkpoints kept for a resume")
        if self.stall_s is not None and now - self._changed > 2 * self.stall_s + self.start_s:
            return (f"no epoch was seen for {now - self._changed:.0f} s, past twice "
                    f"resources.stall_timeout_s ({self.stall_s:g} s), the control plane "
                    "failing to answer at times meanwhile; the job was stopped, its "
                    "checkpoints kept for a resume")
        return None

    def start(self) -> Watchdog:
        """Watch from a daemon thread (none when there is no deadline)."""
        if self.stall_s is None and self.max_s is None:
            return self

        def watch() -> None:
            while not self._stop.wait(self._poll_s):
                reason = self.check()  # may wait on the control plane: not under the lock
                if reason is not None:
                    with self._firing:
                        if self._stop.is_set():  # the training may have ended meanwhile
                            return
                        self.reason = reason
                        self._on_overdue(reason)
                    if self._on_stuck is not None:
                        _last_resort(self._stop, self._firing, self.grace_s, self._on_stuck,
                                     f"{reason}; its process ended: the training did not "
                                     f"heed the stop for {self.grace_s:g} s")
                    return

        self._thread = threading.Thread(target=watch, name="training-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching: once this returns, neither callback is called."""
        with self._firing:
            self._stop.set()


def _last_resort(stopped: threading.Event, firing: threading.Lock, grace_s: float,
                 on_stuck: Callable[[str], None], why: str) -> None:
    """``on_stuck(why)`` where the work has not stopped ``grace_s`` after its interrupt;
    never once ``stop()`` has returned (it takes ``firing``)."""
    if stopped.wait(grace_s):
        return
    with firing:
        if not stopped.is_set():
            on_stuck(why)


def control_plane_away(error: BaseException) -> bool:
    """Whether ``error`` says the control plane could not answer (not that it refused)."""
    from control_plane.errors import cannot_answer_now

    return isinstance(error, OSError) or cannot_answer_now(error)


class StepDeadline:
    """A bound on a stretch of a job's work that reports no epochs: past ``limit_s`` it
    calls ``on_overdue(reason)`` once (an interrupt of the main thread: the job fails,
    saying which step it was in); where the work still holds ``grace_s`` later, stuck past
    an interrupt's reach, ``on_stuck(reason)``, which ends the process."""

    work = "the job's work"
    field = ""  # the spec field that sets the limit
    outcome = "the job was stopped"
    first_phase = ""
    thread_name = "step-deadline"

    def __init__(self, limit_s: float, on_overdue: Callable[[str], None],
                 on_stuck: Callable[[str], None], *, grace_s: float = 60.0) -> None:
        self.limit_s, self.grace_s = limit_s, grace_s
        self._on_overdue, self._on_stuck = on_overdue, on_stuck
        self.phase = self.first_phase
        self._stop = threading.Event()
        self._firing = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        def watch() -> None:
            if self._stop.wait(self.limit_s):
                return
            with self._firing:
                if self._stop.is_set():
                    return
                reason = (f"{self.work} was still {self.phase} after {self.field} "
                          f"({self.limit_s:g} s); {self.outcome}")
                self._on_overdue(reason)
            _last_resort(self._stop, self._firing, self.grace_s, self._on_stuck,
                         f"{reason}, its process ended: the step did not heed the stop "
                         f"for {self.grace_s:g} s")

        if self._thread is None:
            self._thread = threading.Thread(target=watch, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def enter(self, phase: str) -> None:
        """Name the step under way (the reason names it)."""
        self.phase = phase

    def stop(self) -> None:
        """The work ended: once this returns, neither callback is called."""
        with self._firing:
            self._stop.set()


class SetupDeadline(StepDeadline):
    """A bound on the work before training: the control plane's health, loading the data
    (a read from a stalled mount or a remote store that never answers), the model to
    fine-tune from, the checkpoint to resume from, joining Ray and the checkpoint store's
    check. Nothing else watches it: the run does not exist yet, so neither its alive
    beats nor the control plane's sweep could end a job hung there."""

    work = "the job's setup"
    field = "resources.setup_timeout_s"
    outcome = "the job was stopped before its training began"
    first_phase = "checking the control plane"
    thread_name = "setup-deadline"


class FinishDeadline(StepDeadline):
    """A bound on the work after training: loading the final checkpoint, evaluation, the
    ONNX export and its checks, uploads and profiling, up to the registration (whose every
    try has its own deadline). None of it reports epochs,
    and the driver's alive beats go on from their own thread, so a step hung there (an
    export in native code, a read from a stalled mount) held the job and its run
    ``running`` for good."""

    work = "the work after training"
    field = "resources.finish_timeout_s"
    outcome = "the job was stopped, its checkpoints kept for a resume"
    first_phase = "loading the final checkpoint"
    thread_name = "finish-deadline"
