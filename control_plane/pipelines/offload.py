"""Work a pipeline pass hands to a thread of its own: reading a dataset, checking it,
scoring held-out rows, fingerprinting the data a trigger watches.

One lock holds every pipeline's pass, so a read that never answers (an object store that
stalls, a mount that hangs) would hold every pipeline. The pass does not wait for such
work: it starts it, looks at it on each later pass, and takes its result once it is
there. Work still unfinished at its deadline is given up and the caller told so.

Python cannot stop a thread, so threads are rationed:

- at most ``max_threads`` run at once, and work waiting for one starts in the order it
  was asked for (not in the order passes happen to look), each within its own deadline;
- at most one thread works on one *resource* (a data URI) at a time, so a source that
  hangs holds one thread however often it is asked for again: later work on it waits
  for the hung read to return, and fails at its deadline saying so.

A result (or error) is kept until nobody has looked at it for ``forget_after_s``, so a
pass whose write failed after taking it finds it again rather than redoing the work.

A pass may wait a moment (``wait_s``) for work that is running: quick work (a job API
that answers) is then taken on the pass that asked for it, and slow work costs the pass
that moment, never the work's own time.

Work runs in the context of the pass that asked for it: its store writes carry that
pass's write fence (the control loops' lease), so work started after this process lost
the lead writes nothing.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from control_plane.store.database import FencedOut

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
    started: bool  # False while it waits for a thread, or for its resource

    def describe(self, what: str) -> str:
        if self.started:
            return f"{what}: under way"
        return f"{what}: waiting for a free thread, or for an earlier read of the same data"


@dataclass
class _Work:
    work: Callable[[], Any]
    what: str
    resource: Hashable
    asked_at: float
    looked_at: float
    started: bool = False
    finished: bool = False
    overdue: WorkOverdue | None = None
    value: Any = None
    error: Exception | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    # The asker's context variables (the store's write fence among them).
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


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
        self._busy: dict[Hashable, str] = {}  # resource → what its thread is doing
        self._running = 0

    def poll(self, key: Hashable, work: Callable[[], T], *, deadline_s: float, what: str,
             resource: Hashable = None,
             again_after: tuple[type[Exception], ...] = (), wait_s: float = 0.0,
             once: bool = False) -> Done[T] | Pending:
        """``work``'s result once it has finished (its exception raised here, each time
        asked), else :class:`Pending`; :class:`WorkOverdue` once ``deadline_s`` have passed
        since ``key`` was first asked for. ``work`` is used only the first time, unless it
        raised one of ``again_after`` (trouble that passes, such as the store away for a
        moment): that is raised once, and the next poll starts ``work`` anew.
        ``resource`` (default: ``key``) is what at most one thread works on at a time.
        ``wait_s``: how long to wait for the work to finish once it runs (not while it
        waits for a thread or for its resource). ``once``: its answer (a result, an error,
        the deadline passed) is given once, and the next poll of ``key`` starts ``work``
        anew: work asked again and again, such as a look at a job's status."""
        answer = self._poll(key, work, deadline_s=deadline_s, what=what, resource=resource,
                            again_after=again_after, once=once)
        if isinstance(answer, Pending) and answer.started and wait_s > 0:
            with self._lock:
                entry = self._work.get(key)
            if entry is not None:
                entry.ended.wait(min(wait_s, max(deadline_s - answer.waited_s, 0.0)))
                return self._poll(key, work, deadline_s=deadline_s, what=what,
                                  resource=resource, again_after=again_after, once=once)
        return answer

    def _poll(self, key: Hashable, work: Callable[[], T], *, deadline_s: float, what: str,
              resource: Hashable, again_after: tuple[type[Exception], ...],
              once: bool) -> Done[T] | Pending:
        with self._lock:
            now = self._clock()
            self._forget(now)
            entry = self._work.get(key)
            if entry is None:
                entry = self._work[key] = _Work(
                    work=work, what=what, resource=key if resource is None else resource,
                    asked_at=now, looked_at=now)
                self._start_waiting()
            entry.looked_at = now
            if entry.finished:
                # Refused for another control plane's lead: asked anew once this leads.
                if once or isinstance(entry.error, (*again_after, FencedOut)):
                    del self._work[key]
                if entry.error is not None:
                    raise entry.error
                return Done(entry.value)
            if entry.overdue is None and now - entry.asked_at >= deadline_s:
                entry.overdue = WorkOverdue(self._overdue_reason(entry, deadline_s))
            if entry.overdue is not None:
                if once:
                    del self._work[key]  # a thread still running it keeps its resource
                raise entry.overdue
            waited = now - entry.asked_at
            return Pending(waited_s=waited, started=entry.started)

    @property
    def running(self) -> int:
        """Threads now running work (those whose work hangs included)."""
        with self._lock:
            return self._running

    def _overdue_reason(self, entry: _Work, deadline_s: float) -> str:
        reason = f"{entry.what} did not finish within {deadline_s:g} s"
        if entry.started:
            return reason
        holder = self._busy.get(entry.resource)
        if holder is not None:
            return (f"{reason}: an earlier piece of work on the same data or service ({holder}) "
                    "has not returned")
        return f"{reason}: all {self._max_threads} threads were busy with work that had not returned"

    def _start_waiting(self) -> None:
        """Start waiting work, oldest first, while threads are free (under the lock)."""
        waiting = sorted((e for e in self._work.values()
                          if not e.started and e.overdue is None), key=lambda e: e.asked_at)
        for entry in waiting:
            if self._running >= self._max_threads:
                return
            if entry.resource not in self._busy:
                self._start(entry)

    def _start(self, entry: _Work) -> None:
        def run() -> None:
            try:
                entry.value = entry.context.run(entry.work)
            except Exception as error:  # handed to whoever polls
                entry.error = error
            except BaseException as error:  # a thread's SystemExit must not end the loop's
                entry.error = RuntimeError(f"{entry.what} stopped: {type(error).__name__}")
            finally:
                with self._lock:
                    entry.finished = True
                    entry.work = _spent  # what it held (a closure over a dataset) goes
                    self._running -= 1
                    self._busy.pop(entry.resource, None)
                    self._start_waiting()
                entry.ended.set()

        thread = threading.Thread(target=run, name=f"pipeline-offload: {entry.what}"[:60],
                                  daemon=True)
        thread.start()  # raises (no thread to be had) before anything is counted
        entry.started = True
        self._running += 1
        self._busy[entry.resource] = entry.what

    def _forget(self, now: float) -> None:
        stale = [key for key, entry in self._work.items()
                 if now - entry.looked_at >= self._forget_after_s]
        for key in stale:
            del self._work[key]


def _spent() -> Any:
    raise RuntimeError("this work has run already")
