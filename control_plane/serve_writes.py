"""Writes to Serve's controller (deploy, delete) with a bound on the wait.

Serve's own calls wait on the controller without one (``ray.get`` with no timeout): a
controller wedged, or restarting without end, between the reconciler's bounded read of
the applications and its write held the reconciler's pass for good, and with it the
rollout loop settling a step through it. A write runs in a thread of its own; past the
bound the pass fails saying why (the loops log and try again), and while that write still
waits no other is started: it lands when the controller answers, and the next pass reads
what Serve then runs and submits again whatever differs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from control_plane.errors import ControlPlaneUnavailableError

SERVE_WRITE_TIMEOUT_S = 60.0


class BoundedWrites:
    """One write to Serve at a time, each waited for at most ``timeout_s``."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._waiting: threading.Thread | None = None
        self._waiting_for = ""

    def run(self, what: str, write: Callable[[], object]) -> None:
        """``write()`` in a thread; its error raised here, or ControlPlaneUnavailableError
        where it has not returned within the bound (or an earlier one still waits)."""
        if self._waiting is not None and self._waiting.is_alive():
            raise ControlPlaneUnavailableError(
                f"an earlier write to Serve ({self._waiting_for}) still waits on its "
                f"controller; {what} is not sent until it answers (`ray status`, and "
                "serve/controller_*.log, show whether it restarts)")
        self._waiting = None
        failed: list[BaseException] = []

        def send() -> None:
            try:
                write()
            except BaseException as error:  # raised in the caller's thread below
                failed.append(error)

        thread = threading.Thread(target=send, name="serve-write", daemon=True)
        thread.start()
        limit = SERVE_WRITE_TIMEOUT_S if self.timeout_s is None else self.timeout_s
        thread.join(limit)
        if thread.is_alive():
            self._waiting, self._waiting_for = thread, what
            raise ControlPlaneUnavailableError(
                f"Serve's controller did not take {what} within {limit:g} s; it may be "
                "restarting or overloaded. The write lands when it answers, and the next "
                "pass submits again whatever differs")
        if failed:
            raise failed[0]
