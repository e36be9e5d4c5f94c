"""The lean ingress: an endpoint replica's data path on its own HTTP server.

With Serve's direct ingress (HAProxy in front, ``modelplane up``'s default) a request crosses
uvicorn, Serve's ASGI wrappers, its request-id middleware, the user-callable wrapper and
Starlette before ``InferenceCore.handle`` runs. With ``MODELPLANE_LEAN_INGRESS`` on, the
replica's first ``reconfigure`` puts a :class:`serving.lean_http.LeanServer` on the very
socket Serve's server listens on (the port the controller allocated and HAProxy targets),
before Serve reports the replica running, and that server calls the core directly.

Serve keeps the replica's placement, lifecycle, health checks and autoscaling: every
request is counted in Serve's ongoing requests (and waits under ``max_ongoing_requests``)
exactly as its own direct ingress counts it, ``/-/healthz`` answers what Serve would, and
Serve's drain stops the lean server as it would stop its own. What it borrows from Serve is
in ``serving.serve_internals``; where that is not there, the replica keeps Serve's server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from serving.backlog import Backlog
from serving.core import InferenceCore, body_too_large, error_result
from serving.errors import InvalidRequestError, ModelNotReadyError, overloaded_error
from serving.grpc_link import GRPC_LINK_PATH, answer_linked_call
from serving.lean_http import LeanApp, LeanServer, Refused, Reply, json_reply, text_reply
from serving.link_auth import link_secret_bounded
from serving.serve_internals import DIRECT_INGRESS_OFF, ReplicaSeam, find_replica

log = logging.getLogger(__name__)

SETTING = "MODELPLANE_LEAN_INGRESS"
HEALTH_PATHS = ("/-/healthz", "/-/routes")
UNROUTED_LIMIT = 64 * 1024  # a body sent to a path no endpoint serves is read up to this
LINK_SECRET_RETRY_S = 5.0  # how often a replica started without the link secret asks again
_filling: set[asyncio.Task[None]] = set()  # fill_link_secret tasks (kept from collection)


class CoreHolder:
    """What the lean ingress needs of the replica: its current core (None while loading)."""

    core: InferenceCore | None


class EndpointApp:
    """The replica's answers, as Serve's direct ingress plus ``EndpointServer.__call__``
    give them: health and routes, 404 outside the route prefix, the core's answers inside."""

    def __init__(self, holder: CoreHolder, prefix: str, app_name: str, health: Any,
                 link_secret: str | None = None, replica: str = "") -> None:
        self.holder = holder
        self.prefix = prefix
        self.app_name = app_name
        self.health = health
        # The gRPC ingress's calls, with the cluster's link secret (serving.grpc_link).
        self.grpc_path = prefix + GRPC_LINK_PATH
        self.link_secret = link_secret
        self.replica = replica
        # Whether the ingress has sent this replica a request of its endpoint directly: from
        # then on, one through Serve's proxy is a reconfigure's moment, not a start's.
        self.reached = False

    def body_limit(self, method: str, path: str, headers: Mapping[str, str]) -> int:
        core = self.holder.core
        if core is None or not path.startswith(self.prefix):
            return UNROUTED_LIMIT
        return core.body_limit(path[len(self.prefix):])

    def refuse(self, path: str, size: int, limit: int, malformed: bool) -> Reply:
        core = self.holder.core
        if malformed:
            error = InvalidRequestError("Content-Length must be a whole number of bytes",
                                        detail={"field": "content-length"})
        else:
            error = body_too_large(size, limit, "request body")
        return error_result(error, "") if core is None else core.refuse(error)

    def counted(self, path: str) -> bool:
        # As Serve's direct ingress: health and paths it does not serve are answered before
        # admission, so a replica with a full queue still passes HAProxy's health check.
        return path not in HEALTH_PATHS and path.startswith(self.prefix)

    async def call(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if path in HEALTH_PATHS:
            healthy, message = await self.health()
            if path == "/-/routes" and healthy:
                return json_reply(200, {self.prefix: self.app_name})
            return text_reply(200 if healthy else 503, message)
        if not path.startswith(self.prefix):
            return text_reply(404, f"Path '{path}' not found. Ping http://.../-/routes for "
                                   "available routes.")
        self.reached = True
        core = self.holder.core
        if path == self.grpc_path and method == "POST":
            return await answer_linked_call(core, headers, body, self.replica, self.link_secret)
        if core is None:
            return error_result(ModelNotReadyError("endpoint is loading"), "")
        return await core.handle(method, path[len(self.prefix):], headers,
                                 body if method == "POST" else b"")


def overloaded(limit: int) -> Refused:
    """The answer to a request that finds ``limit`` requests already waiting: 503 at once,
    with Retry-After, as Serve's own ingress answers it (``backpressure_config``)."""
    return Refused(error_result(overloaded_error(limit), ""))


def lean_ingress_enabled() -> bool:
    import os

    return os.environ.get(SETTING, "").strip().lower() in ("1", "true", "yes", "on")


async def start_lean_ingress(holder: CoreHolder, extra_headers: dict[str, str],
                             backlog: Backlog | None = None) -> LeanServer | None:
    """Put the lean server on this replica's direct-ingress port; None (Serve's server keeps
    serving) where that cannot be done, with the reason logged."""
    try:
        secret: str | None = await link_secret_bounded()
    except Exception as error:  # gRPC then reaches this replica through Serve's handle
        log.warning("no link secret yet for the gRPC ingress's calls (%r); asking again "
                    "every %g s", error, LINK_SECRET_RETRY_S)
        secret = None
    replica = extra_headers.get("x-modelplane-replica", "")
    made: list[EndpointApp] = []

    def make(seam: ReplicaSeam) -> EndpointApp:
        made.append(EndpointApp(holder, seam.route_prefix, seam.app_name, seam.health,
                                secret, replica))
        return made[0]

    server = await start_lean_server(make, extra_headers, backlog)
    if server is not None and secret is None:
        task = asyncio.get_running_loop().create_task(fill_link_secret(made[0]))
        _filling.add(task)
        task.add_done_callback(_filling.discard)
    return server


async def fill_link_secret(app: EndpointApp, retry_s: float | None = None) -> None:
    """The link secret for an app started without it (the GCS did not answer in time):
    until it comes, the gRPC ingress's calls to this replica are refused and go by Serve's
    handle; with it they are answered here again."""
    while app.link_secret is None:
        try:
            app.link_secret = await link_secret_bounded()
        except Exception:  # still unanswered: asked again
            await asyncio.sleep(LINK_SECRET_RETRY_S if retry_s is None else retry_s)
    log.info("the link secret came: the gRPC ingress's calls are answered here again")


async def start_lean_server(make_app: Callable[[ReplicaSeam], LeanApp],
                            extra_headers: dict[str, str],
                            backlog: Backlog | None = None) -> LeanServer | None:
    """Put a lean server answering ``make_app(seam)`` on this replica's direct-ingress
    port; None (Serve's server keeps serving) where that cannot be done, the reason logged."""
    seam, reason = find_replica()
    if seam is None:
        # Expected without HAProxy (Serve's proxy answers); anything else is worth a look.
        expected = reason.startswith(DIRECT_INGRESS_OFF)
        log.log(logging.INFO if expected else logging.WARNING,
                "lean ingress off, Serve's server answers: %s", reason)
        return None
    return await _take_over(seam, make_app(seam), extra_headers, backlog)


async def _take_over(seam: ReplicaSeam, app: LeanApp, extra_headers: dict[str, str],
                     backlog: Backlog | None = None) -> LeanServer | None:
    server = LeanServer(app, extra_headers=extra_headers, keep_alive_s=seam.keep_alive_s,
                        track=seam.ongoing(overloaded), backlog=backlog)
    try:
        sockets = await seam.listening_sockets()
        await server.start(sockets)
    except Exception as error:  # nothing is changed yet: Serve's server goes on
        server.stop_accepting()
        log.warning("lean ingress off, Serve's server answers: %s", error)
        return None
    # From here both listen on one socket, and no client knows the port yet: Serve reports
    # it to the controller (and HAProxy) only once this reconfigure has returned.
    await seam.replace_server(server, server.serve)
    server.backlog.counted = True  # the models may run cheap calls inline from now on
    log.info("lean ingress on: this replica's data path is served without ASGI")
    return server
