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


def steps_model(folder: Path, seed: int, *, mean: float = 10.0, scale: float = 2.0) -> Path:
    """Standardize (builtin) → the linear classifier graph → label map (builtin): clients
    send raw rows ``mean + scale * x`` and get the probabilities for ``x`` and a label."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(linear_classifier(seed=seed, input_name="scaled"))
    (folder / "standardize.json").write_text(json.dumps(
        {"input": "input", "output": "scaled", "mean": [mean] * 4, "scale": [scale] * 4}))
    (folder / "label_map.json").write_text(json.dumps(
        {"scores": "probabilities", "output": "label", "labels": LABELS}))
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


def _torch_linear(seed: int):
    import torch

    w, b = weights(seed)

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.from_numpy(w))
            self.b = torch.nn.Parameter(torch.from_numpy(b))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x @ self.w + self.b, dim=1)

    return Linear()


def torchscript_model(seed: int) -> bytes:
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; teams still ship it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_torch_linear(seed)), buffer)
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
