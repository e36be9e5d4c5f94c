"""The isolated placement's data path, on the version's side: a replica's own listener.

Through a Serve handle, each request from an endpoint's router to a version costs two Ray
actor calls' worth of scheduling, pickling and event-loop hops: milliseconds on a small
model, where colocated versions answer in a fraction of one. So where Serve's fast ingress
(HAProxy) runs, each version's application also gets an HTTP route of its own
(:func:`serving.names.link_route`), and its replicas answer it on their own lean server
(:mod:`serving.lean_http`, put on the replica's direct-ingress port as the endpoint's lean
ingress is). The router posts the arrays it has decoded and checked as a link body
(:mod:`serving.link_frames`) through its node's ingress (:mod:`serving.link_client`).

Serve still owns placement, lifecycle, health checks, draining and autoscaling: HAProxy
balances over the replicas Serve reports running, and every link request is admitted and
counted as Serve's own direct ingress counts a request (``max_ongoing_requests``,
``max_queued_requests`` and the ongoing count autoscaling reads).

The route can be reached by anyone who can reach the ingress, so a request must carry the
cluster's link secret (:mod:`serving.link_auth`); one without it gets 403 and nothing runs. The
body is read by the strict reader in :mod:`serving.link_frames`, never unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from modelplane.errors import ModelplaneError
from serving.backlog import Backlog
from serving.core import body_too_large, error_result
from serving.errors import ForbiddenError, InferenceFailedError, InvalidRequestError
from serving.lean_http import PlainReply, Reply, json_reply, text_reply
from serving.lean_ingress import HEALTH_PATHS, UNROUTED_LIMIT, start_lean_server
from serving.link_auth import carries_secret, link_secret_bounded
from serving.link_frames import CONTENT_TYPE, LinkFrameError, decode_arrays, encode_arrays
from serving.serve_internals import ReplicaSeam

log = logging.getLogger(__name__)

# The router has already held the request to the endpoint's own body limit (at most this).
LINK_BODY_LIMIT = 1024 * 1024 * 1024
_ANSWER_HEADERS = {"content-type": CONTENT_TYPE}


LINK_ELSEWHERE = "this route is answered on each replica's own listener only"


async def start_version_link(infer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
                             backlog: Backlog | None = None) -> LinkApp | None:
    """Answer the link on this replica's direct-ingress port; None (the router reaches the
    version through Serve's handle) where that cannot be done, the reason logged."""
    try:
        secret = await link_secret_bounded()
    except Exception as error:
        log.warning("no link for this version (%r); the router uses Serve's handle", error)
        return None
    made: list[LinkApp] = []

    def make(seam: ReplicaSeam) -> LinkApp:
        made.append(LinkApp(infer, seam.route_prefix, seam.health, secret))
        return made[0]

    server = await start_lean_server(make, {}, backlog)
    return made[0] if server is not None else None


class LinkApp:
    """A version replica's answers on its own listener: health as Serve's direct ingress
    gives it, 404 off the link route, and on it the model's arrays for the router's."""

    def __init__(self, infer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
                 prefix: str, health: Callable[[], Awaitable[tuple[bool, str]]],
                 secret: str) -> None:
        self.infer = infer
        self.prefix = prefix
        self.health = health
        self._secret = secret
        self.served = 0  # link requests answered with the model's arrays

    def body_limit(self, method: str, path: str, headers: Mapping[str, str]) -> int:
        # Only the router may send a large body: anyone else is refused before it is read.
        if path == self.prefix and carries_secret(headers, self._secret):
            return LINK_BODY_LIMIT
        return UNROUTED_LIMIT

    def refuse(self, path: str, size: int, limit: int, malformed: bool) -> Reply:
        if malformed:
            return error_result(InvalidRequestError("Content-Length must be a whole number of bytes",
                                                    detail={"field": "content-length"}), "")
        return error_result(body_too_large(size, limit, "link body"), "")

    def counted(self, path: str) -> bool:
        return path == self.prefix

    async def call(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if path in HEALTH_PATHS:
            healthy, message = await self.health()
            if path == "/-/routes" and healthy:
                return json_reply(200, {self.prefix: "link"})
            return text_reply(200 if healthy else 503, message)
        if path != self.prefix:
            return text_reply(404, f"Path '{path}' not found.")
        if not carries_secret(headers, self._secret):
            return error_result(ForbiddenError(
                "this route is the link between an endpoint's router and its versions; "
                "send inference requests to /v2/models/<endpoint>/infer"), "")
        if method != "POST":
            return error_result(InvalidRequestError("link requests are POST",
                                                    detail={"field": "method"}), "")
        try:
            arrays = decode_arrays(body)
        except LinkFrameError as error:
            return error_result(InvalidRequestError(f"link body: {error}",
                                                    detail={"field": "body"}), "")
        try:
            outputs = await self.infer(arrays)
            answer = encode_arrays(outputs)
        except ModelplaneError as error:
            return error_result(error, "")
        except Exception as error:  # the model's own failure: a 500 for this request alone
            log.exception("link request failed")
            return error_result(InferenceFailedError(f"{type(error).__name__}: {str(error)[:300]}"), "")
        self.served += 1
        return PlainReply(200, answer, _ANSWER_HEADERS)
