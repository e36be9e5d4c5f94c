"""What is refused before a request's body is read: anonymous calls that need a token, and
bodies past the API's limit.

FastAPI reads and parses a request's whole body before it solves any dependency, so the
access check (:func:`control_plane.api.access.enforce_access`, an app-wide dependency)
came after an anonymous caller's body, of any size, was in memory and parsed. This
middleware reads the route table of :data:`~control_plane.api.access.ROUTE_ACCESS`: a
call that every declared route the path could be refuses (no token where one is needed,
an unknown, revoked or expired one, a role below the rule's) is answered 401 or 403 here,
without a byte of its body read; the dependency still decides every call that gets
through, as before, with the principal found here. Any caller may send at most
:data:`MAX_BODY_BYTES`, declared or streamed, except to the routes that stream their body
to disk under their own limit (:data:`STREAMED_BODIES`).
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.api.access import ROUTE_ACCESS, Access, anonymous_refused
from control_plane.api.errors import error_response
from control_plane.errors import InvalidInputError, PayloadTooLargeError
from modelplane.errors import ModelplaneError

# JSON bodies: manifests, specs, a batch of 10,000 metric points (about 1 MiB) fit well.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Routes whose handler streams the body to disk and bounds it itself.
STREAMED_BODIES = frozenset({"POST /artifacts"})


def _compiled() -> list[tuple[str, re.Pattern[str], str, Access]]:
    """(method, path pattern, route key, rule) of every declared route."""
    table = []
    for key, rule in ROUTE_ACCESS.items():
        method, path = key.split(" ", 1)
        table.append((method, compile_path(path)[0], key, rule))
    return table


class CallGate:
    """The API's check of a call before its body (inside the request id, which its
    refusals carry)."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app, self.api = app, api
        self.routes = _compiled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        path = route_path(scope)
        candidates = [(key, rule) for route_method, pattern, key, rule in self.routes
                      if route_method == method and pattern.match(path)]
        streamed = any(key in STREAMED_BODIES for key, _ in candidates)
        try:
            _refuse_nul(path, scope.get("query_string", b""))
            if candidates:
                await self._admit(request, [rule for _, rule in candidates])
            if not streamed:
                _check_declared(request, MAX_BODY_BYTES)
        except ModelplaneError as error:
            await error_response(request, error)(scope, receive, send)
            return
        await self.app(scope, receive if streamed else _bounded(receive, MAX_BODY_BYTES), send)


    async def _admit(self, request: Request, rules: list[Access]) -> None:
        """Raise the rule's refusal where every route the path may be refuses this caller:
        no token where one is needed, an unknown, revoked or expired one, or a role below
        the rule's. The principal found is kept for the route's own check."""
        from control_plane.api.deps import authenticate, bearer_secret

        cp = self.api.state.control_plane
        if any(rule.role is None for rule in rules):
            return
        secret = bearer_secret(request)
        if secret is None:
            if not any(rule.anonymous_allowed(cp.settings) for rule in rules):
                raise anonymous_refused(rules[0])
            return
        principal = await authenticate(cp, secret)
        request.state.authenticated = (secret, principal)
        if not any(rule.allows(principal.role) for rule in rules):
            principal.require(rules[0].role, also=rules[0].also)  # type: ignore[arg-type]


def route_path(scope: Scope) -> str:
    """The path the app's routes match: without the prefix it is mounted at (``/api``)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def declared_length(request: Request) -> int | None:
    """The body's declared ``Content-Length``; None where it streams without one."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise InvalidInputError("Content-Length must be a non-negative integer",
                                detail={"field": "content-length"})
    return int(declared)


def _check_declared(request: Request, limit: int) -> None:
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(declared, limit)


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body of {size} bytes exceeds the API's limit of {limit} bytes; send "
        "files through POST /api/artifacts", detail={"field": "body", "limit_bytes": limit})


def _bounded(receive: Receive, limit: int) -> Receive:
    """``receive`` that stops a body streamed past ``limit`` (no Content-Length given)."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                # FastAPI re-raises an HTTPException met while reading a body (any other
                # error it answers as a 400); the app's handler gives it the error body.
                raise HTTPException(413, _too_large(seen, limit).message)
        return message

    return bounded


def _refuse_nul(path: str, query: bytes) -> None:
    """A NUL character names nothing here (PostgreSQL cannot even compare one): refused
    before any route reads it."""
    if "\x00" in path:
        raise InvalidInputError("the path holds a NUL character (%00)", detail={"field": "path"})
    if b"%00" in query or b"\x00" in query:
        raise InvalidInputError("the query string holds a NUL character (%00)",
                                detail={"field": "query"})
