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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from serving.names import ROUTE_BOARD_NAME, ROUTE_BOARD_NAMESPACE
from serving.schemas import EndpointConfig, RouteTable

WAIT_S = 30.0  # one long-poll; the replica asks again at once
# Postings of deleted endpoints are never needed again; the bound keeps a create/delete
# loop from growing the board, and only ever drops the postings changed longest ago.
MAX_POSTINGS = 10_000
# The terms the route board speaks (serving.detached): raised when its methods change.
ROUTE_BOARD_PROTOCOL = 1


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


class RouteBoard:
    """The latest posting per endpoint incarnation, and the replicas waiting for a newer one.

    Keyed by incarnation as well as name: two stores sharing a cluster, or an endpoint
    deleted and created again, never overwrite each other's postings."""

    def __init__(self) -> None:
        self._posted: dict[tuple[str, str], PostedRoutes] = {}
        self._changed: dict[tuple[str, str], asyncio.Event] = {}

    def post(self, endpoint: str, posted: PostedRoutes) -> bool:
        """Keep ``posted`` unless the board holds a newer generation; True when the board
        holds ``posted`` afterwards."""
        key = (endpoint, posted.incarnation)
        current = self._posted.get(key)
        if current is not None and current.generation >= posted.generation:
            return current == posted
        self._posted.pop(key, None)  # to the end: the oldest posting is dropped first
        self._posted[key] = posted
        while len(self._posted) > MAX_POSTINGS:
            del self._posted[next(iter(self._posted))]
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()
        return True

    def read(self, endpoint: str, incarnation: str) -> PostedRoutes | None:
        return self._posted.get((endpoint, incarnation))

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

class RouteBoardActor(RouteBoard):
    """The Ray actor wrapping :class:`RouteBoard` (async: it holds every replica's poll)."""

    async def protocol(self) -> int:
        return ROUTE_BOARD_PROTOCOL

    async def post(self, endpoint: str, posted: PostedRoutes) -> bool:  # type: ignore[override]
        return RouteBoard.post(self, endpoint, posted)

    async def read(self, endpoint: str, incarnation: str) -> PostedRoutes | None:  # type: ignore[override]
        return RouteBoard.read(self, endpoint, incarnation)


def ensure_route_board(name: str = ROUTE_BOARD_NAME,
                       namespace: str = ROUTE_BOARD_NAMESPACE) -> Any:
    """The cluster's route board, created (detached, no CPU reserved) if it is missing, or
    in place of an older modelplane's (:mod:`serving.detached`). A new board starts empty:
    replicas serve the routes Serve gave them until the reconciler next posts."""
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
