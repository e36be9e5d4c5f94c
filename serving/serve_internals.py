"""Every Ray Serve internal the lean ingress touches, and nothing else.

Serve 2.60 gives no supported way to put one's own server on a replica's direct-ingress
port, so the lean ingress (``serving.lean_ingress``) borrows these, and only on the Ray
series it was written against (``RAY_SERIES``); on any other, or when one of them is missing,
``find_replica`` says why and the replica keeps Serve's own server (today's path).
``tests/unit/serving/test_serve_internals.py`` fails when a Ray upgrade moves any of them.

What is borrowed, on the ``Replica`` object behind the replica actor
(``ray/serve/_private/replica.py``):

- ``_direct_ingress_http_server`` and ``_direct_ingress_http_server_task``: the uvicorn
  server Serve started on the port the controller allocated and HAProxy targets, and the
  task serving it. The lean server takes over its listening socket and is put in their
  place, so Serve's drain (``should_exit``, then awaiting the task, then cancelling it) and
  its shutdown act on the lean server unchanged.
- ``_start_request(metadata)``: the async context manager Serve's own direct ingress
  enters per request: it waits for a slot under ``max_ongoing_requests`` and counts the
  request in the replica's ongoing requests, which autoscaling, the queue-length probes and
  the graceful drain read.
- ``max_queued_requests``, ``_can_accept_request(metadata)`` and
  ``_track_queued_request()``: the deployment's bound on requests waiting for a slot, the
  check Serve's direct ingress makes before it admits a request, and the count of those
  waiting that the check reads.
- ``_dataplane_health_check()``: what the replica answers HAProxy's ``/-/healthz`` (503
  ``DRAINING`` once shutdown has begun, so HAProxy stops sending).
- ``_event_loop``, ``_route_prefix``, ``_deployment_id``: where it runs and what it serves.

And in Ray core: ``global_worker.actors[global_worker.actor_id]`` is the actor instance
(``ReplicaActor``), whose ``_replica_impl`` is that ``Replica``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

RAY_SERIES = "2.60."  # the Ray versions whose internals these are
STOP_TIMEOUT_S = 5.0
DIRECT_INGRESS_OFF = "Serve's direct ingress is off (no HAProxy)"

# The Replica attributes used below: checked before any is touched.
REPLICA_ATTRIBUTES = ("_direct_ingress_http_server", "_direct_ingress_http_server_task",
                      "_start_request", "max_queued_requests", "_can_accept_request",
                      "_track_queued_request", "_dataplane_health_check", "_event_loop",
                      "_route_prefix", "_deployment_id")


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def _current_replica() -> Any:
    from ray._private.worker import global_worker

    actor = global_worker.actors.get(global_worker.actor_id)
    return getattr(actor, "_replica_impl", None)


class ReplicaSeam:
    """The running replica's direct-ingress HTTP server, as the lean ingress needs it."""

    def __init__(self, replica: Any) -> None:
        from ray.serve._private.common import RequestMetadata, RequestProtocol

        self.replica = replica
        self.server = replica._direct_ingress_http_server
        self.route_prefix: str = replica._route_prefix or ""
        self.app_name: str = replica._deployment_id.app_name
        # One metadata for every request: the ongoing-request count reads only its
        # protocol, its direct-ingress flag and its (absent) reserved slot.
        self._metadata = RequestMetadata(
            request_id="", internal_request_id="", call_method="__call__",
            route=self.route_prefix, app_name=self.app_name, is_streaming=True,
            _request_protocol=RequestProtocol.HTTP, _http_method="POST", is_direct_ingress=True)

    @property
    def keep_alive_s(self) -> float:
        return float(self.server.config.timeout_keep_alive)

    def ongoing(self, refusal: Callable[[int], BaseException]) -> Callable[[], Any]:
        """A factory of the per-request context that admits and counts the request as
        Serve's direct ingress does: refused (``refusal(limit)`` is raised) when the replica
        already holds ``max_queued_requests`` waiting, else queued until a slot under
        ``max_ongoing_requests`` is free, then counted in the ongoing requests."""
        replica, metadata = self.replica, self._metadata
        start = replica._start_request

        @contextlib.asynccontextmanager
        async def admitted() -> AsyncIterator[None]:
            # Read per request: a changed limit reaches running replicas in place.
            limit = replica.max_queued_requests
            if limit == -1:
                async with start(metadata):
                    yield
                return
            if not replica._can_accept_request(metadata):
                raise refusal(limit)
            with replica._track_queued_request() as release_queue_slot:
                async with start(metadata):
                    release_queue_slot()  # running now, no longer waiting
                    yield

        return admitted

    async def health(self) -> tuple[bool, str]:
        healthy, message = await self.replica._dataplane_health_check()
        return bool(healthy), str(message)

    async def listening_sockets(self) -> list[socket.socket]:
        """Duplicates of the sockets Serve's server listens on (its port, HAProxy's target)."""
        server = self.server
        for _ in range(int(STOP_TIMEOUT_S / 0.05)):
            if server.started:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("Serve's direct-ingress server did not start")
        found = [sock for listener in server.servers for sock in listener.sockets]
        if not found:
            raise RuntimeError("Serve's direct-ingress server has no listening socket")
        # A duplicate descriptor keeps the socket listening after Serve's server closes its
        # own, so the port is never free (no one can take it) and nothing queued is lost.
        return [socket.socket(fileno=os.dup(sock.fileno())) for sock in found]

    async def replace_server(self, lean: Any, serve_lean: Callable[[], Any]) -> None:
        """Stop Serve's server and put ``lean`` (with the task running ``serve_lean()``) in
        its place, where Serve's drain and shutdown find it."""
        replica, server = self.replica, self.server
        server.should_exit = True
        task = replica._direct_ingress_http_server_task
        if task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
            task.cancel()
        replica._direct_ingress_http_server = lean
        replica._direct_ingress_http_server_task = asyncio.get_running_loop().create_task(serve_lean())


def find_replica() -> tuple[ReplicaSeam | None, str]:
    """This process's replica, ready for the lean ingress, or None and the reason."""
    version = ray_version()
    if not version.startswith(RAY_SERIES):
        return None, (f"Ray {version} is not the series the lean ingress was written against "
                      f"({RAY_SERIES}x)")
    try:
        replica = _current_replica()
    except Exception as error:
        return None, f"the replica could not be found ({type(error).__name__}: {error})"
    if replica is None:
        return None, "not running in a Serve replica"
    missing = [name for name in REPLICA_ATTRIBUTES if not hasattr(replica, name)]
    if missing:
        return None, f"Serve's replica lacks {', '.join(missing)}"
    server = replica._direct_ingress_http_server
    if server is None:
        return None, DIRECT_INGRESS_OFF
    for name in ("should_exit", "started", "servers", "config"):
        if not hasattr(server, name):
            return None, f"Serve's direct-ingress server has no {name!r}"
    config = server.config
    if getattr(config, "is_ssl", False) or getattr(config, "root_path", ""):
        return None, "Serve's HTTP options set TLS or a root path, which the lean ingress does not serve"
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None, "no running event loop"
    if replica._event_loop is not loop:
        return None, ("user code runs on its own event loop "
                      "(RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD)")
    try:
        return ReplicaSeam(replica), ""
    except Exception as error:
        return None, f"Serve's request metadata changed ({type(error).__name__}: {error})"
