"""Writes to Serve's controller (deploy, delete) with a bound on the wait.

Serve's own calls wait on the controller without one (``ray.get`` with no timeout): a
controller wedged, or restarting without end, between the reconciler's bounded read of
the applications and its write held the reconciler's pass for good, and with it the
rollout loop settling a step through it. A write runs in a thread of its own; past the
bound the caller's pass fails saying why (the loops log and try again), and while a write
that outlived its bound still waits, no other is started: it would queue behind it at the
controller, and could land after a newer one. The caller forgets what it applied there, so
its next pass submits that application in full again once writes go through.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from control_plane.errors import ControlPlaneUnavailableError

log = logging.getLogger(__name__)

# Past Serve's own wait for its proxies after a deploy (HTTP_PROXY_TIMEOUT, 60 s), which a
# deploy the controller took may spend: only a controller that does not answer overruns it.
SERVE_WRITE_TIMEOUT_S = 120.0


class ServeWriteUnanswered(ControlPlaneUnavailableError):
    """Serve's controller did not take a write within its bound (it may still land)."""


class BoundedWrites:
    """Writes to Serve, each waited for at most ``timeout_s``; none started while one that
    outlived its bound still waits. Safe to call from several threads."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._stalled: dict[threading.Thread, str] = {}  # writes past their bound → what

    def run(self, what: str, write: Callable[[], object]) -> None:
        """``write()`` in a thread; its error raised here, or ControlPlaneUnavailableError
        where it has not returned within the bound (or an earlier one still waits)."""
        with self._lock:
            self._stalled = {t: w for t, w in self._stalled.items() if t.is_alive()}
            if self._stalled:
                raise ControlPlaneUnavailableError(
                    f"an earlier write to Serve ({next(iter(self._stalled.values()))}) still "
                    f"waits on its controller; {what} is not sent until it answers (`ray "
                    "status`, and serve/controller_*.log, show whether it restarts)")
        failed: list[BaseException] = []
        given_up = threading.Event()

        def send() -> None:
            try:
                write()
            except BaseException as error:
                failed.append(error)  # raised in the caller's thread, unless it gave up
                if given_up.is_set():
                    log.warning("%s, sent while Serve's controller did not answer, failed "
                                "when it did: %s", what, error)
            else:
                if given_up.is_set():
                    log.info("%s went through once Serve's controller answered", what)

        thread = threading.Thread(target=send, name="serve-write", daemon=True)
        thread.start()
        limit = SERVE_WRITE_TIMEOUT_S if self.timeout_s is None else self.timeout_s
        thread.join(limit)
        with self._lock:
            given_up.set()
            # Looked at again once given up: a write that ended meanwhile is answered here,
            # its error raised, not logged by nobody.
            stalled = thread.is_alive()
            if stalled:
                self._stalled[thread] = what
        if stalled:
            raise ServeWriteUnanswered(
                f"Serve's controller did not take {what} within {limit:g} s; it may be "
                "restarting or overloaded. The write lands when it answers, and the next "
                "pass submits again whatever it applies")
        if failed:
            if _unreachable(failed[0]):
                raise ServeWriteUnanswered(
                    f"Serve's controller could not be reached for {what} ({type(failed[0]).__name__}: "
                    f"{failed[0]}); it may be restarting. The next pass submits again whatever "
                    "it applies") from failed[0]
            raise failed[0]

    def wait_for_stalled(self, timeout_s: float) -> bool:
        """Wait for the writes that outlived their bound; whether none waits now."""
        with self._lock:
            stalled = list(self._stalled)
        for thread in stalled:
            thread.join(timeout_s)
        return not any(thread.is_alive() for thread in stalled)


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` says Serve's controller was not reached (dead, restarting, the
    cluster not answering) rather than that it refused the write: the reconciler sends an
    unreached write again next pass, a refused one at the endpoint's backoff."""
    from ray.exceptions import GetTimeoutError, RayActorError, RaySystemError

    return isinstance(error, (RayActorError, GetTimeoutError, RaySystemError, ConnectionError))
