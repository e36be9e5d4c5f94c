"""REST routes for version benchmarks: start one (it runs in the background), read them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from control_plane.api.deps import CP, Limit, Reader, Writer
from control_plane.benchmarking.schemas import BenchmarkOut, BenchmarkSettings
from control_plane.schemas import MAX_INT

router = APIRouter(tags=["benchmarks"])
VersionNumber = Annotated[int, Path(ge=1, le=MAX_INT, description="Version number.")]
BenchmarkId = Annotated[int, Path(ge=1, le=MAX_INT, description="The benchmark's number.")]


@router.post("/models/{name}/versions/{version}/benchmarks", response_model=BenchmarkOut,
             status_code=202)
def start_benchmark(name: str, version: VersionNumber, cp: CP, actor: Writer,
                    body: BenchmarkSettings | None = None) -> BenchmarkOut:
    """Serve the version on a scratch replica and measure it; answers at once (poll the
    benchmark until its status is succeeded or failed). 409 while one runs."""
    return cp.benchmarks.start(name, version, body, actor)


@router.get("/models/{name}/versions/{version}/benchmarks", response_model=list[BenchmarkOut])
def list_benchmarks(name: str, version: VersionNumber, cp: CP, _: Reader,
                    limit: Limit = 50) -> list[BenchmarkOut]:
    """The version's benchmarks, newest first."""
    return cp.benchmarks.list(name, version, limit=limit)


@router.get("/models/{name}/versions/{version}/benchmarks/{benchmark_id}",
            response_model=BenchmarkOut)
def get_benchmark(name: str, version: VersionNumber, benchmark_id: BenchmarkId, cp: CP,
                  _: Reader) -> BenchmarkOut:
    return cp.benchmarks.get(name, version, benchmark_id)
