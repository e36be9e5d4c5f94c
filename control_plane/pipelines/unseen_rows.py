"""Held-out rows that neither compared model saw while it trained.

A champion trained on the data as it was, split its own way: once rows were appended (or
its seed or shares differ), the candidate's held-out rows hold rows the champion trained
on, and scored on them it looks better than it is. Each training job keeps the rows it saw
as a filter with its run (:mod:`training.trained_rows`); the evaluate stage scores both
models only on the rows neither filter holds. A version without one (registered by hand,
or trained before jobs kept it) cannot be checked, and the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from control_plane.errors import NotFoundError
from control_plane.schemas import ModelManifest
from training import trained_rows

log = logging.getLogger(__name__)


@dataclass
class UnseenRows:
    """Which held-out rows are left out, and what could not be checked."""

    seen: np.ndarray  # per held-out row: a compared model trained on it
    left_out: dict[str, int] = field(default_factory=dict)  # per model, rows it saw
    unchecked: list[str] = field(default_factory=list)  # models whose rows are not kept

    def note(self) -> str:
        parts = []
        if self.seen.any():
            parts.append(f"{int(self.seen.sum())} held-out rows left out, which "
                         + " and ".join(f"{name} trained on ({count})"
                                        for name, count in self.left_out.items() if count))
        if self.unchecked:
            parts.append("could not check which rows " + " and ".join(self.unchecked)
                         + " trained on (no trained-rows filter kept with its run): some "
                         "held-out rows may be among them")
        return "; ".join(parts)


def unseen_rows(services: Any, versions: list[Any], features: np.ndarray) -> UnseenRows:
    """The held-out rows (``features``: rows, or one text per row) any of ``versions``
    (registry versions; None skipped) trained on, by the filters their runs kept."""
    result = UnseenRows(np.zeros(len(features), dtype=bool))
    for version in versions:
        if version is None:
            continue
        name = f"{version.model}:{version.version}"
        kept = _kept_filter(services, version)
        if kept is None:
            result.unchecked.append(name)
            continue
        try:
            held = trained_rows.seen(kept, features)
        except trained_rows.TrainedRowsError as error:
            log.warning("%s's trained-rows filter is unreadable: %s", name, error)
            result.unchecked.append(name)
            continue
        result.left_out[name] = int((held & ~result.seen).sum())
        result.seen |= held
    return result


def _kept_filter(services: Any, version: Any) -> bytes | None:
    run_id = ModelManifest.model_validate(version.manifest).lineage.run_id
    if not run_id:
        return None
    try:
        run = services.tracker.get_run(run_id)
    except NotFoundError:  # a run deleted since: nothing to check with
        return None
    digest = next((a.digest for a in run.artifacts if a.path == trained_rows.ARTIFACT_PATH), None)
    return None if digest is None else services.artifacts.read_bytes(digest)
