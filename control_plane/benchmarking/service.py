"""Version benchmarks as the control plane keeps them: started, run, stored, compared.

:func:`benchmark_version` is the call for in-process callers (the pipeline's benchmark
stage): it runs one benchmark to its end and returns the stored record. The REST API
starts one with :meth:`Benchmarks.start`, which returns at once and runs it in a thread of
this control plane; either way the row in ``version_benchmarks`` holds its progress, and
its figures or error at the end. A version has at most one running benchmark: a second is
refused (409) under the version's row lock, unless the first outlived any run its
settings allow (its control plane stopped), when it is marked failed and replaced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.auth import Principal
from control_plane.benchmarking import scratch
from control_plane.benchmarking.measure import Cluster, Target, run_benchmark, scratch_config
from control_plane.benchmarking.schemas import (
    BenchmarkComparison,
    BenchmarkFigures,
    BenchmarkOut,
    BenchmarkSettings,
    FigureComparison,
    ServedWith,
)
from control_plane.deployments import endpoint_row, read_routes
from control_plane.errors import ConflictError, NotFoundError
from control_plane.schemas import BatchSettings, Role, ScaleSettings
from control_plane.store.models import ModelRow, ModelVersionRow, VersionBenchmarkRow
from serving.names import benchmark_endpoint_name

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


class Benchmarks:
    """Version benchmarks of one control plane (``cp``: its store, settings and Serve)."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp

    # ------------------------------------------------------------ running

    def start(self, model: str, version: int, settings: BenchmarkSettings | None,
              actor: Principal) -> BenchmarkOut:
        """Record a new benchmark and run it in a thread; returns it as it starts."""
        job = self._prepare(model, version, settings or BenchmarkSettings(), actor)
        threading.Thread(target=self._run, args=job, name=f"benchmark-{job[0]}",
                         daemon=True).start()
        return self.get(model, version, job[0])

    def run(self, model: str, version: int, settings: BenchmarkSettings | None,
            actor: Principal, progress: Progress | None = None) -> BenchmarkOut:
        """Run a benchmark here to its end; the stored record (succeeded or failed)."""
        job = self._prepare(model, version, settings or BenchmarkSettings(), actor)
        self._run(*job, progress=progress)
        return self.get(model, version, job[0])

    def _prepare(self, model: str, version: int, settings: BenchmarkSettings,
                 actor: Principal) -> tuple[int, Target, ServedWith, Any, BenchmarkSettings]:
        actor.require(Role.DEPLOYER)
        reconciler = self.cp.reconciler
        with self.cp.db.session() as session:
            row = _version_row(session, model, version, lock=True)
            served, router = _served_with(session, settings, row)
            if reconciler is None:
                raise ConflictError(
                    "benchmarks need Ray Serve, and this control plane runs without it (`modelplane "
                    "api`); run the control plane on Serve with `modelplane up`",
                    detail={"field": "serving"})
            self._refuse_second(session, row, model)
            record = VersionBenchmarkRow(
                version_id=row.id, status="running", settings=settings.model_dump(mode="json"),
                progress="queued", created_by=actor.name)
            session.add(record)
            session.flush()
            target = Target(model, row.version, row.artifact_digest, dict(row.manifest))
            return record.id, target, served, router, settings

    def _refuse_second(self, session: Session, row: ModelVersionRow, model: str) -> None:
        now = datetime.now(UTC)
        for other in session.scalars(select(VersionBenchmarkRow).where(
                VersionBenchmarkRow.version_id == row.id, VersionBenchmarkRow.status == "running")):
            if now - other.started_at <= _longest(BenchmarkSettings.model_validate(other.settings)):
                raise ConflictError(
                    f"{model}:{row.version} is being benchmarked (#{other.id}, {other.progress}); "
                    "wait for it (`modelplane models benchmark` shows it) and start another after",
                    detail={"field": "version", "benchmark": other.id})
            other.status, other.finished_at = "failed", now
            other.error = "the control plane running it stopped before it finished"

    def _run(self, benchmark_id: int, target: Target, served: ServedWith, router: Any,
             settings: BenchmarkSettings, progress: Progress | None = None) -> None:
        def report(message: str) -> None:
            self._update(benchmark_id, progress=message)
            if progress is not None:
                progress(message)

        try:
            reconciler = self.cp.reconciler
            store_id = self.cp.store_id
            self._sweep(reconciler.backend, store_id)
            cluster = Cluster(
                backend=reconciler.backend, env=dict(reconciler.replica_env),
                base_url=self.cp.settings.url.rstrip("/"),
                max_body_bytes=self.cp.settings.max_request_bytes,
                stats_interval_s=reconciler.stats_interval_s)
            config = scratch_config(benchmark_endpoint_name(benchmark_id, store_id), target, served,
                                    cluster, router=router, incarnation=f"benchmark#{benchmark_id}")
            figures = run_benchmark(config, target, served, settings, cluster, report)
        except Exception as error:
            log.warning("benchmark #%d of %s:%d failed: %s", benchmark_id, target.model,
                        target.version, error)
            self._update(benchmark_id, status="failed", error=f"{error}"[:4000] or repr(error),
                         progress="failed")
            if progress is not None:
                progress(f"failed: {error}")
            return
        self._update(benchmark_id, status="succeeded", figures=figures.model_dump(mode="json"),
                     progress="done")

    def _update(self, benchmark_id: int, **values: Any) -> None:
        try:
            with self.cp.db.session() as session:
                row = session.get(VersionBenchmarkRow, benchmark_id)
                if row is None:
                    return  # the version was deleted meanwhile, its benchmarks with it
                for key, value in values.items():
                    setattr(row, key, value)
                if "status" in values:
                    row.finished_at = datetime.now(UTC)
        except Exception:  # progress is best effort; the final status is retried by nobody
            log.exception("could not record benchmark #%d", benchmark_id)

    def _sweep(self, backend: Any, store_id: str | None) -> None:
        """Delete scratch applications left by benchmarks that no longer run."""
        running: set[str] | None = None

        def is_running(name: str) -> bool:
            # Read once Serve's applications are listed, not before: a benchmark that
            # starts in between would have its scratch application swept as a leftover.
            nonlocal running
            if running is None:
                with self.cp.db.session(readonly=True) as session:
                    running = {benchmark_endpoint_name(i, store_id) for i in session.scalars(
                        select(VersionBenchmarkRow.id).where(
                            VersionBenchmarkRow.status == "running"))}
            return name in running

        try:
            gone = scratch.sweep_leftovers(is_running, backend, store_id)
            if gone:
                log.info("deleted scratch applications left behind: %s", gone)
        except Exception as error:
            log.warning("could not sweep leftover scratch applications: %s", error)

    # ------------------------------------------------------------ reading

    def get(self, model: str, version: int, benchmark_id: int) -> BenchmarkOut:
        with self.cp.db.session(readonly=True) as session:
            row = _version_row(session, model, version)
            found = session.get(VersionBenchmarkRow, benchmark_id)
            if found is None or found.version_id != row.id:
                raise NotFoundError(f"{model}:{version} has no benchmark #{benchmark_id}",
                                    detail={"field": "benchmark_id"})
            return _out(model, row.version, found)

    def list(self, model: str, version: int, *, limit: int = 50) -> list[BenchmarkOut]:
        """Newest first."""
        with self.cp.db.session(readonly=True) as session:
            row = _version_row(session, model, version)
            rows = session.scalars(select(VersionBenchmarkRow).where(
                VersionBenchmarkRow.version_id == row.id).order_by(
                VersionBenchmarkRow.id.desc()).limit(limit)).all()
            return [_out(model, row.version, r) for r in rows]

    def latest(self, model: str, version: int) -> BenchmarkOut | None:
        """The newest benchmark of the version that succeeded, None without one."""
        return next((b for b in self.list(model, version, limit=500) if b.status == "succeeded"), None)


def benchmark_version(cp: Any, model: str, version: int,
                      settings: BenchmarkSettings | dict[str, Any] | None = None, *,
                      actor: Principal, rate: float | None = None,
                      p99_target_ms: float | None = None, duration_s: float | None = None,
                      progress: Progress | None = None) -> BenchmarkOut:
    """Benchmark ``model:version`` on a scratch replica and store the figures on it.

    Runs in the control plane (``cp``, a ``ControlPlane`` attached to Serve) and returns
    when done: the record has ``status`` succeeded with ``figures``, or failed with
    ``error``. ``rate``, ``p99_target_ms`` and ``duration_s`` override ``settings``.
    Raises NotFoundError (404) for an unknown version, ConflictError (409) while the
    version has a benchmark running, and pydantic's ValidationError for bad settings.
    """
    raw = settings.model_dump() if isinstance(settings, BenchmarkSettings) else dict(settings or {})
    raw.update({k: v for k, v in (("rate", rate), ("p99_target_ms", p99_target_ms),
                                   ("duration_s", duration_s)) if v is not None})
    return cp.benchmarks.run(model, version, BenchmarkSettings.model_validate(raw), actor, progress)


# Figures compared by ``models compare``: name, how to read it, and which way is better.
COMPARED: tuple[tuple[str, Callable[[BenchmarkFigures], float | None], str], ...] = (
    ("p50_ms", lambda f: f.latency_ms.p50, "lower"),
    ("p95_ms", lambda f: f.latency_ms.p95, "lower"),
    ("p99_ms", lambda f: f.latency_ms.p99, "lower"),
    ("max_rate_within_p99", lambda f: f.max_rate_within_p99, "higher"),
    ("cpu_ms_per_request", lambda f: f.cpu_ms_per_request, "lower"),
    ("memory_rss_mb", lambda f: f.memory_rss_mb, "lower"),
    ("gpu_memory_mb", lambda f: f.gpu_memory_mb, "lower"),
)


def compare(a_ref: str, a: BenchmarkOut | None, b_ref: str, b: BenchmarkOut | None) -> BenchmarkComparison:
    """Two versions' benchmarks figure by figure; each ratio is b over a."""
    rows = []
    for name, read, better in COMPARED:
        x = read(a.figures) if a is not None and a.figures is not None else None
        y = read(b.figures) if b is not None and b.figures is not None else None
        ratio = y / x if x and y is not None else None
        rows.append(FigureComparison(name=name, a=x, b=y, ratio=ratio, better=better))  # type: ignore[arg-type]
    return BenchmarkComparison(a=a_ref, b=b_ref, a_benchmark=a.id if a else None,
                               b_benchmark=b.id if b else None, figures=rows)


def _longest(settings: BenchmarkSettings) -> timedelta:
    """Longer than any benchmark with ``settings`` runs (then its control plane stopped)."""
    search = settings.search_steps * (settings.step_seconds + 10)
    return timedelta(seconds=settings.timeout_s + settings.duration_s + search
                     + scratch.DELETE_WAIT_S + 120)


def _version_row(session: Session, model: str, version: int, *, lock: bool = False) -> ModelVersionRow:
    found = session.scalar(select(ModelRow).where(ModelRow.name == model))
    if found is None:
        raise NotFoundError(f"no model named {model!r}", detail={"field": "model"})
    query = select(ModelVersionRow).where(ModelVersionRow.model_id == found.id,
                                          ModelVersionRow.version == version)
    # The lock serialises two starts on PostgreSQL; SQLite's writers are serialised anyway.
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFoundError(f"model {model!r} has no version {version}", detail={"field": "version"})
    return row


def _served_with(session: Session, settings: BenchmarkSettings,
                 row: ModelVersionRow) -> tuple[ServedWith, ScaleSettings | None]:
    """The scratch replica's settings: a fresh endpoint's, or ``settings.endpoint``'s, with
    the fields ``settings`` gives on top; and the router's scaling when isolated."""
    placement, scaling, batching, router = "colocated", ScaleSettings(), BatchSettings(), None
    if settings.endpoint is not None:
        endpoint = endpoint_row(session, settings.endpoint)
        routes = read_routes(session, endpoint)
        route = routes.get(row.version) if endpoint.model_id == row.model_id else None
        route = route or (routes.get(routes.stable) if routes.stable is not None else None)
        placement = endpoint.placement
        own = ScaleSettings.model_validate(endpoint.config.get("scaling") or {})
        if placement == "isolated":
            router = own.model_copy(update={"replicas": 1, "autoscaling": None})
            scaling = ScaleSettings.model_validate((route.settings.get("scaling") if route else None) or {})
        else:
            scaling = own
        if route is not None:
            batching = BatchSettings.model_validate(route.settings.get("batching") or {})
    served = ServedWith(
        placement=settings.placement or placement,  # type: ignore[arg-type]
        num_cpus=_first(settings.num_cpus, scaling.num_cpus),
        num_gpus=_first(settings.num_gpus, scaling.num_gpus),
        memory_mb=_first(settings.memory_mb, scaling.memory_mb),
        max_ongoing_requests=_first(settings.max_ongoing_requests, scaling.max_ongoing_requests),
        intra_op_threads=_first(settings.intra_op_threads, 1),
        batching=settings.batching or batching,
        copied_from=settings.endpoint,
    )
    return served, router


def _first(given: Any, default: Any) -> Any:
    return default if given is None else given


def _out(model: str, version: int, row: VersionBenchmarkRow) -> BenchmarkOut:
    return BenchmarkOut(
        id=row.id, model=model, version=version, status=row.status,  # type: ignore[arg-type]
        settings=BenchmarkSettings.model_validate(row.settings),
        figures=BenchmarkFigures.model_validate(row.figures) if row.figures else None,
        error=row.error, progress=row.progress, created_by=row.created_by,
        started_at=row.started_at, finished_at=row.finished_at)

