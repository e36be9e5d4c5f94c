"""Rows for KS and Wasserstein, spread over any window that ends now.

Replicas ship, about once a second per way of routing, a few hundred of the rows they
saw and how many they saw. A window's sample must weigh each shipment as its share of
the window's rows, however long the window: keeping only the newest rows gave a busy
version its last few seconds and a quiet one its whole window, so a burst of far-off
rows half a minute ago was gone from stable's sample and still in the candidate's, and
read as the candidate's own drift.

Each shipment is a stratum: its rows are held in a random order, and cut, as newer
shipments arrive, to what any window could still ask of it. A window takes from each
stratum its share, ``limit * rows / total``, where ``total`` counts the window's rows;
``total`` only grows as a window reaches further back, so a stratum of slot ``s`` never
gives more than ``ceil(limit * rows / total_since(s))``, and holding that much answers
every window. About ``limit * (1 + ln(shipped / limit))`` rows are held, and at least one
per shipment; up to twice that between cuts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

# Rows one shipment may say it counted: far beyond any replica's second, and small enough
# that sums over five minutes of shipments stay exact in a float.
MAX_ROWS = 2**40


@dataclass
class _Stratum:
    epoch: int
    rows: int  # the rows its shipment counted
    shipped: int  # of which it shipped these
    held: np.ndarray  # a uniform random subset of the shipped rows, in random order


class WindowSample:
    """One profile's shipped rows, per stratum, for samples of up to ``limit`` rows."""

    def __init__(self, limit: int, rng: np.random.Generator | None = None) -> None:
        self.limit = limit
        self._strata: deque[_Stratum] = deque()
        self._held = 0
        self._held_after_cut = 0
        self._rng = rng if rng is not None else np.random.default_rng()

    @property
    def held(self) -> int:
        return self._held

    def add(self, epoch: int, rows: int, sample: np.ndarray) -> None:
        """One shipment of ``rows`` rows and ``sample``, some of them, made in ``epoch``."""
        rows = min(rows, MAX_ROWS)
        shipped = min(sample.shape[0], rows, self.limit)
        if shipped <= 0:
            return
        # float32: what replicas ship, and half the memory of the strata held.
        picked = self._rng.choice(sample.shape[0], shipped, replace=False)
        held = np.asarray(sample[picked], dtype=np.float32)
        self._strata.append(_Stratum(epoch, rows, shipped, held))
        self._held += shipped
        # Amortized: a cut walks every stratum (300 a second's worth per replica), so it
        # runs once the rows held have doubled since the last, not every LIMIT rows.
        if self._held > 2 * self._held_after_cut + self.limit:
            self._cut()

    def forget_before(self, epoch: int) -> None:
        while self._strata and self._strata[0].epoch < epoch:
            self._held -= self._strata.popleft().held.shape[0]
        self._held_after_cut = min(self._held_after_cut, self._held)

    def since(self, epoch: int) -> list[_Stratum]:
        return [stratum for stratum in self._strata if stratum.epoch >= epoch]

    def _cut(self) -> None:
        epochs = np.fromiter((s.epoch for s in self._strata), dtype=np.int64)
        rows = np.fromiter((s.rows for s in self._strata), dtype=np.float64)
        # Rows of the slots at or after each stratum's (a clock stepping back may leave
        # epochs out of order: the sum is over epochs, not over the deque's order).
        _, index = np.unique(epochs, return_inverse=True)
        since = np.bincount(index, weights=rows)[::-1].cumsum()[::-1][index]
        keep = np.ceil(self.limit * rows / since).astype(np.int64)
        held = np.fromiter((s.held.shape[0] for s in self._strata), dtype=np.int64)
        strata = list(self._strata)
        for position in np.flatnonzero(held > keep):
            # A copy: a slice would keep the whole shipment's rows alive behind it.
            strata[position].held = strata[position].held[:keep[position]].copy()
        self._held -= int(np.maximum(held - keep, 0).sum())
        self._held_after_cut = self._held


def spread_sample(parts: list[WindowSample], first_epoch: int, limit: int, width: int) -> np.ndarray:
    """A sample of the rows of ``parts`` (one profile's, per way of routing) shipped since
    ``first_epoch``: each shipment gives its share of the window's rows, and the sample is
    the largest, up to ``limit`` rows, in which every shipment's share fits in what it
    shipped. ``width``: the profile's features (the shape of an empty sample)."""
    strata = sorted((s for part in parts for s in part.since(first_epoch)), key=lambda s: s.epoch)
    if not strata:
        return np.empty((0, width))
    total = sum(s.rows for s in strata)
    size = min(limit, *(s.shipped * total / s.rows for s in strata))
    # Systematic rounding of each share along the strata: the takes sum to the size, and
    # each is its share's floor or ceiling, so a quiet second's rows are not all rounded away.
    cumulative = np.cumsum(np.fromiter((s.rows for s in strata), dtype=np.float64))
    bounds = np.floor(size * cumulative / total + 0.5).astype(np.int64)
    takes = np.diff(bounds, prepend=0)
    chunks = [s.held[:take] for s, take in zip(strata, takes, strict=True) if take > 0]
    return np.concatenate(chunks).astype(np.float64) if chunks else np.empty((0, width))
