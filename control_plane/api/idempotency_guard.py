"""The REST side of :mod:`control_plane.idempotency`: a write sent with an
``Idempotency-Key`` header acts once, and is answered the same however often it comes.

It sits inside :class:`~control_plane.api.call_gate.CallGate`, so the caller is known (keys
are per token) and the body is within the API's limit before it is read here. A write
without the header, or to a route open to anonymous callers, passes as before. A replayed
answer carries ``Idempotent-Replayed: true``. A refusal for want of a right (401, 403) is
not kept, and one caller's kept answers are bounded (``IdempotencyStore.kept_bytes``): past
that, its oldest go.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.api.call_gate import STREAMED_BODIES, route_path
from control_plane.api.errors import RETRY_AFTER_HEADER, error_response, request_id
from control_plane.errors import ConflictError, InvalidInputError, PayloadTooLargeError
from control_plane.idempotency import (
    KEY_HEADER,
    KEY_PATTERN,
    REPLAYED_HEADER,
    WRITES,
    Reply,
    fingerprint,
)
from modelplane.errors import ModelplaneError, error_body

log = logging.getLogger(__name__)

# Answers to writes are small documents; a larger one is answered but not kept.
MAX_KEPT_BYTES = 1024 * 1024
# Set by the server for this answer; a replay gets its own.
_NOT_KEPT = frozenset({b"content-length", b"date", b"server", b"x-request-id"})
# Refusals of a caller without the right to the call (no valid token, a role too low):
# nothing acted, and kept they would be rows any token could add without end.
NOT_THE_CALLERS = frozenset({401, 403})
# Routes whose answer holds a secret (a token shown once, a receiver's webhook URL): the
# store never keeps it. A call asked again is told that the first acted, and what to do.
SECRET_ANSWERS = tuple(compile_path(path)[0] for path in ("/tokens",
                                                          "/alerts/receivers/{name}"))


class IdempotencyGuard:
    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITES:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        key = request.headers.get(KEY_HEADER)
        authenticated = scope.get("state", {}).get("authenticated")
        path = route_path(scope)
        # A streamed upload is bounded by its route, not read here; it is content-addressed,
        # so sent twice it stores one file.
        streamed = f"{scope['method']} {path}" in STREAMED_BODIES
        if key is None or authenticated is None or streamed:
            await self.app(scope, receive, send)
            return
        store = self.api.state.control_plane.idempotency
        caller = authenticated[1].name
        try:
            if not KEY_PATTERN.fullmatch(key):
                raise InvalidInputError(
                    "the Idempotency-Key header must be 8 to 64 of letters, digits and ._:-",
                    detail={"field": "idempotency-key"})
            body = await _read_body(receive)
            if body is None:  # the caller went away before it finished sending
                return
            request_print = fingerprint(scope["method"], scope["path"],
                                        scope.get("query_string", b"").decode("latin-1"), body)
            hold = await run_in_threadpool(store.reserve, caller, key, request_print)
        except ModelplaneError as error:
            await error_response(request, error)(scope, receive, send)
            return
        if isinstance(hold, Reply):
            await _replay(hold, send)
            return
        async def settle(reply: Reply | None) -> None:
            # Settled before the answer's last byte goes out: a caller that has its answer
            # and asks again is always replayed it, never told the call is still running.
            if reply is not None and reply.status < 400 and any(
                    secret.match(path) for secret in SECRET_ANSWERS):
                reply = _secret_withheld(request, key, reply.status)
            if reply is not None and reply.status in NOT_THE_CALLERS:
                reply = None  # refused before acting, for a caller without the right
            try:
                if reply is None:
                    await run_in_threadpool(store.release, hold)
                else:
                    await run_in_threadpool(store.keep, hold, reply)
            except Exception:  # the store went away: the key is freed at its hold's end
                log.warning("could not keep the answer to idempotency key %r of %s", key,
                            caller, exc_info=True)

        answer = _Answer(send, settle)
        try:
            await self.app(scope, _replaying(body, receive), answer.send)
        finally:
            # Kept even where the caller is gone: that is the call that will ask again.
            await answer.settle()


def _secret_withheld(request: Request, key: str, status: int) -> Reply:
    error = ConflictError(
        f"the call with idempotency key {key!r} acted (HTTP {status}), and its answer held a "
        "secret, which is never kept: look at what it made (`modelplane token list`, "
        "`modelplane alerts receivers`) and make it again under a new key if need be",
        detail={"field": "idempotency-key"})
    return Reply(error.http_status, [["content-type", "application/json"]],
                 json.dumps(error_body(error, request_id(request))).encode())


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        try:
            message = await receive()
        except HTTPException as error:  # CallGate's bound on a body streamed without a length
            raise PayloadTooLargeError(str(error.detail), detail={"field": "body"}) from None
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` that hands the route the body read here, then the caller's own events."""
    pending = True

    async def replaying() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying


class _Answer:
    """The route's answer as it goes out, for keeping."""

    def __init__(self, send: Send,
                 settle: Callable[[Reply | None], Awaitable[None]]) -> None:
        self._send, self._settle = send, settle
        self._settled = False
        self.status: int | None = None
        self.headers: list[list[str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [[k.decode("latin-1"), v.decode("latin-1")]
                            for k, v in message.get("headers", []) if k.lower() not in _NOT_KEPT]
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size <= MAX_KEPT_BYTES:
                self.chunks.append(chunk)
            self.complete = not message.get("more_body", False)
            if self.complete:
                await self.settle()
        await self._send(message)

    async def settle(self) -> None:
        """Keep the answer, or free the key, once."""
        if not self._settled:
            self._settled = True
            await self._settle(self.reply())

    def reply(self) -> Reply | None:
        """The answer to keep; None for one that failed (5xx), says to ask again (a write
        that lost a race, nothing written), was cut short or is too big."""
        if (self.status is None or self.status >= 500 or not self.complete
                or self.size > MAX_KEPT_BYTES
                or any(name.lower() == RETRY_AFTER_HEADER for name, _ in self.headers)):
            return None
        return Reply(self.status, self.headers, b"".join(self.chunks))


async def _replay(reply: Reply, send: Send) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    if reply.status not in (204, 304):  # answers that carry no body say no length
        headers.append((b"content-length", str(len(reply.body)).encode()))
    headers.append((REPLAYED_HEADER.encode(), b"true"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
