"""Text for ``text_classifier`` jobs: the generated ``reviews`` dataset, the vocabulary a
job fits on its training rows, and the token ids the network learns on.

The ids are made by the serving stack's own ``builtin:tokenize`` step, which the registered
version runs in front of its graph: what the network learned on and what it is served are
the same tokens by construction (the job still proves it on the held-out rows).

``reviews`` is generated, not downloaded (jobs run where nothing can be fetched): short
product reviews from a fixed seed, each a few sentences of neutral words around sentiment
words, with a share of reviews that mix both sentiments and a share of flipped labels, so
the task is learnable but not trivial (a bag of words reaches about 0.9 accuracy).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REVIEW_CLASSES = ["negative", "positive"]
REVIEW_ROWS = 2000
_POSITIVE = ("great", "excellent", "love", "perfect", "reliable", "fast", "comfortable",
             "sturdy", "recommend", "happy", "works", "brilliant", "solid", "quiet", "easy")
_NEGATIVE = ("broke", "terrible", "slow", "refund", "disappointed", "awful", "flimsy",
             "noisy", "returned", "useless", "leaks", "cheap", "stopped", "waste", "poor")
_SUBJECTS = ("the blender", "this kettle", "the charger", "these headphones", "the backpack",
             "this lamp", "the keyboard", "the drill", "this jacket", "the speaker")
_FILLER = ("i bought it last month", "it arrived on tuesday", "the box was plain",
           "my sister has one too", "it comes in three colours", "i use it every day",
           "the manual is short", "shipping took a week", "it was a gift", "the price was normal")
_PHRASES = {
    1: ("{s} is {w}", "really {w}", "{w} so far", "i {w} it", "{w} value"),
    0: ("{s} is {w}", "really {w}", "{w} after a week", "it {w}", "{w} value"),
}


def generate_reviews(rows: int = REVIEW_ROWS, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``rows`` reviews and their labels (1 positive, 0 negative), the same for a seed."""
    rng = np.random.default_rng(seed)
    texts, labels = [], np.zeros(rows, dtype=np.int64)
    for row in range(rows):
        label = int(rng.integers(2))
        subject = str(rng.choice(_SUBJECTS))
        parts = [str(rng.choice(_FILLER)) for _ in range(int(rng.integers(1, 3)))]
        strong = int(rng.integers(1, 3))
        mixed = rng.random() < 0.25  # the other sentiment too, but less of it
        for sentiment, count in ((label, strong), (1 - label, int(mixed))):
            words = _POSITIVE if sentiment == 1 else _NEGATIVE
            for _ in range(count):
                phrase = str(rng.choice(_PHRASES[sentiment]))
                parts.append(phrase.format(s=subject, w=str(rng.choice(words))))
        rng.shuffle(parts)
        text = ". ".join(parts).capitalize() + str(rng.choice([".", "!", ""]))
        texts.append(text)
        labels[row] = label if rng.random() >= 0.04 else 1 - label  # label noise
    return texts, labels


def reviews_digest(texts: Sequence[str], labels: np.ndarray) -> str:
    hasher = hashlib.sha256("\n".join(texts).encode())
    hasher.update(labels.tobytes())
    return hasher.hexdigest()


def fit_vocabulary(texts: Iterable[Any], size: int, *, min_count: int = 2) -> list[str]:
    """The ``size`` most frequent words seen at least ``min_count`` times, most frequent
    first (ties alphabetical, so the same rows give the same vocabulary)."""
    from serving.text import as_text, tokenize

    counts = Counter(word for text in texts for word in tokenize(as_text(text)))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return ranked[:size]


@dataclass(frozen=True)
class TextEncoding:
    """How a job turns texts into ids: the ``builtin:tokenize`` step's parameters."""

    vocabulary: list[str]
    max_length: int
    input_name: str = "text"
    output_name: str = "tokens"

    @property
    def step_params(self) -> dict[str, Any]:
        return {"input": self.input_name, "output": self.output_name,
                "vocabulary": self.vocabulary, "max_length": self.max_length}

    @property
    def id_count(self) -> int:
        """Embedding rows: padding (0), unknown (1) and one per vocabulary word."""
        return len(self.vocabulary) + 2

    def encode(self, texts: np.ndarray) -> np.ndarray:
        """int64 ids ``[rows, max_length]``, exactly as the served step makes them."""
        from serving.runners.builtin_steps import tokenize

        step = tokenize(self.step_params)
        return step({self.input_name: np.asarray(texts, dtype=object).reshape(-1)})[self.output_name]
