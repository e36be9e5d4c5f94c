"""Request dependencies: the control plane instance and the calling principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from control_plane.auth import ANONYMOUS, Principal
from control_plane.errors import AuthenticationError
from control_plane.service import ControlPlane

# The dependencies are coroutines: FastAPI runs a plain function's dependency on its thread
# pool, a round trip per dependency per call, where most of them only read the request.
# What reads the store (a token's lookup) still goes to the pool, off the event loop.


async def control_plane(request: Request) -> ControlPlane:
    return request.app.state.control_plane  # type: ignore[no-any-return]


async def authenticate(cp: ControlPlane, secret: str) -> Principal:
    """The principal behind ``secret``, looked up in the store on the thread pool."""
    return await run_in_threadpool(cp.tokens.authenticate, secret)


def bearer_secret(request: Request) -> str | None:
    """The bearer token of the call, None without one; 401 for a malformed header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError(
            "the Authorization header must be `Bearer <token>`", detail={"field": "authorization"}
        )
    return secret.strip()


async def writer(request: Request, cp: Annotated[ControlPlane, Depends(control_plane)]) -> Principal:
    """The principal behind a mutating call; a valid token is required."""
    known = getattr(request.state, "principal", None)  # found by access.enforce_access
    if known is not None and known is not ANONYMOUS:
        return known  # type: ignore[no-any-return]
    secret = bearer_secret(request)
    if secret is None:
        raise AuthenticationError(
            "this call changes state and needs `Authorization: Bearer <token>`; set "
            "MODELPLANE_TOKEN (the admin token is in $MODELPLANE_HOME/admin.token)",
            detail={"field": "authorization"},
        )
    return await authenticate(cp, secret)


async def reader(request: Request, cp: Annotated[ControlPlane, Depends(control_plane)]) -> Principal:
    """The principal behind a read; anonymous unless reads require a token."""
    known = getattr(request.state, "principal", None)  # found by access.enforce_access
    if known is not None:
        return known  # type: ignore[no-any-return]
    secret = bearer_secret(request)
    if secret is None:
        if cp.settings.reads_require_token:
            raise AuthenticationError(
                "reads need a token on this control plane (MODELPLANE_READS_REQUIRE_TOKEN); "
                "send `Authorization: Bearer <token>`",
                detail={"field": "authorization"},
            )
        return ANONYMOUS
    return await authenticate(cp, secret)


CP = Annotated[ControlPlane, Depends(control_plane)]
Writer = Annotated[Principal, Depends(writer)]
Reader = Annotated[Principal, Depends(reader)]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Items to skip.")]
