"""Experiment tracking: experiments, runs, params, metrics with steps, artifacts, comparison."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as StoreConstraintError
from sqlalchemy.orm import Session

from control_plane.artifact_claims import claim_artifact
from control_plane.artifacts import ArtifactStore
from control_plane.auth import (
    TRAINING,
    Principal,
    draw_job_allowance,
    refuse_past_job_allowance,
)
from control_plane.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from control_plane.listings import LISTING_ROWS_AT_ONCE, within_listing_bytes
from control_plane.notifications.service import notify_on_commit
from control_plane.notifications.sources import training_ended
from control_plane.ray_clusters import RayCluster
from control_plane.schemas import (
    JOB_TAG,
    MAX_RUN_METRIC_POINTS,
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
    RunStatus,
    RunUpdate,
)
from control_plane.store import Database
from control_plane.store.models import (
    ExperimentRow,
    RunArtifactRow,
    RunMetricRow,
    RunRow,
    TokenRow,
)

T = TypeVar("T")

_LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "rmse")


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better, judged by its name."""
    lowered = metric.lower()
    return any(word in lowered for word in _LOWER_IS_BETTER)


MAX_METRIC_POINTS = MAX_RUN_METRIC_POINTS  # per run, every key together
# A run's params are one document, rewritten whole on every write and read whole with the
# run: bounded, as its metric points are, and so are its artifact paths.
MAX_PARAMS_BYTES = 1024 * 1024
MAX_RUN_ARTIFACTS = 10_000
# A run's tags, and an experiment's description and tags: read with every listing of
# them, which anyone may make (500 at a time; listings are bounded in bytes too).
MAX_LABELS_BYTES = 64 * 1024
# Runs one trainer token may start: a job starts one (and its trials' children); a leaked
# token started runs of a million metric points each, without end.
MAX_TRAINER_RUNS = 500
# And the experiments it creates (a job makes one), and the metric points it logs over all
# its runs: 500 runs of a million points each was half a billion rows.
MAX_TRAINER_EXPERIMENTS = 50
MAX_TRAINER_METRIC_POINTS = 5_000_000
HISTORY_POINTS = 10_000  # a metric's history as read, by default

class Tracker:
    """Experiments and runs."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    def create_experiment(self, spec: ExperimentCreate, actor: Principal) -> ExperimentOut:
        actor.require(Role.DEPLOYER, also=TRAINING)
        with self.db.session() as session:
            refuse_past_job_allowance(session, actor, ExperimentRow.created_by,
                                      MAX_TRAINER_EXPERIMENTS, "experiments")
            if session.scalar(select(ExperimentRow.id).where(ExperimentRow.name == spec.name)):
                raise AlreadyExistsError(
                    f"experiment {spec.name!r} already exists", detail={"field": "name"}
                )
            row = ExperimentRow(
                name=spec.name, description=_bounded(spec.description, "description"),
                tags=_bounded(dict(spec.tags), "tags"), created_by=actor.name,
            )
            session.add(row)
            session.flush()
            return _experiment_out(session, row)

    def list_experiments(self, *, limit: int = 50, offset: int = 0) -> Page[ExperimentOut]:
        with self.db.session(readonly=True) as session:
            total = session.scalar(select(func.count(ExperimentRow.id))) or 0
            rows = session.scalars(
                select(ExperimentRow).order_by(ExperimentRow.name).limit(limit).offset(offset)
                .execution_options(yield_per=LISTING_ROWS_AT_ONCE))
            items, limit = within_listing_bytes(
                (_experiment_out(session, row) for row in rows), limit)
            rows.close()
        return Page[ExperimentOut](items=items, total=total, limit=limit, offset=offset)

    def start_run(self, spec: RunCreate, actor: Principal) -> RunOut:
        """Start a run in ``spec.experiment``, creating the experiment if needed."""
        actor.require(Role.DEPLOYER, also=TRAINING)
        with self.db.session() as session:
            refuse_past_job_allowance(session, actor, RunRow.created_by, MAX_TRAINER_RUNS,
                                      "runs")
            experiment_id = _experiment_id(session, spec.experiment, actor)
            if spec.parent_run_id is not None:
                _run(session, spec.parent_run_id, field="parent_run_id")
            row = RunRow(
                id=uuid.uuid4().hex,
                experiment_id=experiment_id,
                parent_run_id=spec.parent_run_id,
                name=spec.name,
                params=_bounded(dict(spec.params), "params", MAX_PARAMS_BYTES),
                tags=_bounded(dict(spec.tags), "tags"),
                # A busy cluster's resources (a key per node and placement group) and a
                # large image's packages make it large: bounded as params are.
                environment=_bounded(dict(spec.environment), "environment", MAX_PARAMS_BYTES),
                created_by=actor.name,
            )
            session.add(row)
            session.flush()
            return _run_out(session, row)

    def get_run(self, run_id: str) -> RunOut:
        with self.db.session(readonly=True) as session:
            return _run_out(session, _run(session, run_id))

    def list_runs(
        self, experiment: str, *, limit: int = 50, offset: int = 0
    ) -> Page[RunOut]:
        with self.db.session(readonly=True) as session:
            exp = session.scalar(select(ExperimentRow).where(ExperimentRow.name == experiment))
            if exp is None:
                raise NotFoundError(f"no experiment named {experiment!r}", detail={"field": "experiment"})
            query = select(RunRow).where(RunRow.experiment_id == exp.id)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(RunRow.start_time.desc()).limit(limit).offset(offset)
                .execution_options(yield_per=LISTING_ROWS_AT_ONCE))
            items, limit = within_listing_bytes(
                (_run_out(session, row, abridged=True) for row in rows), limit)
            rows.close()
        return Page[RunOut](items=items, total=total, limit=limit, offset=offset)

    def update_run(self, run_id: str, spec: RunUpdate, actor: Principal) -> RunOut:
        """Set a run's status; leaving ``running`` records the end time."""
        actor.require(Role.DEPLOYER, also=TRAINING)
        with self.db.session() as session:
            row = _writable(session, run_id, actor)
            if row.status != RunStatus.RUNNING.value and spec.status != RunStatus(row.status):
                raise ConflictError(
                    f"run {run_id} already ended as {row.status}", detail={"field": "status"}
                )
            if row.status == RunStatus.RUNNING.value and spec.status != RunStatus.RUNNING:
                return _end(session, row, spec.status)
            row.status = spec.status.value
            return _run_out(session, row)

    def run_alive(self, run_id: str, actor: Principal) -> None:
        """Note that the running run's job driver is alive now (refused once it ended)."""
        actor.require(Role.DEPLOYER, also=TRAINING)
        with self.db.session() as session:
            row = _writable(session, run_id, actor)
            if row.status != RunStatus.RUNNING.value:
                raise ConflictError(f"run {run_id} already ended as {row.status}",
                                    detail={"field": "run_id"})
            row.alive_at = self.db.now()  # compared by whichever control plane leads

    def running_job_runs(self, *, page: int = 500) -> list[JobRun]:
        """Every running run a submitted job started (read a page at a time: runs of other
        kinds may be left running)."""
        found: list[JobRun] = []
        after = ""
        while True:
            with self.db.session(readonly=True) as session:
                rows = session.execute(
                    select(RunRow.id, RunRow.tags, RunRow.start_time, RunRow.environment,
                           RunRow.alive_at)
                    .where(RunRow.status == RunStatus.RUNNING.value, RunRow.id > after)
                    .order_by(RunRow.id).limit(page)).all()
            found += [JobRun(run_id, str(tags[JOB_TAG]), started, _ray_cluster(environment),
                             alive_at)
                      for run_id, tags, started, environment, alive_at in rows
                      if isinstance(tags, dict) and tags.get(JOB_TAG)]
            if len(rows) < page:
                return found
            after = rows[-1][0]

    def running_process_runs(self) -> list[tuple[str, str, datetime | None]]:
        """(run id, process, when its driver last said it was alive) of every running run a
        job run outside Ray's job API started."""
        with self.db.session(readonly=True) as session:
            rows = session.execute(select(RunRow.id, RunRow.tags, RunRow.alive_at).where(
                RunRow.status == RunStatus.RUNNING.value)).all()
        return [(run_id, str(tags[PROCESS_TAG]), alive_at) for run_id, tags, alive_at in rows
                if isinstance(tags, dict) and tags.get(PROCESS_TAG) and not tags.get(JOB_TAG)]

    def end_abandoned(self, run_id: str, status: RunStatus, reason: str,
                      actor: Principal, *, silent_since: datetime | None = None) -> bool:
        """End a run its job left ``running``, keeping ``reason`` as its failure reason
        (as ``ended_by`` for one ended finished); False when it has ended meanwhile (its
        job got there first), or, ended for a silent driver (``silent_since``: when it last
        said it was alive), when the driver has spoken since."""
        actor.require(Role.DEPLOYER, also=TRAINING)
        with self.db.session() as session:
            row = session.get(RunRow, run_id, with_for_update=True)
            if row is None or row.status != RunStatus.RUNNING.value:
                return False
            if silent_since is not None and row.alive_at is not None and \
                    row.alive_at > silent_since:
                return False
            kept = "ended_by" if status is RunStatus.FINISHED else "failure_reason"
            row.params = {**row.params, kept: reason[:2000]}
            _end(session, row, status)
            return True

    def registered_from(self, run_id: str) -> list[str]:
        """``model:version`` of each version the run's own token registered from it."""
        from control_plane.store.models import ModelRow, ModelVersionRow

        with self.db.session(readonly=True) as session:
            row = session.get(RunRow, run_id)
            if row is None:
                return []
            found = session.execute(
                select(ModelRow.name, ModelVersionRow.version)
                .join(ModelRow, ModelRow.id == ModelVersionRow.model_id)
                .where(ModelVersionRow.run_id == run_id,
                       ModelVersionRow.created_by == row.created_by)
                .order_by(ModelVersionRow.version))
            return [f"{name}:{version}" for name, version in found]

    def log_params(self, run_id: str, spec: ParamsUpdate, actor: Principal) -> RunOut:
        actor.require(Role.DEPLOYER, also=TRAINING)
        with self.db.session() as session:
            row = _writable(session, run_id, actor)
            row.params = _bounded({**row.params, **spec.params}, "params", MAX_PARAMS_BYTES)
            return _run_out(session, row)

    def log_metrics(self, run_id: str, batch: MetricBatch, actor: Principal) -> int:
        """Append a batch of metric points in one transaction; returns how many were stored.
        A run holds at most :data:`MAX_METRIC_POINTS` (a job's token logging without end
        filled the store, and every read of the run's history with it)."""
        actor.require(Role.DEPLOYER, also=TRAINING)
        now = datetime.now(UTC)
        with self.db.session() as session:
            _writable(session, run_id, actor)
            held = session.scalar(select(func.count()).select_from(RunMetricRow)
                                  .where(RunMetricRow.run_id == run_id)) or 0
            if held + len(batch.metrics) > MAX_METRIC_POINTS:
                raise ConflictError(
                    f"run {run_id} holds {held:,} metric points and a run may hold at most "
                    f"{MAX_METRIC_POINTS:,}; log fewer (every few steps, or fewer keys)",
                    detail={"field": "metrics", "held": held, "limit": MAX_METRIC_POINTS})
            draw_job_allowance(session, actor, TokenRow.metric_points, len(batch.metrics),
                               MAX_TRAINER_METRIC_POINTS, "metric points")
            session.add_all(
                RunMetricRow(
                    run_id=run_id, key=p.key, value=p.value, step=p.step,
                    timestamp=p.timestamp or now,
                )
                for p in batch.metrics
            )
        return len(batch.metrics)

    def metric_history(self, run_id: str, key: str, *,
                       limit: int = HISTORY_POINTS) -> list[MetricOut]:
        """The key's points by step; of a history longer than ``limit``, every k-th point
        by step (at most ``limit`` of them) and the last, picked by the store."""
        with self.db.session(readonly=True) as session:
            _run(session, run_id)
            of_key = (RunMetricRow.run_id == run_id, RunMetricRow.key == key)
            total = session.scalar(select(func.count()).select_from(RunMetricRow)
                                   .where(*of_key)) or 0
            stride = max(-(-total // limit), 1)  # ceil: at most ``limit`` kept
            ranked = select(RunMetricRow.key, RunMetricRow.value, RunMetricRow.step,
                            RunMetricRow.timestamp, (func.row_number().over(
                                order_by=(RunMetricRow.step, RunMetricRow.id)) - 1)
                            .label("rank")).where(*of_key).subquery()
            kept = select(ranked).where(
                (ranked.c.rank % stride == 0) | (ranked.c.rank == total - 1)
            ).order_by(ranked.c.rank).limit(limit + 1)
            return [MetricOut(key=r.key, value=r.value, step=r.step, timestamp=r.timestamp)
                    for r in session.execute(kept)]

    def log_artifact(self, run_id: str, spec: RunArtifactCreate, actor: Principal) -> RunArtifactOut:
        """Attach an uploaded artifact to a run under a path (replacing one at that path)."""
        actor.require(Role.DEPLOYER, also=TRAINING)
        info = self.artifacts.info(spec.digest)
        with self.db.session() as session:
            _writable(session, run_id, actor)
            claim_artifact(self.db, session, self.artifacts, spec.digest, field="digest")
            row = session.scalar(
                select(RunArtifactRow).where(
                    RunArtifactRow.run_id == run_id, RunArtifactRow.path == spec.path
                )
            )
            if row is None:
                held = session.scalar(select(func.count()).select_from(RunArtifactRow)
                                      .where(RunArtifactRow.run_id == run_id)) or 0
                if held >= MAX_RUN_ARTIFACTS:
                    raise ConflictError(
                        f"run {run_id} holds {held:,} artifacts and a run may hold at most "
                        f"{MAX_RUN_ARTIFACTS:,}; pack many files into one archive",
                        detail={"field": "path", "held": held, "limit": MAX_RUN_ARTIFACTS})
                row = RunArtifactRow(run_id=run_id, path=spec.path, digest=info.digest, size=info.size)
                session.add(row)
            else:
                row.digest, row.size = info.digest, info.size
            return RunArtifactOut(path=spec.path, digest=info.digest, size=info.size)

    def compare_runs(self, run_ids: list[str]) -> RunComparison:
        """Params and last/best metrics of several runs, side by side."""
        # Each run once: the same id fifty times was fifty scans of its metric points.
        run_ids = list(dict.fromkeys(run_ids))
        params: dict[str, dict[str, Any]] = {}
        last: dict[str, dict[str, float]] = {}
        best: dict[str, dict[str, float]] = {}
        with self.db.session(readonly=True) as session:
            for run_id in run_ids:
                row = _run(session, run_id, field="run_ids")
                for key, value in row.params.items():
                    params.setdefault(key, {})[run_id] = value
                for key, value in _latest_metrics(session, run_id).items():
                    last.setdefault(key, {})[run_id] = value
                extremes = session.execute(
                    select(RunMetricRow.key, func.min(RunMetricRow.value), func.max(RunMetricRow.value))
                    .where(RunMetricRow.run_id == run_id)
                    .group_by(RunMetricRow.key)
                ).all()
                for key, low, high in extremes:
                    best.setdefault(key, {})[run_id] = float(low if lower_is_better(key) else high)
        return RunComparison(runs=run_ids, params=params, last_metrics=last, best_metrics=best)


def _end(session: Session, row: RunRow, status: RunStatus) -> RunOut:
    """End a running run as ``status``; a training job's run ending is its job's outcome."""
    row.status = status.value
    if row.end_time is None:
        row.end_time = datetime.now(UTC)
    out = _run_out(session, row)
    notify_on_commit(session, training_ended(out, out.experiment))
    return out


def _experiment_id(session: Session, name: str, actor: Principal) -> int:
    """The experiment's id, created if new. Jobs of one sweep start their runs in a new
    experiment at once: on PostgreSQL all but one lose the insert, in a savepoint, and find
    the winner's (committed, as their insert waited for it)."""
    query = select(ExperimentRow.id).where(ExperimentRow.name == name)
    found = session.scalar(query)
    if found is None:
        try:
            with session.begin_nested():
                session.add(ExperimentRow(name=name, description="", tags={},
                                          created_by=actor.name))
        except StoreConstraintError:  # another job created it first: theirs is the one
            pass
        found = session.scalar(query)
    assert found is not None
    return found


def _run(session: Session, run_id: str, *, field: str = "run_id") -> RunRow:
    row = session.get(RunRow, run_id)
    if row is None:
        raise NotFoundError(f"no run with id {run_id!r}", detail={"field": field})
    return row


def _writable(session: Session, run_id: str, actor: Principal) -> RunRow:
    """The run ``actor`` may write: any, but a training job's token writes only the runs it
    started (it is readable by whoever lists the cluster's jobs; another job's run, its
    model file a fine-tune starts from, is not its to change)."""
    row = _run(session, run_id)
    if actor.role is Role.TRAINER and row.created_by != actor.name:
        raise PermissionDeniedError(
            f"a training job's token writes only the runs it started; run {run_id} was "
            f"started by {row.created_by!r}", detail={"field": "run_id"})
    return row


def _latest_metrics(session: Session, run_id: str) -> dict[str, float]:
    # The point with the highest step per key; ties broken by insertion order. Found in the
    # (run, key, step) index, one key after another and one point per key: every read of a
    # run (a listing's, the stall watch's every few seconds) once ranked all of a run's
    # points, up to a million of them, a second each on SQLite.
    points = RunMetricRow.__table__
    keys = select(func.min(points.c.key).label("key")).where(
        points.c.run_id == run_id).cte("run_keys", recursive=True)
    following = select(func.min(points.c.key)).where(
        points.c.run_id == run_id, points.c.key > keys.c.key).scalar_subquery()
    keys = keys.union_all(select(following).where(keys.c.key.is_not(None)))
    latest = select(points.c.value).where(
        points.c.run_id == run_id, points.c.key == keys.c.key,
    ).order_by(points.c.step.desc(), points.c.id.desc()).limit(1).scalar_subquery()
    rows = session.execute(select(keys.c.key, latest).where(keys.c.key.is_not(None))).all()
    return {key: value for key, value in rows}


def _experiment_out(session: Session, row: ExperimentRow) -> ExperimentOut:
    count = session.scalar(select(func.count(RunRow.id)).where(RunRow.experiment_id == row.id)) or 0
    return ExperimentOut(
        name=row.name, description=row.description, tags=row.tags, created_by=row.created_by,
        created_at=row.created_at, run_count=count,
    )


def _run_out(session: Session, row: RunRow, *, abridged: bool = False) -> RunOut:
    """The run as answered; ``abridged`` (listings): without its artifacts and children."""
    experiment = session.get(ExperimentRow, row.experiment_id)
    assert experiment is not None
    children = [] if abridged else session.scalars(
        select(RunRow.id).where(RunRow.parent_run_id == row.id).order_by(RunRow.start_time)
    ).all()
    artifacts = [] if abridged else session.scalars(
        select(RunArtifactRow).where(RunArtifactRow.run_id == row.id).order_by(RunArtifactRow.path)
    ).all()
    return RunOut(
        abridged=abridged,
        id=row.id,
        experiment=experiment.name,
        name=row.name,
        status=RunStatus(row.status),
        parent_run_id=row.parent_run_id,
        params=row.params,
        tags=row.tags,
        environment=row.environment,
        created_by=row.created_by,
        start_time=row.start_time,
        end_time=row.end_time,
        latest_metrics=_latest_metrics(session, row.id),
        children=list(children),
        artifacts=[RunArtifactOut(path=a.path, digest=a.digest, size=a.size) for a in artifacts],
    )


class JobRun(NamedTuple):
    """A running run that a submitted job started, and the Ray cluster it said it ran on."""

    run_id: str
    job_id: str
    started: datetime
    ray_cluster: RayCluster | None  # None: not recorded (or by a job before the head was)
    alive_at: datetime | None = None  # when its driver last said it was alive


def _bounded(document: T, field: str, limit: int = MAX_LABELS_BYTES) -> T:
    """``document``, where it fits in ``limit`` bytes (as JSON)."""
    size = len(json.dumps(document, separators=(",", ":")))
    if size > limit:
        raise ConflictError(
            f"{field} would take {size:,} bytes and may take at most {limit:,}; log large "
            "values as artifacts", detail={"field": field, "bytes": size, "limit": limit})
    return document


def _ray_cluster(environment: Any) -> RayCluster | None:
    cluster = environment.get("ray_cluster") if isinstance(environment, dict) else None
    if not isinstance(cluster, dict) or not all(cluster.get(k) for k in RayCluster._fields):
        return None
    return RayCluster(*(str(cluster[k]) for k in RayCluster._fields))
