"""Held-out evaluation: the metrics recorded on the run and in the version's manifest."""

from __future__ import annotations

import math

import numpy as np


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """accuracy, precision, recall, F1 and ROC AUC.

    Two classes: precision/recall/F1 of class 1 and the AUC of its probability. More:
    macro averages and one-vs-rest macro AUC. AUC is left out when the held-out rows do
    not contain every class (it is undefined then).
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    n_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    average = "binary" if n_classes == 2 else "macro"
    labels = None if n_classes == 2 else list(range(n_classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, predicted, average=average, labels=labels, zero_division=0
    )
    metrics = {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }
    if len(np.unique(y_true)) == n_classes:
        if n_classes == 2:
            auc = roc_auc_score(y_true, probabilities[:, 1])
        else:
            # Softmax rows can sum to 1 ± 1e-7; sklearn insists on exactly 1.
            normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
            auc = roc_auc_score(y_true, normalised, multi_class="ovr", average="macro")
        metrics["roc_auc"] = float(auc)
    return metrics


def regression_metrics(y_true: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R²."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {
        "mae": float(mean_absolute_error(y_true, predictions)),
        "rmse": float(math.sqrt(mean_squared_error(y_true, predictions))),
        "r2": float(r2_score(y_true, predictions)),
    }
