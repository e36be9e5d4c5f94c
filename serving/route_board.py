"""Route tables delivered to live replicas without reconfiguring them through Serve.

A Serve ``user_config`` change puts every replica of the application in UPDATING until
it has run ``reconfigure``, and Serve's fast ingress (HAProxy) sends only to RUNNING
replicas: for half a second to a second and a half after each change, requests fall back
to Serve's proxy and take several times as long. Weight, shadow and stickiness changes,
which are every rollout step and every ``traffic`` call, need no new code, model or
setting in the replica, so they travel here instead: the reconciler posts
``(incarnation, generation, routes)`` to one detached actor, and every replica long-polls
it and swaps its route table in place.

The ``user_config`` stays the durable record for everything else (the version set,
placement, limits), and carries the routes of its own generation: a replica takes
whichever of the two is newer, reads the board once before it first answers, and keeps a
posting that names a version it has not loaded until a ``reconfigure`` loads it. When
the board cannot be reached the reconciler falls back to a Serve reconfigure, so routes
always arrive, at worst by the slow path.

The board keeps its postings in Ray's key-value store (the GCS) too, and a restarted board
starts with them: one that started empty sent a replica started meanwhile back to the
routes Serve last gave it, a version since rolled back to 0% among them, until the control
plane posted again (never, while it was down).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from serving.names import ROUTE_BOARD_NAME, ROUTE_BOARD_NAMESPACE
from serving.schemas import EndpointConfig, RouteTable

log = logging.getLogger(__name__)

WAIT_S = 30.0  # one long-poll; the replica asks again at once
# Postings of deleted endpoints are never needed again; the bound keeps a create/delete
# loop from growing the board, and only ever drops the postings changed longest ago.
MAX_POSTINGS = 10_000
# The terms the route board speaks (serving.detached): raised when its methods change.
ROUTE_BOARD_PROTOCOL = 2  # 2: postings kept in Ray's store


@dataclass(frozen=True)
class PostedRoutes:
    """One endpoint's route table as of ``generation`` of its ``incarnation``."""

    incarnation: str
    generation: int
    routes: str  # a RouteTable's JSON

    def newer_than(self, config: EndpointConfig) -> bool:
        return self.incarnation == config.incarnation and self.generation > config.generation

    def applied_to(self, config: EndpointConfig) -> EndpointConfig | None:
        """``config`` with these routes, or None when they name a version it does not load."""
        routes = RouteTable.model_validate_json(self.routes)
        known = {v.version for v in config.versions}
        if (set(routes.weights) | set(routes.shadows)) - known:
            return None
        return config.model_copy(update={"routes": routes, "generation": self.generation})


class PostingStore(Protocol):
    """Where a board keeps its postings beyond its own life: text keyed by text."""

    def put(self, key: str, value: str) -> None: ...

    def delete(self, key: str) -> None: ...

    def load(self) -> list[str]: ...


class RouteBoard:
    """The latest posting per endpoint incarnation, and the replicas waiting for a newer one.

    Keyed by incarnation as well as name: two stores sharing a cluster, or an endpoint
    deleted and created again, never overwrite each other's postings. With a ``store``,
    each posting is kept there too and a new board starts with what it holds."""

    def __init__(self, store: PostingStore | None = None) -> None:
        self._posted: dict[tuple[str, str], PostedRoutes] = {}
        self._changed: dict[tuple[str, str], asyncio.Event] = {}
        self._store = store
        if store is not None:  # the oldest first, so the bound drops what it dropped before
            for _, endpoint, posted in sorted(_kept(store), key=lambda kept: kept[0]):
                self._take(endpoint, posted)

    def post(self, endpoint: str, posted: PostedRoutes) -> bool:
        """Keep ``posted`` unless the board holds a newer generation; True when the board
        holds ``posted`` afterwards."""
        held, writes = self._take(endpoint, posted)
        self._write(writes)
        return held

    def _take(self, endpoint: str, posted: PostedRoutes) -> tuple[bool, list[tuple[str, str | None]]]:
        """:meth:`post` in memory: whether the board holds ``posted``, and the writes (key,
        value; None deletes) that keep the store in step."""
        key = (endpoint, posted.incarnation)
        current = self._posted.get(key)
        if current is not None and current.generation >= posted.generation:
            return current == posted, []
        self._posted.pop(key, None)  # to the end: the oldest posting is dropped first
        self._posted[key] = posted
        writes: list[tuple[str, str | None]] = [(_store_key(key), _encoded(endpoint, posted))]
        while len(self._posted) > MAX_POSTINGS:
            dropped = next(iter(self._posted))
            del self._posted[dropped]
            writes.append((_store_key(dropped), None))
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()
        return True, writes

    def read(self, endpoint: str, incarnation: str) -> PostedRoutes | None:
        return self._posted.get((endpoint, incarnation))

    def _write(self, writes: list[tuple[str, str | None]]) -> None:
        """Keep the postings in the store (a None value deletes); a store that fails costs
        only what a restart would then lose: the posting stands here and is answered."""
        if self._store is None:
            return
        for key, value in writes:
            try:
                if value is None:
                    self._store.delete(key)
                else:
                    self._store.put(key, value)
            except Exception as error:
                log.warning("could not keep route posting %s in Ray's store: %s", key, error)

    async def wait(self, endpoint: str, incarnation: str, after_generation: int,
                   timeout_s: float = WAIT_S) -> PostedRoutes | None:
        """The posting newer than ``after_generation`` of ``incarnation``, as soon as there
        is one, or None after ``timeout_s``."""
        key = (endpoint, incarnation)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout_s, 0.0), 300.0)
        while True:
            current = self._posted.get(key)
            if current is not None and current.generation > after_generation:
                return current
            left = deadline - loop.time()
            if left <= 0:
                return None
            event = self._changed.setdefault(key, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout=left)
            except TimeoutError:
                return None

def _store_key(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"  # names and incarnations hold no '/'


def _encoded(endpoint: str, posted: PostedRoutes) -> str:
    return json.dumps({"endpoint": endpoint, "incarnation": posted.incarnation,
                       "generation": posted.generation, "routes": posted.routes,
                       "posted_at": time.time()})


def _kept(store: PostingStore) -> list[tuple[float, str, PostedRoutes]]:
    """The store's postings with when each was posted; none where the store cannot be
    read (the board starts empty, as before it kept any), and none that cannot be read."""
    try:
        values = store.load()
    except Exception as error:
        log.warning("could not read the route postings kept in Ray's store: %s", error)
        return []
    kept = []
    for value in values:
        try:
            document = json.loads(value)
            kept.append((float(document.get("posted_at", 0.0)), str(document["endpoint"]),
                         PostedRoutes(str(document["incarnation"]), int(document["generation"]),
                                      str(document["routes"]))))
        except (ValueError, KeyError, TypeError) as error:
            log.warning("skipping a route posting kept in Ray's store that cannot be read: %s",
                        error)
    return kept


class GcsPostings:
    """Postings in Ray's key-value store (the GCS): they outlive the board's actor."""

    NAMESPACE = "modelplane-route-board"

    def put(self, key: str, value: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(key, value.encode(), overwrite=True, namespace=self.NAMESPACE)

    def delete(self, key: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(key, namespace=self.NAMESPACE)

    def load(self) -> list[str]:
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

        values = (_internal_kv_get(key, namespace=self.NAMESPACE)
                  for key in _internal_kv_list(b"", namespace=self.NAMESPACE))
        return [value.decode() for value in values if value is not None]


class RouteBoardActor(RouteBoard):
    """The Ray actor wrapping :class:`RouteBoard` (async: it holds every replica's poll),
    its postings kept in Ray's store by one thread of its own, in order: a store that
    stalls holds no poll."""

    def __init__(self) -> None:
        super().__init__(store=GcsPostings())
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="route-board-store")

    async def protocol(self) -> int:
        return ROUTE_BOARD_PROTOCOL

    async def post(self, endpoint: str, posted: PostedRoutes) -> bool:  # type: ignore[override]
        held, writes = self._take(endpoint, posted)
        if writes:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._write, writes)
        return held

    async def read(self, endpoint: str, incarnation: str) -> PostedRoutes | None:  # type: ignore[override]
        return RouteBoard.read(self, endpoint, incarnation)


def ensure_route_board(name: str = ROUTE_BOARD_NAME,
                       namespace: str = ROUTE_BOARD_NAMESPACE) -> Any:
    """The cluster's route board, created (detached, no CPU reserved) if it is missing, or
    in place of an older modelplane's (:mod:`serving.detached`). A new board starts with
    the postings kept in Ray's store; with none, replicas serve the routes Serve gave them
    until the reconciler next posts."""
    import ray

    from serving.detached import ensure_detached

    actor_class = ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)(RouteBoardActor)
    return ensure_detached(actor_class, name=name, namespace=namespace,
                           protocol=ROUTE_BOARD_PROTOCOL)


def get_route_board(name: str = ROUTE_BOARD_NAME,
                    namespace: str = ROUTE_BOARD_NAMESPACE) -> Any | None:
    """The route board's handle, or None when nobody has posted a route table yet."""
    from serving.detached import named_actor

    return named_actor(name, namespace)
