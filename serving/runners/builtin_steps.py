"""Steps that ship with modelplane, named ``builtin:<name>`` in a version's code: no code
comes from the archive, only their parameters (a JSON file in it), so a training job's
own token may register a version that uses them.

- ``builtin:standardize`` (preprocess), ``standardize.json``:
  ``{"input": "raw", "output": "input", "mean": [...], "scale": [...]}`` → ``(x - mean) / scale``
  as float32 (a fitted StandardScaler).
- ``builtin:tokenize`` (preprocess), ``tokenize.json``:
  ``{"input": "text", "output": "tokens", "vocabulary": [...], "max_length": 64}`` → int64
  token ids ``[rows, max_length]`` (serving.text's tokenizer, lower-cased): 0 pads, 1 is
  a word outside the vocabulary, the vocabulary's i-th word is i + 2.
- ``builtin:label_map`` (postprocess), ``label_map.json``:
  ``{"scores": "probabilities", "output": "label", "labels": ["benign", ...]}`` → the
  label of each row's highest score as a string, the graph's outputs passed on beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serving.runners.archive import ArchiveError

Arrays = dict[str, np.ndarray]


def load(name: str, root: Path) -> Callable[..., Arrays]:
    try:
        make = BUILTIN[name]
    except KeyError:
        raise ArchiveError(f"builtin:{name} is not a modelplane step; there are "
                           f"{sorted(f'builtin:{n}' for n in BUILTIN)}") from None
    path = root / f"{name}.json"
    try:
        params = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArchiveError(f"builtin:{name} reads its parameters from {name}.json at the "
                           "archive's top level; there is none") from None
    except ValueError as error:
        raise ArchiveError(f"{name}.json is not JSON: {error}") from None
    try:
        return make(params)
    except (KeyError, TypeError, ValueError) as error:
        raise ArchiveError(f"{name}.json: {type(error).__name__}: {error}") from None


def standardize(params: dict[str, Any]) -> Callable[[Arrays], Arrays]:
    source, target = str(params["input"]), str(params["output"])
    mean = np.asarray(params["mean"], dtype=np.float64)
    scale = np.asarray(params["scale"], dtype=np.float64)
    if mean.shape != scale.shape or mean.ndim != 1:
        raise ValueError(f"mean and scale must be lists of the same length, not {mean.shape} "
                         f"and {scale.shape}")
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise ValueError("scale must be finite and non-zero")

    def step(inputs: Arrays) -> Arrays:
        return {target: ((inputs[source] - mean) / scale).astype(np.float32)}

    return step


def label_map(params: dict[str, Any]) -> Callable[[Arrays], Arrays]:
    scores, target = str(params["scores"]), str(params["output"])
    labels = np.asarray([str(label).encode("utf-8") for label in params["labels"]], dtype=object)
    if not labels.size:
        raise ValueError("labels is empty")

    def step(outputs: Arrays) -> Arrays:
        index = np.argmax(outputs[scores], axis=-1)
        if index.size and int(index.max()) >= labels.size:
            raise ValueError(f"{scores} has {outputs[scores].shape[-1]} classes, label_map "
                             f"{labels.size} labels")
        return {**outputs, target: labels[index]}

    return step


def tokenize(params: dict[str, Any]) -> Callable[[Arrays], Arrays]:
    from serving.text import as_text
    from serving.text import tokenize as words_of

    source, target = str(params["input"]), str(params["output"])
    length = int(params["max_length"])
    if not 1 <= length <= 4096:
        raise ValueError(f"max_length is {length}; it must lie in 1-4096")
    ids: dict[str, int] = {}
    for index, word in enumerate(params["vocabulary"]):  # lower-cased, as the tokenizer is
        ids.setdefault(str(word).lower(), index + 2)

    def step(inputs: Arrays) -> Arrays:
        texts = inputs[source].reshape(-1)
        out = np.zeros((texts.shape[0], length), dtype=np.int64)
        for row, value in enumerate(texts):
            tokens = [ids.get(word, 1) for word in words_of(as_text(value))[:length]]
            out[row, :len(tokens)] = tokens
        return {target: out}

    return step


BUILTIN: dict[str, Callable[[dict[str, Any]], Callable[..., Arrays]]] = {
    "standardize": standardize, "tokenize": tokenize, "label_map": label_map}
