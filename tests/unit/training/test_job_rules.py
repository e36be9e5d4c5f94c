"""Early stopping, evaluation metrics, resource checks and progress lines: the pure rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import InvalidJobSpecError
from training.capacity import (
    ClusterCapacity,
    NodeCapacity,
    plan_placement,
    wait_for_placement,
    waiting_note,
)
from training.early_stopping import EarlyStopping
from training.errors import ResourcesUnavailableError
from training.evaluation import classification_metrics, regression_metrics
from training.preflight import check_data
from training.schemas import ResourcesSpec
from training.spec import parse_job_spec
from training.tracking import epoch_metrics, flat_params, progress_line


def test_early_stopping_waits_patience_epochs_without_a_min_delta_improvement() -> None:
    rule = EarlyStopping(mode="min", patience=2, min_delta=0.01)
    verdicts = [(rule.update(value, epoch), rule.should_stop)
                for epoch, value in enumerate([1.0, 0.95, 0.945, 0.941, 0.9], start=1)]
    # 0.945 and 0.941 beat 0.95 by less than min_delta: two flat epochs stop the run.
    assert verdicts == [(True, False), (True, False), (False, False), (False, True), (True, False)]
    assert rule.best == 0.9 and rule.best_epoch == 5


def test_early_stopping_in_max_mode_and_without_patience() -> None:
    rule = EarlyStopping(mode="max", patience=1)
    assert rule.update(0.5, 1) and not rule.update(0.5, 2) and rule.should_stop
    never = EarlyStopping(mode="min")
    for epoch in range(1, 20):
        never.update(1.0, epoch)
    assert not never.should_stop and never.best_epoch == 1


def test_a_nan_metric_is_never_an_improvement_and_state_round_trips() -> None:
    rule = EarlyStopping(mode="min", patience=3)
    rule.update(1.0, 1)
    assert not rule.update(math.nan, 2)
    copy = EarlyStopping.from_state(rule.state_dict())
    assert copy == rule and copy.epochs_without_improvement == 1
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_binary_classification_metrics() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.7, 0.8, 0.4])
    metrics = classification_metrics(y, np.column_stack([1 - p1, p1]))
    # predicted [0, 1, 1, 1, 0]: TP 2, FP 1, FN 1; AUC: 5 of 6 pairs ordered right.
    assert metrics == pytest.approx({"accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3,
                                     "f1": 2 / 3, "roc_auc": 5 / 6})


def test_multiclass_metrics_are_macro_averages_and_auc_needs_every_class() -> None:
    y = np.array([0, 1, 2, 2])
    probabilities = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3
    metrics = classification_metrics(y, probabilities)
    assert metrics["accuracy"] == 0.75 and metrics["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert "roc_auc" in metrics
    assert "roc_auc" not in classification_metrics(np.array([0, 1, 1, 0]), probabilities)


def test_regression_metrics() -> None:
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert metrics == pytest.approx({"mae": 2 / 3, "rmse": math.sqrt(4 / 3), "r2": 1 - 4 / 2})


def cluster(*nodes: tuple[dict, dict, dict]) -> ClusterCapacity:
    """Nodes as (total, free, held by Serve)."""
    return ClusterCapacity("http://head:8265", tuple(
        NodeCapacity(f"n{i}", total, free, serving) for i, (total, free, serving) in enumerate(nodes)))


NODES = cluster(({"CPU": 4.0}, {"CPU": 4.0}, {}), ({"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}, {}))
# The issue's 2-core machine: the platform's replicas hold 0.3 CPU.
LAPTOP = cluster(({"CPU": 2.0}, {"CPU": 1.7}, {"CPU": 0.3}))


@pytest.mark.parametrize(("resources", "field", "words"), [
    ({"num_workers": 2, "use_gpu": True}, "resources.num_workers", "asks 2 GPU"),
    ({"num_workers": 1, "use_gpu": True, "gpus_per_worker": 2}, "resources.gpus_per_worker",
     "each worker asks 2 GPU"),
    ({"num_workers": 4, "cpus_per_worker": 2}, "resources.num_workers",
     "asks 8 CPU for its workers (num_workers 4 x cpus_per_worker 2)"),
    ({"num_workers": 1, "cpus_per_worker": 5}, "resources.cpus_per_worker", "to at most 4"),
    ({"num_workers": 1, "use_gpu": True, "cpus_per_worker": 3}, "resources.num_workers",
     "at once"),
    ({"num_workers": 1, "memory_per_worker_gb": 64}, "resources.memory_per_worker_gb", "64 GB"),
])
def test_workers_the_cluster_cannot_place_are_refused(resources: dict, field: str, words: str) -> None:
    nodes = cluster(({"CPU": 4.0, "memory": 8e9}, {"CPU": 4.0, "memory": 8e9}, {}),
                    ({"CPU": 2.0, "GPU": 1.0, "memory": 8e9}, {"CPU": 2.0, "GPU": 1.0}, {}))
    with pytest.raises(InvalidJobSpecError) as caught:
        plan_placement(ResourcesSpec(**resources), nodes)
    assert caught.value.detail["field"] == field and words in caught.value.message, caught.value.message


def test_the_issues_laptop_refuses_two_whole_cpu_workers_with_the_figures() -> None:
    with pytest.raises(InvalidJobSpecError) as caught:
        plan_placement(ResourcesSpec(num_workers=2), LAPTOP)
    assert caught.value.message == (
        "resources.num_workers: the job asks 2 CPU for its workers (num_workers 2 x "
        "cpus_per_worker 1); the cluster at http://head:8265 has 2 CPU, of which 0.3 are held "
        "by Serve replicas; lower resources.cpus_per_worker to 0.8 or resources.num_workers "
        "to 1, set num_workers: auto, or add a node")
    # What the message suggests does fit.
    assert plan_placement(ResourcesSpec(num_workers=2, cpus_per_worker=0.8), LAPTOP).fits_now
    assert plan_placement(ResourcesSpec(num_workers=1), LAPTOP).fits_now


def test_no_gpus_at_all_names_use_gpu() -> None:
    with pytest.raises(InvalidJobSpecError, match=r"resources.use_gpu: .* has 0 GPU"):
        plan_placement(ResourcesSpec(use_gpu=True), cluster(({"CPU": 8.0}, {"CPU": 8.0}, {})))
    assert plan_placement(ResourcesSpec(num_workers=3, cpus_per_worker=2), NODES).num_workers == 3


def test_auto_takes_the_most_workers_the_cluster_can_ever_hold_up_to_max_workers() -> None:
    assert plan_placement(ResourcesSpec(num_workers="auto"), LAPTOP).num_workers == 1
    assert plan_placement(ResourcesSpec(num_workers="auto", cpus_per_worker=0.5), LAPTOP).num_workers == 3
    assert plan_placement(ResourcesSpec(num_workers="auto", max_workers=2, cpus_per_worker=0.5),
                          LAPTOP).num_workers == 2
    # Busy (another job holds a CPU) does not shrink auto: the job waits for its workers.
    busy = cluster(({"CPU": 2.0}, {"CPU": 0.7}, {"CPU": 0.3}))
    placement = plan_placement(ResourcesSpec(num_workers="auto", max_workers=2, cpus_per_worker=0.5), busy)
    assert placement.num_workers == 2 and not placement.fits_now
    assert placement.needs == "2 workers x 0.5 CPU" and placement.free == "0.7 CPU"
    with pytest.raises(InvalidJobSpecError, match="resources.cpus_per_worker: each worker asks 2 CPU"):
        plan_placement(ResourcesSpec(num_workers="auto", cpus_per_worker=2), LAPTOP)


def test_workers_are_placed_whole_on_nodes() -> None:
    # 3 CPU free in all, but 1.5 on each node: two 1-CPU workers fit, three do not.
    split = cluster(({"CPU": 1.5}, {"CPU": 1.5}, {}), ({"CPU": 1.5}, {"CPU": 1.5}, {}))
    assert plan_placement(ResourcesSpec(num_workers=2), split).fits_now
    with pytest.raises(InvalidJobSpecError, match="num_workers to 2"):
        plan_placement(ResourcesSpec(num_workers=3), split)


# Three workers of 2 CPU and the head, as on a small cluster; `trainer` labels two of them.
LABELLED = cluster(({"CPU": 2.0}, {"CPU": 2.0}, {}),
                   ({"CPU": 2.0, "trainer": 1.0}, {"CPU": 2.0, "trainer": 1.0}, {}),
                   ({"CPU": 2.0, "trainer": 1.0}, {"CPU": 0.5, "trainer": 1.0}, {}),
                   ({"CPU": 2.0}, {"CPU": 2.0}, {}))


@pytest.mark.parametrize(("strategy", "ever", "now"), [
    ("PACK", 8, 6), ("SPREAD", 8, 6), ("STRICT_SPREAD", 4, 3), ("STRICT_PACK", 2, 2)])
def test_the_placement_strategy_decides_how_many_workers_fit(strategy: str, ever: int,
                                                              now: int) -> None:
    def placed(workers: int) -> bool:
        return plan_placement(ResourcesSpec(num_workers=workers, placement_strategy=strategy),
                              LABELLED).fits_now

    assert placed(now) and (now == ever or not placed(now + 1))
    assert plan_placement(ResourcesSpec(num_workers=ever, placement_strategy=strategy),
                          LABELLED).num_workers == ever
    with pytest.raises(InvalidJobSpecError) as caught:
        plan_placement(ResourcesSpec(num_workers=ever + 1, placement_strategy=strategy), LABELLED)
    field = "resources.placement_strategy" if strategy.startswith("STRICT") else "resources.num_workers"
    assert caught.value.detail["field"] == field, caught.value.message
    if strategy == "STRICT_SPREAD":
        assert caught.value.message == (
            "resources.placement_strategy: STRICT_SPREAD puts every worker on its own node, and "
            "the cluster at http://head:8265 can hold 4 of the 5 that way beside its Serve "
            "replicas; lower resources.num_workers to 4, use SPREAD, or add a node")


def test_custom_resources_keep_workers_on_the_nodes_that_offer_them() -> None:
    labelled = ResourcesSpec(num_workers=3, custom_per_worker={"trainer": 0.5})
    assert labelled.worker_bundle == {"CPU": 1.0, "trainer": 0.5}
    # Two fit on the labelled node with 2 CPU free; the other has 0.5 free, the rest no label.
    assert not plan_placement(labelled, LABELLED).fits_now
    assert plan_placement(labelled.model_copy(update={"num_workers": 2}), LABELLED).fits_now
    assert plan_placement(ResourcesSpec(num_workers=4, custom_per_worker={"trainer": 0.5}),
                          LABELLED).num_workers == 4
    with pytest.raises(InvalidJobSpecError, match="resources.num_workers"):
        plan_placement(ResourcesSpec(num_workers=5, custom_per_worker={"trainer": 0.5}), LABELLED)
    with pytest.raises(InvalidJobSpecError) as caught:
        plan_placement(ResourcesSpec(custom_per_worker={"gpu-a100": 1}), LABELLED)
    assert caught.value.detail["field"] == "resources.custom_per_worker"
    assert "offers that much 'gpu-a100' (custom resources there: trainer)" in caught.value.message
    # What Serve's replicas hold of a label does not come back to jobs.
    held = cluster(({"CPU": 2.0, "trainer": 1.0}, {"CPU": 2.0, "trainer": 0.2}, {"trainer": 0.8}))
    with pytest.raises(InvalidJobSpecError, match="resources.custom_per_worker"):
        plan_placement(ResourcesSpec(custom_per_worker={"trainer": 0.5}), held)


def test_ray_own_resources_are_not_custom_and_failures_are_bounded() -> None:
    with pytest.raises(ValueError, match="CPU are set with cpus_per_worker"):
        ResourcesSpec(custom_per_worker={"CPU": 1})
    with pytest.raises(ValueError, match="placement_strategy"):
        ResourcesSpec(placement_strategy="SCATTER")
    with pytest.raises(ValueError, match="max_failures"):
        ResourcesSpec(max_failures=101)
    assert ResourcesSpec().max_failures == 0 and ResourcesSpec().placement_strategy == "PACK"


def test_a_busy_cluster_makes_the_job_wait_then_go_or_time_out() -> None:
    clock = FakeClock()
    frees = iter([0.7, 0.7, 0.7, 1.7])
    plan = lambda: plan_placement(ResourcesSpec(num_workers=1),  # noqa: E731
                                  cluster(({"CPU": 2.0}, {"CPU": next(frees)}, {"CPU": 0.3})))
    lines: list[str] = []
    placement, left = wait_for_placement(plan, 60, lines.append, poll_s=2, clock=clock,
                                         sleep=clock.sleep)
    assert placement.fits_now and left == 54
    assert lines == ["waiting for resources (needs 1 worker x 1 CPU, free 0.7 CPU); the job fails "
                     "if they are not free within 60 s (resources.placement_timeout_s)",
                     "resources free after 6 s: starting 1 worker x 1 CPU"]
    assert waiting_note("data …\n" + lines[0]) == "waiting for resources (needs 1 worker x 1 CPU, free 0.7 CPU)"
    assert waiting_note("\n".join(lines)) is None and waiting_note("epoch 1/2") is None

    held = cluster(({"CPU": 2.0}, {"CPU": 0.7}, {"CPU": 0.3}))
    with pytest.raises(ResourcesUnavailableError) as caught:
        wait_for_placement(lambda: plan_placement(ResourcesSpec(num_workers=1), held), 5,
                           lines.append, poll_s=2, clock=clock, sleep=clock.sleep)
    assert caught.value.detail["field"] == "resources.placement_timeout_s"
    assert "(1 worker x 1 CPU) could not be placed within 5 s" in caught.value.message
    assert "2 CPU, of which 0.3 are held by Serve replicas and 1 by other work" in caught.value.message


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_cnn_image_must_fit_the_files_feature_columns(tmp_path) -> None:
    path = tmp_path / "pixels.csv"
    path.write_text("p0,p1,p2,p3,p4,p5,label\n" + "0,1,2,3,4,5,1\n" * 3)
    spec = parse_job_spec({"experiment": {"name": "x"},
                           "model": {"architecture": "cnn_classifier", "image_shape": [1, 2, 2]},
                           "data": {"path": str(path), "target": "label"}})
    with pytest.raises(InvalidJobSpecError, match=r"model.image_shape: \[1, 2, 2\] holds 4 .* 6 features"):
        check_data(spec)
    check_data(spec.model_copy(update={"model": spec.model.model_copy(update={"image_shape": (1, 2, 3)})}))


def test_data_a_submitter_cannot_read_in_time_fails_the_submit_saying_so(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled mount held `train submit` for good: the job's setup deadline bounds its
    own read, but nothing bounded the submitter's."""
    import threading

    from training import preflight
    from training.errors import TrainingError

    path = tmp_path / "rows.csv"
    path.write_text("a,b,label\n1,2,0\n")
    spec = parse_job_spec({"experiment": {"name": "x"}, "model": {"architecture": "mlp_classifier"},
                           "data": {"path": str(path), "target": "label"}})
    preflight.check_data_within(spec, timeout_s=30)  # read in time: nothing said
    with pytest.raises(InvalidJobSpecError, match="nope"):  # its own errors, as they are
        preflight.check_data_within(spec.model_copy(update={"data": spec.data.model_copy(
            update={"target": "nope"})}), timeout_s=30)
    stalled = threading.Event()
    monkeypatch.setattr(preflight, "check_columns", lambda data: stalled.wait(60))
    try:
        with pytest.raises(TrainingError, match=r"rows.csv took longer than 0.2 s") as raised:
            preflight.check_data_within(spec, timeout_s=0.2)
        assert raised.value.detail["field"] == "data"
    finally:
        stalled.set()


def test_progress_lines_and_tracked_values() -> None:
    values = epoch_metrics({"epoch": 3, "train_loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.9,
                            "samples_per_s": 12345.6, "stopped_early": 1.0, "note": "x",
                            "bad": float("nan")})
    assert "epoch" not in values and "note" not in values and "bad" not in values
    values["checkpoint_epoch"] = 3.0
    line = progress_line(3, 20, values)
    assert line.startswith("epoch  3/20  train_loss 0.5000  val_loss 0.2500  val_accuracy 0.9000")
    assert "12,346 samples/s" in line and "[checkpoint]" in line and "stopping early" in line


def test_the_spec_becomes_flat_run_params() -> None:
    spec = parse_job_spec({"experiment": {"name": "x", "tags": {"a": "b"}},
                           "model": {"architecture": "mlp_classifier"}, "data": {"dataset": "wine"}})
    params = flat_params(spec)
    assert params["hyperparameters.learning_rate"] == 1e-3
    assert params["model.hidden_sizes"] == [64, 64] and params["data.dataset"] == "wine"
    assert not any(key.startswith("experiment") for key in params)


@pytest.mark.parametrize(("stall", "most", "warned"), [
    (None, None, True), (600.0, None, False), (None, 3600.0, False), (600.0, 3600.0, False)])
def test_a_training_nothing_bounds_is_said_at_submission(stall, most, warned) -> None:
    """Both limits null is an explicit choice: a stuck worker then holds the job and its
    workers until someone stops it, so submitting says so (and how to bound it)."""
    from training.submission import unwatched_training

    spec = parse_job_spec({"experiment": {"name": "x"}, "model": {"architecture": "mlp_classifier"},
                           "data": {"path": "rows.csv", "target": "label"},
                           "resources": {"stall_timeout_s": stall, "max_run_time_s": most}})
    said = unwatched_training(spec)
    assert (said is not None) == warned
    if warned:
        assert "nothing stops a training that hangs" in said and "modelplane train stop" in said
