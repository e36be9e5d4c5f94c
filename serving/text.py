"""Text as the platform reads it: one tokenizer for the ``builtin:tokenize`` step and for
the features drift is measured on, so what the model sees and what monitoring counts are
the same tokens.

A text input (a ``string`` tensor of one value per row) is monitored through features
derived per row: its length in characters, its number of tokens and, where the version's
reference profile carries the vocabulary the model was trained on, the share of its tokens
outside it (a new product name, another language, a broken upstream encoding).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

_TOKEN = re.compile(r"[0-9a-z']+|[^\s0-9a-z']", flags=re.IGNORECASE)
TEXT_FEATURES = ("chars", "tokens", "unknown_rate")
MAX_TEXT_CHARS = 100_000  # longer texts are counted on their first this many characters


def as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def tokenize(text: str, *, lowercase: bool = True) -> list[str]:
    """Words (letters, digits, apostrophes) and single punctuation marks, in order."""
    text = text[:MAX_TEXT_CHARS]
    return _TOKEN.findall(text.lower() if lowercase else text)


def text_feature_names(name: str, *, with_vocabulary: bool) -> tuple[str, ...]:
    features = TEXT_FEATURES if with_vocabulary else TEXT_FEATURES[:2]
    return tuple(f"{name}.{feature}" for feature in features)


def text_features(values: Iterable[object], vocabulary: frozenset[str] | None = None) -> np.ndarray:
    """Rows x (chars, tokens[, unknown_rate]) as float64, one row per text."""
    rows = []
    for value in values:
        text = as_text(value)
        words = tokenize(text)
        row = [float(len(text)), float(len(words))]
        if vocabulary is not None:
            row.append(sum(w not in vocabulary for w in words) / len(words) if words else 0.0)
        rows.append(row)
    width = 3 if vocabulary is not None else 2
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)


def is_text_input(dtype: str, shape: list[int | None]) -> bool:
    """A string input of one text per row: ``[batch]`` or ``[batch, 1]``."""
    return dtype == "string" and bool(shape) and (len(shape) == 1 or list(shape[1:]) == [1])
