"""Monitoring profiles: a version's inputs and predictions as rows x features matrices.

The manifest's ``reference_profile`` is ``kernels.ReferenceProfile.to_dict()`` of the
input features plus, under ``"predictions"``, the same for the prediction features that
:func:`prediction_features` derives from the model's first output. Replicas derive the
features of live traffic with :func:`batch_features` (each input's values per row, in
signature order: the layout the model takes) and :func:`prediction_features`, so the
reference and the live windows always agree on what a feature is.

Prediction features by task:

- classification: ``predicted_class`` (categorical: argmax of a score matrix, or the
  label itself when the output is one label per row) and, for score outputs,
  ``confidence`` (the row's highest score);
- regression and other: the output's columns (``prediction`` for a single column,
  ``prediction_0`` … otherwise; at most :data:`MAX_OUTPUT_COLUMNS`).

A text input (one string per row) is monitored through serving.text's derived features
(characters, tokens, and the share of tokens outside the training vocabulary); the
profile names its text inputs, with their vocabularies, under ``"text"``
(:func:`build_text_reference_profile`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.text import is_text_input, text_feature_names, text_features

if TYPE_CHECKING:
    from kernels import ReferenceProfile
    from serving.schemas import TensorSignature

PREDICTIONS_KEY = "predictions"
TEXT_KEY = "text"
MAX_VOCABULARY = 100_000
MAX_OUTPUT_COLUMNS = 16
# Sample values a profile keeps in all: a manifest travels in one JSON call of at most
# 4 MiB (control_plane.api.call_gate), about 21 bytes a value. Wide inputs keep fewer per
# feature (never under MIN_SAMPLE_PER_FEATURE), so a model with a thousand features still
# registers with its profile.
SAMPLE_BUDGET = 131_072
MIN_SAMPLE_PER_FEATURE = 32
PREDICTED_CLASS = "predicted_class"
CONFIDENCE = "confidence"



def profile_key(document: dict[str, Any]) -> str:
    """The key a reference profile travels under: its content's hash, so one shipped under
    a key it does not hash to is someone's mistake or forgery, and is not installed."""
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def batch_features(inputs: Sequence[TensorSignature],
                   columns: Mapping[str, Sequence[np.ndarray | None]],
                   texts: Mapping[str, frozenset[str] | None] | None = None) -> np.ndarray | None:
    """Many requests' inputs as one float64 rows x features matrix (rows in request order).

    ``columns`` holds each input's arrays, one per request in order
    (:class:`serving.monitoring.observations.ObservedRequests`). Every input contributes its
    values per row (axis 0), flattened, in signature order; each input is concatenated
    across requests first, so a chunk of single-input requests costs one concatenation and
    one conversion. A text input named in ``texts`` (the reference profile's text inputs,
    each with its vocabulary or None) contributes the features serving.text derives from
    it. None when another input is a string tensor or has no row axis (such models get no
    drift or range checks), or when a request lacked an input.
    """
    texts = {spec.name: texts[spec.name] for spec in inputs
             if texts and spec.name in texts and is_text_input(spec.dtype, spec.shape)}
    if any((spec.dtype == "string" and spec.name not in texts) or not spec.shape
           for spec in inputs):
        return None
    matrices = []
    for spec in inputs:
        arrays = columns.get(spec.name)
        if not arrays or any(array is None for array in arrays):
            return None
        joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)  # type: ignore[arg-type]
        assert joined is not None
        if spec.name in texts and spec.dtype == "string":
            if joined.ndim == 0:
                return None
            matrices.append(text_features(_rows(joined)[:, 0], texts[spec.name]))
            continue
        if joined.ndim == 0 or joined.dtype == object or joined.dtype.kind in "SU":
            return None
        matrices.append(_rows(joined))
    if len(matrices) == 1:
        matrix = np.ascontiguousarray(matrices[0], dtype=np.float64)
        # Binary tensors decode to read-only views of the body; the kernels take writable
        # arrays (a Numba signature detail), so a read-only one is copied.
        return matrix if matrix.flags.writeable else matrix.copy()
    return np.concatenate(matrices, axis=1, dtype=np.float64)


def _rows(array: np.ndarray) -> np.ndarray:
    """``array`` as rows x columns (``reshape(n, -1)`` cannot size the columns of 0 rows)."""
    return array.reshape(array.shape[0], int(np.prod(array.shape[1:], dtype=np.int64)))


def prediction_names(task: str, output: np.ndarray) -> tuple[str, ...]:
    """Names of the prediction features for an output of this shape (see the module doc)."""
    columns = 1 if output.ndim <= 1 else int(np.prod(output.shape[1:]))
    if task == "classification":
        return (PREDICTED_CLASS,) if columns == 1 else (PREDICTED_CLASS, CONFIDENCE)
    if columns == 1:
        return ("prediction",)
    return tuple(f"prediction_{i}" for i in range(min(columns, MAX_OUTPUT_COLUMNS)))


def prediction_features(task: str, output: np.ndarray) -> np.ndarray | None:
    """Rows x prediction-features float64 matrix of one output (see :func:`prediction_names`)."""
    if output.ndim == 0 or output.dtype == object or output.dtype.kind in "SU":
        return None
    flat = _rows(output)
    if task == "classification":
        if flat.shape[1] == 1:
            # A label, or the positive class's probability: the class it predicts, as
            # feedback reads it (feedback.predicted_class). Kept as probabilities, every
            # training value became a category of its own, and live traffic drifted always.
            column = np.asarray(flat[:, 0], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                classes = np.where(column == np.round(column), column,
                                   (column >= 0.5).astype(np.float64))
            return np.where(np.isfinite(column), classes, np.nan)[:, None]
        scores = np.asarray(flat, dtype=np.float64)
        # A row with a NaN is in no class (argmax would name the NaN's index, class 0 for
        # an all-NaN row, and feedback would count it right where the label is 0).
        answered = np.isfinite(scores).all(axis=1)
        return np.stack([np.where(answered, scores.argmax(axis=1), np.nan),
                         scores.max(axis=1)], axis=1)
    return np.asarray(flat[:, :MAX_OUTPUT_COLUMNS], dtype=np.float64)


def build_reference_profile(
    inputs: Any,
    outputs: Any = None,
    *,
    task: str = "other",
    feature_names: Sequence[str] | None = None,
    categorical: Sequence[int | str] = (),
    bins: int = 10,
    sample_size: int = 1024,
) -> dict[str, Any]:
    """The manifest's ``reference_profile`` from training inputs and the model's outputs.

    ``inputs`` is rows x features (the model's input layout); ``outputs`` is the model's
    first output on those rows (scores or labels for classification, values otherwise).
    Each feature keeps ``sample_size`` sorted sample values, fewer where the features are
    so many that :data:`SAMPLE_BUDGET` would be exceeded (KS and Wasserstein stay within
    ``1 / (2 * kept)`` of the full data's CDF).
    """
    from kernels import ReferenceProfile

    matrix = np.asarray(inputs, dtype=np.float64)
    width = matrix.shape[1] if matrix.ndim == 2 else 1
    sample_size = min(sample_size, max(MIN_SAMPLE_PER_FEATURE, SAMPLE_BUDGET // max(width, 1)))
    profile = ReferenceProfile.from_matrix(matrix, names=feature_names, bins=bins,
                                           categorical=categorical, sample_size=sample_size)
    document = profile.to_dict()
    if outputs is not None:
        output = np.asarray(outputs)
        features = prediction_features(task, output)
        if features is not None:
            names = prediction_names(task, output)
            kinds = [PREDICTED_CLASS] if task == "classification" else []
            document[PREDICTIONS_KEY] = ReferenceProfile.from_matrix(
                features, names=names, bins=bins, categorical=kinds, sample_size=sample_size
            ).to_dict()
    return document


def build_text_reference_profile(name: str, texts: Sequence[Any], outputs: Any = None, *,
                                 task: str = "other", vocabulary: Sequence[str] | None = None,
                                 bins: int = 10, sample_size: int = 1024) -> dict[str, Any]:
    """The reference profile of a model taking one text input ``name``: its derived
    features over the training ``texts``, the vocabulary (for the unknown-token rate) and
    the predictions, as :func:`build_reference_profile` makes them."""
    if vocabulary is not None and len(vocabulary) > MAX_VOCABULARY:
        raise ValueError(f"the vocabulary has {len(vocabulary)} words; at most {MAX_VOCABULARY}")
    words = frozenset(w.lower() for w in vocabulary) if vocabulary is not None else None
    document = build_reference_profile(
        text_features(texts, words), outputs, task=task, bins=bins, sample_size=sample_size,
        feature_names=text_feature_names(name, with_vocabulary=words is not None))
    document[TEXT_KEY] = {name: {"vocabulary": sorted(words) if words is not None else None}}
    return document


def text_inputs(document: dict[str, Any] | None) -> dict[str, frozenset[str] | None]:
    """The profile's text inputs and their vocabularies (None: no unknown-token rate)."""
    found = (document or {}).get(TEXT_KEY) or {}
    return {str(name): (frozenset(str(w).lower() for w in spec["vocabulary"])
                        if spec.get("vocabulary") is not None else None)
            for name, spec in found.items()}


def load_profiles(document: dict[str, Any] | None) -> tuple[ReferenceProfile | None, ReferenceProfile | None]:
    """(input profile, prediction profile) from a manifest's ``reference_profile``."""
    if not document:
        return None, None
    from kernels import ReferenceProfile

    inputs = ReferenceProfile.from_dict(document) if document.get("features") else None
    predictions = document.get(PREDICTIONS_KEY)
    return inputs, ReferenceProfile.from_dict(predictions) if predictions else None
