"""REST routes for experiments and runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from control_plane.api.deps import CP, Limit, Offset, Reader, Writer
from control_plane.auth import ANONYMOUS, Principal
from control_plane.errors import InvalidInputError
from control_plane.schemas import (
    PROCESS_TAG,
    ExperimentCreate,
    ExperimentOut,
    MetricBatch,
    MetricOut,
    Page,
    ParamsUpdate,
    Role,
    RunArtifactCreate,
    RunArtifactOut,
    RunComparison,
    RunCreate,
    RunOut,
    RunUpdate,
    TrainingSubmission,
)
from control_plane.tracking import HISTORY_POINTS

router = APIRouter(tags=["tracking"])
# Each run compared is read with its latest figures: one call may ask for this many.
MAX_COMPARED_RUNS = 50


@router.get("/experiments", response_model=Page[ExperimentOut])
def list_experiments(
    cp: CP, _: Reader, limit: Limit = 50, offset: Offset = 0
) -> Page[ExperimentOut]:
    return cp.tracker.list_experiments(limit=limit, offset=offset)


@router.post("/experiments", response_model=ExperimentOut, status_code=201)
def create_experiment(body: ExperimentCreate, cp: CP, actor: Writer) -> ExperimentOut:
    return cp.tracker.create_experiment(body, actor)


@router.get("/experiments/{name}/runs", response_model=Page[RunOut])
def list_runs(name: str, cp: CP, reader: Reader, limit: Limit = 50, offset: Offset = 0) -> Page[RunOut]:
    page = cp.tracker.list_runs(name, limit=limit, offset=offset)
    return page.model_copy(update={"items": [as_read_by(run, reader) for run in page.items]})


@router.post("/runs", response_model=RunOut, status_code=201)
def start_run(body: RunCreate, cp: CP, actor: Writer) -> RunOut:
    return cp.tracker.start_run(body, actor)


@router.get("/runs/compare", response_model=RunComparison)
def compare_runs(
    cp: CP,
    _: Reader,
    ids: Annotated[str, Query(min_length=1, description="Comma-separated run ids.")],
) -> RunComparison:
    run_ids = [part.strip() for part in ids.split(",") if part.strip()]
    if not run_ids:
        raise InvalidInputError("ids must list at least one run id", detail={"field": "ids"})
    if len(run_ids) > MAX_COMPARED_RUNS:
        raise InvalidInputError(f"ids lists {len(run_ids)} runs; compare at most "
                                f"{MAX_COMPARED_RUNS} at a time", detail={"field": "ids"})
    return cp.tracker.compare_runs(run_ids)


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run_id: str, cp: CP, reader: Reader) -> RunOut:
    return as_read_by(cp.tracker.get_run(run_id), reader)


def as_read_by(run: RunOut, reader: Principal) -> RunOut:
    """``run`` without the host names, addresses and process ids it records (where its
    job ran), for a reader without a token: those are a token's to read, as ``/cluster``."""
    if reader is not ANONYMOUS:
        return run
    environment = {k: v for k, v in run.environment.items() if k != "ray_cluster"}
    tags = {k: v for k, v in run.tags.items() if k != PROCESS_TAG}
    return run.model_copy(update={"environment": environment, "tags": tags})


@router.patch("/runs/{run_id}", response_model=RunOut)
def update_run(run_id: str, body: RunUpdate, cp: CP, actor: Writer) -> RunOut:
    return cp.tracker.update_run(run_id, body, actor)


@router.post("/runs/{run_id}/alive", status_code=204)
def run_alive(run_id: str, cp: CP, actor: Writer) -> Response:
    """The run's job driver is alive: one silent for long is ended by the control plane."""
    cp.tracker.run_alive(run_id, actor)
    return Response(status_code=204)


@router.post("/runs/{run_id}/params", response_model=RunOut)
def log_params(run_id: str, body: ParamsUpdate, cp: CP, actor: Writer) -> RunOut:
    return cp.tracker.log_params(run_id, body, actor)


@router.post("/runs/{run_id}/metrics", status_code=201)
def log_metrics(run_id: str, body: MetricBatch, cp: CP, actor: Writer) -> dict[str, int]:
    return {"stored": cp.tracker.log_metrics(run_id, body, actor)}


@router.get("/runs/{run_id}/metrics/{key}", response_model=list[MetricOut])
def metric_history(run_id: str, key: str, cp: CP, _: Reader,
                   limit: int = Query(HISTORY_POINTS, ge=2, le=100_000, description=(
                       "Of a longer history, every k-th point by step (at most this many) "
                       "and the last."))) -> list[MetricOut]:
    return cp.tracker.metric_history(run_id, key, limit=limit)


@router.post("/runs/{run_id}/artifacts", response_model=RunArtifactOut, status_code=201)
def log_artifact(run_id: str, body: RunArtifactCreate, cp: CP, actor: Writer) -> RunArtifactOut:
    return cp.tracker.log_artifact(run_id, body, actor)


@router.post("/training/submissions", status_code=202)
def training_submitted(body: TrainingSubmission, cp: CP, actor: Writer) -> dict[str, str]:
    """Record that a training job was submitted to Ray: notified as ``training.submitted``."""
    from control_plane.notifications.service import notify
    from control_plane.notifications.sources import training_submitted as submitted

    actor.require(Role.DEPLOYER)
    notify(submitted(body.job_id, experiment=body.experiment, model=body.model,
                     address=body.address, actor=actor.name))
    return {"status": "accepted"}
