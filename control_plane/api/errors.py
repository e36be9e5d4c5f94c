"""The one mapping from errors to HTTP responses, registered when the app is built.

Every failure becomes an error of the tree first (FastAPI's validation errors and
Starlette's 404/405 too), so bodies are always :func:`modelplane.errors.error_body`'s
``{"error": message, "code", "request_id", "detail"}``, the data plane's shape; a client
never sees a traceback. Unexpected exceptions are logged with the request id and answered 500.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError as StoreRefusedValue
from sqlalchemy.exc import IntegrityError as StoreConstraintError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.errors import (
    ConflictError,
    ControlPlaneError,
    InvalidInputError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestSchemaError,
)
from modelplane.errors import ModelplaneError, error_body

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "x-request-id"
# On a 4xx: nothing was written and the same request may succeed when asked again.
RETRY_AFTER_HEADER = "retry-after"


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


# Starlette raises its HTTPException for routing misses and unparseable bodies (and
# control_plane.api.call_gate for a body streamed past its limit).
_HTTP_ERRORS: dict[int, type[ControlPlaneError]] = {
    400: InvalidInputError, 404: NotFoundError, 405: MethodNotAllowedError,
    413: PayloadTooLargeError,
}


def error_response(
    request: Request, error: ModelplaneError, status: int | None = None
) -> JSONResponse:
    """``error`` as the JSON answer, with its own HTTP status unless ``status`` is given."""
    rid = request_id(request)
    return JSONResponse(
        status_code=status or error.http_status,
        content=error_body(error, rid),
        headers={REQUEST_ID_HEADER: rid},
    )


def _field_path(location: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ModelplaneError)
    async def _modelplane(request: Request, error: ModelplaneError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{_field_path(e['loc'])}: {e['msg']}" for e in error.errors()]
        fields = [_field_path(e["loc"]) for e in error.errors()]
        problem = RequestSchemaError("; ".join(problems), detail={"fields": fields})
        return error_response(request, problem)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        cls = _HTTP_ERRORS.get(error.status_code, ControlPlaneError)
        return error_response(request, cls(str(error.detail)), error.status_code)

    @app.exception_handler(StoreConstraintError)
    async def _raced(request: Request, error: StoreConstraintError) -> JSONResponse:
        # Two writers that both found a name free (control planes on PostgreSQL check, then
        # insert): the loser's transaction was rolled back whole. Not a failure of ours.
        log.info("request %s lost a race on a store constraint: %s", request_id(request),
                 str(error.orig).strip().splitlines()[0] if error.orig else error)
        response = error_response(request, ConflictError(
            "another request wrote the same record at the same time and this request's "
            "change was rolled back: read the current state and retry",
            detail={"retry": True}))
        # Asked again, it may well succeed: an idempotency key must not replay this answer.
        response.headers[RETRY_AFTER_HEADER] = "0"
        return response

    @app.exception_handler(StoreRefusedValue)
    async def _refused_value(request: Request, error: StoreRefusedValue) -> JSONResponse:
        # A value the schema let through that the store cannot hold (PostgreSQL: a NUL
        # character, a string longer than its column): the request's fault, nothing written.
        said = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        return error_response(request, InvalidInputError(
            f"the store cannot hold a value of this request ({said}); nothing was written",
            detail={"cause": "value the store cannot hold"}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error in request %s", request_id(request))
        return error_response(request, ControlPlaneError(
            "the control plane failed unexpectedly; the request id is in its log"))


class RequestIdMiddleware:
    """Give every request an id (the client's ``x-request-id`` if sent) and echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        rid = state.get("request_id")  # an app mounted in another that named it already
        if rid is None:
            incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode())
            rid = state["request_id"] = (incoming.decode("latin-1")[:64] if incoming
                                         else uuid.uuid4().hex)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER.encode()
                ]
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
