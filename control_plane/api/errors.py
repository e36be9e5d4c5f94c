"""The one mapping from errors to HTTP responses, registered when the app is built.

Bodies are always ``{"error", "detail", "request_id", "context"}``; a client never sees a
traceback. Unexpected exceptions are logged with the request id and answered 500.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane.errors import ModelplaneError

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "x-request-id"


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


def error_response(
    request: Request, status: int, code: str, detail: str, context: dict[str, Any] | None = None
) -> JSONResponse:
    rid = request_id(request)
    return JSONResponse(
        status_code=status,
        content={"error": code, "detail": detail, "request_id": rid, "context": context or {}},
        headers={REQUEST_ID_HEADER: rid},
    )


def _field_path(location: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ModelplaneError)
    async def _modelplane(request: Request, error: ModelplaneError) -> JSONResponse:
        return error_response(request, error.http_status, error.code, error.message, error.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{_field_path(e['loc'])}: {e['msg']}" for e in error.errors()]
        fields = [_field_path(e["loc"]) for e in error.errors()]
        return error_response(
            request, 422, "validation_error", "; ".join(problems), {"fields": fields}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(request, error.status_code, code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error in request %s", request_id(request))
        return error_response(
            request, 500, "internal_error",
            "the control plane failed unexpectedly; the request id is in its log",
        )


class RequestIdMiddleware:
    """Give every request an id (the client's ``x-request-id`` if sent) and echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode())
        rid = incoming.decode("latin-1")[:64] if incoming else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER.encode()
                ]
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
