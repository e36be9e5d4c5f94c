"""Build the control plane's FastAPI application.

``build_api`` makes the app whose routes are relative (``/models``…); it is what Serve
mounts at ``/api``. ``build_standalone_app`` wraps it under ``/api`` for uvicorn, so both
modes answer the same URLs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from control_plane.api import (
    routes_admin,
    routes_benchmarks,
    routes_monitoring,
    routes_pipelines,
    routes_registry,
    routes_rollouts,
    routes_serving,
    routes_tracking,
)
from control_plane.api.access import enforce_access
from control_plane.api.call_gate import CallGate
from control_plane.api.errors import RequestIdMiddleware, install_error_handlers
from control_plane.api.idempotency_guard import IdempotencyGuard
from control_plane.console import install_console
from control_plane.schemas import ErrorBody
from control_plane.service import ControlPlane
from modelplane import __version__


def build_api(cp: ControlPlane) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Serve stops a replica gracefully through this: the next control plane takes the
        # control loops over at once rather than when this one's lease runs out. It waits
        # for a pass in flight, off the event loop.
        await asyncio.to_thread(cp.step_down)

    # Every route's caller is checked against its rule in access.ROUTE_ACCESS first.
    app = FastAPI(
        lifespan=lifespan,
        dependencies=[Depends(enforce_access)],
        title="modelplane control plane",
        version=__version__,
        description="Model registry, experiment tracking, artifacts and tokens.",
        # No Swagger UI or ReDoc pages: they load scripts from a public CDN, and on the
        # console's origin such a script could read the console's token. The OpenAPI
        # document stays (GET /api/openapi.json).
        docs_url=None, redoc_url=None,
        # Every error answer has one body (FastAPI's default 422 schema does not apply).
        responses={status: {"model": ErrorBody, "description": "The error, its code and the "
                            "request id."} for status in ("4XX", "5XX")},
    )
    app.state.control_plane = cp
    install_error_handlers(app)
    # Before FastAPI reads a body (it does so before any dependency): anonymous calls that
    # need a token, and bodies past the limit; inside the request id, which refusals carry.
    # Inside the gate, a write's idempotency key is held for the caller it found.
    app.add_middleware(IdempotencyGuard, api=app)
    app.add_middleware(CallGate, api=app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(routes_admin.router)
    app.include_router(routes_registry.router)
    app.include_router(routes_tracking.router)
    app.include_router(routes_serving.router)
    app.include_router(routes_rollouts.router)
    app.include_router(routes_monitoring.router)
    app.include_router(routes_benchmarks.router)
    app.include_router(routes_pipelines.router)
    # The web console's page shells and assets (no data in them; see control_plane.console).
    install_console(app)
    return app


def build_standalone_app(cp: ControlPlane) -> FastAPI:
    """The API mounted at ``/api`` of an otherwise empty app, for uvicorn."""
    root = FastAPI(title="modelplane", version=__version__, openapi_url=None, docs_url=None)
    # Paths that miss the mount (odd encodings) get the same error bodies as the API.
    install_error_handlers(root)
    root.add_middleware(RequestIdMiddleware)
    root.mount("/api", build_api(cp))
    return root
