"""Job specs: the shipped examples load, and every bad field is named before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from training import InvalidJobSpecError, JobSpec, load_job_spec
from training.spec import dump_job_spec, parse_job_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))
JOB_EXAMPLES = [p for p in EXAMPLES if "experiment:" in p.read_text()]
BASE = {"experiment": {"name": "digits"}, "model": {"architecture": "mlp_classifier"},
        "data": {"dataset": "digits"}}


def spec_with(**sections: Any) -> dict[str, Any]:
    return {**BASE, **sections}


def error_for(raw: dict[str, Any]) -> InvalidJobSpecError:
    with pytest.raises(InvalidJobSpecError) as caught:
        parse_job_spec(raw)
    return caught.value


@pytest.mark.parametrize("path", JOB_EXAMPLES, ids=lambda p: p.name)
def test_every_example_spec_is_valid(path: Path) -> None:
    spec = load_job_spec(path)
    assert spec.data.dataset in {"digits", "breast_cancer", "wine", "diabetes", "reviews"}
    assert spec.registration.model_name


def test_examples_cover_the_three_jobs_the_issue_names() -> None:
    specs = [load_job_spec(p) for p in JOB_EXAMPLES]
    assert {(s.data.dataset, s.task) for s in specs} >= {
        ("digits", "classification"), ("breast_cancer", "classification"),
        ("diabetes", "regression")}
    assert any(s.model.architecture == "cnn_classifier" for s in specs)
    assert any(s.model.architecture == "text_classifier" for s in specs)


@pytest.mark.parametrize(("raw", "field", "words"), [
    (spec_with(data={"dataset": "iris2"}), "data.dataset", "unknown dataset 'iris2'"),
    (spec_with(hyperparameters={"learning_rate": -0.1}), "hyperparameters.learning_rate",
     "greater than 0 (got -0.1)"),
    (spec_with(hyperparameters={"learnin_rate": 0.1}), "hyperparameters.learnin_rate",
     "allowed here: batch_size, epochs, learning_rate"),
    (spec_with(data={"path": "x.csv"}), "data.target", "name the target column"),
    (spec_with(data={"dataset": "digits", "target": "y"}), "data.target", "fixed"),
    (spec_with(data={"dataset": "digits", "path": "x.csv"}), "data.dataset", "exactly one"),
    (spec_with(model={"architecture": "cnn_classifier"}), "model.image_shape", "[1, 8, 8]"),
    (spec_with(model={"architecture": "cnn_classifier", "image_shape": [1, 8, 8],
                      "kernel_size": 4}), "model.kernel_size", "odd"),
    (spec_with(model={"architecture": "mlp_regressor"}), "model.architecture",
     "regression model but digits is a classification dataset"),
    (spec_with(early_stopping={"metric": "val_mae"}), "early_stopping.metric", "val_accuracy"),
    (spec_with(resources={"gpus_per_worker": 1}), "resources.gpus_per_worker", "use_gpu"),
    (spec_with(resources={"num_workers": 0}), "resources.num_workers", "greater than or equal to 1"),
    (spec_with(data={"dataset": "digits", "validation_split": 1.5}), "data.validation_split", "less than 1"),
    (spec_with(hyperparameters={"scheduler": "cosin"}), "hyperparameters.scheduler.type", "cosine"),
    (spec_with(registration={"alias": "9bad"}), "registration.alias", "pattern"),
    ({"experiment": {"name": "x"}, "data": {"dataset": "digits"}}, "model", "missing"),
])
def test_a_bad_spec_names_the_field(raw: dict[str, Any], field: str, words: str) -> None:
    error = error_for(raw)
    assert error.detail["field"] == field
    assert f"{field}: " in error.message and words in error.message
    assert error.code == "invalid_job_spec" and error.http_status == 400


def test_every_problem_is_listed_not_just_the_first() -> None:
    error = error_for(spec_with(hyperparameters={"learning_rate": 0, "epochs": 0}))
    fields = [item["field"] for item in error.detail["errors"]]
    assert fields == ["hyperparameters.learning_rate", "hyperparameters.epochs"]


def test_yaml_errors_say_where(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("experiment:\n  name: [unclosed\nmodel: {}\n")
    with pytest.raises(InvalidJobSpecError, match=r"not valid YAML at line \d+, column \d+"):
        load_job_spec(path)
    with pytest.raises(InvalidJobSpecError, match="cannot read the job spec"):
        load_job_spec(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(InvalidJobSpecError, match="must be a mapping"):
        load_job_spec(path)


def test_local_paths_are_relative_to_the_spec_file(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "job.yaml").write_text(yaml.safe_dump({
        "experiment": {"name": "t"}, "model": {"architecture": "mlp_regressor"},
        "data": {"path": "data/table.csv", "target": "y"},
        "checkpoint": {"storage_path": "ckpt", "resume_from": "../old/run"},
    }))
    spec = load_job_spec(folder / "job.yaml")
    assert spec.data.path == str(folder / "data" / "table.csv")
    assert spec.checkpoint.storage_path == str(folder / "ckpt")
    assert Path(spec.checkpoint.resume_from or "") == folder / ".." / "old" / "run"


def test_a_run_id_and_a_remote_uri_are_left_as_they_are(tmp_path: Path) -> None:
    run_id = "0123456789abcdef0123456789abcdef"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec_with(
        checkpoint={"resume_from": run_id, "storage_path": "s3://bucket/ckpt"})))
    spec = load_job_spec(tmp_path / "job.yaml")
    assert spec.checkpoint.resume_from == run_id
    assert spec.checkpoint.storage_path == "s3://bucket/ckpt"


def test_defaults_and_derived_settings() -> None:
    spec = parse_job_spec(spec_with(early_stopping={"metric": "val_accuracy"},
                                    resources={"use_gpu": True, "num_workers": 2}))
    assert spec.stopping_mode == "max"
    assert spec.resources.gpus == 1.0
    assert spec.model_name == "digits"
    assert spec.hyperparameters.scheduler.type == "none"


def test_the_dumped_spec_reads_back_the_same() -> None:
    spec = parse_job_spec(spec_with(hyperparameters={"scheduler": {"type": "step", "step_size": 3}}))
    again = JobSpec.model_validate(yaml.safe_load(dump_job_spec(spec)))
    assert again == spec


@pytest.mark.parametrize(("resources", "field", "words"), [
    ({"num_workers": "many"}, "resources.num_workers", "auto"),
    ({"num_workers": 2, "max_workers": 4}, "resources.max_workers", "only applies with num_workers: auto"),
    ({"placement_timeout_s": 0}, "resources.placement_timeout_s", "greater than 0"),
    ({"memory_per_worker_gb": -1}, "resources.memory_per_worker_gb", "greater than 0"),
])
def test_bad_resources_name_the_field(resources: dict[str, Any], field: str, words: str) -> None:
    error = error_for(spec_with(resources=resources))
    assert error.detail["field"] == field and words in error.message, error.message


def test_auto_workers_and_the_placement_wait_have_defaults() -> None:
    resources = parse_job_spec(spec_with(resources={"num_workers": "auto", "max_workers": 2,
                                                    "memory_per_worker_gb": 0.5})).resources
    assert resources.num_workers == "auto" and resources.max_workers == 2
    assert resources.placement_timeout_s == 600
    assert resources.worker_bundle == {"CPU": 1.0, "memory": 5e8}


def test_set_overrides_a_field_before_validation(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec_with(hyperparameters={"epochs": 30})))
    spec = load_job_spec(path, ["hyperparameters.epochs=2", "resources.num_workers=auto",
                                "model.hidden_sizes=[8]", "experiment.tags.owner=ci"])
    assert spec.hyperparameters.epochs == 2 and spec.resources.num_workers == "auto"
    assert spec.model.hidden_sizes == [8] and spec.experiment.tags == {"owner": "ci"}
    assert load_job_spec(path).hyperparameters.epochs == 30  # the file is left as it was
    with pytest.raises(InvalidJobSpecError, match="hyperparameters.epochs: .*greater than or equal to 1"):
        load_job_spec(path, ["hyperparameters.epochs=0"])
    with pytest.raises(InvalidJobSpecError, match="give section.field=value") as caught:
        load_job_spec(path, ["hyperparameters.epochs"])
    assert caught.value.detail["field"] == "--set"


def test_a_job_shipped_with_its_own_folder_applies_the_same_overrides(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train submit --working-dir` ships the user's file: the job's own command line
    carries the `--set`s, each one argument however it is spelled."""
    import shlex

    from training.job import main as job_main
    from training.submission import _entrypoint

    command = _entrypoint("jobs/my job.yaml", ["hyperparameters.epochs=2",
                                               "experiment.tags.note=a b; rm -rf /"])
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "training.job"]
    assert argv[3:] == ["--config", "jobs/my job.yaml", "--set", "hyperparameters.epochs=2",
                        "--set", "experiment.tags.note=a b; rm -rf /"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec_with(hyperparameters={"epochs": 30})))
    # The job reads them as `train run` does: a bad one is refused naming its field.
    assert job_main(["--config", str(path), "--set", "hyperparameters.epochs=0"]) != 0
    assert "hyperparameters.epochs" in capsys.readouterr().err


@pytest.mark.parametrize(("task", "restarts", "every"), [
    ("classification", 2, 20_000), ("regression", 0, 5), ("classification", 100, 1000),
    ("regression", 7, 100_000)])
def test_a_spec_asks_for_no_more_epochs_than_its_run_can_record(
        task: str, restarts: int, every: int) -> None:
    """Past a run's metric points the tracker refuses the epochs' figures, and the stall
    watch, which reads them, would stop the healthy job as stuck: such a spec is refused,
    naming the most epochs that fit, and that many are accepted."""
    from control_plane.schemas import MAX_RUN_METRIC_POINTS
    from training.schemas import RUN_POINTS_BESIDES_EPOCHS, epoch_metric_keys

    model = {"architecture": "mlp_regressor" if task == "regression" else "mlp_classifier"}
    data = {"dataset": "diabetes" if task == "regression" else "digits"}

    def spec(epochs: int) -> dict[str, Any]:
        return spec_with(model=model, data=data, hyperparameters={"epochs": epochs},
                         resources={"max_failures": restarts},
                         checkpoint={"every_n_epochs": every})

    error = error_for(spec(100_000))
    assert error.detail["field"] == "hyperparameters.epochs", error.message
    most = int(error.message.split("ask for at most ")[1].split(" epochs")[0].replace(",", ""))
    assert JobSpec.model_validate(spec(most)).hyperparameters.epochs == most
    assert error_for(spec(most + 1)).detail["field"] == "hyperparameters.epochs"
    # What the rule counts: each epoch's keys, once more for every epoch a restart repeats.
    per_epoch = len(epoch_metric_keys(task))
    logged = per_epoch * (most + restarts * min(every, most))
    assert logged <= MAX_RUN_METRIC_POINTS - RUN_POINTS_BESIDES_EPOCHS
    assert per_epoch * (most + 1 + restarts * min(every, most + 1)) > \
        MAX_RUN_METRIC_POINTS - RUN_POINTS_BESIDES_EPOCHS


def test_the_most_epochs_a_spec_takes_fit_a_classifiers_run() -> None:
    assert JobSpec.model_validate(spec_with(hyperparameters={"epochs": 100_000})).hyperparameters.epochs
