"""The "evaluate" stage: real ONNX models scored by ONNX Runtime on held-out rows, gates,
and the paired tests checked against independent references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError
from scipy import stats

from control_plane.errors import InvalidInputError
from control_plane.pipelines.evaluation import (
    EvaluationGates,
    EvaluationReport,
    evaluate,
    mcnemar_test,
    paired_bootstrap,
)


def linear_model(weights: np.ndarray, bias: np.ndarray, *, softmax: bool) -> bytes:
    """``x @ W + b`` (then softmax for a classifier) taking ``input``, as training exports."""
    n_features, n_outputs = weights.shape
    output = "probabilities" if softmax else "prediction"
    nodes = [helper.make_node("MatMul", ["input", "W"], ["raw"]),
             helper.make_node("Add", ["raw", "b"], ["logits" if softmax else output])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output], axis=1))
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", n_outputs])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "W"),
                     numpy_helper.from_array(bias.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def manifest(task: str, n_features: int, n_outputs: int, labels: list[str] | None = None) -> dict:
    output = "probabilities" if task == "classification" else "prediction"
    return {"signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, n_features]}],
                          "outputs": [{"name": output, "dtype": "float32", "shape": [None, n_outputs]}]},
            "task": task, "class_labels": labels}


@pytest.fixture(scope="module")
def cancer() -> dict:
    """Breast cancer, standardised, split; logistic regressions on all and on few features."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x = (data.data - data.data.mean(axis=0)) / data.data.std(axis=0)
    x_train, x_test, y_train, y_test = train_test_split(x, data.target, test_size=0.4,
                                                        random_state=0, stratify=data.target)

    def fitted(columns: list[int]) -> tuple[bytes, LogisticRegression]:
        model = LogisticRegression(max_iter=1000).fit(x_train[:, columns], y_train)
        weights = np.zeros((x.shape[1], 2))
        weights[columns, 1] = model.coef_[0]
        return linear_model(weights, np.array([0.0, model.intercept_[0]]), softmax=True), model

    strong, strong_sk = fitted(list(range(30)))
    weak, weak_sk = fitted([1])  # mean texture alone
    return {"strong": strong, "weak": weak, "x": x_test, "y": y_test,
            "strong_sk": strong_sk, "weak_sk": weak_sk,
            "manifest": manifest("classification", 30, 2, [str(n) for n in data.target_names])}


def test_a_better_candidate_passes_with_its_metrics_and_mcnemar(cancer: dict) -> None:
    gates = EvaluationGates(min_accuracy=0.9, min_improvement=0.05, require_significance=True)
    report = evaluate(cancer["strong"], cancer["weak"], cancer["x"], cancer["y"], cancer["manifest"], gates)
    assert report.passed, report.reason
    assert report.reason == "" and report.metric == "accuracy" and report.rows == len(cancer["y"])
    # The metrics are sklearn's own on the same rows.
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    x_all = cancer["x"]
    for side, model in (("candidate", cancer["strong_sk"]), ("champion", cancer["weak_sk"])):
        columns = list(range(30)) if side == "candidate" else [1]
        proba = model.predict_proba(x_all[:, columns])
        metrics = getattr(report, side)
        assert metrics["accuracy"] == pytest.approx(accuracy_score(cancer["y"], proba.argmax(1)))
        assert metrics["log_loss"] == pytest.approx(log_loss(cancer["y"], proba), rel=1e-4)
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(cancer["y"], proba[:, 1]), abs=1e-4)
    test = report.comparison
    assert test is not None and test.test == "mcnemar_chi2" and test.significant
    assert test.difference == pytest.approx(report.candidate["accuracy"] - report.champion["accuracy"])
    assert test.ci_low < test.difference < test.ci_high and test.ci_low > 0
    assert [c.name for c in report.checks] == ["min_accuracy", "min_improvement"]


def test_a_worse_candidate_fails_naming_both_accuracies(cancer: dict) -> None:
    gates = EvaluationGates(min_improvement=0.01)
    report = evaluate(cancer["weak"], cancer["strong"], cancer["x"], cancer["y"], cancer["manifest"], gates)
    assert not report.passed
    cand, champ = report.candidate["accuracy"], report.champion["accuracy"]
    assert report.reason == (f"candidate accuracy {cand:.4g} is not better than champion "
                             f"{champ:.4g} by 0.01")
    assert report.comparison is not None and report.comparison.improvement < 0
    regression = evaluate(cancer["weak"], cancer["strong"], cancer["x"], cancer["y"],
                          cancer["manifest"], {"max_regression": 0.02})
    assert regression.reason.startswith(f"candidate accuracy {cand:.4g} is worse than champion "
                                        f"{champ:.4g} by ")
    assert regression.reason.endswith("more than max_regression 0.02")


def test_an_equal_candidate_is_no_better_and_no_worse(cancer: dict, tmp_path: Path) -> None:
    (tmp_path / "champion.onnx").write_bytes(cancer["strong"])
    args = (cancer["strong"], tmp_path / "champion.onnx", cancer["x"], cancer["y"], cancer["manifest"])
    report = evaluate(*args, {"max_regression": 0.0})
    assert report.passed
    test = report.comparison
    assert test is not None and test.test == "mcnemar_exact" and test.p_value == 1.0
    assert test.difference == 0 and test.candidate_only_correct == test.champion_only_correct == 0
    assert test.ci_low < 0 < test.ci_high  # Agresti-Min: no difference seen is not none shown
    assert not evaluate(*args, {"min_improvement": 0.01}).passed
    # Non-inferiority by the interval: 0.005 is more regression than 228 rows can rule out.
    strict = evaluate(*args, {"max_regression": 0.005, "require_significance": True})
    assert "interval allows a regression of" in strict.reason
    assert evaluate(*args, {"max_regression": 0.05, "require_significance": True}).passed


def test_no_champion_means_thresholds_only(cancer: dict) -> None:
    report = evaluate(cancer["strong"], None, cancer["x"], cancer["y"], cancer["manifest"],
                      {"min_accuracy": 0.9, "min_roc_auc": 0.95, "min_improvement": 0.01})
    assert report.passed and report.champion is None and report.comparison is None
    assert report.note == "no champion: the candidate is held to the absolute thresholds only"
    failing = evaluate(cancer["weak"], None, cancer["x"], cancer["y"], cancer["manifest"],
                       {"min_accuracy": 0.9})
    accuracy = failing.candidate["accuracy"]
    assert failing.reason == f"candidate accuracy {accuracy:.4g} is below min_accuracy 0.9"
    assert EvaluationReport.model_validate_json(failing.model_dump_json()) == failing


def test_labels_map_through_class_labels(cancer: dict) -> None:
    labels = np.array(cancer["manifest"]["class_labels"])[cancer["y"]]
    by_label = evaluate(cancer["strong"], None, cancer["x"], labels, cancer["manifest"], {})
    by_index = evaluate(cancer["strong"], None, cancer["x"], cancer["y"], cancer["manifest"], {})
    assert by_label.candidate == by_index.candidate
    with pytest.raises(InvalidInputError, match=r"labels \['cyst'\] that are not among class_labels"):
        evaluate(cancer["strong"], None, cancer["x"], np.array(["cyst"] * len(labels)),
                 cancer["manifest"], {})


def test_classes_that_are_numbers_are_labels_not_indices(cancer: dict) -> None:
    """Training lists a label column of 1 and 2 as classes "1" and "2" (indices 0 and 1):
    held-out rows labelled 1 and 2 were read as indices, scoring a good model as a bad
    one and a model always wrong as a perfect one."""
    numbered = {**cancer["manifest"], "class_labels": ["1", "2"]}
    by_index = evaluate(cancer["strong"], None, cancer["x"], cancer["y"], cancer["manifest"], {})
    for labels in (cancer["y"] + 1, (cancer["y"] + 1).astype(np.float64)):
        by_number = evaluate(cancer["strong"], None, cancer["x"], labels, numbered,
                             {"min_accuracy": 0.9})
        assert by_number.passed, by_number.reason
        assert by_number.candidate == by_index.candidate
    with pytest.raises(InvalidInputError, match=r"labels \['3'\] that are not among"):
        evaluate(cancer["strong"], None, cancer["x"], np.full(len(cancer["y"]), 3), numbered, {})


def _named(document: dict, names: list[str], labels: list[str] | None = None) -> dict:
    return {**document, "feature_names": names,
            "class_labels": labels if labels is not None else document["class_labels"]}


def test_the_champion_reads_its_own_columns_and_answers_in_its_own_classes(
        cancer: dict) -> None:
    """The rows are in the candidate's column order and its class indices: a champion
    trained on the same data with its columns (or classes) in another order read other
    features, or answered in other indices, and scored badly, so any candidate beat it."""
    names = [f"f{i}" for i in range(30)]
    candidate = _named(cancer["manifest"], names)
    model = onnx.load_from_string(cancer["strong"])
    weights = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W"))
    bias = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b"))
    reversed_columns = linear_model(weights[::-1], bias, softmax=True)
    swapped_classes = linear_model(weights[:, ::-1], bias[::-1], softmax=True)
    labels = cancer["manifest"]["class_labels"]
    for champion, champion_manifest in (
            (reversed_columns, _named(cancer["manifest"], names[::-1])),
            (swapped_classes, _named(cancer["manifest"], names, labels[::-1]))):
        report = evaluate(cancer["strong"], champion, cancer["x"], cancer["y"], candidate,
                          {"max_regression": 0.0}, champion_manifest=champion_manifest)
        assert report.passed, report.reason
        assert report.champion == pytest.approx(report.candidate)
        assert report.comparison is not None and report.comparison.difference == 0
    # Classes named by position on one side (a label column of 0 and 1) are the other's
    # classes in order.
    report = evaluate(cancer["strong"], cancer["strong"], cancer["x"], cancer["y"], candidate,
                      {"max_regression": 0.0},
                      champion_manifest=_named(cancer["manifest"], names, ["0", "1"]))
    assert report.passed and report.champion == pytest.approx(report.candidate)
    # A champion of other columns or other classes cannot be scored on these rows: the
    # margin over it is unknown, and the gate fails saying so.
    for champion_manifest, why in (
            (_named(cancer["manifest"], [*names[:29], "age"]), "reads features the candidate does not (['age'])"),
            (_named(cancer["manifest"], names, ["benign", "cyst"]), "its classes ['benign', 'cyst']")):
        report = evaluate(cancer["strong"], cancer["strong"], cancer["x"], cancer["y"], candidate,
                          {"max_regression": 0.0}, champion_manifest=champion_manifest)
        assert not report.passed and why in report.reason, report.reason
        assert report.champion is None and "evaluate.data_uri" in report.reason
        # Without a margin asked for, nothing is lost: the thresholds alone decide.
        alone = evaluate(cancer["strong"], cancer["strong"], cancer["x"], cancer["y"], candidate,
                         {"min_accuracy": 0.9}, champion_manifest=champion_manifest)
        assert alone.passed and why in alone.note and alone.champion is None


def test_gates_that_do_not_apply_fail_or_refuse(cancer: dict) -> None:
    report = evaluate(cancer["strong"], None, cancer["x"], cancer["y"], cancer["manifest"],
                      {"max_mae": 1.0})
    assert report.reason == ("max_mae is set but the candidate has no mae: it applies to "
                             "regression models, this one is classification")
    with pytest.raises(InvalidInputError, match="gates.metric mae does not apply to a classification"):
        evaluate(cancer["strong"], None, cancer["x"], cancer["y"], cancer["manifest"], {"metric": "mae"})
    with pytest.raises(ValidationError, match="set min_improvement or max_regression, not both"):
        EvaluationGates(min_improvement=0.01, max_regression=0.01)
    with pytest.raises(ValidationError, match=r"min_accuracy\n  Input should be less than or equal to 1"):
        EvaluationGates.model_validate({"min_accuracy": 90})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        EvaluationGates.model_validate({"min_acuracy": 0.9})


def _paired(b: int, c: int, both: int = 40, neither: int = 5) -> tuple[np.ndarray, np.ndarray]:
    candidate = np.array([1] * b + [0] * c + [1] * both + [0] * neither, dtype=bool)
    champion = np.array([0] * b + [1] * c + [1] * both + [0] * neither, dtype=bool)
    return candidate, champion


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (3, 9), (12, 12), (2, 20), (10, 14)])
def test_mcnemar_exact_matches_scipys_binomial_test(b: int, c: int) -> None:
    test = mcnemar_test(*_paired(b, c))
    assert test.test == "mcnemar_exact"
    assert test.candidate_only_correct == b and test.champion_only_correct == c
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert test.p_value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("b", "c"), [(13, 12), (30, 12), (5, 40), (200, 170)])
def test_mcnemar_chi_square_matches_an_independent_computation(b: int, c: int) -> None:
    test = mcnemar_test(*_paired(b, c))
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    assert test.test == "mcnemar_chi2" and test.statistic == pytest.approx(statistic)
    assert test.p_value == pytest.approx(stats.chi2.sf(statistic, df=1), rel=1e-10)
    n = b + c + 45
    assert test.difference == pytest.approx((b - c) / n)
    assert test.significant == (test.p_value < 0.05)


def test_agresti_min_interval_covers_the_accuracy_difference() -> None:
    rng = np.random.default_rng(7)
    covered, trials, n = 0, 400, 200
    # Correlated correctness: the champion right on 80% of rows, the candidate on 85%.
    for _ in range(trials):
        u = rng.random(n)
        champion = u < 0.80
        candidate = (u < 0.75) | ((u >= 0.80) & (u < 0.90))
        test = mcnemar_test(candidate, champion)
        covered += test.ci_low <= 0.05 <= test.ci_high
    assert 0.92 <= covered / trials <= 0.99


def test_paired_bootstrap_interval_covers_the_true_difference() -> None:
    """Errors of two regressors on the same rows, correlated through a shared part: the
    true MAE difference is known, and the 95% interval must hold it about 95% of the time."""
    rng = np.random.default_rng(11)
    shared_sd, own_sd = 1.0, (0.5, 1.0)
    # |N(0, s)| has mean s * sqrt(2 / pi).
    scales = [math.sqrt(shared_sd ** 2 + own ** 2) for own in own_sd]
    true_difference = (scales[0] - scales[1]) * math.sqrt(2 / math.pi)
    trials, n, covered, rejected = 300, 150, 0, 0
    for trial in range(trials):
        shared = rng.normal(0, shared_sd, n)
        candidate = shared + rng.normal(0, own_sd[0], n)
        champion = shared + rng.normal(0, own_sd[1], n)
        test = paired_bootstrap(candidate, champion, metric="mae", n_resamples=500, seed=trial)
        covered += test.ci_low <= true_difference <= test.ci_high
        rejected += test.significant
    assert 0.91 <= covered / trials <= 0.98
    assert rejected / trials > 0.5  # a real difference of about 0.18 is usually found


def test_paired_bootstrap_is_seeded_and_calm_without_a_difference() -> None:
    rng = np.random.default_rng(3)
    errors = rng.normal(0, 1, 300)
    same = paired_bootstrap(errors, errors, n_resamples=400)
    assert same.difference == 0 and same.p_value == 1.0 and same.ci_low == same.ci_high == 0
    other = rng.normal(0, 1, 300)
    first = paired_bootstrap(errors, other, metric="rmse", n_resamples=400, seed=5)
    assert first == paired_bootstrap(errors, other, metric="rmse", n_resamples=400, seed=5)
    assert first.candidate == pytest.approx(math.sqrt(np.mean(errors ** 2)))
    # Exchangeable errors: over many seeds and draws, p < 0.05 about 5% of the time.
    false_alarms = sum(
        paired_bootstrap(rng.normal(0, 1, 100), rng.normal(0, 1, 100), n_resamples=300,
                         seed=s).significant for s in range(200))
    assert false_alarms / 200 <= 0.10


def test_regressors_compared_on_mae(tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = x[:300], x[300:], y[:300], y[300:]
    full = LinearRegression().fit(x_train, y_train)
    bmi = LinearRegression().fit(x_train[:, [2]], y_train)
    weights = np.zeros((10, 1))
    weights[[2], 0] = bmi.coef_
    good = linear_model(full.coef_[:, None], np.array([full.intercept_]), softmax=False)
    poor = linear_model(weights, np.array([bmi.intercept_]), softmax=False)
    spec = manifest("regression", 10, 1)
    report = evaluate(good, poor, x_test, y_test, spec,
                      {"max_mae": 60, "min_improvement": 1.0, "n_resamples": 1000})
    assert report.passed, report.reason
    assert report.metric == "mae"
    expected = np.mean(np.abs(full.predict(x_test) - y_test))
    assert report.candidate["mae"] == pytest.approx(expected, rel=1e-5)
    assert set(report.candidate) == {"mae", "rmse", "r2"}
    test = report.comparison
    assert test is not None and test.test == "paired_bootstrap" and test.n_resamples == 1000
    assert test.difference == pytest.approx(report.candidate["mae"] - report.champion["mae"])
    assert test.improvement == -test.difference and test.ci_high < 0
    worse = evaluate(poor, good, x_test, y_test, spec, {"max_regression": 1.0, "metric": "rmse"})
    cand, champ = worse.candidate["rmse"], worse.champion["rmse"]
    assert worse.reason.startswith(f"candidate rmse {cand:.4g} is worse than champion {champ:.4g} by ")
    threshold = evaluate(poor, None, x_test, y_test, spec, {"max_mae": 40})
    assert threshold.reason == f"candidate mae {threshold.candidate['mae']:.4g} is above max_mae 40"


def test_a_broken_model_file_is_named(tmp_path: Path, cancer: dict) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(InvalidInputError, match=f"cannot load the ONNX model {broken}"):
        evaluate(broken, None, cancer["x"], cancer["y"], cancer["manifest"], {})


def test_held_out_rows_from_a_loaded_table() -> None:
    from control_plane.pipelines.data_sources import load_dataset
    from control_plane.pipelines.evaluation import features_and_target

    table = load_dataset("sklearn://breast_cancer")
    names = [c for c in table.columns if c != "target"]
    spec = {**manifest("classification", 30, 2), "feature_names": names[::-1]}
    x, y = features_and_target(table, spec)
    assert x.shape == (569, 30) and np.array_equal(x[:, 0], table[names[-1]].to_numpy())
    assert np.array_equal(y, table["target"].to_numpy())
    with pytest.raises(InvalidInputError, match="the held-out data has no column 'label'"):
        features_and_target(table, spec, target="label")


def test_a_candidate_with_its_scaler_as_a_step_scores_on_raw_rows(cancer: dict, tmp_path: Path) -> None:
    """The same model as a graph on standardised rows behind builtin:standardize: given the
    raw rows, it scores exactly as the graph does on the standardised ones."""
    import json

    from control_plane.model_package import pack_folder

    mean, scale = np.full(30, 5.0), np.full(30, 3.0)
    folder = tmp_path / "scaled"
    folder.mkdir()
    graph = onnx.load_from_string(cancer["strong"])
    graph.graph.input[0].name = "standardized"
    for node in graph.graph.node:
        node.input[:] = ["standardized" if i == "input" else i for i in node.input]
    (folder / "model.onnx").write_bytes(graph.SerializeToString())
    (folder / "standardize.json").write_text(json.dumps(
        {"input": "input", "output": "standardized", "mean": mean.tolist(), "scale": scale.tolist()}))
    stepped = {**cancer["manifest"], "code": {
        "preprocess": "builtin:standardize", "graph_inputs": [
            {"name": "standardized", "dtype": "float32", "shape": [None, 30]}]}}
    raw = cancer["x"] * scale + mean
    report = evaluate(pack_folder(folder), cancer["strong"], raw, cancer["y"], stepped, {},
                      champion_manifest=cancer["manifest"])
    plain = evaluate(cancer["strong"], None, cancer["x"], cancer["y"], cancer["manifest"], {})
    assert report.candidate["accuracy"] == pytest.approx(plain.candidate["accuracy"])
    python_kind = {**cancer["manifest"], "kind": "python", "code": {"entrypoint": "model:Model"}}
    with pytest.raises(InvalidInputError, match="this version is python with code of its own"):
        evaluate(pack_folder(folder), None, raw, cancer["y"], python_kind, {})


def _memory_bomb(n_features: int, n_outputs: int, elements: int) -> bytes:
    """A linear classifier that also fills a tensor of ``elements`` floats as it runs: a
    file of a few hundred bytes that asks for gigabytes."""
    nodes = [helper.make_node("MatMul", ["input", "W"], ["raw"]),
             helper.make_node("ConstantOfShape", ["shape"], ["filled"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("ReduceMax", ["filled"], ["one"], keepdims=0),
             helper.make_node("Mul", ["raw", "one"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "bomb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_outputs])],
        initializer=[numpy_helper.from_array(np.ones((n_features, n_outputs), np.float32), "W"),
                     numpy_helper.from_array(np.array([elements], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_candidate_is_scored_in_a_process_of_its_own_within_a_memory_bound(
        cancer: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scored in the control plane's process, a registrant's graph could ask for gigabytes
    and have the control plane (its API and every control loop) killed for memory."""
    from control_plane.pipelines.scoring import MEMORY_ENV, score_isolated

    gates = EvaluationGates(min_accuracy=0.9, min_improvement=0.05, require_significance=True)
    isolated = evaluate(cancer["strong"], cancer["weak"], cancer["x"], cancer["y"],
                        cancer["manifest"], gates, score=score_isolated)
    in_process = evaluate(cancer["strong"], cancer["weak"], cancer["x"], cancer["y"],
                          cancer["manifest"], gates)
    assert isolated.candidate == in_process.candidate and isolated.passed
    monkeypatch.setenv(MEMORY_ENV, "1024")
    monkeypatch.setattr("modelplane.settings._cached", None)  # read again, and put back after
    bomb = _memory_bomb(30, 2, elements=600_000_000)  # 2.4 GB of float32
    with pytest.raises(InvalidInputError, match="more than its 1024 MiB") as refused:
        evaluate(bomb, None, cancer["x"], cancer["y"], cancer["manifest"], gates,
                 score=score_isolated)
    assert refused.value.detail["field"] == "model"


def test_the_training_jobs_own_held_out_rows_come_as_labels(tmp_path: Path) -> None:
    """Without evaluate.data_uri the evaluate stage holds out the rows the job held out.
    Their classes come as labels, which the candidate's class_labels map to its indices:
    as training's indices, classes numbered 1 and 2 were read as labels 0 and 1."""
    from types import SimpleNamespace

    import yaml

    from control_plane.pipelines.evaluation import _truth
    from control_plane.pipelines.gates import EvaluateStage
    from control_plane.pipelines.spec import parse_pipeline_spec
    from control_plane.schemas import ModelManifest
    from training.data import load_dataset, split_dataset
    from training.schemas import JobSpec

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, 4))
    classes = np.where(rows[:, 0] > 0, 2, 1)
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b,c,d,target\n" + "\n".join(
        ",".join([*(f"{v:.4f}" for v in row), str(c)]) for row, c in zip(rows, classes, strict=True)))
    job = yaml.safe_load((Path(__file__).parents[3] / "examples" / "breast_cancer.yaml").read_text())
    job["data"] = {"path": str(csv), "target": "target", "validation_split": 0.25, "seed": 3}
    spec = parse_pipeline_spec({"name": "numbered", "training": {"job": job},
                                "deploy": {"endpoint": "numbered"}, "evaluate": {},
                                "data": {"uri": str(csv)}})
    parsed = JobSpec.model_validate(job)
    trained = load_dataset(parsed.data, parsed.task)
    split = split_dataset(trained, validation_split=0.25, seed=3)
    registered = {**manifest("classification", 4, 2, ["1", "2"]),
                  "lineage": {"dataset_digest": trained.digest}}
    features, truth, source = EvaluateStage._held_out(SimpleNamespace(spec=spec), registered)
    assert set(truth.tolist()) == {"1", "2"} and "held-out rows" in source
    candidate = ModelManifest.model_validate({**manifest("classification", 4, 2, ["1", "2"]),
                                              "feature_names": ["a", "b", "c", "d"]})
    assert np.array_equal(_truth(truth, candidate), split.y_val)
    assert np.array_equal(features, split.x_val)
    # With test rows (a job that stops early must keep some), those are the rows scored.
    tested = parse_pipeline_spec({**spec.model_dump(mode="json"), "training": {"job": {
        **job, "data": {**job["data"], "test_split": 0.2}}}})
    features, truth, source = EvaluateStage._held_out(SimpleNamespace(spec=tested), registered)
    kept = split_dataset(trained, validation_split=0.25, seed=3, test_split=0.2)
    assert kept.x_test is not None and "test rows (0.2 of the data, seed 3)" in source
    assert np.array_equal(features, kept.x_test)
    assert np.array_equal(_truth(truth, candidate), kept.y_test)

    # Rows appended since it trained: split again, the held-out rows would be others, many
    # of them rows it trained on. Refused, naming what to set.
    with csv.open("a") as appended:
        appended.write("\n0.1,0.2,0.3,0.4,1")
    with pytest.raises(InvalidInputError, match="changed since the candidate trained") as refused:
        EvaluateStage._held_out(SimpleNamespace(spec=spec), registered)
    assert refused.value.detail == {"field": "evaluate.data_uri"}


def test_the_training_jobs_own_rows_are_read_as_the_pipelines_read_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modelplane_home: Path) -> None:
    """Without evaluate.data_uri the control plane reads the job's whole data file itself:
    through training's reader it had no size bound (a file of tens of gigabytes had the
    control plane killed), no host check and followed redirects."""
    from types import SimpleNamespace

    import yaml

    from control_plane.pipelines.gates import EvaluateStage
    from control_plane.pipelines.spec import parse_pipeline_spec
    from modelplane.settings import reset_settings_cache

    monkeypatch.setenv("MODELPLANE_DATA_MAX_MB", "1")
    reset_settings_cache()
    big = tmp_path / "big.csv"
    big.write_text("a,b,target\n" + "1,2.5,0\n2,0.5,1\n" * 100_000)
    job = yaml.safe_load((Path(__file__).parents[3] / "examples" / "breast_cancer.yaml").read_text())
    job["data"] = {"path": str(big), "target": "target"}
    spec = parse_pipeline_spec({"name": "big", "training": {"job": job}, "evaluate": {},
                                "data": {"uri": str(big)}, "deploy": {"endpoint": "big"}})
    with pytest.raises(InvalidInputError, match="more than a pipeline reads"):
        EvaluateStage._held_out(SimpleNamespace(spec=spec), manifest("classification", 2, 2))
