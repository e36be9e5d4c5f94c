"""Text inputs: one tokenizer for the builtin:tokenize step and for monitoring; the derived
features against a hand computation; drift on text seen where it happens (new words,
longer texts) and not where it does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kernels import ReferenceProfile, drift_report
from serving.monitoring.observations import ObservedRequests, VersionMonitoring, VersionObservations
from serving.monitoring.profiles import batch_features, build_text_reference_profile, text_inputs
from serving.runners.builtin_steps import load
from serving.schemas import TensorSignature, VersionConfig
from serving.text import text_features, tokenize

WORDS = ["good", "great", "fine", "bad", "awful", "service", "food", "the", "was", "and"]
TEXT = [TensorSignature(name="review", dtype="string", shape=[None])]


def reviews(n: int, seed: int, *, extra: list[str] = (), length: int = 6) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pool = WORDS + list(extra)
    return [" ".join(rng.choice(pool, size=rng.integers(length - 2, length + 3))).encode()
            for _ in range(n)]


def test_tokens_and_features_match_a_hand_count() -> None:
    assert tokenize("The food, was GREAT!") == ["the", "food", ",", "was", "great", "!"]
    vocabulary = frozenset({"the", "food", "was"})
    features = text_features([b"The food, was GREAT!", "", "caf\u00e9 au lait"], vocabulary)
    assert features.dtype == np.float64 and features.shape == (3, 3)
    np.testing.assert_allclose(features[0], [20, 6, 3 / 6])
    np.testing.assert_allclose(features[1], [0, 0, 0])
    assert features[2][1] == len(tokenize("caf\u00e9 au lait")) and features[2][2] == 1.0
    assert text_features(["a b"], None).shape == (1, 2)


def test_the_tokenize_step_pads_truncates_and_marks_unknown_words(tmp_path: Path) -> None:
    (tmp_path / "tokenize.json").write_text(json.dumps(
        {"input": "review", "output": "tokens", "vocabulary": ["good", "food"], "max_length": 4}))
    step = load("tokenize", tmp_path)
    out = step({"review": np.array([b"Good food", b"good bad food good good", b""], dtype=object)})
    np.testing.assert_array_equal(out["tokens"], [[2, 3, 0, 0], [2, 1, 3, 2], [0, 0, 0, 0]])
    assert out["tokens"].dtype == np.int64


def test_live_texts_become_the_features_the_profile_was_built_on() -> None:
    train = reviews(400, 0)
    profile = build_text_reference_profile("review", train, task="other", vocabulary=WORDS)
    assert text_inputs(profile) == {"review": frozenset(WORDS)}
    assert ReferenceProfile.from_dict(profile).names == (
        "review.chars", "review.tokens", "review.unknown_rate")
    live = {"review": [np.array(reviews(5, 1), dtype=object), np.array(reviews(3, 2), dtype=object)]}
    matrix = batch_features(TEXT, live, text_inputs(profile))
    expected = text_features([*live["review"][0], *live["review"][1]], frozenset(WORDS))
    np.testing.assert_array_equal(matrix, expected)
    assert batch_features(TEXT, live) is None  # without a text profile: unmonitored, as before


@pytest.mark.parametrize(("extra", "length", "drifted"), [
    ([], 6, set()),                                            # the same kind of text
    (["quinoa", "kombucha", "ramen", "matcha"], 6, {"review.unknown_rate"}),  # new words
    ([], 14, {"review.chars", "review.tokens"}),              # much longer reviews
])
def test_drift_on_text_is_found_where_it_happens(extra: list[str], length: int,
                                                 drifted: set[str]) -> None:
    profile_doc = build_text_reference_profile("review", reviews(2000, 0), vocabulary=WORDS)
    config = VersionConfig(version=1, model="m", artifact_url="http://unused", digest="0" * 64,
                           inputs=TEXT, outputs=[TensorSignature(name="score", dtype="float32",
                                                                 shape=[None])],
                           reference_profile=profile_doc)
    monitoring = VersionMonitoring.build(config)
    assert monitoring.problem == "" and monitoring.profile is not None
    observations = VersionObservations(monitoring)
    texts = reviews(600, 7, extra=extra, length=length)
    observed = ObservedRequests()
    for i, text in enumerate(texts):
        observed.add(f"r{i}", {"review": np.array([text], dtype=object)},
                     {"score": np.zeros(1, np.float32)}, None, "random")
    observations.account(observed)
    assert observations.rows == 600 and observations.unmonitored_rows == 0
    report = drift_report(monitoring.profile, observations.inputs, test="psi", alpha=0.01)
    if drifted:
        assert drifted <= set(report.drifted), report.drifted
    else:
        assert not report.drifted, report.drifted
