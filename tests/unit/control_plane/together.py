"""Control planes acting at once on one store, as threads with engines of their own."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, event

from control_plane.store import Database

T = TypeVar("T")


def start_together(monkeypatch: pytest.MonkeyPatch, db_url: str,
                   start: Callable[[Database], T], count: int = 2) -> tuple[list[T], list[BaseException]]:
    """``start`` on ``count`` threads, each with its own engine on ``db_url`` (as separate
    processes have); what they returned and what they raised.

    Each waits at the token file it writes until the others arrive (or 1.5 s pass: the
    others wait for its transaction to end, as they should), so unserialized, all would
    have read the store before any wrote it."""
    import control_plane.auth as auth

    all_at_the_file = threading.Barrier(count)
    write_file = auth.write_secret_file

    def write_when_all_arrive(target: Path, secret: str) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            all_at_the_file.wait(timeout=1.5)
        write_file(target, secret)

    monkeypatch.setattr(auth, "write_secret_file", write_when_all_arrive)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        store = Database(db_url, migrate=False)
        try:
            results.append(start(store))
        except BaseException as error:  # the caller asserts on it
            errors.append(error)
        finally:
            store.dispose()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a start never ended"
    return results, errors


class Interleaved:
    """Another control plane's call (``action``), run once on a thread of its own at a
    moment the test chooses inside this one's transaction (:meth:`now`), given
    ``settle_s`` to finish there: it may wait for a lock the transaction holds, as it
    should, and without that lock it has committed by then. :meth:`ended` waits for it;
    ``outcome`` then holds what it returned or raised."""

    def __init__(self, action: Callable[[], Any], settle_s: float) -> None:
        self.action = action
        self.settle_s = settle_s
        self.outcome: list[Any] = []
        self._thread: threading.Thread | None = None

    def now(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run)
            self._thread.start()
            self._thread.join(self.settle_s)

    def ended(self, what: str) -> list[Any]:
        assert self._thread is not None, f"{what} never happened"
        self._thread.join(60)
        assert not self._thread.is_alive(), "the other call never ended"
        return self.outcome

    def _run(self) -> None:
        try:
            self.outcome.append(self.action())
        except Exception as error:  # the caller asserts on it
            self.outcome.append(error)


@contextmanager
def meanwhile(engine: Engine, at: Callable[[str], bool], action: Callable[[], Any],
              settle_s: float = 0.5) -> Iterator[list[Any]]:
    """:class:`Interleaved` ``action`` just after the first statement ``at`` matches runs on
    ``engine``, inside the block's transaction. Yields a list that holds, after the block,
    what ``action`` returned or raised."""
    other = Interleaved(action, settle_s)

    def interleave(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if at(statement):
            other.now()

    event.listen(engine, "after_cursor_execute", interleave)
    try:
        yield other.outcome
    finally:
        event.remove(engine, "after_cursor_execute", interleave)
    other.ended("the statement to interleave at")


def selects_from(table: str) -> Callable[[str], bool]:
    """``at`` for :func:`meanwhile`: the first SELECT that reads ``table``."""
    return lambda statement: (statement.lstrip().upper().startswith("SELECT")
                              and f"FROM {table}" in statement)
