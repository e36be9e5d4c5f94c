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

from control_plane.errors import cannot_answer_now
from modelplane.errors import ModelplaneError

T = TypeVar("T")

PATIENCE_S = 60.0  # without an answer in a row, before the watch gives up
PAUSE_S = 1.0


def follow(fetch: Callable[[], T], waiting: Callable[[str], None], *,
           patience_s: float = PATIENCE_S, pause_s: float = PAUSE_S,
           sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> T:
    """``fetch()``, tried again every ``pause_s`` while it fails with an error that says
    the control plane cannot answer now (``cannot_answer_now``), ``waiting(why)`` told
    each time; that error is raised once no answer has come for ``patience_s``, and any
    other error at once."""
    since = None
    while True:
        try:
            return fetch()
        except ModelplaneError as error:
            if not cannot_answer_now(error):
                raise
            now = clock()
            since = now if since is None else since
            if now - since >= patience_s:
                raise
            waiting(f"{error.message} (waiting {now - since:.0f}s of {patience_s:g}s)")
            sleep(pause_s)
