"""The "evaluate" stage: is the candidate good enough, and better than the champion?

:func:`evaluate` scores the candidate and the champion ONNX models on the same held-out
rows with ONNX Runtime, computes each one's metrics (accuracy, log loss and ROC AUC when
the model gives probabilities; MAE, RMSE and R² for regressors), holds the candidate to
the absolute thresholds of :class:`EvaluationGates`, and compares the two on the gated
metric with a paired test on those rows:

- accuracy: McNemar's test on the rows where exactly one model is right (exact binomial
  below :data:`MCNEMAR_EXACT_BELOW` such rows, chi-square with continuity correction
  above), with the Agresti-Min interval for the difference of paired proportions;
- MAE or RMSE: a paired bootstrap of the rows (fixed seed), percentile interval, and the
  p-value of "no difference" from the bootstrap distribution shifted to it.

The margin gate reads the point difference (``min_improvement``: better by at least;
``max_regression``: worse by at most); with ``require_significance`` it also needs the
test's evidence at ``alpha``. Without a champion (a model's first version) only the
absolute thresholds apply, and the report says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from statistics import NormalDist
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from control_plane.errors import InvalidInputError
from control_plane.schemas import ModelManifest, Wire

__all__ = [
    "EvaluationGates",
    "EvaluationReport",
    "GateCheck",
    "PairedTest",
    "evaluate",
    "features_and_target",
    "mcnemar_test",
    "paired_bootstrap",
    "score_model",
]

Metric = Literal["accuracy", "mae", "rmse"]
# Fewer discordant pairs than this: the exact binomial test (the chi-square approximation
# is poor there); the common rule of thumb.
MCNEMAR_EXACT_BELOW = 25
HIGHER_IS_BETTER = {"accuracy": True, "roc_auc": True, "log_loss": False, "mae": False,
                    "rmse": False, "r2": True}
_LOG_LOSS_EPS = 1e-15
# Bootstrap resamples drawn per block: bounds the index matrix's memory.
_BOOTSTRAP_BLOCK_CELLS = 2_000_000
ModelSource = str | os.PathLike[str] | bytes


class EvaluationGates(Wire):
    """What a candidate must reach, alone and against the champion; ``null`` switches a
    threshold off."""

    min_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    min_roc_auc: Annotated[float, Field(ge=0, le=1)] | None = None
    max_log_loss: Annotated[float, Field(gt=0)] | None = None
    max_mae: Annotated[float, Field(ge=0)] | None = None
    max_rmse: Annotated[float, Field(ge=0)] | None = None
    metric: Metric | None = Field(
        None, description="Metric compared with the champion (default: accuracy for "
                          "classifiers, mae for regressors).")
    min_improvement: Annotated[float, Field(ge=0)] | None = Field(
        None, description="The candidate must be better than the champion by at least this "
                          "(metric units: 0.01 is one point of accuracy).")
    max_regression: Annotated[float, Field(ge=0)] | None = Field(
        None, description="The candidate may be worse than the champion by at most this.")
    require_significance: bool = Field(
        False, description="With min_improvement: the improvement must also be significant at "
        "alpha. With max_regression: the interval must rule out a larger regression.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Level of the paired test; intervals "
                         "are 1 - alpha.")
    n_resamples: Annotated[int, Field(ge=100, le=100_000)] = Field(
        2000, description="Paired bootstrap resamples (regression metrics).")
    seed: int = Field(0, ge=0, description="Seed of the bootstrap.")

    @model_validator(mode="after")
    def _one_margin(self) -> EvaluationGates:
        if self.min_improvement is not None and self.max_regression is not None:
            raise ValueError("set min_improvement or max_regression, not both")
        if self.require_significance and self.min_improvement is None and self.max_regression is None:
            raise ValueError("require_significance needs min_improvement or max_regression")
        return self


class GateCheck(Wire):
    """One gate's outcome."""

    name: str = Field(description="min_accuracy … max_rmse, min_improvement, max_regression.")
    observed: float | None
    limit: float
    passed: bool
    message: str = ""


class PairedTest(Wire):
    """The candidate against the champion on the same rows, on one metric."""

    test: Literal["mcnemar_exact", "mcnemar_chi2", "paired_bootstrap"]
    metric: str
    candidate: float
    champion: float
    difference: float = Field(description="candidate - champion, in metric units.")
    improvement: float = Field(description="How much better the candidate is (difference, "
                               "sign turned for error metrics); negative: worse.")
    ci_low: float = Field(description="Interval of the difference at 1 - alpha.")
    ci_high: float
    confidence: float
    p_value: float = Field(description="Two-sided p-value of 'no difference'.")
    significant: bool
    statistic: float | None = Field(None, description="McNemar's chi-square (chi2 form).")
    candidate_only_correct: int | None = Field(None, description="McNemar: rows only the "
                                               "candidate gets right.")
    champion_only_correct: int | None = None
    n: int
    n_resamples: int | None = None
    seed: int | None = None


class EvaluationReport(Wire):
    """What :func:`evaluate` found; ``reason`` names the first failed gate."""

    passed: bool
    reason: str = ""
    task: str
    rows: int
    metric: str = Field(description="The metric compared with the champion.")
    candidate: dict[str, float]
    champion: dict[str, float] | None = None
    comparison: PairedTest | None = None
    checks: list[GateCheck]
    note: str = ""


def evaluate(candidate: ModelSource, champion: ModelSource | None, X: Any, y: Any,
             manifest: ModelManifest | Mapping[str, Any],
             gates: EvaluationGates | Mapping[str, Any], *,
             champion_manifest: ModelManifest | Mapping[str, Any] | None = None,
             score: Callable[..., dict[str, np.ndarray]] | None = None,
             champion_problem: str = "") -> EvaluationReport:
    """Score ``candidate`` (and ``champion``, when there is one) on ``X``/``y`` and gate it.

    ``candidate``/``champion`` are ONNX files (path) or bytes; ``X`` is rows x features
    (the model's single input) or a mapping of input name to array; ``y`` holds class
    indices or labels (``manifest.class_labels``) for classifiers, values for regressors.
    ``champion_manifest`` defaults to ``manifest`` (same signature). ``score`` runs a
    model (:func:`score_model` in this process by default; the evaluate stage passes
    :func:`~control_plane.pipelines.scoring.score_isolated`). ``champion_problem``: why the
    champion cannot be compared on these rows (treated as a champion with other columns).
    """
    score = score or score_model
    spec = ModelManifest.model_validate(manifest)
    rules = EvaluationGates.model_validate(gates)
    if spec.task not in ("classification", "regression"):
        raise InvalidInputError(f"manifest.task is {spec.task!r}; evaluation needs a "
                                "classification or regression model", detail={"field": "task"})
    metric = rules.metric or ("accuracy" if spec.task == "classification" else "mae")
    if (metric == "accuracy") != (spec.task == "classification"):
        raise InvalidInputError(f"gates.metric {metric} does not apply to a {spec.task} model",
                                detail={"field": "gates.metric"})
    truth = _truth(y, spec)
    cand = score(candidate, X, spec)
    cand_metrics = _metrics(spec.task, truth, cand)
    checks = _threshold_checks(rules, cand_metrics, spec.task)
    comparison, champ_metrics, note = None, None, ""
    if champion is None:
        note = "no champion: the candidate is held to the absolute thresholds only"
    else:
        champ_spec = ModelManifest.model_validate(champion_manifest) if champion_manifest else spec
        unlike = _unlike(spec, champ_spec) or champion_problem
        margin_gated = rules.min_improvement is not None or rules.max_regression is not None
        if unlike and margin_gated:
            # Its columns or classes are not the candidate's: scored on the candidate's rows
            # as they are, it read other features and answered in other classes' indices.
            checks.append(GateCheck(
                name="champion_comparable", observed=None, limit=0, passed=False,
                message=f"the champion cannot be compared on these rows: {unlike}; hold out "
                        "rows with both models' columns (evaluate.data_uri), or unset "
                        "min_improvement and max_regression"))
        elif unlike:
            note = (f"the champion is not compared: {unlike}; the candidate is held to the "
                    "absolute thresholds only")
        else:
            champ = _as_candidates(score(champion, in_champion_order(X, spec, champ_spec), champ_spec),
                                   spec, champ_spec)
            champ_metrics = _metrics(spec.task, truth, champ)
            comparison = _compare(metric, truth, cand, champ, rules)
            margin = _margin_check(comparison, rules)
            if margin is not None:
                checks.append(margin)
            else:
                note = ("no margin over the champion is gated (min_improvement and "
                        "max_regression unset)")
    failed = [check for check in checks if not check.passed]
    return EvaluationReport(
        passed=not failed, reason=failed[0].message if failed else "", task=spec.task,
        rows=len(truth), metric=metric, candidate=cand_metrics, champion=champ_metrics,
        comparison=comparison, checks=checks, note=note)


def features_and_target(table: Any, manifest: ModelManifest | Mapping[str, Any],
                        target: str = "target") -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` from a table (as :func:`~control_plane.pipelines.data_sources.load_dataset`
    reads it): the manifest's ``feature_names`` in order, and the ``target`` column."""
    spec = ModelManifest.model_validate(manifest)
    columns = [str(c) for c in table.columns]
    names = spec.feature_names or [c for c in columns if c != target]
    missing = [name for name in [*names, target] if name not in columns]
    if missing:
        raise InvalidInputError(f"the held-out data has no column {missing[0]!r} (the model "
                                f"takes {len(names)} features; target {target!r})",
                                detail={"field": "data"})
    inputs = spec.signature.inputs
    if len(inputs) == 1 and inputs[0].dtype == "string" and len(names) == 1:
        # A text model (one text per row): the column's strings, as clients send them.
        return table[names[0]].astype(str).to_numpy(dtype=object), table[target].to_numpy()
    return table[names].to_numpy(dtype=np.float64), table[target].to_numpy()


# ---------------------------------------------------------------- scoring


def score_model(model: ModelSource, X: Any, manifest: ModelManifest | Mapping[str, Any], *,
                threads: int = 0) -> dict[str, np.ndarray]:
    """Run the model with ONNX Runtime (CPU): ``{"predicted": ..., "probabilities": ...}``
    for a classifier (class indices; probabilities when an output is a score matrix),
    ``{"predicted": values}`` for a regressor."""
    import onnxruntime as ort

    spec = ModelManifest.model_validate(manifest)
    if spec.kind != "onnx" or spec.runs_archive_code:
        # Scoring runs in the control plane's process: only code that ships with modelplane.
        raise InvalidInputError(
            f"the evaluate stage scores ONNX graphs, alone or with builtin: steps; this "
            f"version is {spec.kind}" + (" with code of its own" if spec.runs_archive_code else ""),
            detail={"field": "manifest.kind"})
    if spec.code is not None:
        return _read_outputs(_run_steps(model, _feeds(X, spec), spec), spec)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's choice
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise InvalidInputError(f"cannot load the ONNX model {_name(model)}: "
                                f"{str(error).strip().splitlines()[0][:300]}",
                                detail={"field": "model"}) from None
    feeds = _feeds(X, spec)
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, feeds), strict=True))
    return _read_outputs(outputs, spec)


def _run_steps(model: ModelSource, feeds: dict[str, np.ndarray],
               spec: ModelManifest) -> dict[str, np.ndarray]:
    """The builtin steps and the graph of an archive, run as a replica runs them."""
    import hashlib
    import tempfile
    from pathlib import Path

    from serving.runners import build_runner
    from serving.schemas import VersionConfig

    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="modelplane-evaluate-") as folder:
        path = Path(folder) / digest
        path.write_bytes(data)
        config = VersionConfig(
            version=1, model="evaluate", artifact_url="file:///unused", digest=digest,
            code=spec.code, inputs=[s.model_dump() for s in spec.signature.inputs],
            outputs=[s.model_dump() for s in spec.signature.outputs])
        try:
            runner = build_runner(config, path, use_gpu=False)
        except Exception as error:
            raise InvalidInputError(f"cannot load the model {_name(model)}: {error}"[:400],
                                    detail={"field": "model"}) from None
        return runner.run(feeds)


def _feeds(X: Any, spec: ModelManifest) -> dict[str, np.ndarray]:
    inputs = spec.signature.inputs
    if isinstance(X, Mapping):
        missing = [tensor.name for tensor in inputs if tensor.name not in X]
        if missing:
            raise InvalidInputError(f"X has no input {missing[0]!r} (the signature's inputs: "
                                    f"{[t.name for t in inputs]})", detail={"field": "X"})
        return {t.name: np.asarray(X[t.name], dtype=_dtype(t.dtype)) for t in inputs}
    if len(inputs) != 1:
        raise InvalidInputError(f"the model takes {len(inputs)} inputs; pass X as a mapping of "
                                "input name to array", detail={"field": "X"})
    return {inputs[0].name: np.asarray(X, dtype=_dtype(inputs[0].dtype))}


def _dtype(name: str) -> Any:
    return object if name == "string" else np.dtype(name)


def _read_outputs(outputs: dict[str, np.ndarray], spec: ModelManifest) -> dict[str, np.ndarray]:
    ordered = [outputs[t.name] for t in spec.signature.outputs if t.name in outputs] or list(outputs.values())
    if spec.task == "regression":
        first = ordered[0]
        return {"predicted": np.asarray(first, dtype=np.float64).reshape(first.shape[0], -1)[:, 0]}
    scores = next((o for o in ordered if o.dtype.kind == "f" and o.ndim == 2 and o.shape[1] >= 2), None)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        result = {"predicted": scores.argmax(axis=1)}
        sums = scores.sum(axis=1)
        if np.all(scores >= 0) and np.allclose(sums, 1.0, atol=1e-3):
            result["probabilities"] = scores / sums[:, None]
        else:
            result["scores"] = scores  # logits: AUC still reads them, log loss cannot
        return result
    labels = ordered[0].reshape(ordered[0].shape[0])
    return {"predicted": _class_indices(labels, spec, "the model's labels")}


def _truth(y: Any, spec: ModelManifest) -> np.ndarray:
    values = np.asarray(y)
    if values.ndim != 1:
        values = values.reshape(values.shape[0])
    if spec.task == "regression":
        return values.astype(np.float64)
    return _class_indices(values, spec, "y")


def _class_indices(values: np.ndarray, spec: ModelManifest, what: str) -> np.ndarray:
    """Class indices of ``values``: numbers are indices, unless the classes themselves are
    numbers (``class_labels`` all whole numerals, as training lists a label column of
    1, 2, 3); labels map through ``class_labels``."""
    labels = spec.class_labels
    whole = values.dtype.kind in "iub" or (values.dtype.kind == "f"
                                           and bool(np.all(values == np.round(values))))
    if whole and labels and all(_numeral(label) for label in labels):
        values = np.asarray([str(int(v)) for v in values.tolist()], dtype=object)
        labels = [str(int(label)) for label in labels]
    elif whole:
        return values.astype(np.int64)
    if not labels:
        raise InvalidInputError(f"{what} holds labels but the manifest has no class_labels to "
                                "map them to class indices", detail={"field": "class_labels"})
    index = {label: i for i, label in enumerate(labels)}
    text = [str(v.decode() if isinstance(v, bytes) else v) for v in values.tolist()]
    unknown = sorted({t for t in text if t not in index})
    if unknown:
        raise InvalidInputError(f"{what} has labels {unknown[:5]} that are not among "
                                f"class_labels {labels}", detail={"field": "class_labels"})
    return np.array([index[t] for t in text], dtype=np.int64)


def _numeral(label: str) -> bool:
    try:
        int(label)
    except ValueError:
        return False
    return True


def _unlike(candidate: ModelManifest, champion: ModelManifest) -> str:
    """Why the champion cannot be scored on rows made for the candidate ("" when it can):
    features it reads that the rows lack, or classes the candidate does not have."""
    if candidate.feature_names and champion.feature_names:
        missing = [name for name in champion.feature_names
                   if name not in candidate.feature_names]
        if missing:
            return f"it reads features the candidate does not ({missing[:5]})"
    return _champion_classes(candidate, champion)[1]


def _champion_classes(candidate: ModelManifest, champion: ModelManifest,
                      ) -> tuple[np.ndarray | None, str]:
    """(the candidate's index of each of the champion's classes, None where they are its
    own; why they cannot be compared, "" where they can). Classes named only by position
    ("0", "1": a label column of indices) are the other model's classes in order."""
    mine, theirs = candidate.class_labels, champion.class_labels
    if candidate.task != "classification" or not mine or not theirs or mine == theirs:
        return None, ""
    if set(mine) == set(theirs):
        return np.array([mine.index(label) for label in theirs]), ""
    if len(mine) == len(theirs) and (_positional(mine) or _positional(theirs)):
        return None, ""
    return None, f"its classes {theirs} are not the candidate's {mine}"


def _positional(labels: list[str]) -> bool:
    return labels == [str(index) for index in range(len(labels))]


def in_champion_order(X: Any, candidate: ModelManifest, champion: ModelManifest) -> Any:
    """The candidate's rows (its ``feature_names`` in order) with the champion's columns
    in the champion's order."""
    if (isinstance(X, Mapping) or not candidate.feature_names or not champion.feature_names
            or champion.feature_names == candidate.feature_names):
        return X
    rows = np.asarray(X)
    if rows.ndim != 2 or rows.shape[1] != len(candidate.feature_names):
        return X
    return rows[:, [candidate.feature_names.index(name) for name in champion.feature_names]]


def _as_candidates(scored: dict[str, np.ndarray], candidate: ModelManifest,
                   champion: ModelManifest) -> dict[str, np.ndarray]:
    """The champion's answers in the candidate's class indices (the same classes, perhaps
    in another order)."""
    order = _champion_classes(candidate, champion)[0]
    if order is None:
        return scored
    mapped = {"predicted": order[scored["predicted"]]}
    for name in ("probabilities", "scores"):
        if name in scored and scored[name].shape[1] == len(order):
            columns = np.empty_like(scored[name])
            columns[:, order] = scored[name]
            mapped[name] = columns
    return mapped


# ---------------------------------------------------------------- metrics


def _metrics(task: str, truth: np.ndarray, scored: dict[str, np.ndarray]) -> dict[str, float]:
    predicted = scored["predicted"]
    if len(predicted) != len(truth):
        raise InvalidInputError(f"y has {len(truth)} rows but the model answered "
                                f"{len(predicted)}", detail={"field": "y"})
    if task == "regression":
        error = predicted - truth
        residual = float(np.sum((truth - truth.mean()) ** 2))
        metrics = {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2)))}
        if residual > 0:
            metrics["r2"] = 1.0 - float(np.sum(error ** 2)) / residual
        return metrics
    metrics = {"accuracy": float(np.mean(predicted == truth))}
    probabilities = scored.get("probabilities")
    scores = probabilities if probabilities is not None else scored.get("scores")
    if probabilities is not None and truth.max(initial=0) < probabilities.shape[1]:
        picked = probabilities[np.arange(len(truth)), truth]
        metrics["log_loss"] = float(-np.mean(np.log(np.clip(picked, _LOG_LOSS_EPS, 1.0))))
    if scores is not None and len(np.unique(truth)) == scores.shape[1]:
        # AUC is undefined unless every class appears among the rows.
        from sklearn.metrics import roc_auc_score

        if scores.shape[1] == 2:
            metrics["roc_auc"] = float(roc_auc_score(truth, scores[:, 1] - scores[:, 0]))
        elif probabilities is not None:
            metrics["roc_auc"] = float(roc_auc_score(truth, probabilities, multi_class="ovr"))
    return metrics


_THRESHOLDS = (("min_accuracy", "accuracy"), ("min_roc_auc", "roc_auc"),
               ("max_log_loss", "log_loss"), ("max_mae", "mae"), ("max_rmse", "rmse"))


def _threshold_checks(rules: EvaluationGates, metrics: dict[str, float], task: str) -> list[GateCheck]:
    checks = []
    for gate, metric in _THRESHOLDS:
        limit = getattr(rules, gate)
        if limit is None:
            continue
        observed = metrics.get(metric)
        if observed is None:
            why = ("its outputs carry no probabilities" if metric in ("roc_auc", "log_loss")
                   else f"it applies to {'regression' if metric in ('mae', 'rmse') else 'classification'}"
                        f" models, this one is {task}")
            checks.append(GateCheck(name=gate, observed=None, limit=limit, passed=False,
                                    message=f"{gate} is set but the candidate has no {metric}: {why}"))
            continue
        ok = observed >= limit if gate.startswith("min_") else observed <= limit
        word = "below" if gate.startswith("min_") else "above"
        checks.append(GateCheck(name=gate, observed=observed, limit=limit, passed=ok,
                                message="" if ok else f"candidate {metric} {observed:.4g} is "
                                f"{word} {gate} {limit:g}"))
    return checks


# ---------------------------------------------------------------- comparison


def _compare(metric: str, truth: np.ndarray, cand: dict[str, np.ndarray],
             champ: dict[str, np.ndarray], rules: EvaluationGates) -> PairedTest:
    if metric == "accuracy":
        return mcnemar_test(cand["predicted"] == truth, champ["predicted"] == truth,
                            alpha=rules.alpha)
    return paired_bootstrap(cand["predicted"] - truth, champ["predicted"] - truth, metric=metric,
                            alpha=rules.alpha, n_resamples=rules.n_resamples, seed=rules.seed)


def _margin_check(test: PairedTest, rules: EvaluationGates) -> GateCheck | None:
    metric, cand, champ = test.metric, test.candidate, test.champion
    better = HIGHER_IS_BETTER[metric]
    # The interval's bound on the improvement least favourable to the candidate.
    worst_improvement = test.ci_low if better else -test.ci_high
    if rules.min_improvement is not None:
        limit = rules.min_improvement
        ok = test.improvement >= limit
        message = (f"candidate {metric} {cand:.4g} is not better than champion {champ:.4g} "
                   f"by {limit:g}")
        if ok and rules.require_significance and not (test.significant and test.improvement > 0):
            ok = False
            message = (f"candidate {metric} {cand:.4g} is better than champion {champ:.4g} by "
                       f"{test.improvement:.4g}, but not significantly (p={test.p_value:.3g}, "
                       f"alpha {rules.alpha:g})")
        return GateCheck(name="min_improvement", observed=test.improvement, limit=limit, passed=ok,
                         message="" if ok else message)
    if rules.max_regression is not None:
        limit = rules.max_regression
        ok = test.improvement >= -limit
        message = (f"candidate {metric} {cand:.4g} is worse than champion {champ:.4g} by "
                   f"{-test.improvement:.4g}, more than max_regression {limit:g}")
        if ok and rules.require_significance and worst_improvement < -limit:
            ok = False
            message = (f"candidate {metric} {cand:.4g} against champion {champ:.4g}: the "
                       f"{test.confidence:.0%} interval allows a regression of "
                       f"{-worst_improvement:.4g}, more than max_regression {limit:g}")
        return GateCheck(name="max_regression", observed=test.improvement, limit=-limit,
                         passed=ok, message="" if ok else message)
    return None


def mcnemar_test(candidate_correct: Any, champion_correct: Any, *, alpha: float = 0.05) -> PairedTest:
    """McNemar's test of equal accuracy on paired per-row correctness.

    ``b`` rows only the candidate gets right, ``c`` only the champion: below
    :data:`MCNEMAR_EXACT_BELOW` discordant rows the exact two-sided binomial test of
    ``b ~ Binomial(b + c, 1/2)``, else chi-square ``(|b - c| - 1)² / (b + c)`` on one degree
    of freedom. The interval of the accuracy difference is Agresti and Min's (2005): the
    Wald interval with half a row added to each of the four cells.
    """
    first = np.asarray(candidate_correct, dtype=bool)
    second = np.asarray(champion_correct, dtype=bool)
    if first.shape != second.shape or first.ndim != 1:
        raise InvalidInputError("candidate and champion correctness must be 1-D and of one length",
                                detail={"field": "y"})
    n = int(first.size)
    b = int(np.sum(first & ~second))
    c = int(np.sum(~first & second))
    discordant = b + c
    statistic = None
    if discordant < MCNEMAR_EXACT_BELOW:
        test, p = "mcnemar_exact", _binomial_two_sided(min(b, c), discordant)
    else:
        test = "mcnemar_chi2"
        statistic = (abs(b - c) - 1) ** 2 / discordant
        p = math.erfc(math.sqrt(statistic / 2))  # chi-square(1) survival function
    z = NormalDist().inv_cdf(1 - alpha / 2)
    # Agresti-Min: add 0.5 to each cell of the 2x2 table (n grows by 2).
    b2, c2, n2 = b + 0.5, c + 0.5, n + 2.0
    centre = (b2 - c2) / n2
    spread = z * math.sqrt(max(b2 + c2 - (b2 - c2) ** 2 / n2, 0.0)) / n2
    cand_acc = float(first.mean()) if n else 0.0
    champ_acc = float(second.mean()) if n else 0.0
    difference = (b - c) / n if n else 0.0
    return PairedTest(
        test=test, metric="accuracy", candidate=cand_acc, champion=champ_acc,
        difference=difference, improvement=difference, ci_low=max(-1.0, centre - spread),
        ci_high=min(1.0, centre + spread), confidence=1 - alpha, p_value=p,
        significant=p < alpha, statistic=statistic, candidate_only_correct=b,
        champion_only_correct=c, n=n)


def _binomial_two_sided(k: int, n: int) -> float:
    """P(X <= k or X >= n - k) for X ~ Binomial(n, 1/2), with k <= n / 2."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired_bootstrap(candidate_errors: Any, champion_errors: Any, *, metric: str = "mae",
                     alpha: float = 0.05, n_resamples: int = 2000, seed: int = 0) -> PairedTest:
    """Paired bootstrap of ``metric(candidate) - metric(champion)`` (``mae`` or ``rmse`` of
    the per-row errors): rows resampled with replacement, both models' errors together.

    Interval: the bootstrap differences' ``alpha/2`` and ``1 - alpha/2`` quantiles.
    p-value: the share of bootstrap differences, shifted to centre on 0 (the null), at least
    as far from 0 as the observed one, counting the observed one ((k + 1) / (B + 1)).
    """
    if metric not in ("mae", "rmse"):
        raise InvalidInputError(f"the paired bootstrap compares mae or rmse, not {metric!r}",
                                detail={"field": "gates.metric"})
    first = np.asarray(candidate_errors, dtype=np.float64).ravel()
    second = np.asarray(champion_errors, dtype=np.float64).ravel()
    if first.shape != second.shape or first.size == 0:
        raise InvalidInputError("candidate and champion errors must be non-empty and of one "
                                "length", detail={"field": "y"})
    if metric == "mae":
        a, b = np.abs(first), np.abs(second)
    else:
        a, b = first ** 2, second ** 2

    def score(values: np.ndarray) -> np.ndarray:
        return values if metric == "mae" else np.sqrt(values)

    n = first.size
    observed = float(score(a.mean()) - score(b.mean()))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    block = max(1, _BOOTSTRAP_BLOCK_CELLS // n)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        rows = rng.integers(0, n, size=(stop - start, n))
        diffs[start:stop] = score(a[rows].mean(axis=1)) - score(b[rows].mean(axis=1))
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    extreme = int(np.sum(np.abs(diffs - observed) >= abs(observed) - 1e-12 * max(1.0, abs(observed))))
    p = (extreme + 1) / (n_resamples + 1)
    return PairedTest(
        test="paired_bootstrap", metric=metric, candidate=float(score(a.mean())),
        champion=float(score(b.mean())), difference=observed, improvement=-observed,
        ci_low=float(low), ci_high=float(high), confidence=1 - alpha, p_value=p,
        significant=p < alpha, n=n, n_resamples=n_resamples, seed=seed)


def _name(model: ModelSource) -> str:
    return f"({len(model)} bytes)" if isinstance(model, bytes) else os.fspath(model)
