"""Models of every kind for tests, each computing what tests.onnx_models.linear_classifier
computes for the same seed (``softmax(x @ W + b)``), so one reference checks them all."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from tests.onnx_models import linear_classifier, linear_classifier_manifest

LABELS = ["setosa", "versicolor", "virginica"]


def weights(seed: int, n_features: int = 4, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The W and b linear_classifier draws for ``seed``."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_features, n_classes)).astype(np.float32),
            rng.normal(size=(n_classes,)).astype(np.float32))


def reference(rows: np.ndarray, seed: int) -> np.ndarray:
    w, b = weights(seed)
    logits = rows.astype(np.float32) @ w + b
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


PYTHON_MODEL = '''\
import numpy as np

from .arithmetic import softmax


class Model:
    batchable = {batchable}

    def load(self, path):
        {load}
        weights = np.load(path + "/weights.npz")
        self.w, self.b = weights["w"], weights["b"]

    {asynchronous}def predict(self, inputs):
        x = inputs["input"]
        {predict}
        return {{"probabilities": softmax(x @ self.w + self.b)}}
'''

ARITHMETIC = '''\
import numpy as np


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
'''


def python_model(folder: Path, seed: int, *, load: str = "pass", predict: str = "pass",
                 batchable: bool = True, asynchronous: bool = False) -> Path:
    """A python model folder: ``model.py`` (Model), a sibling module, and its weights;
    ``load`` and ``predict`` are extra lines run first in each method."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(PYTHON_MODEL.format(
        batchable=batchable, load=load, predict=predict,
        asynchronous="async " if asynchronous else ""))
    (folder / "arithmetic.py").write_text(ARITHMETIC)
    w, b = weights(seed)
    np.savez(folder / "weights.npz", w=w, b=b)
    return folder


def python_manifest(entrypoint: str = "model:Model", **extra: object) -> dict:
    return linear_classifier_manifest(kind="python", code={"entrypoint": entrypoint}, **extra)


def steps_model(folder: Path, seed: int, *, mean: float = 10.0, scale: float = 2.0,
                labels: list[str] = LABELS) -> Path:
    """Standardize (builtin) → the linear classifier graph → label map (builtin): clients
    send raw rows ``mean + scale * x`` and get the probabilities for ``x`` and a label.
    With fewer ``labels`` than classes, rows whose best class has no label fail."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(linear_classifier(seed=seed, input_name="scaled"))
    (folder / "standardize.json").write_text(json.dumps(
        {"input": "input", "output": "scaled", "mean": [mean] * 4, "scale": [scale] * 4}))
    (folder / "label_map.json").write_text(json.dumps(
        {"scores": "probabilities", "output": "label", "labels": labels}))
    return folder


def steps_manifest(**extra: object) -> dict:
    manifest = linear_classifier_manifest(**extra)
    manifest["signature"]["outputs"].append({"name": "label", "dtype": "string", "shape": [None]})
    manifest["code"] = {
        "preprocess": "builtin:standardize", "postprocess": "builtin:label_map",
        "graph": "model.onnx",
        "graph_inputs": [{"name": "scaled", "dtype": "float32", "shape": [None, 4]}],
        "graph_outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 3]}]}
    return manifest


def _torch_linear(seed: int, limit: float | None = None):
    """The linear classifier as a torch module; with ``limit``, one that raises on rows
    whose first feature is above it (a range check its authors wrote)."""
    import torch

    w, b = weights(seed)

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.from_numpy(w))
            self.b = torch.nn.Parameter(torch.from_numpy(b))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x @ self.w + self.b, dim=1)

    class Guarded(Linear):
        def __init__(self, limit: float) -> None:
            super().__init__()
            self.limit = limit

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x[:, 0] > self.limit).any()):
                raise RuntimeError("feature 0 out of the range it was built for")
            return torch.softmax(x @ self.w + self.b, dim=1)

    return Linear() if limit is None else Guarded(limit)


def torchscript_model(seed: int, *, limit: float | None = None) -> bytes:
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; teams still ship it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_torch_linear(seed, limit)), buffer)
    return buffer.getvalue()


def torch_export_model(seed: int) -> bytes:
    import torch

    program = torch.export.export(_torch_linear(seed), (torch.zeros(2, 4),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def torchscript_manifest(kind: str = "torchscript", **extra: object) -> dict:
    return linear_classifier_manifest(kind=kind, **extra)


TEXT_VOCABULARY = ["good", "great", "tasty", "friendly", "bad", "awful", "cold", "rude",
                   "the", "food", "was", "service", "and"]
TEXT_LENGTH = 16
TEXT_LABELS = ["negative", "positive"]


def text_weights(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings (row 0 pads and row 1 is unknown: both zero), the output layer and bias:
    the first four words lean positive, the next four negative, the rest neither."""
    rng = np.random.default_rng(seed)
    embeddings = np.zeros((len(TEXT_VOCABULARY) + 2, 2), dtype=np.float32)
    for index in range(len(TEXT_VOCABULARY)):
        lean = 1.0 if index < 4 else -1.0 if index < 8 else 0.0
        embeddings[index + 2] = [lean, 0.1 * rng.normal()]
    weights = np.array([[-1.5, 1.5], [0.2, -0.2]], dtype=np.float32)
    return embeddings, weights, np.array([0.05, -0.05], dtype=np.float32)


def text_reference(texts: list[str], seed: int) -> np.ndarray:
    """The text classifier's probabilities, in NumPy, from the same tokenizer."""
    from serving.text import tokenize

    embeddings, weights, bias = text_weights(seed)
    ids = {word: i + 2 for i, word in enumerate(TEXT_VOCABULARY)}
    pooled = np.stack([embeddings[[ids.get(w, 1) for w in tokenize(t)[:TEXT_LENGTH]] or [0]].sum(axis=0)
                       for t in texts])
    logits = pooled @ weights + bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def text_model(folder: Path, seed: int, *, extra_words: tuple[str, ...] = ()) -> Path:
    """Tokenize (builtin) → an ONNX bag of embeddings and a softmax layer → label map.
    ``extra_words`` go into the tokenizer's vocabulary but not the graph's embeddings (a
    tokenizer refitted without re-exporting the graph): texts holding them fail."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    embeddings, weights, bias = text_weights(seed)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "tokens"], ["embedded"]),
         helper.make_node("ReduceSum", ["embedded", "axis"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["raw"]),
         helper.make_node("Add", ["raw", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "bag_of_embeddings",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", TEXT_LENGTH])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(embeddings, "E"), numpy_helper.from_array(weights, "W"),
                     numpy_helper.from_array(bias, "b"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    (folder / "tokenize.json").write_text(json.dumps(
        {"input": "review", "output": "tokens", "vocabulary": TEXT_VOCABULARY + list(extra_words),
         "max_length": TEXT_LENGTH}))
    (folder / "label_map.json").write_text(json.dumps(
        {"scores": "probabilities", "output": "label", "labels": TEXT_LABELS}))
    return folder


def text_manifest(training_texts: list[str], seed: int) -> dict:
    from serving.monitoring.profiles import build_text_reference_profile

    return {
        "signature": {
            "inputs": [{"name": "review", "dtype": "string", "shape": [None]}],
            "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 2]},
                        {"name": "label", "dtype": "string", "shape": [None]}]},
        "task": "classification", "class_labels": TEXT_LABELS,
        "code": {"preprocess": "builtin:tokenize", "postprocess": "builtin:label_map",
                 "graph_inputs": [{"name": "tokens", "dtype": "int64", "shape": [None, TEXT_LENGTH]}],
                 "graph_outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 2]}]},
        "reference_profile": build_text_reference_profile(
            "review", training_texts, text_reference(training_texts, seed), task="classification",
            vocabulary=TEXT_VOCABULARY),
        "example_inputs": {"review": ["the food was great", "rude service and cold food"]},
    }


def review_texts(n: int, seed: int, *, extra: tuple[str, ...] = ()) -> list[str]:
    rng = np.random.default_rng(seed)
    pool = TEXT_VOCABULARY + list(extra)
    return [" ".join(rng.choice(pool, size=int(rng.integers(3, 9)))) for _ in range(n)]
