"""Work a pipeline pass hands to a thread of its own: reading a dataset, checking it,
scoring held-out rows, fingerprinting the data a trigger watches.

One lock holds every pipeline's pass, so a read that never answers (an object store that
stalls, a mount that hangs) would hold every pipeline. The pass does not wait for such
work: it starts it, looks at it on each later pass, and takes its result once it is
there. Work still unfinished at its deadline is given up and the caller told so.

Python cannot stop a thread. A thread whose work never returns keeps its slot, and at
most ``max_threads`` run at once, so hung reads cost threads up to that bound only; later
work waits for a slot, and its deadline counts from when it was first asked for, so it
ends all the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_THREADS = 4
# Work nobody looked at for this long (its run was cancelled, another control plane
# took the loop over) is forgotten; a thread still running it keeps its slot until done.
FORGET_AFTER_S = 600.0


class WorkOverdue(TimeoutError):
    """Work that had not finished by its deadline; it is given up."""


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


@dataclass(frozen=True)
class Pending:
    waited_s: float
    started: bool  # False while every thread is busy

    def describe(self, what: str) -> str:
        if self.started:
            return f"{what}: under way"
        return f"{what}: waiting for a free thread (others still running)"


@dataclass
class _Work:
    asked_at: float
    looked_at: float
    started: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class Offload:
    """Work keyed by what it is for; :meth:`poll` starts it, then answers for it."""

    def __init__(self, max_threads: int = MAX_THREADS, *,
                 clock: Callable[[], float] = time.monotonic,
                 forget_after_s: float = FORGET_AFTER_S) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._max_threads = max_threads
        self._clock = clock
        self._forget_after_s = forget_after_s
        self._lock = threading.Lock()
        self._work: dict[Hashable, _Work] = {}
        self._running = 0

    def poll(self, key: Hashable, work: Callable[[], T], *, deadline_s: float,
             what: str) -> Done[T] | Pending:
        """``work``'s result once it has finished (its exception raised here), else
        :class:`Pending`; :class:`WorkOverdue` once ``deadline_s`` have passed since
        ``key`` was first asked for. ``work`` is used only the first time it starts."""
        with self._lock:
            now = self._clock()
            self._forget(now)
            entry = self._work.get(key)
            if entry is None:
                entry = self._work[key] = _Work(asked_at=now, looked_at=now)
            entry.looked_at = now
            if not entry.started and self._running < self._max_threads:
                self._start(entry, work, what)
            if entry.finished.is_set():
                del self._work[key]
                if entry.error is not None:
                    raise entry.error
                return Done(entry.value)
            waited = now - entry.asked_at
            if waited >= deadline_s:
                del self._work[key]
                raise WorkOverdue(f"{what} did not finish within {deadline_s:g} s"
                                  + ("" if entry.started else
                                     f"; all {self._max_threads} threads were busy with "
                                     "work that had not returned"))
            return Pending(waited_s=waited, started=entry.started)

    @property
    def running(self) -> int:
        """Threads now running work (those whose work hangs included)."""
        with self._lock:
            return self._running

    def _start(self, entry: _Work, work: Callable[[], Any], what: str) -> None:
        def run() -> None:
            try:
                entry.value = work()
            except BaseException as error:  # handed to whoever polls next
                entry.error = error
            finally:
                with self._lock:
                    self._running -= 1
                entry.finished.set()

        entry.started = True
        self._running += 1
        threading.Thread(target=run, name=f"pipeline-offload: {what}"[:60], daemon=True).start()

    def _forget(self, now: float) -> None:
        stale = [key for key, entry in self._work.items()
                 if now - entry.looked_at >= self._forget_after_s]
        for key in stale:
            del self._work[key]
