"""REST routes for pipelines: define one, start, follow and cancel its runs, read its history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from control_plane.api.deps import CP, Limit, Reader, Writer
from control_plane.errors import InvalidInputError
from control_plane.pipelines.records import (
    PipelineLogsOut,
    PipelineOut,
    PipelineRunCreate,
    PipelineRunOut,
)
from control_plane.pipelines.spec import PipelineSpec
from control_plane.rollouts.schemas import RolloutAction
from control_plane.schemas import MAX_INT

router = APIRouter(tags=["pipelines"])
RunNumber = Annotated[int, Path(ge=1, le=MAX_INT, description="The run's number in its pipeline.")]


@router.put("/pipelines/{name}", response_model=PipelineOut)
def apply_pipeline(name: str, body: PipelineSpec, cp: CP, actor: Writer) -> PipelineOut:
    """Create the pipeline or replace its spec; runs under way keep the spec they began with."""
    if body.name != name:
        raise InvalidInputError(f"the spec is named {body.name!r} but the path says {name!r}",
                                detail={"field": "name"})
    return cp.pipelines.apply(body, actor)


@router.get("/pipelines", response_model=list[PipelineOut])
def list_pipelines(cp: CP, _: Reader) -> list[PipelineOut]:
    return cp.pipelines.list()


@router.get("/pipelines/{name}", response_model=PipelineOut)
def get_pipeline(name: str, cp: CP, _: Reader) -> PipelineOut:
    return cp.pipelines.get(name)


@router.delete("/pipelines/{name}", status_code=204)
def delete_pipeline(name: str, cp: CP, actor: Writer) -> Response:
    cp.pipelines.delete(name, actor)
    return Response(status_code=204)


@router.post("/pipelines/{name}/runs", response_model=PipelineRunOut, status_code=201)
def start_run(name: str, body: PipelineRunCreate, cp: CP, actor: Writer) -> PipelineRunOut:
    """Start a run by hand (409 while another run of the pipeline is under way)."""
    return cp.pipelines.start_run(name, actor, detail={"reason": body.reason} if body.reason else None)


@router.get("/pipelines/{name}/runs", response_model=list[PipelineRunOut])
def list_runs(name: str, cp: CP, _: Reader, limit: Limit = 50) -> list[PipelineRunOut]:
    """The pipeline's runs, newest first."""
    return cp.pipelines.runs(name, limit=limit)


@router.get("/pipelines/{name}/runs/latest", response_model=PipelineRunOut)
def latest_run(name: str, cp: CP, _: Reader) -> PipelineRunOut:
    return cp.pipelines.run(name)


@router.get("/pipelines/{name}/runs/{number}", response_model=PipelineRunOut)
def get_run(name: str, number: RunNumber, cp: CP, _: Reader) -> PipelineRunOut:
    return cp.pipelines.run(name, number)


@router.get("/pipelines/{name}/runs/{number}/logs", response_model=PipelineLogsOut)
def run_logs(name: str, number: RunNumber, cp: CP, _: Reader) -> PipelineLogsOut:
    """Each stage's state and reason, and the training job's own output."""
    return PipelineLogsOut(text=cp.pipelines.logs(name, number))


@router.post("/pipelines/{name}/cancel", response_model=PipelineRunOut)
def cancel_run(name: str, body: RolloutAction, cp: CP, actor: Writer) -> PipelineRunOut:
    """Cancel the run under way: its training job is stopped, its rollout aborted."""
    return cp.pipelines.cancel(name, actor, body.reason)
