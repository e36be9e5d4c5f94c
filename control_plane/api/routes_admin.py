"""REST routes for health, the integrity check, artifacts (streamed both ways) and tokens."""

from __future__ import annotations

from collections.abc import Iterator

from anyio import CancelScope, to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from control_plane.api.call_gate import declared_length
from control_plane.api.deps import CP, Reader, Writer
from control_plane.artifact_claims import store_upload
from control_plane.artifacts import check_digest
from control_plane.auth import TRAINING
from control_plane.errors import InvalidInputError, PayloadTooLargeError
from control_plane.schemas import (
    ArtifactOut,
    ClusterOut,
    IntegrityReport,
    LeadershipOut,
    Role,
    TokenCreate,
    TokenCreated,
    TokenOut,
)
from control_plane.upload_allowance import UploadAllowance
from modelplane import __version__

router = APIRouter()
DIGEST_HEADER = "x-artifact-digest"


@router.get("/health", tags=["admin"])
def health(cp: CP) -> dict[str, str]:
    """Liveness of the control plane and its store, and that it answers a write sent with
    an ``Idempotency-Key`` once (``idempotency_keys``), which a client asks before it
    sends one again."""
    from control_plane.idempotency import HEALTH_FLAG

    with cp.db.session(readonly=True) as session:
        session.connection().exec_driver_sql("SELECT 1")
    return {"status": "ok", "version": __version__, HEALTH_FLAG: "honored"}


@router.get("/leadership", response_model=LeadershipOut, tags=["admin"])
def leadership(cp: CP) -> LeadershipOut:
    """Which control plane runs the reconciler, rollout, pipeline and alert loops."""
    from datetime import UTC, datetime

    from control_plane.leadership import read_lease

    lease = read_lease(cp.db)
    stored = {} if lease is None else {
        "holder": lease.holder, "term": lease.term,
        **{field: datetime.fromtimestamp(getattr(lease, field), UTC)
           for field in ("acquired_at", "renewed_at", "expires_at")}}
    return LeadershipOut(**stored, this_process=cp.lease.holder if cp.lease else None,
                         leading=cp.leading)


@router.get("/cluster", response_model=ClusterOut, tags=["admin"])
def cluster() -> ClusterOut:
    """Ray's nodes (a lost one stays listed, not alive) and the node of every endpoint replica."""
    from control_plane.cluster_view import read_cluster

    return read_cluster()


@router.get("/whoami", tags=["admin"])
def whoami(actor: Reader) -> dict[str, str]:
    """The caller's token: its name and role, and the one endpoint a labeler token is
    limited to (replicas check label sources with this; see serving.feedback_auth)."""
    answer = {"name": actor.name, "role": actor.role.value}
    if actor.endpoint is not None:
        answer["endpoint"] = actor.endpoint
    return answer


@router.post(
    "/artifacts",
    response_model=ArtifactOut,
    status_code=201,
    tags=["artifacts"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_artifact(request: Request, cp: CP, actor: Writer) -> ArtifactOut:
    """Stream raw bytes into the artifact store; send ``x-artifact-digest`` to have it checked."""
    actor.require(Role.DEPLOYER, also=TRAINING)
    declared = declared_length(request)
    if declared is not None and declared > cp.artifacts.max_bytes:
        raise PayloadTooLargeError(
            f"artifact of {declared} bytes exceeds the "
            f"{cp.artifacts.max_bytes // (1024 * 1024)} MiB limit "
            "(MODELPLANE_MAX_ARTIFACT_MB on the control plane)",
            detail={"limit_bytes": cp.artifacts.max_bytes},
        )
    allowance = UploadAllowance.of(cp.db, actor, cp.settings.trainer_upload_bytes)
    expected = request.headers.get(DIGEST_HEADER)
    kept = 0
    try:
        if allowance is not None and declared is not None:
            await to_thread.run_sync(allowance.cover, declared)
        writer = await to_thread.run_sync(cp.artifacts.writer, expected)
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                if allowance is not None and not allowance.covers(writer.size + len(chunk)):
                    await to_thread.run_sync(allowance.cover, writer.size + len(chunk))
                await to_thread.run_sync(writer.write, chunk)
            if writer.size == 0:
                raise InvalidInputError("the upload is empty; send the file as the request body",
                                        detail={"field": "body"})
            info = await to_thread.run_sync(store_upload, cp.db, cp.artifacts, writer)
        except BaseException:
            writer.abort()
            raise
        kept = info.size
    finally:
        if allowance is not None:
            # Shielded: a caller gone mid-upload is the cancellation this must outlive.
            with CancelScope(shield=True):
                await to_thread.run_sync(allowance.settle, kept)
    return ArtifactOut(digest=info.digest, size=info.size)


@router.get("/artifacts/{digest}", tags=["artifacts"], response_class=StreamingResponse)
def download_artifact(digest: str, cp: CP, _: Reader) -> Response:
    """Stream an artifact; the server re-hashes as it sends, the client checks the header."""
    check_digest(digest)
    info = cp.artifacts.info(digest)
    chunks: Iterator[bytes] = cp.artifacts.iter_verified(digest)
    # Served from the console's origin, to anyone by default: a browser saves it, never
    # renders it (an uploaded page or script would run as the console).
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={DIGEST_HEADER: digest, "content-length": str(info.size),
                 "x-content-type-options": "nosniff",
                 "content-disposition": f'attachment; filename="{digest}"'},
    )


@router.get("/integrity", response_model=IntegrityReport, tags=["admin"])
def check_store_integrity(cp: CP, actor: Writer, verify: bool = False) -> IntegrityReport:
    """The store's integrity check (``modelplane db check``); ``verify`` re-hashes every artifact."""
    from control_plane.integrity import check_integrity

    actor.require(Role.ADMIN)
    return check_integrity(cp.db, cp.artifacts, verify=verify)


@router.get("/tokens", response_model=list[TokenOut], tags=["tokens"])
def list_tokens(cp: CP, actor: Writer) -> list[TokenOut]:
    actor.require(Role.ADMIN)
    return cp.tokens.list()


@router.post("/tokens", response_model=TokenCreated, status_code=201, tags=["tokens"])
def create_token(body: TokenCreate, cp: CP, actor: Writer) -> TokenCreated:
    return cp.tokens.create(body, actor)


@router.delete("/tokens/{name}", response_model=TokenOut, tags=["tokens"])
def revoke_token(name: str, cp: CP, actor: Writer) -> TokenOut:
    return cp.tokens.revoke(name, actor)
