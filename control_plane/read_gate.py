"""Reads that callers of the API may ask for at will, kept from crowding out the rest.

Some reads cost their source far more than the call: the Monitor is one actor answering one
call at a time, in turn (replicas' statistics and labels, the rollout controller's and the
alerts' reads, and whatever the API's callers ask, anonymous ones included by default),
and Ray's job API answers a job's log whole. Many Monitor windows asked at once queued
work ahead of the controller's read, which then timed out: every analysis inconclusive,
every alert stale, replicas' statistics late, for as long as the asking went on (an
unanswered Ray call is not withdrawn either, so giving up on it left the queue as long);
many job logs asked at once held as many whole logs in the control plane's memory.

:class:`ReadGate` puts such reads in line: at most ``slots`` in flight from one control
plane, each slot held until the source has answered rather than until its caller gave up;
a read asked again while it is under way, or within ``reuse_s`` of its answer, shares that
answer (a console's panels, many viewers, a scraper); and a read that finds no free slot
in time is refused as busy without asking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

SLOT_WAIT_SHARE = 0.5


@dataclass
class _Read:
    future: Future[Any]
    holds_slot: bool = False
    answered_at: float | None = None


class ReadGate:
    """Bounds, shares and refuses reads of one source (see the module's doc)."""

    def __init__(self, slots: int, reuse_s: float, *, busy: Callable[[], Exception],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self._busy = busy
        self._reuse_s = reuse_s
        self._clock = clock
        self._lock = threading.Lock()
        self._reads: dict[Hashable, _Read] = {}

    def read(self, key: Hashable, submit: Callable[[], Future[Any]], timeout: float) -> Any:
        """The answer to the read named ``key``: a shared one, or ``submit()``'s (the call
        made, its answer to come) once a slot is free. Raises ``busy()`` when no slot
        frees within ``timeout``, ``concurrent.futures.TimeoutError`` when the answer does
        not come within it, or what the call raised."""
        return self._ask(key, lambda read: _chain(submit(), read.future), timeout)

    def call(self, key: Hashable, fetch: Callable[[], Any], timeout: float) -> Any:
        """As :meth:`read`, for a blocking ``fetch``: the first asker runs it in its own
        thread, the others wait for its answer."""
        return self._ask(key, lambda read: read.future.set_result(fetch()), timeout)

    def _ask(self, key: Hashable, start: Callable[[_Read], None], timeout: float) -> Any:
        deadline = self._clock() + timeout
        read, mine = self._join(key)
        if mine:
            self._run(read, lambda: start(read), timeout)
        return read.future.result(timeout=max(deadline - self._clock(), 0.0))

    def _join(self, key: Hashable) -> tuple[_Read, bool]:
        """The read under way (or answered within ``reuse_s``) of ``key``, or a new one
        that this asker makes (True), which the others asking meanwhile share."""
        now = self._clock()
        with self._lock:
            for stale in [k for k, read in self._reads.items()
                          if read.answered_at is not None
                          and now - read.answered_at >= self._reuse_s]:
                del self._reads[stale]
            read = self._reads.get(key)
            if read is not None and not _failed(read.future):
                return read, False
            # (A failed read may be seen before its callback has forgotten it: waiters
            # wake before a future's callbacks run. It is not shared either.)
            read = self._reads[key] = _Read(Future())
        read.future.add_done_callback(lambda _: self._answered(key, read))
        return read, True

    def _run(self, read: _Read, start: Callable[[], None], timeout: float) -> None:
        # Half the caller's time at most for a slot, the rest for the answer: a slot won
        # with no time left made a call whose answer nobody would read.
        if not self._slots.acquire(timeout=timeout * SLOT_WAIT_SHARE):
            read.future.set_exception(self._busy())
            return
        read.holds_slot = True
        try:
            start()
        except BaseException as error:  # handed to every asker, this one included
            if not read.future.done():
                read.future.set_exception(error)

    def _answered(self, key: Hashable, read: _Read) -> None:
        if read.holds_slot:
            self._slots.release()
        with self._lock:
            if _failed(read.future):
                # A failure is not shared: the next read asks again.
                if self._reads.get(key) is read:
                    del self._reads[key]
            else:
                read.answered_at = self._clock()


def _failed(future: Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _chain(inner: Future[Any], outer: Future[Any]) -> None:
    """Settle ``outer`` as ``inner`` settles."""
    def settle(done: Future[Any]) -> None:
        if done.cancelled():
            outer.set_exception(RuntimeError("the call was withdrawn"))
        elif done.exception() is not None:
            outer.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            outer.set_result(done.result())

    inner.add_done_callback(settle)
