"""Which held-out rows the evaluate stage scores: those neither model trained on, or both
did, by the filters their runs kept; a row only one of them saw flatters that one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from control_plane.errors import NotFoundError
from control_plane.pipelines.unseen_rows import unseen_rows
from training import trained_rows

MANIFEST: dict[str, Any] = {
    "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 3]}],
                  "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 2]}]},
    "task": "classification", "class_labels": ["no", "yes"]}


class Services:
    """The tracker's runs and the artifact store, as the stage reads them."""

    def __init__(self) -> None:
        self.runs: dict[str, list[Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.tracker = SimpleNamespace(get_run=self._run)
        self.artifacts = SimpleNamespace(read_bytes=self._read)

    def keep(self, run_id: str, filter_bytes: bytes | None) -> None:
        digest = f"{len(self.blobs):064x}"
        if filter_bytes is not None:
            self.blobs[digest] = filter_bytes
        self.runs[run_id] = [SimpleNamespace(path=trained_rows.ARTIFACT_PATH, digest=digest)]

    def _run(self, run_id: str) -> Any:
        if run_id not in self.runs:
            raise NotFoundError(f"no run {run_id}")
        return SimpleNamespace(artifacts=self.runs[run_id])

    def _read(self, digest: str) -> bytes:
        if digest not in self.blobs:
            raise NotFoundError(f"no artifact with digest {digest}")
        return self.blobs[digest]


def _version(number: int, columns: list[str], run_id: str | None) -> Any:
    return SimpleNamespace(model="m", version=number, manifest={
        **MANIFEST, "feature_names": columns, "lineage": {"run_id": run_id}})


def test_the_champion_s_rows_are_matched_in_its_own_column_order() -> None:
    """A champion reading the same columns in another order trained on rows laid out its
    way: matched in the candidate's order, none of its rows was ever found."""
    rng = np.random.default_rng(1)
    held_out = rng.normal(size=(40, 3))
    services = Services()
    services.keep("champion-run", trained_rows.build(held_out[:25][:, [2, 0, 1]]))
    candidate = _version(2, ["a", "b", "c"], None)
    champion = _version(1, ["c", "a", "b"], "champion-run")
    unseen = unseen_rows(services, candidate, champion, held_out)
    assert unseen.champion_saw.tolist() == [True] * 25 + [False] * 15
    assert unseen.kept().sum() == 15 and unseen.unchecked == ["m:2"]
    assert "25 held-out rows left out, which only m:1 trained on (25)" in unseen.note()


def test_rows_only_one_model_saw_are_left_out_and_rows_both_saw_are_kept() -> None:
    rows = np.random.default_rng(2).normal(size=(30, 3))
    services = Services()
    services.keep("candidate-run", trained_rows.build(rows[:10]))
    services.keep("champion-run", trained_rows.build(rows[5:20]))
    unseen = unseen_rows(services, _version(2, ["a", "b", "c"], "candidate-run"),
                         _version(1, ["a", "b", "c"], "champion-run"), rows)
    assert unseen.kept().tolist() == [False] * 5 + [True] * 5 + [False] * 10 + [True] * 10
    assert unseen.note() == ("15 held-out rows left out, which only m:2 trained on (5) and "
                             "only m:1 trained on (10)")


def test_a_table_of_few_distinct_rows_keeps_every_row() -> None:
    """Every held-out row of three yes-or-no features repeats a row each model trained on:
    left out, none were left, and the stage failed a candidate it could judge."""
    rng = np.random.default_rng(3)
    table = rng.integers(0, 2, size=(2000, 3)).astype(np.float64)
    services = Services()
    services.keep("candidate-run", trained_rows.build(table[:1400]))
    services.keep("champion-run", trained_rows.build(table[200:1600]))
    unseen = unseen_rows(services, _version(2, ["a", "b", "c"], "candidate-run"),
                         _version(1, ["a", "b", "c"], "champion-run"), table[1700:])
    assert unseen.candidate_saw.all() and unseen.champion_saw.all() and unseen.kept().all()
    assert unseen.note() == ""


def test_a_champion_that_saw_every_row_leaves_none_for_a_comparison() -> None:
    rows = np.random.default_rng(4).normal(size=(20, 3))
    services = Services()
    services.keep("champion-run", trained_rows.build(rows))
    unseen = unseen_rows(services, _version(2, ["a", "b", "c"], None),
                         _version(1, ["a", "b", "c"], "champion-run"), rows)
    # The evaluate stage then judges the candidate alone on them (test_pipeline_stops).
    assert not unseen.kept().any() and unseen.only_champion.all()


def test_a_filter_that_cannot_be_read_leaves_its_model_unchecked_and_says_so() -> None:
    rows = np.random.default_rng(4).normal(size=(10, 3))
    services = Services()
    services.keep("lost-filter", None)  # its artifact is gone from the store
    services.keep("damaged", b"not a filter")
    candidate = _version(3, ["a", "b", "c"], None)
    for run_id in ("lost-filter", "damaged", "deleted-run", None):
        unseen = unseen_rows(services, candidate, _version(1, ["a", "b", "c"], run_id), rows)
        assert unseen.unchecked == ["m:3", "m:1"] and unseen.kept().all()
        assert "could not check which rows m:3 and m:1 trained on" in unseen.note()
