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


def _linear_nodes(input_name: str, weights: np.ndarray, bias: np.ndarray) -> tuple[list, list]:
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["logits_raw"]),
             helper.make_node("Add", ["logits_raw", "b"], ["logits"])]
    return nodes, [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")]


def _classifier_with(extra_nodes: list, extra_inits: list, penalty: str, *, n_features: int,
                     n_classes: int, seed: int, name: str) -> bytes:
    """``linear_classifier(seed)`` whose logits also add ``penalty`` (a scalar that is 0)."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n_features, n_classes)).astype(np.float32)
    bias = rng.normal(size=(n_classes,)).astype(np.float32)
    nodes, inits = _linear_nodes("input", weights, bias)
    graph = helper.make_graph(
        [*nodes, *extra_nodes,
         helper.make_node("Add", ["logits", penalty], ["logits_out"]),
         helper.make_node("Softmax", ["logits_out"], ["probabilities"], axis=1)],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes])],
        initializer=[*inits, *extra_inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def flaky_classifier(fail_above: float, *, n_features: int = 4, n_classes: int = 3,
                     seed: int = 0) -> bytes:
    """``linear_classifier(seed)`` that fails in ONNX Runtime when any row's first feature
    exceeds ``fail_above``: the broken candidate of a rollout, failing on its own inputs."""
    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    nodes = [
        helper.make_node("Slice", ["input", "zero", "one", "one_axis"], ["first"]),
        helper.make_node("Greater", ["first", "threshold"], ["over"]),
        helper.make_node("Cast", ["over"], ["over_int"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["over_int"], ["any_over"], keepdims=0),
        helper.make_node("Reshape", ["any_over", "one_axis"], ["any_over_1d"]),
        helper.make_node("Add", ["two", "any_over_1d"], ["target_shape"]),
        # Two values reshaped to three when a row is over the threshold: a runtime error.
        helper.make_node("Reshape", ["pair", "target_shape"], ["pair_shaped"]),
        helper.make_node("ReduceSum", ["pair_shaped"], ["pair_sum"], keepdims=0),
        helper.make_node("Mul", ["pair_sum", "zero_f"], ["penalty"]),
    ]
    inits = [const("zero", np.array([0], np.int64)), const("one", np.array([1], np.int64)),
             const("one_axis", np.array([1], np.int64)),
             const("threshold", np.array(fail_above, np.float32)),
             const("two", np.array([2], np.int64)), const("pair", np.zeros(2, np.float32)),
             const("zero_f", np.array(0.0, np.float32))]
    return _classifier_with(nodes, inits, "penalty", n_features=n_features, n_classes=n_classes,
                            seed=seed, name="flaky_classifier")


def slow_classifier(iterations: int, *, size: int = 192, n_features: int = 4, n_classes: int = 3,
                    seed: int = 0) -> bytes:
    """``linear_classifier(seed)`` that first multiplies a ``size``² matrix ``iterations``
    times: answers identical to the fast model, only slower (see :func:`calibrate_slow`)."""
    rng = np.random.default_rng(seed + 1000)
    matrix = (rng.normal(size=(size, size)) / np.sqrt(size)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "M"], ["product"]),
         helper.make_node("Tanh", ["product"], ["state_out"]),
         helper.make_node("Identity", ["condition_in"], ["condition_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [size, size])],
        initializer=[numpy_helper.from_array(matrix, "M")],
    )
    nodes = [
        # The start state depends on the input, so nothing is folded away at load time.
        helper.make_node("ReduceSum", ["input"], ["input_sum"], keepdims=0),
        helper.make_node("Mul", ["input_sum", "zero_f"], ["input_zero"]),
        helper.make_node("Add", ["M0", "input_zero"], ["start"]),
        helper.make_node("Loop", ["trips", "true"], ["end"], body=body),
        helper.make_node("ReduceSum", ["end"], ["end_sum"], keepdims=0),
        helper.make_node("Mul", ["end_sum", "zero_f"], ["penalty"]),
    ]
    nodes[3].input.append("start")
    inits = [numpy_helper.from_array(matrix, "M0"),
             numpy_helper.from_array(np.array(iterations, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "true"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero_f")]
    return _classifier_with(nodes, inits, "penalty", n_features=n_features, n_classes=n_classes,
                            seed=seed, name="slow_classifier")


def calibrate_slow(extra_ms: float, *, size: int = 192) -> int:
    """Loop iterations that make :func:`slow_classifier` take about ``extra_ms`` longer here."""
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(slow_classifier(50, size=size), options)
    row = {"input": np.zeros((1, 4), np.float32)}
    session.run(None, row)
    timings = []
    for _ in range(5):
        # The thread's CPU time (one intra-op thread runs on the caller's): wall time on a
        # contended host made the "slow" model a fraction as slow as asked.
        started = time.thread_time()
        session.run(None, row)
        timings.append(time.thread_time() - started)
    per_iteration_ms = 1000 * sorted(timings)[2] / 50
    return max(1, round(extra_ms / per_iteration_ms))
