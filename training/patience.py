"""Asking the control plane again while it cannot answer, for what a job must not lose.

A job's last calls (ending its run, pointing its alias, recording the version it
registered) come after hours of work: a control plane restarting, or its store away for a
moment, must not fail the job or leave its version without its alias. Each such call is
asked again for about a minute while the answer says the control plane (or its store)
cannot answer; a refusal is not asked again. A job must never hang on them either: no try
starts once :data:`PATIENCE_S` (or the caller's ``give_up_after_s``) has passed since the
first, so a control plane that takes calls and never answers them costs a job at most that
and one call's timeout. Only calls that are the same when repeated
go through here (registering a version is, with its idempotency key: a repeat of one whose
answer was lost after the commit is answered with the version it registered).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PAUSES_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
PATIENCE_S = 120.0


def patiently(call: Callable[[], T], *, give_up_after_s: float | None = None,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, asked again after each of :data:`PAUSES_S` while it cannot be answered,
    and while the next try would start within ``give_up_after_s`` (:data:`PATIENCE_S`) of
    the first."""
    from control_plane.errors import ControlPlaneError, cannot_answer_now

    limit = PATIENCE_S if give_up_after_s is None else give_up_after_s
    started = clock()
    for pause in (*PAUSES_S, None):
        try:
            return call()
        except ControlPlaneError as error:
            if pause is None or not cannot_answer_now(error) or \
                    clock() + pause - started > limit:
                raise
            sleep(pause)
    raise AssertionError("unreachable")
