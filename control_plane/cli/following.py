"""Commands that follow progress (``rollout watch``, ``pipeline status --watch``).

A control plane, store or Monitor that cannot answer for a moment (a control plane that
Serve restarts or replaces, a store blip) is waited out and said on screen, not the end of
the watch: the rollout or the run goes on meanwhile, and the operator following it wants
to see how it ends. Patience has a limit, so a watch in a script never hangs for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from control_plane.errors import ControlPlaneUnavailableError, SchemaOutdatedError
from modelplane.errors import ModelplaneError

T = TypeVar("T")

PATIENCE_S = 60.0  # without an answer in a row, before the watch gives up
PAUSE_S = 1.0


def answers_soon(error: BaseException) -> bool:
    """Whether ``error`` says the control plane, its store or its Monitor could not answer
    now (no answer at all, or a 502, 503 or 504), not that the request was wrong. An
    outdated store schema waits for an operator (`modelplane db upgrade`), not for time."""
    if isinstance(error, ControlPlaneUnavailableError):
        return True
    return (isinstance(error, ModelplaneError) and not isinstance(error, SchemaOutdatedError)
            and error.detail.get("status") in (502, 503, 504))


def follow(fetch: Callable[[], T], waiting: Callable[[str], None], *,
           patience_s: float = PATIENCE_S, pause_s: float = PAUSE_S,
           sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> T:
    """``fetch()``, tried again every ``pause_s`` while it fails with an error that
    :func:`answers_soon`, ``waiting(why)`` told each time; that error is raised once no
    answer has come for ``patience_s``, and any other error at once."""
    since = None
    while True:
        try:
            return fetch()
        except ModelplaneError as error:
            if not answers_soon(error):
                raise
            now = clock()
            since = now if since is None else since
            if now - since >= patience_s:
                raise
            waiting(f"{error.message} (waiting {now - since:.0f}s of {patience_s:g}s)")
            sleep(pause_s)
