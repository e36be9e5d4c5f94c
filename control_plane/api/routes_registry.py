"""REST routes for models, versions, aliases, stages, approvals and lineage."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response

from control_plane.api.deps import CP, Limit, Offset, Reader, Writer
from control_plane.api.routes_tracking import as_read_by
from control_plane.lineage import version_lineage
from control_plane.schemas import (
    AliasSet,
    ApprovalCreate,
    ApprovalOut,
    LineageOut,
    ModelCreate,
    ModelOut,
    ModelUpdate,
    Page,
    RejectVersion,
    StageChange,
    VersionCreate,
    VersionOut,
)

router = APIRouter(tags=["registry"])
VersionNumber = Path(ge=1, le=2**31 - 1, description="Version number.")


@router.get("/models", response_model=Page[ModelOut])
def list_models(cp: CP, _: Reader, limit: Limit = 50, offset: Offset = 0) -> Page[ModelOut]:
    return cp.registry.list_models(limit=limit, offset=offset)


@router.post("/models", response_model=ModelOut, status_code=201)
def create_model(body: ModelCreate, cp: CP, actor: Writer) -> ModelOut:
    return cp.registry.create_model(body, actor)


@router.get("/models/{name}", response_model=ModelOut)
def get_model(name: str, cp: CP, _: Reader) -> ModelOut:
    return cp.registry.get_model(name)


@router.patch("/models/{name}", response_model=ModelOut)
def update_model(name: str, body: ModelUpdate, cp: CP, actor: Writer) -> ModelOut:
    return cp.registry.update_model(name, body, actor)


@router.get("/models/{name}/versions", response_model=Page[VersionOut])
def list_versions(
    name: str, cp: CP, _: Reader, limit: Limit = 50, offset: Offset = 0
) -> Page[VersionOut]:
    return cp.registry.list_versions(name, limit=limit, offset=offset)


@router.post("/models/{name}/versions", response_model=VersionOut, status_code=201)
def register_version(name: str, body: VersionCreate, cp: CP, actor: Writer) -> VersionOut:
    """Register an uploaded ONNX artifact as the next version (the model is created if new)."""
    return cp.registry.register_version(name, body, actor)


@router.get("/models/{name}/versions/{version}", response_model=VersionOut)
def get_version(name: str, cp: CP, _: Reader, version: int = VersionNumber) -> VersionOut:
    return cp.registry.get_version(name, version)


@router.delete("/models/{name}/versions/{version}", status_code=204)
def delete_version(name: str, cp: CP, actor: Writer, version: int = VersionNumber) -> Response:
    cp.registry.delete_version(name, version, actor)
    return Response(status_code=204)


@router.get("/refs/{ref}", response_model=VersionOut)
def resolve(ref: str, cp: CP, _: Reader) -> VersionOut:
    """Resolve ``name``, ``name:3`` or ``name@alias`` to a version."""
    return cp.registry.resolve(ref)


@router.put("/models/{name}/aliases/{alias}", response_model=VersionOut)
def set_alias(name: str, alias: str, body: AliasSet, cp: CP, actor: Writer) -> VersionOut:
    return cp.registry.set_alias(name, alias, body, actor)


@router.delete("/models/{name}/aliases/{alias}", status_code=204)
def delete_alias(name: str, alias: str, cp: CP, actor: Writer) -> Response:
    cp.registry.delete_alias(name, alias, actor)
    return Response(status_code=204)


@router.post("/models/{name}/versions/{version}/stage", response_model=VersionOut)
def transition_stage(
    name: str, body: StageChange, cp: CP, actor: Writer, version: int = VersionNumber
) -> VersionOut:
    return cp.registry.transition_stage(name, version, body, actor)


@router.post("/models/{name}/versions/{version}/reject", response_model=VersionOut)
def reject_version(
    name: str, body: RejectVersion, cp: CP, actor: Writer, version: int = VersionNumber
) -> VersionOut:
    return cp.registry.reject_version(name, version, body.reason, actor)


@router.post(
    "/models/{name}/versions/{version}/approvals", response_model=ApprovalOut, status_code=201
)
def approve(
    name: str, body: ApprovalCreate, cp: CP, actor: Writer, version: int = VersionNumber
) -> ApprovalOut:
    return cp.registry.approve(name, version, body, actor)


@router.get("/models/{name}/versions/{version}/approvals", response_model=list[ApprovalOut])
def list_approvals(name: str, cp: CP, _: Reader, version: int = VersionNumber) -> list[ApprovalOut]:
    return cp.registry.list_approvals(name, version)


@router.get("/models/{name}/versions/{version}/lineage", response_model=LineageOut)
def lineage(name: str, cp: CP, reader: Reader, version: int = VersionNumber) -> LineageOut:
    found = version_lineage(cp.registry, cp.tracker, name, version)
    if found.run is None:
        return found
    return found.model_copy(update={"run": as_read_by(found.run, reader)})
