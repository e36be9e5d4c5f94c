"""Early stopping, evaluation metrics, resource checks and progress lines: the pure rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import InvalidJobSpecError
from training.early_stopping import EarlyStopping
from training.evaluation import classification_metrics, regression_metrics
from training.preflight import check_data, check_resources
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


NODES = [{"CPU": 4.0}, {"CPU": 2.0, "GPU": 1.0}]


@pytest.mark.parametrize(("resources", "field", "words"), [
    ({"num_workers": 2, "use_gpu": True}, "resources.num_workers", "asks for 2 GPUs"),
    ({"num_workers": 1, "use_gpu": True, "gpus_per_worker": 2}, "resources.num_workers", "2 GPUs"),
    ({"num_workers": 4, "cpus_per_worker": 2}, "resources.num_workers", "8 CPUs"),
    ({"num_workers": 1, "cpus_per_worker": 5}, "resources.cpus_per_worker", "no node"),
    ({"num_workers": 1, "use_gpu": True, "cpus_per_worker": 3}, "resources.cpus_per_worker", "and 1 GPUs"),
])
def test_workers_the_cluster_cannot_place_are_refused(resources: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidJobSpecError) as caught:
        check_resources(ResourcesSpec(**resources), NODES, "http://head:8265")
    assert caught.value.detail["field"] == field and words in caught.value.message


def test_no_gpus_at_all_names_use_gpu() -> None:
    with pytest.raises(InvalidJobSpecError, match=r"resources.use_gpu: .* has 0"):
        check_resources(ResourcesSpec(use_gpu=True), [{"CPU": 8.0}], "here")
    check_resources(ResourcesSpec(num_workers=3, cpus_per_worker=2), NODES, "here")


def test_a_cnn_image_must_fit_the_files_feature_columns(tmp_path) -> None:
    path = tmp_path / "pixels.csv"
    path.write_text("p0,p1,p2,p3,p4,p5,label\n" + "0,1,2,3,4,5,1\n" * 3)
    spec = parse_job_spec({"experiment": {"name": "x"},
                           "model": {"architecture": "cnn_classifier", "image_shape": [1, 2, 2]},
                           "data": {"path": str(path), "target": "label"}})
    with pytest.raises(InvalidJobSpecError, match=r"model.image_shape: \[1, 2, 2\] holds 4 .* 6 features"):
        check_data(spec)
    check_data(spec.model_copy(update={"model": spec.model.model_copy(update={"image_shape": (1, 2, 3)})}))


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
