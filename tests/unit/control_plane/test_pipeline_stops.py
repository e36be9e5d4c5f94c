"""Each gate stops a run at its own stage, naming the cause, with no later stage run: the
real data, evaluation, approval and deploy stages on a real store and real ONNX models
(the training job is replaced by a stage that hands over a registered version)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from control_plane.deployments import Deployments
from control_plane.pipelines.champion import serving_champion
from control_plane.pipelines.gates import BenchmarkStage, EvaluateStage, ValidateDataStage
from control_plane.pipelines.records import RunState, StageState
from control_plane.pipelines.service import Pipelines
from control_plane.pipelines.spec import parse_pipeline_spec
from control_plane.pipelines.stages import (
    ApproveStage,
    DeployStage,
    Outcome,
    StageContext,
    TrainStage,
)
from control_plane.registry import Registry
from control_plane.rollouts.controller import RolloutController
from control_plane.schemas import (
    DeployRequest,
    Lineage,
    ModelManifest,
    RunArtifactCreate,
    RunCreate,
    TrafficUpdate,
    VersionCreate,
)
from control_plane.tracking import Tracker
from serving.monitoring.profiles import build_reference_profile
from tests.unit.control_plane.conftest import ADMIN, ALICE, BOB
from tests.unit.pipelines.test_evaluation import linear_model
from tests.waiting import wait_for
from training import trained_rows

EXAMPLES = Path(__file__).parents[3] / "examples"


@pytest.fixture(scope="module")
def cancer() -> SimpleNamespace:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    data = load_breast_cancer(as_frame=True)
    frame = data.frame
    x = data.data.to_numpy()
    mean, std = x.mean(axis=0), x.std(axis=0)

    def model(columns: list[int]) -> bytes:
        fitted = LogisticRegression(max_iter=2000).fit(((x - mean) / std)[:, columns], data.target)
        weights = np.zeros((30, 2))
        weights[columns, 1] = fitted.coef_[0] / std[columns]  # the scaling inside the graph
        bias = np.array([0.0, fitted.intercept_[0] - float((mean[columns] * weights[columns, 1]).sum())])
        return linear_model(weights, bias, softmax=True)

    profile = build_reference_profile(x, feature_names=list(data.feature_names), sample_size=256)
    manifest = ModelManifest.model_validate({
        "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 30]}],
                      "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 2]}]},
        "task": "classification", "class_labels": [str(n) for n in data.target_names],
        "reference_profile": profile})
    # The CSV names its classes, as the models do: numbers would be labels of their own.
    frame = frame.assign(target=np.asarray(data.target_names)[data.target.to_numpy()])
    return SimpleNamespace(frame=frame, strong=model(list(range(30))), weak=model([1]), manifest=manifest)


class HandOver:
    """The training stage, replaced: it passes with a version registered beforehand."""

    name = "train"

    def __init__(self) -> None:
        self.version: int | None = None
        self.calls = 0
        self.during: Any = None  # what happens elsewhere while the job trains

    def advance(self, context: StageContext) -> Outcome:
        self.calls += 1
        if self.during is not None:
            self.during()
        return Outcome(StageState.PASSED, outputs={"model": "bc", "version": self.version})

    def cancel(self, context: StageContext) -> None:
        return None


class World:
    def __init__(self, registry: Registry, cancer: SimpleNamespace, tmp_path: Path) -> None:
        self.registry, self.cancer, self.tmp_path = registry, cancer, tmp_path
        self.deployments = Deployments(registry.db, registry, base_url="http://cp:8000")
        self.rollouts = RolloutController(registry.db, registry, self.deployments,
                                          stats=lambda endpoint, window, sample: {})
        self.train = HandOver()
        self.tracker = Tracker(registry.db, registry.artifacts)
        self.services = services = SimpleNamespace(
            db=registry.db, registry=registry, artifacts=registry.artifacts,
            deployments=self.deployments, rollouts=self.rollouts, tracker=self.tracker,
            apply_committed=lambda endpoint=None: None)
        self.stages: dict[str, Any] = {
            "validate_data": ValidateDataStage(services), "train": self.train,
            "evaluate": EvaluateStage(services), "benchmark": BenchmarkStage(services),
            "approve": ApproveStage(services), "deploy": DeployStage(services)}
        self.pipelines = Pipelines(registry.db, self.stages)
        self.register(cancer.strong)  # v1, the champion
        self.deployments.deploy(DeployRequest(endpoint="bc", model_ref="bc:1"), ALICE)

    def register(self, onnx: bytes, manifest: ModelManifest | None = None) -> int:
        info = self.registry.artifacts.put([onnx])
        return self.registry.register_version("bc", VersionCreate(
            artifact_digest=info.digest, manifest=manifest or self.cancer.manifest), ALICE).version

    def run(self, frame: pd.DataFrame, candidate: bytes, *,
            expectations: dict[str, Any] | None = None, **spec: Any) -> Any:
        path = self.tmp_path / f"data-{len(list(self.tmp_path.iterdir()))}.csv"
        frame.to_csv(path, index=False)
        self.train.version = self.register(candidate)
        job = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
        job["registration"]["model_name"] = "bc"
        job["data"] = {"path": str(path), "target": "target", "validation_split": 0.25,
                       "test_split": 0.2, "seed": 0}
        document = {"name": "bc", "training": {"job": job},
                    "data": {"uri": str(path), "expectations": {
                        "min_rows": 400, "drift": {"test": "auto", "alpha": 0.01},
                        **(expectations or {})}},
                    "evaluate": {"gates": {"min_accuracy": 0.9, "max_regression": 0.02}},
                    "approve": {"mode": "never"},
                    "deploy": {"endpoint": "bc", "rollout": {"steps": [50, 100]}}, **spec}
        self.pipelines.apply(parse_pipeline_spec(document), ALICE)
        started = self.pipelines.start_run("bc", ALICE)

        def there() -> Any:
            # Passes until the run ends or hands over to its rollout; the data and the
            # held-out rows are read off the pass, so it may take a few.
            run = self.pipelines.run("bc", started.number)
            if run.state.terminal or "rollout_id" in run.stages[-1].outputs \
                    or "waiting" in run.stages[4].outputs:  # for an approval
                return run
            self.pipelines.tick()
            return None

        return wait_for(there, 120, "the run to end or start its rollout", interval=0.05)



@pytest.fixture(autouse=True)
def stops_taken_on_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's owed stops and the training stage's calls run off the pass, which takes
    their outcome when it comes within its wait; these tests read each tick's outcome, and
    on a loaded machine a stop (a write to SQLite) may take longer than the second waited
    in service."""
    monkeypatch.setattr("control_plane.pipelines.service.STOP_WAIT_S", 30.0)
    monkeypatch.setattr("control_plane.pipelines.stages.JOB_API_WAIT_S", 30.0)

@pytest.fixture
def world(registry: Registry, cancer: SimpleNamespace, tmp_path: Path) -> World:
    return World(registry, cancer, tmp_path)


def states(run: Any) -> dict[str, StageState]:
    return {s.name: s.state for s in run.stages}


def test_a_dropped_column_stops_the_run_at_validate_data(world: World) -> None:
    run = world.run(world.cancer.frame.drop(columns=["mean radius"]), world.cancer.strong)
    assert run.state is RunState.FAILED and "'mean radius' is missing" in run.reason
    assert states(run)["validate_data"] is StageState.FAILED
    assert set(list(states(run).values())[1:]) == {StageState.SKIPPED} and world.train.calls == 0


def test_the_label_column_is_checked_where_the_expectations_name_it(world: World) -> None:
    """Left out of the checked table, a label column the expectations named failed as
    missing, and a label nobody knows passed."""
    labels = {"categories": {"target": ["malignant", "benign"]}}
    mislabelled = world.cancer.frame.copy()
    mislabelled.loc[[4, 8], "target"] = "cyst"
    run = world.run(mislabelled, world.cancer.strong, expectations=labels)
    assert states(run)["validate_data"] is StageState.FAILED
    assert "column 'target' has 2 values in unknown categories 'cyst'" in run.reason
    run = world.run(world.cancer.frame, world.cancer.strong, expectations=labels)
    assert states(run)["validate_data"] is StageState.PASSED, run.stages[0].reason


def test_a_shifted_feature_stops_the_run_at_validate_data(world: World) -> None:
    shifted = world.cancer.frame.copy()
    shifted["worst area"] += 3 * shifted["worst area"].std()
    run = world.run(shifted, world.cancer.strong)
    assert run.state is RunState.FAILED and "'worst area' drifted" in run.reason
    assert run.stages[0].inputs["reference"] == "bc:1" and world.train.calls == 0


def test_a_candidate_worse_than_the_champion_stops_at_evaluate(world: World) -> None:
    run = world.run(world.cancer.frame, world.cancer.weak)
    assert run.state is RunState.FAILED and states(run)["evaluate"] is StageState.FAILED
    assert "accuracy" in run.reason and run.stages[2].inputs["champion"] == "bc:1"
    report = run.stages[2].outputs["report"]
    assert report["comparison"]["p_value"] < 0.05  # McNemar says the gap is real
    assert states(run)["deploy"] is StageState.SKIPPED and world.rollouts.list(endpoint="bc") == []
    rejected = world.registry.get_version("bc", 2)
    assert rejected.status == "rejected" and "evaluate" in rejected.status_reason


def test_the_champion_is_the_version_serving_when_the_run_began(world: World) -> None:
    """An endpoint following the alias a training job points rolls its candidate out as
    soon as it is registered. Looked up again at evaluation, "the champion" was by then the
    candidate itself, and no margin was judged: a candidate far worse than the version it
    was replacing passed."""
    def candidate_takes_over() -> None:
        number = world.train.version
        world.deployments.deploy(DeployRequest(endpoint="bc", model_ref=f"bc:{number}"), ALICE)
        world.deployments.set_traffic("bc", TrafficUpdate(weights={1: 10.0, number: 90.0}), ALICE)

    world.train.during = candidate_takes_over
    run = world.run(world.cancer.frame, world.cancer.weak,
                    evaluate={"gates": {"min_accuracy": 0.5, "max_regression": 0.02}})
    assert serving_champion(world.services, "bc", "bc").version == 2  # the candidate leads
    assert states(run)["evaluate"] is StageState.FAILED, run.stages[2].reason
    assert run.stages[0].inputs["champion"] == "bc:1"
    assert run.stages[2].inputs["champion"] == "bc:1" and "worse than champion" in run.reason


def test_a_champion_changed_by_hand_meanwhile_is_the_one_judged_against(world: World) -> None:
    """An operator's rollout of another version while the job trains: the candidate is
    judged against the version serving now, not the one it would no longer replace."""
    def another_takes_over() -> None:
        other = world.register(world.cancer.strong)
        world.deployments.deploy(DeployRequest(endpoint="bc", model_ref=f"bc:{other}"), ALICE)
        world.deployments.set_traffic("bc", TrafficUpdate(weights={1: 10.0, other: 90.0}), ALICE)

    world.train.during = another_takes_over
    run = world.run(world.cancer.frame, world.cancer.strong)
    assert run.stages[0].inputs["champion"] == "bc:1"
    assert run.stages[2].inputs["champion"] == "bc:3", run.stages[2].reason


def _champion_that_trained_on(world: World, rows: np.ndarray, serving_before: int) -> int:
    """A version of the strong model whose run kept ``rows`` as the rows it trained on,
    made the endpoint's champion (it takes most of the traffic from ``serving_before``)."""
    kept = world.registry.artifacts.put([trained_rows.build(rows)])
    run_id = world.tracker.start_run(RunCreate(experiment=f"bc-{len(rows)}"), ALICE).id
    world.tracker.log_artifact(run_id, RunArtifactCreate(
        path=trained_rows.ARTIFACT_PATH, digest=kept.digest), ALICE)
    champion = world.register(world.cancer.strong, world.cancer.manifest.model_copy(
        update={"lineage": Lineage(run_id=run_id)}))
    world.deployments.deploy(DeployRequest(endpoint="bc", model_ref=f"bc:{champion}"), ALICE)
    world.deployments.set_traffic("bc", TrafficUpdate(
        weights={serving_before: 10.0, champion: 90.0}), ALICE)
    return champion


def test_the_champion_is_never_scored_on_rows_it_trained_on(world: World) -> None:
    """The champion trained on the data before rows were appended. Split again over the
    whole file, the candidate's held-out rows held rows the champion had trained on, which
    flattered it against a candidate that never saw them. Its run kept a filter of the rows
    it saw, and the evaluate stage scores both models on the others alone."""
    features = world.cancer.frame.drop(columns=["target"]).to_numpy()
    saw = features[:300]  # the rows the champion trained and stopped early on
    champion = _champion_that_trained_on(world, saw, serving_before=1)

    run = world.run(world.cancer.frame, world.cancer.strong)
    evaluated = run.stages[2]
    assert evaluated.state is StageState.PASSED, evaluated.reason
    assert evaluated.inputs["champion"] == f"bc:{champion}"
    from training.data import load_dataset, split_dataset
    from training.schemas import DataSpec

    job_data = DataSpec(path=str(sorted(world.tmp_path.glob("data-*.csv"))[-1]),
                        target="target", validation_split=0.25, test_split=0.2, seed=0)
    split = split_dataset(load_dataset(job_data, "classification"), validation_split=0.25,
                          seed=0, test_split=0.2)
    assert split.x_test is not None
    trained = {tuple(row) for row in saw.astype(np.float32)}
    overlap = sum(tuple(row) in trained for row in split.x_test.astype(np.float32))
    assert overlap >= 30  # about half of the held-out rows: what the champion was scored on
    assert evaluated.inputs["rows"] == len(split.x_test) - overlap
    note = evaluated.outputs["report"]["note"]
    assert (f"{overlap} held-out rows left out, which only bc:{champion} trained on "
            f"({overlap})") in note

    # A champion that trained on every held-out row cannot be compared on them: the
    # margin it gates fails, saying why, rather than judging on rows that flatter it.
    knows_all = _champion_that_trained_on(world, features, serving_before=champion)
    run = world.run(world.cancer.frame, world.cancer.strong)
    assert states(run)["evaluate"] is StageState.FAILED
    assert (f"the champion cannot be compared on these rows: every held-out row is one "
            f"bc:{knows_all} trained on and the candidate did not") in run.reason


def test_a_pinned_champion_deleted_since_fails_the_evaluation_saying_so(world: World) -> None:
    def candidate_replaces_it() -> None:
        number = world.train.version
        if world.deployments.get("bc").routes[0].version == 1:
            world.deployments.deploy(DeployRequest(endpoint="bc", model_ref=f"bc:{number}"), ALICE)
            world.deployments.set_traffic("bc", TrafficUpdate(weights={number: 100.0}), ALICE)
            world.registry.delete_version("bc", 1, ADMIN)

    world.train.during = candidate_replaces_it
    run = world.run(world.cancer.frame, world.cancer.weak,
                    evaluate={"gates": {"min_accuracy": 0.5, "max_regression": 0.02}})
    assert states(run)["evaluate"] is StageState.FAILED
    assert "the champion bc:1, which served when this run began" in run.reason
    assert "was deleted since" in run.reason


def test_without_a_data_stage_the_training_stage_pins_the_champion(world: World) -> None:
    """The training stage's first pass, before any candidate exists, pins the champion for
    the stages after it; the data stage's pin, where it looked, is carried."""
    world.train.version = world.register(world.cancer.strong)
    job = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
    job["registration"]["model_name"] = "bc"
    spec = parse_pipeline_spec({"name": "bc", "training": {"job": job},
                                "deploy": {"endpoint": "bc"}})
    world.pipelines.apply(spec, ALICE)
    run = world.pipelines.start_run("bc", ALICE)
    stage = TrainStage(world.services)
    first = stage.advance(StageContext(run=run, spec=spec, record=run.stages[1], now=run.created_at))
    assert first.inputs is not None and first.inputs["champion"] == "bc:1"
    world.deployments.set_traffic("bc", TrafficUpdate(weights={1: 10.0, 2: 90.0}), ALICE)
    assert stage.advance(StageContext(run=run, spec=spec, record=run.stages[1],
                                      now=run.created_at)).inputs["champion"] == "bc:2"
    looked = run.model_copy(deep=True)
    looked.stages[0].inputs["champion"] = "bc:1"
    assert stage.advance(StageContext(run=looked, spec=spec, record=looked.stages[1],
                                      now=run.created_at)).inputs["champion"] == "bc:1"


def test_a_rollout_that_rolls_back_fails_the_run_at_deploy(world: World) -> None:
    run = world.run(world.cancer.frame, world.cancer.strong)
    assert states(run)["evaluate"] is StageState.PASSED and states(run)["deploy"] is StageState.RUNNING
    rollout_id = run.stages[-1].outputs["rollout_id"]
    world.rollouts.tick()  # pending → its first step
    world.rollouts.rollback(rollout_id, BOB, "error rate 12% on the canary")
    world.pipelines.tick()
    run = world.pipelines.run("bc", run.number)
    assert run.state is RunState.FAILED and "rolled_back" in run.reason
    assert "error rate 12% on the canary" in run.reason
    assert len(world.rollouts.list(endpoint="bc")) == 1


def test_a_promoted_rollout_ends_the_run_succeeded(world: World) -> None:
    run = world.run(world.cancer.frame, world.cancer.strong)
    world.rollouts.tick()
    world.rollouts.promote(run.stages[-1].outputs["rollout_id"], BOB, "looks good")
    world.pipelines.tick()
    world.pipelines.tick()
    run = world.pipelines.run("bc", run.number)
    assert run.state is RunState.SUCCEEDED, [(s.name, s.state, s.reason) for s in run.stages]


def test_a_candidate_slower_than_the_champion_stops_at_benchmark(world: World) -> None:
    class Figures(SimpleNamespace):
        pass

    def figures(p99: float) -> Any:
        return Figures(latency_ms=SimpleNamespace(p50=p99 / 2, p95=p99 * 0.9, p99=p99),
                       achieved_rps=50.0, max_rate_within_p99=100.0, cpu_ms_per_request=1.0,
                       memory_rss_mb=200.0, errors=0)

    class Measured:
        """Benchmarks as control_plane.benchmarking records them, the candidate 3x slower."""

        def __init__(self) -> None:
            self.started: list[int] = []
            self.records: list[Any] = []

        def start(self, model: str, version: int, settings: Any, actor: Any) -> Any:
            from datetime import UTC, datetime

            self.started.append(version)
            self.records.insert(0, SimpleNamespace(id=len(self.started), version=version,
                                                   created_by=actor.name,
                                                   started_at=datetime.now(UTC)))
            return self.records[0]

        def list(self, model: str, version: int, *, limit: int = 50) -> list[Any]:
            return [r for r in self.records if r.version == version][:limit]

        def get(self, model: str, version: int, benchmark_id: int) -> Any:
            return SimpleNamespace(id=benchmark_id, status="succeeded", error="",
                                   figures=figures(30.0 if version != 1 else 10.0))

    measured = Measured()
    world.stages["benchmark"].services.benchmarks = measured
    advance = world.stages["benchmark"].advance
    forgotten: list[str] = []

    def forgetting_once(context: StageContext) -> Outcome:
        """The first benchmark started, then its id lost (a crash, a store error on the
        run's write): the next pass finds it rather than starting a second one."""
        outcome = advance(context)
        if outcome.progress and "candidate_benchmark" in outcome.progress and not forgotten:
            forgotten.append("candidate_benchmark")
            return Outcome(StageState.RUNNING)
        return outcome

    world.stages["benchmark"].advance = forgetting_once
    run = world.run(world.cancer.frame, world.cancer.strong,
                    benchmark={"rate": 20, "duration_s": 2, "max_slowdown": 1.5})
    assert forgotten == ["candidate_benchmark"]
    assert run.state is RunState.FAILED and states(run)["benchmark"] is StageState.FAILED
    assert "3.00x the champion bc:1" in run.reason and measured.started == [2, 1]
    assert states(run)["deploy"] is StageState.SKIPPED
    assert world.registry.get_version("bc", 2).status == "rejected"


@pytest.mark.parametrize("decision", ["approved", "rejected"])
def test_a_run_waits_for_the_approval_the_policy_asks_for(world: World, decision: str) -> None:
    from control_plane.schemas import ApprovalCreate, ModelPolicy, ModelUpdate

    world.registry.update_model("bc", ModelUpdate(policy=ModelPolicy(
        require_approval_for_production=True)), ADMIN)
    run = world.run(world.cancer.frame, world.cancer.strong, approve={"mode": "policy"})
    for _ in range(5):
        world.pipelines.tick()
    run = world.pipelines.run("bc", run.number)
    assert states(run)["approve"] is StageState.RUNNING and states(run)["deploy"] is StageState.PENDING
    assert "modelplane models approve bc:2" in run.stages[4].outputs["waiting"]
    world.registry.approve("bc", 2, ApprovalCreate(decision=decision), BOB)
    for _ in range(5):
        world.pipelines.tick()
    run = world.pipelines.run("bc", run.number)
    if decision == "approved":
        assert states(run)["approve"] is StageState.PASSED and "rollout_id" in run.stages[5].outputs
    else:
        assert run.state is RunState.FAILED and "bc:2 was rejected" in run.reason
        assert states(run)["deploy"] is StageState.SKIPPED


def test_drift_alerts_on_the_endpoint_are_what_starts_a_retraining(registry: Registry) -> None:
    from datetime import UTC, datetime, timedelta

    from control_plane.pipelines.wiring import drift_alerts
    from control_plane.store.models import AlertEventRow, AlertRuleRow

    now = datetime.now(UTC)
    with registry.db.session() as session:
        for name, metric in (("drifting", "drifted_features"), ("slow", "p99_ms")):
            session.add(AlertRuleRow(name=name, spec={"name": name, "metric": metric},
                                     created_by="t"))
        for name, endpoint, state, age, kind in (("drifting", "bc", "firing", 5, "rule"),
                                                 ("drifting", "bc", "resolved", 4, "rule"),
                                                 ("drifting", "other", "firing", 5, "rule"),
                                                 ("slow", "bc", "firing", 5, "rule"),
                                                 ("drifting", "bc", "firing", 600, "rule"),
                                                 # posted through the API under its name
                                                 ("drifting", "bc", "firing", 3, "event")):
            session.add(AlertEventRow(fingerprint=name[:32], name=name, state=state, kind=kind,
                                      endpoint=endpoint, severity="warning", labels={},
                                      created_at=now - timedelta(seconds=age)))
    fired = drift_alerts(registry.db)("bc", now - timedelta(seconds=60))
    # A drift rule's evaluation, firing, on this endpoint, recently.
    assert fired == [now - timedelta(seconds=5)]


def test_a_first_deploy_is_done_once_across_a_crash_and_a_failing_apply(
        world: World, cancer: SimpleNamespace) -> None:
    """The endpoint is stored, then the process dies (or Serve refuses the apply) before
    the stage says so: the next pass finds the candidate serving and passes, where it
    tried a rollout of the version already taking all the traffic and failed the run."""
    from datetime import UTC, datetime

    from control_plane.pipelines.records import StageRecord

    version = world.register(cancer.strong)
    job = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
    spec = parse_pipeline_spec({"name": "fresh", "training": {"job": job},
                                "deploy": {"endpoint": "bc-new"}})
    train = StageRecord(name="train", state=StageState.PASSED,
                        outputs={"model": "bc", "version": version})
    run = SimpleNamespace(pipeline="fresh", number=1, author="alice", stages=[train])
    now = datetime.now(UTC)

    def context() -> StageContext:
        record = StageRecord(name="deploy", state=StageState.RUNNING, started_at=now)
        return StageContext(run=run, spec=spec, record=record, now=now)  # type: ignore[arg-type]

    def wedged(endpoint: str | None = None) -> None:
        threading.Event().wait()  # Serve's controller never answers

    from control_plane.leadership import take_apply_requests

    stage = world.stages["deploy"]
    stage.services.apply = stage.services.apply_committed = wedged
    passed: list[Any] = []
    first_pass = threading.Thread(target=lambda: passed.append(stage.advance(context())),
                                  daemon=True)
    first_pass.start()
    first_pass.join(30)  # the pass never waits on Serve: the leader's loop applies it
    assert passed, "the pass waits on Serve"
    first = passed[0]
    assert first.state is StageState.PASSED and "deployed directly" in first.reason
    assert take_apply_requests(world.registry.db) == {"bc-new"}
    again = stage.advance(context())  # what the next pass after a crash sees
    assert again.state is StageState.PASSED, again.reason
    assert "already serves bc:" in again.reason and "all of it" in again.reason
    assert world.rollouts.list(endpoint="bc-new") == []
    assert [(r.version, r.weight) for r in world.deployments.get("bc-new").routes] == [(version, 100.0)]


def test_a_candidate_failing_benchmark_requests_stops_there_whatever_its_p99() -> None:
    """A p99 is of the answered requests: the ones timed out or failed (often the slowest)
    were left out, so a candidate failing 5% passed the slowdown gate on a faster p99."""
    from control_plane.pipelines.gates import BenchmarkStage

    def figures(p99: float, errors: int) -> Any:
        return SimpleNamespace(latency_ms=SimpleNamespace(p50=p99 / 2, p95=p99 * 0.9, p99=p99),
                               requests=1000, errors=errors, achieved_rps=50.0,
                               max_rate_within_p99=100.0, cpu_ms_per_request=1.0,
                               memory_rss_mb=200.0)

    def judge(measured: dict[str, Any]) -> Outcome:
        return BenchmarkStage._judge(measured, 1.5, "bc", 2, 1 if "champion" in measured else None,
                                     {"candidate_benchmark": 7})

    failing = judge({"candidate": figures(5.0, 50), "champion": figures(20.0, 0)})
    assert failing.state is StageState.FAILED
    assert "failed 50 of 1000 benchmark requests" in failing.reason and "bc:1 0 of 1000" in failing.reason
    assert judge({"candidate": figures(5.0, 50)}).state is StageState.FAILED  # a first version too
    # No more failing than the champion under the same load: judged on latency as before.
    assert judge({"candidate": figures(5.0, 50), "champion": figures(20.0, 50)}).state \
        is StageState.PASSED


def test_a_rollout_that_never_ends_fails_the_deploy_stage_at_its_deadline(world: World) -> None:
    """A rollout waiting on an approval nobody gives (approve.mode never, the model's policy
    on) or paused held the run, and every trigger of its pipeline, for ever."""
    import time

    run = world.run(world.cancer.frame, world.cancer.strong,
                    deploy={"endpoint": "bc", "rollout": {"steps": [50, 100]}, "timeout_s": 0.5})
    rollout_id = run.stages[-1].outputs["rollout_id"]
    world.rollouts.tick()  # at 50%
    world.rollouts.pause(rollout_id, ALICE, "looking at it")
    time.sleep(0.6)
    # And Serve's controller has stopped answering: applying the abort to Serve would wait
    # for ever (its calls have no deadline), and the pass with it: the run stayed running
    # in deploy, and every other pipeline's runs and triggers stopped too.
    unwedged = threading.Event()
    world.rollouts._apply = lambda: unwedged.wait()
    passed = threading.Thread(target=world.pipelines.tick, daemon=True)
    passed.start()
    passed.join(60)
    assert not passed.is_alive(), "the pipeline pass waits on Serve"
    run = world.pipelines.run("bc", run.number)
    assert run.state is RunState.FAILED and states(run)["deploy"] is StageState.FAILED
    assert "deploy.timeout_s" in run.reason and "aborted" in run.reason
    assert world.rollouts.get(rollout_id).state.terminal
    assert {r.version: r.weight for r in world.deployments.get("bc").routes
            if not r.shadow and r.weight > 0} == {1: 100.0}
    # The rollout loop's own pass applies it, once Serve answers again.
    applied: list[bool] = []
    world.rollouts._apply = lambda: applied.append(True)
    unwedged.set()
    world.rollouts.tick()
    assert applied


def _rollouts_get_raising(world: World, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """The deploy stage's next look at its rollout raises ``error``, once."""
    real = world.rollouts.get
    raised: list[Exception] = []

    def get(rollout_id: int) -> Any:
        if not raised:
            raised.append(error)
            raise error
        return real(rollout_id)

    monkeypatch.setattr(world.rollouts, "get", get)


def test_a_stage_that_raises_has_its_work_stopped_before_its_run_fails(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run was failed and its rollout went on: it could still promote the candidate."""
    run = world.run(world.cancer.frame, world.cancer.strong)
    rollout_id = run.stages[-1].outputs["rollout_id"]
    world.rollouts.tick()  # at 50%
    _rollouts_get_raising(world, monkeypatch, RuntimeError("a bug in the stage"))
    world.pipelines.tick()
    run = world.pipelines.run("bc", run.number)
    assert run.state is RunState.FAILED and "a bug in the stage" in run.reason
    assert "its work was stopped" in run.reason
    stopped = world.rollouts.get(rollout_id)
    assert stopped.state.value == "failed" and "ended (cancelled" in stopped.reason
    assert {r.version: r.weight for r in world.deployments.get("bc").routes
            if not r.shadow and r.weight > 0} == {1: 100.0}


def test_a_store_away_for_a_pass_is_no_verdict_on_a_stage(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.errors import StoreUnavailableError

    run = world.run(world.cancer.frame, world.cancer.strong)
    rollout_id = run.stages[-1].outputs["rollout_id"]
    world.rollouts.tick()
    _rollouts_get_raising(world, monkeypatch, StoreUnavailableError("the store did not answer"))
    world.pipelines.tick()
    assert world.pipelines.run("bc", run.number).state is RunState.RUNNING
    world.rollouts.promote(rollout_id, BOB, "looks good")
    world.pipelines.tick()
    world.pipelines.tick()
    assert world.pipelines.run("bc", run.number).state is RunState.SUCCEEDED


def test_a_cancel_stops_a_rollout_whose_id_the_record_never_got(world: World) -> None:
    """Started, then a crash (or a store that failed) kept its id out of the stage's record:
    the cancel aborted nothing, and the rollout went on to 100%."""
    from control_plane.store.models import PipelineRunRow

    run = world.run(world.cancer.frame, world.cancer.strong)
    rollout_id = run.stages[-1].outputs["rollout_id"]
    with world.registry.db.session() as session:
        row = session.query(PipelineRunRow).filter_by(pipeline="bc", number=run.number).one()
        stages = [dict(stage) for stage in row.stages]
        stages[-1]["progress"] = {}
        row.stages = stages
    world.pipelines.cancel("bc", ALICE, "not this one")
    stopped = world.rollouts.get(rollout_id)
    assert stopped.state.value == "failed" and "ended (cancelled" in stopped.reason


def test_a_cancel_whose_stop_fails_or_never_comes_is_stopped_by_the_loop(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel was stored, then its stop failed (or its process was killed before it):
    nothing tried again, and the cancelled run's rollout went on to 100%."""
    from control_plane.errors import WorkNotStoppedError

    run = world.run(world.cancer.frame, world.cancer.strong)
    rollout_id = run.stages[-1].outputs["rollout_id"]
    world.rollouts.tick()  # at 50%
    real_abort = world.rollouts.abort
    monkeypatch.setattr(world.rollouts, "abort", lambda *args, **kwargs: (_ for _ in ()).throw(
        RuntimeError("the store refused the abort")))
    with pytest.raises(WorkNotStoppedError, match="the control loop tries again"):
        world.pipelines.cancel("bc", ALICE, "not this one")
    deploy = world.pipelines.run("bc", run.number).stages[-1]
    assert deploy.state is StageState.CANCELLED and deploy.stop_owed
    assert not world.rollouts.get(rollout_id).state.terminal
    monkeypatch.setattr(world.rollouts, "abort", real_abort)
    world.pipelines.tick()
    assert world.rollouts.get(rollout_id).state.terminal
    assert not world.pipelines.run("bc", run.number).stages[-1].stop_owed
    world.pipelines.tick()  # settled: not stopped again


def test_an_owed_stop_that_hangs_holds_no_pass(world: World,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's stop runs off the pass: a stop that never answers (Ray's job API taking
    the call and never answering) held every pipeline's pass, every 30 s, for a day."""
    import time

    from control_plane.errors import WorkNotStoppedError

    run = world.run(world.cancer.frame, world.cancer.strong)
    rollout_id = run.stages[-1].outputs["rollout_id"]
    world.rollouts.tick()  # at 50%
    real_abort, release = world.rollouts.abort, threading.Event()

    def hung(*args: Any, **kwargs: Any) -> Any:
        if not release.wait(30):
            raise RuntimeError("never answered")
        return real_abort(*args, **kwargs)

    monkeypatch.setattr(world.rollouts, "abort", lambda *args, **kwargs: (_ for _ in ()).throw(
        RuntimeError("the store refused the abort")))
    with pytest.raises(WorkNotStoppedError):
        world.pipelines.cancel("bc", ALICE, "not this one")
    monkeypatch.setattr(world.rollouts, "abort", hung)
    monkeypatch.setattr("control_plane.pipelines.service.STOP_WAIT_S", 1.0)  # as in service
    for _ in range(3):
        started = time.monotonic()
        world.pipelines.tick()
        assert time.monotonic() - started < 10, "the pass waited for the stop"
    assert world.pipelines.run("bc", run.number).stages[-1].stop_owed
    release.set()
    wait_for(lambda: (world.pipelines.tick(),
                      not world.pipelines.run("bc", run.number).stages[-1].stop_owed)[1],
             20, "the stop to be settled", interval=0.1)
    assert world.rollouts.get(rollout_id).state.terminal


def test_a_stage_whose_work_could_not_be_stopped_as_it_failed_is_stopped_later(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    run = world.run(world.cancer.frame, world.cancer.strong)
    rollout_id = run.stages[-1].outputs["rollout_id"]
    world.rollouts.tick()
    real_get, real_abort = world.rollouts.get, world.rollouts.abort

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the stage")

    monkeypatch.setattr(world.rollouts, "get", broken)
    monkeypatch.setattr(world.rollouts, "abort", broken)
    monkeypatch.setattr("control_plane.pipelines.service.STOP_RETRY_S", 0.0)  # no wait
    world.pipelines.tick()  # fails the run, and the loop's own try fails too
    ended = world.pipelines.run("bc", run.number)
    assert ended.state is RunState.FAILED and "the control loop tries again" in ended.reason
    assert ended.stages[-1].stop_owed
    monkeypatch.setattr(world.rollouts, "get", real_get)
    monkeypatch.setattr(world.rollouts, "abort", real_abort)
    world.pipelines.tick()
    assert world.rollouts.get(rollout_id).state.terminal
    assert not world.pipelines.run("bc", run.number).stages[-1].stop_owed


def test_the_benchmark_gate_fails_a_candidate_on_evidence_not_on_one_stall() -> None:
    """A p99 of forty answers is their slowest: one 37 ms stall on a busy machine failed a
    candidate "6.6x slower" than its champion that answered alike. Each run's quantiles
    are bounded at 97.5% (so a ratio of two holds at 95%), and the gate judges the highest
    of p99, p95 and p50 that both runs' answers bound."""
    from control_plane.benchmarking.load import LoadResult
    from control_plane.pipelines.gates import BenchmarkStage

    rng = np.random.default_rng(5)

    def figures(latencies_ms: np.ndarray) -> Any:
        latency = LoadResult(rate=20, seconds=2, latencies_s=list(latencies_ms / 1000)).latency()
        return SimpleNamespace(latency_ms=latency, requests=latencies_ms.size, errors=0,
                               achieved_rps=20.0, max_rate_within_p99=None,
                               cpu_ms_per_request=1.0, memory_rss_mb=200.0)

    def judge(candidate: np.ndarray, champion: np.ndarray) -> Outcome:
        return BenchmarkStage._judge({"candidate": figures(candidate),
                                      "champion": figures(champion)}, 5.0, "bc", 4, 2,
                                     {"candidate_benchmark": 7})

    alike = rng.normal(2.0, 0.2, size=40)
    stalled = np.append(rng.normal(2.0, 0.2, size=39), 37.0)
    passed = judge(stalled, alike)
    assert passed.state is StageState.PASSED, passed.reason
    assert passed.outputs["p99_ratio"] > 5  # the old rule's verdict: failed
    assert passed.outputs["judged_quantile"] == "p50"
    assert "the p99 is not judged on 40 and 40 answers (it needs 367" in passed.reason
    slower = judge(alike * 8, alike)  # every answer eight times slower: that is evidence
    assert slower.state is StageState.FAILED
    assert "answers at p50" in slower.reason and "on 40 and 40 answers" in slower.reason
    many = rng.normal(2.0, 0.2, size=2000)  # enough answers: the p99 itself is judged
    judged = judge(many * 8, many)
    assert judged.state is StageState.FAILED and judged.outputs["judged_quantile"] == "p99"
    assert judge(many, many).state is StageState.PASSED
    # Too few answers to bound any quantile: no evidence, which passes nothing.
    few = judge(alike[:3], alike[:3])
    assert few.state is StageState.FAILED
    assert "cannot be judged" in few.reason and "on 3 and 3 answers" in few.reason


def test_a_cancel_in_deploy_ends_the_rollout_without_waiting_on_serve(world: World) -> None:
    """Cancelling a run whose rollout progresses aborts the rollout; with Serve's controller
    wedged, applying that abort inline held the API request (and the pass) for good."""
    run = world.run(world.cancer.frame, world.cancer.strong,
                    deploy={"endpoint": "bc", "rollout": {"steps": [50, 100]}})
    rollout_id = run.stages[-1].outputs["rollout_id"]
    world.rollouts.tick()  # at 50%
    unwedged = threading.Event()
    world.rollouts._apply = lambda: unwedged.wait()
    cancelled = threading.Thread(target=world.pipelines.cancel, args=("bc", ALICE), daemon=True)
    cancelled.start()
    cancelled.join(60)
    unwedged.set()
    assert not cancelled.is_alive(), "the cancel waits on Serve"
    assert world.pipelines.run("bc", run.number).state is RunState.CANCELLED
    assert world.rollouts.get(rollout_id).state.terminal
