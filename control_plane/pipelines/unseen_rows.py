"""Held-out rows that neither compared model saw while it trained.

A champion trained on the data as it was, split its own way: once rows were appended (or
its seed or shares differ), the candidate's held-out rows hold rows the champion trained
on, and scored on them it looks better than it is. Each training job keeps the rows it saw
as a filter with its run (:mod:`training.trained_rows`); the evaluate stage scores both
models only on rows that both or neither saw (:class:`UnseenRows`). A version without a
filter (registered by hand, or trained before jobs kept one) cannot be checked, and the
report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from control_plane.errors import IntegrityError, NotFoundError
from control_plane.schemas import ModelManifest
from training import trained_rows

log = logging.getLogger(__name__)


@dataclass
class UnseenRows:
    """Per held-out row, whether the candidate or the champion trained on it (a row with
    its values), and the models whose rows could not be checked. A row only one of them
    saw is left out: it flatters that one. A row both saw is kept, as one neither saw:
    in a table of few distinct rows every held-out row repeats a training row of each."""

    candidate_saw: np.ndarray
    champion_saw: np.ndarray
    names: tuple[str, str] = ("the candidate", "the champion")
    unchecked: list[str] = field(default_factory=list)

    @property
    def only_candidate(self) -> np.ndarray:
        return self.candidate_saw & ~self.champion_saw

    @property
    def only_champion(self) -> np.ndarray:
        return self.champion_saw & ~self.candidate_saw

    def kept(self) -> np.ndarray:
        """The rows to score both models on."""
        return ~(self.only_candidate | self.only_champion)

    def scored(self) -> tuple[np.ndarray, str] | None:
        """The rows to score on, and why the champion is not compared on them ("" where it
        is): where every row is one only the champion saw, the candidate's on its own;
        None where every row is one only the candidate saw (nothing fair to judge it on)."""
        kept = self.kept()
        if not len(kept) or kept.any():
            return kept, ""
        fallback = ~self.only_candidate
        if not fallback.any():
            return None
        return fallback, (f"every held-out row is one {self.names[1]} trained on and the "
                          "candidate did not")

    def note(self) -> str:
        parts = []
        left = [f"only {name} trained on ({int(only.sum())})" for name, only in (
            (self.names[0], self.only_candidate), (self.names[1], self.only_champion))
            if only.any()]
        if left:
            parts.append(f"{int((~self.kept()).sum())} held-out rows left out, which "
                         + " and ".join(left))
        if self.unchecked:
            parts.append("could not check which rows " + " and ".join(self.unchecked)
                         + " trained on (no trained-rows filter kept with its run): some "
                         "held-out rows may be among them")
        return "; ".join(parts)


def unseen_rows(services: Any, candidate: Any, champion: Any, features: np.ndarray) -> UnseenRows:
    """Which of the held-out rows (``features``: the candidate's columns, or one text per
    row) the candidate and the champion (registry versions; the champion may be None)
    trained on, by the filters their runs kept."""
    from control_plane.pipelines.evaluation import in_champion_order

    none = np.zeros(len(features), dtype=bool)
    result = UnseenRows(none, none.copy(), names=(
        f"{candidate.model}:{candidate.version}",
        f"{champion.model}:{champion.version}" if champion is not None else ""))
    saw = _saw(services, candidate, features)
    if saw is None:
        result.unchecked.append(result.names[0])
    else:
        result.candidate_saw = saw
    if champion is not None:
        try:  # its columns, in its order, as it trained on them and is scored
            rows = in_champion_order(features, ModelManifest.model_validate(candidate.manifest),
                                     ModelManifest.model_validate(champion.manifest))
        except ValueError:  # a column it reads is not there: it is not compared at all
            return result
        saw = _saw(services, champion, rows)
        if saw is None:
            result.unchecked.append(result.names[1])
        else:
            result.champion_saw = saw
    return result


def _saw(services: Any, version: Any, rows: np.ndarray) -> np.ndarray | None:
    """Per row, whether ``version``'s kept filter holds it; None without a readable one."""
    name = f"{version.model}:{version.version}"
    run_id = ModelManifest.model_validate(version.manifest).lineage.run_id
    if not run_id:
        return None
    try:
        run = services.tracker.get_run(run_id)
        digest = next((a.digest for a in run.artifacts if a.path == trained_rows.ARTIFACT_PATH),
                      None)
        if digest is None:
            return None
        return trained_rows.seen(services.artifacts.read_bytes(digest), rows)
    except (NotFoundError, IntegrityError, trained_rows.TrainedRowsError) as error:
        # A run deleted since, or its filter lost or damaged: nothing to check with.
        log.warning("%s's trained rows cannot be checked: %s", name, error)
        return None
