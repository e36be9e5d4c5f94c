"""Small real ONNX models built in code for tests (no downloads, no torch)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_classifier(
    n_features: int = 4, n_classes: int = 3, seed: int = 0, *, input_name: str = "input"
) -> bytes:
    """``softmax(x @ W + b)`` with a dynamic batch axis; returns the serialized model."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n_features, n_classes)).astype(np.float32)
    bias = rng.normal(size=(n_classes,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "linear_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_classifier_manifest(n_features: int = 4, n_classes: int = 3, **extra: object) -> dict:
    """The manifest that matches :func:`linear_classifier`."""
    return {
        "signature": {
            "inputs": [{"name": "input", "dtype": "float32", "shape": [None, n_features]}],
            "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, n_classes]}],
        },
        "task": "classification",
        **extra,
    }
