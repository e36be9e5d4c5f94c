"""The filter of rows a model trained on: it never misses one it holds, rarely takes one
it does not, and knows a row whichever loader read it."""

from __future__ import annotations

import numpy as np
import pytest

from training import trained_rows


def test_every_row_kept_is_seen_and_few_others_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trained_rows, "_CHUNK_ROWS", 3000)  # hashed a chunk at a time
    rng = np.random.default_rng(7)
    train, validation = rng.normal(size=(20_000, 12)), rng.normal(size=(5_000, 12))
    kept = trained_rows.build(train, validation)
    assert trained_rows.rows_held(kept) == 25_000
    assert trained_rows.seen(kept, train).all() and trained_rows.seen(kept, validation).all()
    fresh = rng.normal(size=(50_000, 12))
    false_positives = trained_rows.seen(kept, fresh).mean()
    assert false_positives < 0.004  # a thousandth by design; four allows for chance
    # A row differing from a kept one in a single value is another row.
    nudged = train[:1000].copy()
    nudged[:, 3] += 1e-3
    assert trained_rows.seen(kept, nudged).mean() < 0.01


def test_a_row_is_known_whichever_loader_widened_it() -> None:
    rows = np.random.default_rng(8).normal(size=(500, 6)).astype(np.float32)
    kept = trained_rows.build(rows)
    assert trained_rows.seen(kept, rows.astype(np.float64)).all()  # a CSV read as float64


def test_texts_are_known_by_their_words() -> None:
    texts = np.array(["the screen broke", "arrived late", "great value"], dtype=object)
    kept = trained_rows.build(texts)
    assert trained_rows.seen(kept, texts).tolist() == [True, True, True]
    others = np.array(["the screen broke!", "Arrived late", "a new text"], dtype=object)
    assert not trained_rows.seen(kept, others).any()


def test_a_filter_past_its_bound_still_misses_no_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_BYTES the filter takes more rows it does not hold (they are left out too,
    which costs evidence, never fairness), and still holds every row it was built from."""
    monkeypatch.setattr(trained_rows, "MAX_BYTES", 256)
    rows = np.random.default_rng(9).normal(size=(2_000, 3))
    kept = trained_rows.build(rows)
    assert len(kept) < 300
    assert trained_rows.seen(kept, rows).all()


def test_an_empty_set_of_rows_and_an_unreadable_filter() -> None:
    kept = trained_rows.build(np.empty((0, 4)))
    assert trained_rows.rows_held(kept) == 0
    assert not trained_rows.seen(kept, np.ones((3, 4))).any()
    assert trained_rows.seen(kept, np.empty((0, 4))).shape == (0,)
    for broken in (b"", b"not a filter", kept[:-1], trained_rows.MAGIC + bytes(17) + kept[22:]):
        with pytest.raises(trained_rows.TrainedRowsError):
            trained_rows.seen(broken, np.ones((1, 4)))
