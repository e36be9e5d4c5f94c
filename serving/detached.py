"""The cluster's detached actors (the Monitor, the route board) outlive the processes that
made them, and so an upgrade of modelplane: `up` with Ray kept running used to find the
Monitor of the release before, answering in that release's terms.

Each such actor says which terms it speaks (a ``protocol()`` method returning an integer,
raised whenever its methods or what they take and return change). Whoever ensures the
actor replaces one that speaks older terms, or predates protocols, and leaves alone one
that speaks newer terms (an older `up` against a newer cluster changes nothing there) or
does not answer in time (busy is not old; the fault paths handle a dead one).

They run on the head node, as Ray Train's state actor does: a worker node lost took the
Monitor's five minutes of figures (and which replicas it had heard from) with it, and the
cluster does not outlive its head anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

PROTOCOL_TIMEOUT_S = 30.0
RELEASE_TIMEOUT_S = 30.0
NO_ANSWER = -1  # the running actor did not say its protocol in time
# Ray's resource on the head node alone; a sliver of it places an actor there. The default
# strategy takes the actor out of its creator's placement group, if it has one.
ON_HEAD = {"resources": {"node:__internal_head__": 0.001}, "scheduling_strategy": "DEFAULT"}


def running_protocol(handle: Any, timeout_s: float = PROTOCOL_TIMEOUT_S) -> int | None:
    """The protocol the running actor speaks; None where it predates protocols or is dead,
    :data:`NO_ANSWER` where it did not answer within ``timeout_s``."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        ask = handle.protocol
    except AttributeError:  # a class from before protocols: its handle has no such method
        return None
    try:
        return int(ray.get(ask.remote(), timeout=timeout_s))
    except GetTimeoutError:
        return NO_ANSWER
    except RayActorError:
        return None


def ensure_detached(actor_class: Any, *, name: str, namespace: str, protocol: int,
                    args: Sequence[Any] = (), options: dict[str, Any] | None = None,
                    replaced: Callable[[int | None], None] | None = None) -> Any:
    """The detached actor ``name``, created from ``actor_class`` (a ``ray.remote`` class)
    where missing, and in place of one that speaks a protocol older than ``protocol``;
    ``replaced`` is told the protocol of an actor it replaced (None: before protocols)."""
    import ray

    existing = named_actor(name, namespace)
    if existing is not None:
        found = running_protocol(existing)
        if found is not None and (found == NO_ANSWER or found >= protocol):
            return existing
        log.warning("replacing the %s actor: it speaks protocol %s, this modelplane %d",
                    name, found if found is not None else "none (older)", protocol)
        ray.kill(existing, no_restart=True)
        _wait_released(name, namespace)
        if replaced is not None:
            replaced(found)
    return actor_class.options(name=name, namespace=namespace, lifetime="detached",
                               get_if_exists=True, **{**ON_HEAD, **(options or {})}).remote(*args)


def in_own_thread(call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """``call(*args)`` in a daemon thread of its own, its answer (or error) a future of the
    running loop. Not in the loop's default executor: that one also decodes and encodes
    large requests, and a few calls that the GCS never answers would hold its threads
    (min(32, cores + 4)) for good."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Any] = loop.create_future()

    def settle(error: BaseException | None, result: Any) -> None:
        if answer.done():  # nobody waits any more (the loop's own cancellation)
            return
        if isinstance(error, StopIteration):  # a future cannot hold one
            error = RuntimeError(f"the call raised {error!r}")
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(result)

    def run() -> None:
        error: BaseException | None = None
        result = None
        try:
            result = call(*args)
        except BaseException as raised:  # handed to the loop, raised where it is awaited
            error = raised
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, error, result)

    threading.Thread(target=run, name=f"gcs-{getattr(call, '__name__', 'call')}",
                     daemon=True).start()
    return answer


class BoundedLookup:
    """A blocking lookup (a GCS call, such as :func:`named_actor`) run in a thread of its
    own (:func:`in_own_thread`) and waited for at most ``timeout_s`` on the event loop.

    A GCS that does not answer (restarting, partitioned) held a replica's loops for as long
    as it did not: its shipper took no statistics meanwhile, so all those seconds reached
    the Monitor as one shipment. A lookup that outlives its wait is not started again while
    it runs, so a GCS that stays away costs one thread, not one per attempt: the next call
    waits on the same lookup and takes its answer once it comes, where that answer is no
    older than ``fresh_s`` (an actor may have been replaced since). One is used from one
    event loop."""

    def __init__(self, lookup: Callable[..., Any], fresh_s: float = 5.0) -> None:
        self._lookup = lookup
        self.fresh_s = fresh_s
        self._pending: asyncio.Future[Any] | None = None
        self._pending_args: tuple[Any, ...] = ()
        self._answered_at = 0.0

    @property
    def waiting(self) -> bool:
        """Whether a lookup is under way (started by a call that stopped waiting on it)."""
        return self._pending is not None and not self._pending.done()

    async def __call__(self, *args: Any, timeout_s: float) -> Any:
        """The lookup's answer for ``args``, or its error; :class:`TimeoutError` where none
        came within ``timeout_s`` (the lookup goes on, for a later call to take)."""
        pending = self._pending
        if (pending is None or self._pending_args != args
                or (pending.done() and time.monotonic() - self._answered_at > self.fresh_s)):
            pending = self._pending = in_own_thread(self._lookup, *args)
            self._pending_args = args
            pending.add_done_callback(self._answered)
        try:
            return await asyncio.wait_for(asyncio.shield(pending), timeout_s)
        except TimeoutError:
            if pending.done():  # it came as the wait ended
                return pending.result()
            raise
        finally:
            if pending.done() and self._pending is pending:
                self._pending = None  # taken: the next call looks up afresh

    def _answered(self, done: asyncio.Future[Any]) -> None:
        if done is self._pending:
            self._answered_at = time.monotonic()
        # An error that comes after every call stopped waiting is taken by the next call,
        # or by no one: either way not logged as never retrieved.
        if not done.cancelled():
            done.exception()


def named_actor(name: str, namespace: str) -> Any | None:
    """The handle of the actor ``name``, or None when there is none."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def _wait_released(name: str, namespace: str) -> None:
    """Until the killed actor's name is free (Ray frees it once the actor is dead)."""
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while named_actor(name, namespace) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the old {name} actor was killed but its name was not released "
                               f"within {RELEASE_TIMEOUT_S:g} s; run `modelplane up` again")
        time.sleep(0.1)
