"""Wire objects of version benchmarks: what to measure with, what was measured, comparisons.

A benchmark serves one version on a scratch replica with an endpoint's settings and puts
a short load on it through real HTTP; :class:`BenchmarkFigures` is what it found and is
stored on the version (table ``version_benchmarks``) as JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from control_plane.schemas import BatchSettings, Name, Wire

BenchmarkStatus = Literal["running", "succeeded", "failed"]
MIN_REQUESTS = 10  # fewer than this in the fixed-rate phase and no percentile means much
MAX_REQUESTS = 1_000_000


class BenchmarkSettings(Wire):
    """How to serve the version and what load to put on it.

    Serving settings default to a fresh colocated endpoint's (one replica, 0.5 CPU, no
    batching); ``endpoint`` copies an existing endpoint's placement, replica resources and
    this version's (or its stable version's) batching instead, and fields given here
    override those.
    """

    rate: Annotated[float, Field(gt=0, le=100_000)] = Field(
        50.0, description="Requests per second of the fixed-rate phase (open loop: sent on "
                          "schedule whether or not earlier ones have answered).")
    duration_s: Annotated[float, Field(gt=0, le=600)] = Field(
        5.0, description="Seconds of load at `rate`, after a warm-up.")
    p99_target_ms: Annotated[float, Field(gt=0, le=60_000)] = Field(
        50.0, description="The p99 latency the rate search must hold.")
    search_steps: Annotated[int, Field(ge=0, le=12)] = Field(
        4, description="Rates tried when searching the highest one that holds the p99 "
                       "target (doubling, then bisecting); 0 skips the search.")
    step_duration_s: Annotated[float, Field(gt=0, le=120)] | None = Field(
        None, description="Seconds of load per search step (default: half of duration_s, at "
                          "least 1).")
    rows_per_request: Annotated[int, Field(ge=1, le=4096)] = Field(
        1, description="Rows in each request's batch axis.")
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        180.0, description="Longest wait for the scratch replica to load the model.")
    endpoint: Name | None = Field(
        None, description="Copy this endpoint's serving settings (placement, resources, "
                          "batching).")
    placement: Literal["colocated", "isolated"] | None = None
    num_cpus: Annotated[float, Field(ge=0, le=512)] | None = None
    num_gpus: Annotated[float, Field(ge=0, le=64)] | None = None
    memory_mb: Annotated[int, Field(ge=0)] | None = None
    max_ongoing_requests: Annotated[int, Field(ge=1, le=100_000)] | None = None
    intra_op_threads: Annotated[int, Field(ge=1, le=64)] | None = None
    batching: BatchSettings | None = None

    @field_validator("duration_s")
    @classmethod
    def _enough_requests(cls, duration_s: float, info: ValidationInfo) -> float:
        rate = info.data.get("rate")
        if rate is None:
            return duration_s  # rate itself was refused; that error says enough
        planned = rate * duration_s
        if planned < MIN_REQUESTS:
            raise ValueError(f"rate * duration_s is {planned:g} requests; the fixed-rate phase "
                             f"needs at least {MIN_REQUESTS} (raise rate or duration_s)")
        if planned > MAX_REQUESTS:
            raise ValueError(f"rate * duration_s is {planned:g} requests, at most "
                             f"{MAX_REQUESTS:,} (lower rate or duration_s)")
        return duration_s

    @property
    def step_seconds(self) -> float:
        return self.step_duration_s or max(1.0, self.duration_s / 2)


class ServedWith(Wire):
    """The serving settings the scratch replica actually ran with."""

    placement: Literal["colocated", "isolated"]
    num_cpus: float
    num_gpus: float
    memory_mb: int
    max_ongoing_requests: int
    intra_op_threads: int
    batching: BatchSettings
    copied_from: str | None = Field(None, description="The endpoint whose settings were copied.")


class LatencyFigures(Wire):
    """Latency in milliseconds from when a request was due to be sent to its answer.

    ``bounds``: per quantile (``p50``, ``p95``, ``p99``), its distribution-free one-sided
    bounds ``[low, high]`` at 97.5% each (kernels.order_statistics), so that a ratio of two
    runs' holds at 95%; null where ``count`` answers cannot give one (a p99 needs 367)."""

    p50: float
    p95: float
    p99: float
    mean: float
    max: float
    count: int = 0
    bounds: dict[str, list[float | None]] = Field(default_factory=dict)


class RateStep(Wire):
    """One step of the rate search."""

    rate: float = Field(description="Requests per second sent (open loop).")
    achieved_rps: float = Field(description="Answers per second received.")
    p99_ms: float | None
    errors: int
    held: bool = Field(description="p99 within target, no errors, and the rate kept up.")


class BenchmarkFigures(Wire):
    """What a benchmark measured (the seed's PerformanceBenchmarks, and how)."""

    rate: float = Field(description="Requests per second of the fixed-rate phase.")
    duration_s: float
    requests: int = Field(description="Requests sent in the fixed-rate phase.")
    errors: int = Field(description="Requests that got no 200 answer in time.")
    achieved_rps: float = Field(description="Answers per second in the fixed-rate phase.")
    latency_ms: LatencyFigures
    p99_target_ms: float
    max_rate_within_p99: float | None = Field(
        description="The highest rate tried that held the p99 target (None: none did, or "
                    "the search was off).")
    search: list[RateStep] = Field(default_factory=list)
    cpu_ms_per_request: float = Field(
        description="CPU time (user + system) of the scratch replica processes per answered "
                    "request of the fixed-rate phase.")
    cpu_utilization: float = Field(description="Cores the replica processes used on average "
                                   "in the fixed-rate phase (1.0: one core busy).")
    memory_rss_mb: float = Field(description="Resident memory of the replica processes "
                                 "after the load.")
    gpu_memory_mb: float | None = Field(
        None, description="GPU memory the replica processes hold (None: no GPU serves it).")
    replica_processes: int = Field(description="Processes measured (router and model server "
                                   "when isolated).")
    served_with: ServedWith


class BenchmarkOut(Wire):
    """One benchmark of a version: its settings, progress, figures or error."""

    id: int
    model: str
    version: int
    status: BenchmarkStatus
    settings: BenchmarkSettings
    figures: BenchmarkFigures | None
    error: str
    progress: str = Field(description="What it is doing now, or did last.")
    created_by: str
    started_at: datetime
    finished_at: datetime | None


class FigureComparison(Wire):
    """One figure of two versions: ``ratio`` is b over a (None where a is 0 or unknown)."""

    name: str
    a: float | None
    b: float | None
    ratio: float | None
    better: Literal["lower", "higher"]


class BenchmarkComparison(Wire):
    """Two versions' latest successful benchmarks side by side."""

    a: str = Field(description="NAME:VERSION")
    b: str
    a_benchmark: int | None
    b_benchmark: int | None
    figures: list[FigureComparison]
