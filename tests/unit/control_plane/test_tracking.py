"""Experiment tracking against a real database."""

from __future__ import annotations

import pytest

from control_plane.artifacts import ArtifactStore
from control_plane.environment import capture_environment
from control_plane.errors import ConflictError, NotFoundError
from control_plane.schemas import (
    ExperimentCreate,
    MetricBatch,
    MetricPoint,
    ParamsUpdate,
    RunArtifactCreate,
    RunCreate,
    RunOut,
    RunStatus,
    RunUpdate,
)
from control_plane.store import Database
from control_plane.tracking import Tracker, lower_is_better
from tests.unit.control_plane.conftest import ALICE
from tests.unit.control_plane.together import meanwhile, selects_from


def _metrics(*points: tuple[str, float, int]) -> MetricBatch:
    return MetricBatch(metrics=[MetricPoint(key=k, value=v, step=s) for k, v, s in points])


def test_run_lifecycle(tracker: Tracker) -> None:
    tracker.create_experiment(ExperimentCreate(name="digits", description="mlp"), ALICE)
    run = tracker.start_run(
        RunCreate(experiment="digits", name="lr-0.1", params={"lr": 0.1}, tags={"team": "ml"}),
        ALICE,
    )
    assert run.status == RunStatus.RUNNING and run.end_time is None
    assert tracker.log_metrics(
        run.id, _metrics(("loss", 1.0, 0), ("loss", 0.4, 1), ("accuracy", 0.9, 1)), ALICE
    ) == 3
    tracker.log_params(run.id, ParamsUpdate(params={"epochs": 5}), ALICE)
    ended = tracker.update_run(run.id, RunUpdate(status=RunStatus.FINISHED), ALICE)
    assert ended.status == RunStatus.FINISHED and ended.end_time is not None
    assert ended.params == {"lr": 0.1, "epochs": 5}
    assert ended.latest_metrics == {"loss": 0.4, "accuracy": 0.9}
    assert [m.value for m in tracker.metric_history(run.id, "loss")] == [1.0, 0.4]
    with pytest.raises(ConflictError, match="already ended"):
        tracker.update_run(run.id, RunUpdate(status=RunStatus.FAILED), ALICE)
    experiments = tracker.list_experiments()
    assert [(e.name, e.run_count) for e in experiments.items] == [("digits", 1)]


def test_runs_create_their_experiment_and_nest(tracker: Tracker) -> None:
    parent = tracker.start_run(RunCreate(experiment="sweep"), ALICE)
    children = [
        tracker.start_run(RunCreate(experiment="sweep", parent_run_id=parent.id), ALICE)
        for _ in range(2)
    ]
    assert sorted(tracker.get_run(parent.id).children) == sorted(c.id for c in children)
    assert tracker.list_runs("sweep").total == 3
    with pytest.raises(NotFoundError, match="no run with id 'missing'"):
        tracker.start_run(RunCreate(experiment="sweep", parent_run_id="missing"), ALICE)


def test_a_run_whose_new_experiment_another_job_creates_meanwhile_starts_in_it(
        db: Database, artifacts: ArtifactStore) -> None:
    """Jobs of a sweep start their runs in a new experiment at once: one that finds the name
    free, then loses the insert to another, starts its run in the other's experiment."""
    other = Database(db.url, migrate=False)  # another control plane's engine
    try:
        with meanwhile(db.engine, selects_from("experiments"), lambda: Tracker(
                other, artifacts).start_run(RunCreate(experiment="sweep"), ALICE)) as raced:
            run = Tracker(db, artifacts).start_run(RunCreate(experiment="sweep"), ALICE)
    finally:
        other.dispose()
    assert isinstance(raced[0], RunOut), raced
    assert run.experiment == raced[0].experiment == "sweep"
    runs = Tracker(db, artifacts).list_runs("sweep")
    assert sorted(r.id for r in runs.items) == sorted([run.id, raced[0].id])
    assert [(e.name, e.run_count) for e in Tracker(db, artifacts).list_experiments().items] == [
        ("sweep", 2)]


def test_runs_and_experiments_are_bounded_where_anyone_lists_them(
        tracker: Tracker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone may list 500 runs at a time: with tags and environments unbounded, a trainer
    token could make one listing gigabytes. They are bounded as params are, and a listing
    leaves out each run's artifacts and stops short past a size."""
    from control_plane import listings

    for field, spec in (
            ("environment", RunCreate(experiment="wide", environment={"blob": "x" * 1_100_000})),
            ("tags", RunCreate(experiment="wide", tags={"blob": "x" * 70_000}))):
        with pytest.raises(ConflictError, match=f"{field} would take") as refused:
            tracker.start_run(spec, ALICE)
        assert refused.value.detail["field"] == field
    with pytest.raises(ConflictError, match="description would take"):
        tracker.create_experiment(ExperimentCreate(name="wide-2", description="x" * 70_000), ALICE)
    runs = [tracker.start_run(RunCreate(experiment="wide", params={"p": "y" * 1000}), ALICE)
            for _ in range(5)]
    tracker.log_artifact(runs[0].id, RunArtifactCreate(
        path="model.onnx", digest=tracker.artifacts.put([b"weights"]).digest), ALICE)
    listed = tracker.list_runs("wide")
    assert all(run.abridged and run.artifacts == [] for run in listed.items)
    whole = tracker.get_run(runs[0].id)
    assert not whole.abridged and [a.path for a in whole.artifacts] == ["model.onnx"]
    one = len(listed.items[0].model_dump_json())
    monkeypatch.setattr(listings, "LISTING_MAX_BYTES", 2 * one + one // 2)
    pages, offset = [], 0
    while offset < 5:
        page = tracker.list_runs("wide", limit=50, offset=offset)
        pages.append(len(page.items))
        offset += page.limit
    assert pages == [2, 2, 1]


def test_a_run_refused_leaves_no_experiment_behind(tracker: Tracker) -> None:
    with pytest.raises(NotFoundError, match="parent_run_id|no run"):
        tracker.start_run(RunCreate(experiment="never", parent_run_id="missing"), ALICE)
    assert tracker.list_experiments().items == []


def test_compare_runs_picks_last_and_best(tracker: Tracker) -> None:
    a = tracker.start_run(RunCreate(experiment="cmp", params={"lr": 0.1}), ALICE)
    b = tracker.start_run(RunCreate(experiment="cmp", params={"lr": 0.01}), ALICE)
    tracker.log_metrics(a.id, _metrics(("val_loss", 0.5, 0), ("val_loss", 0.3, 1),
                                       ("val_loss", 0.35, 2), ("accuracy", 0.8, 2)), ALICE)
    tracker.log_metrics(b.id, _metrics(("val_loss", 0.6, 0), ("accuracy", 0.7, 0),
                                       ("accuracy", 0.75, 1), ("accuracy", 0.72, 2)), ALICE)
    result = tracker.compare_runs([a.id, b.id])
    assert result.params == {"lr": {a.id: 0.1, b.id: 0.01}}
    assert result.last_metrics["val_loss"] == {a.id: 0.35, b.id: 0.6}
    assert result.best_metrics["val_loss"] == {a.id: 0.3, b.id: 0.6}
    assert result.best_metrics["accuracy"] == {a.id: 0.8, b.id: 0.75}
    assert lower_is_better("val_loss") and not lower_is_better("accuracy")
    # A run named again is compared once (each naming was a scan of its points).
    assert tracker.compare_runs([a.id, b.id, a.id, a.id]).runs == [a.id, b.id]


def test_a_runs_latest_figure_is_its_highest_steps_last_point(tracker: Tracker) -> None:
    """Read by the store: the highest step per key, of two at one step the later."""
    run = tracker.start_run(RunCreate(experiment="latest"), ALICE)
    tracker.log_metrics(run.id, _metrics(("loss", 0.9, 5), ("loss", 0.1, 1), ("loss", 0.7, 5),
                                         ("acc", 0.5, 0)), ALICE)
    tracker.log_metrics(run.id, _metrics(("loss", 0.8, 3)), ALICE)
    assert tracker.get_run(run.id).latest_metrics == {"loss": 0.7, "acc": 0.5}


def test_latest_figures_match_a_reference_over_random_runs(tracker: Tracker) -> None:
    """Keys of every kind (one a prefix of another, non-ASCII, spaces), steps repeated
    and out of order, several runs side by side: each run's latest figures are what a
    plain reading of its points in order gives, and no other run's."""
    import random

    rng = random.Random(7)
    keys = ["a", "a b", "a/b", "ab", "Z", "é", "loss"]
    expected: dict[str, dict[str, tuple[int, float]]] = {}
    runs = [tracker.start_run(RunCreate(experiment="latest-ref"), ALICE).id for _ in range(4)]
    for _ in range(40):
        run = rng.choice(runs)
        points = [(rng.choice(keys), round(rng.random(), 6), rng.randint(0, 4))
                  for _ in range(rng.randint(1, 6))]
        tracker.log_metrics(run, _metrics(*points), ALICE)
        for key, value, step in points:  # the highest step wins; at one step, the later
            if key not in expected.setdefault(run, {}) or step >= expected[run][key][0]:
                expected[run][key] = (step, value)
    for run in runs:
        assert tracker.get_run(run).latest_metrics == {
            key: value for key, (_, value) in expected.get(run, {}).items()}


def test_run_artifacts(tracker: Tracker) -> None:
    run = tracker.start_run(RunCreate(experiment="art"), ALICE)
    info = tracker.artifacts.put([b"confusion matrix"])
    tracker.log_artifact(run.id, RunArtifactCreate(path="plots/cm.txt", digest=info.digest), ALICE)
    assert [(a.path, a.size) for a in tracker.get_run(run.id).artifacts] == [("plots/cm.txt", 16)]


def test_environment_capture_describes_this_process() -> None:
    env = capture_environment()
    assert env["python_version"].count(".") == 2
    assert "sqlalchemy" in env["packages"]
    assert env["hardware"]["cpu_count"] >= 1
    assert len(env["git"].get("commit", "x" * 40)) == 40


def test_a_long_history_is_read_as_evenly_spaced_points_and_the_last(tracker: Tracker) -> None:
    run = tracker.start_run(RunCreate(experiment="long"), ALICE)
    # Logged out of order, with a repeat of step 7: the history is by step, then by arrival.
    steps = [*range(100, 1000), *range(0, 100), 7]
    tracker.log_metrics(run.id, _metrics(*(("loss", float(s), s) for s in steps)), ALICE)
    everything = tracker.metric_history(run.id, "loss", limit=10_000)
    assert [m.step for m in everything] == sorted(steps)
    few = tracker.metric_history(run.id, "loss", limit=100)
    expected = [*sorted(steps)[::11], 999]  # 1,001 points: every 11th keeps 92, then the last
    assert [m.step for m in few] == expected and len(few) <= 101
    assert [m.value for m in few] == [float(s) for s in expected]


def test_a_run_holds_a_bounded_number_of_metric_points(tracker: Tracker,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import control_plane.tracking as tracking

    monkeypatch.setattr(tracking, "MAX_METRIC_POINTS", 5)
    run = tracker.start_run(RunCreate(experiment="bounded"), ALICE)
    assert tracker.log_metrics(run.id, _metrics(*(("loss", 1.0, s) for s in range(4))), ALICE) == 4
    with pytest.raises(ConflictError, match="holds 4 metric points") as refused:
        tracker.log_metrics(run.id, _metrics(("loss", 1.0, 4), ("loss", 1.0, 5)), ALICE)
    assert refused.value.detail["field"] == "metrics"
    assert tracker.log_metrics(run.id, _metrics(("acc", 1.0, 4)), ALICE) == 1
    assert len(tracker.metric_history(run.id, "loss")) == 4


def test_a_run_holds_bounded_params_and_artifacts(tracker: Tracker,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Merged into one document on every write, a trainer token's params grew the run
    without end, and every read of it with them; so did its artifact paths."""
    import control_plane.tracking as tracking
    from control_plane.schemas import ParamsUpdate, RunArtifactCreate

    monkeypatch.setattr(tracking, "MAX_PARAMS_BYTES", 200)
    monkeypatch.setattr(tracking, "MAX_RUN_ARTIFACTS", 2)
    run = tracker.start_run(RunCreate(experiment="bounded", params={"lr": 0.1}), ALICE)
    tracker.log_params(run.id, ParamsUpdate(params={"note": "x" * 100}), ALICE)
    with pytest.raises(ConflictError, match="at most 200") as refused:
        tracker.log_params(run.id, ParamsUpdate(params={"more": "y" * 100}), ALICE)
    assert refused.value.detail["field"] == "params"
    assert set(tracker.get_run(run.id).params) == {"lr", "note"}
    with pytest.raises(ConflictError, match="at most 200"):
        tracker.start_run(RunCreate(experiment="bounded", params={"big": "z" * 300}), ALICE)
    digest = tracker.artifacts.put([b"bytes"]).digest
    for path in ("a.txt", "b.txt", "a.txt"):  # replacing one counts once
        tracker.log_artifact(run.id, RunArtifactCreate(path=path, digest=digest), ALICE)
    with pytest.raises(ConflictError, match="holds 2 artifacts") as refused:
        tracker.log_artifact(run.id, RunArtifactCreate(path="c.txt", digest=digest), ALICE)
    assert refused.value.detail["field"] == "path"
