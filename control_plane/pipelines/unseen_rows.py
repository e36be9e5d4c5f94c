"""Held-out rows that neither compared model saw while it trained.

A champion trained on the data as it was, split its own way: once rows were appended (or
its seed or shares differ), the candidate's held-out rows hold rows the champion trained
on, and scored on them it looks better than it is. Each training job keeps the rows it saw
as a filter with its run (:mod:`training.trained_rows`); the evaluate stage scores both
models only on the rows the champion's filter does not hold, and, for held-out rows from
``evaluate.data_uri``, the candidate's either. (The job's own held-out rows are split
exactly as it split them, from the bytes it trained on: the candidate never saw them.) A
version without a filter (registered by hand, or trained before jobs kept one) cannot be
checked, and the report says so.
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
    """Per held-out row, whether the candidate or the champion trained on it, and the
    models whose rows could not be checked."""

    candidate_saw: np.ndarray
    champion_saw: np.ndarray
    names: tuple[str, str] = ("the candidate", "the champion")
    unchecked: list[str] = field(default_factory=list)

    @property
    def champion_saw_all(self) -> bool:
        return bool(len(self.champion_saw)) and bool(self.champion_saw.all())

    def kept(self) -> np.ndarray:
        """The rows to score both models on: neither saw them (all the candidate never
        saw where the champion saw every one: it is not compared then)."""
        if self.champion_saw_all:
            return ~self.candidate_saw
        return ~(self.candidate_saw | self.champion_saw)

    def note(self) -> str:
        parts = []
        left = [f"{name} trained on ({int(saw.sum())})" for name, saw, counted in (
            (self.names[0], self.candidate_saw, True),
            (self.names[1], self.champion_saw, not self.champion_saw_all)) if counted and saw.any()]
        if left:
            parts.append(f"{int((~self.kept()).sum())} held-out rows left out, which "
                         + " and ".join(left))
        if self.unchecked:
            parts.append("could not check which rows " + " and ".join(self.unchecked)
                         + " trained on (no trained-rows filter kept with its run): some "
                         "held-out rows may be among them")
        return "; ".join(parts)


def unseen_rows(services: Any, candidate: Any, champion: Any, features: np.ndarray, *,
                check_candidate: bool) -> UnseenRows:
    """Which of the held-out rows (``features``: the candidate's columns, or one text per
    row) the champion (a registry version, or None) and, with ``check_candidate``, the
    candidate trained on, by the filters their runs kept."""
    from control_plane.pipelines.evaluation import in_champion_order

    none = np.zeros(len(features), dtype=bool)
    result = UnseenRows(none, none.copy(), names=(
        f"{candidate.model}:{candidate.version}",
        f"{champion.model}:{champion.version}" if champion is not None else ""))
    if check_candidate:
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
