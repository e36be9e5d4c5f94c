"""A small real model for the quickstart: logistic regression on a bundled dataset, as ONNX.

Trained with NumPy (full-batch gradient descent) so the quickstart needs no torch; the
training job (``training``) is what real users run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DemoModel:
    onnx_bytes: bytes
    manifest: dict[str, Any]
    metrics: dict[str, float]


def train_breast_cancer_classifier(
    *, learning_rate: float = 0.5, epochs: int = 200, seed: int = 0
) -> DemoModel:
    """Fit a 2-class softmax regression on scikit-learn's breast cancer data."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x_train, x_val, y_train, y_val = train_test_split(
        data.data, data.target, test_size=0.25, random_state=seed, stratify=data.target
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-12
    rng = np.random.default_rng(seed)
    weights = rng.normal(scale=0.01, size=(x_train.shape[1], 2))
    bias = np.zeros(2)
    z_train = (x_train - mean) / std
    onehot = np.eye(2)[y_train]
    for _ in range(epochs):
        probs = _softmax(z_train @ weights + bias)
        grad = (probs - onehot) / len(z_train)
        weights -= learning_rate * z_train.T @ grad
        bias -= learning_rate * grad.sum(axis=0)
    # Fold the standardisation into the first layer so the served model takes raw features.
    folded_w = (weights / std[:, None]).astype(np.float32)
    folded_b = (bias - (mean / std) @ weights).astype(np.float32)
    predictions = np.argmax(x_val @ folded_w + folded_b, axis=1)
    accuracy = float((predictions == y_val).mean())
    features = [str(name) for name in data.feature_names]
    manifest = {
        "signature": {
            "inputs": [{"name": "input", "dtype": "float32", "shape": [None, len(features)]}],
            "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 2]}],
        },
        "task": "classification",
        "feature_names": features,
        "class_labels": [str(name) for name in data.target_names],
        "metrics": {"val_accuracy": accuracy},
        "lineage": {"dataset_uri": "sklearn://breast_cancer"},
    }
    return DemoModel(_to_onnx(folded_w, folded_b), manifest, {"val_accuracy": accuracy})


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _to_onnx(weights: np.ndarray, bias: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "logistic_regression",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", weights.shape[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
