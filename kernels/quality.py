"""Live data for drift and data quality: histograms, counters and recent samples.

A :class:`LiveWindow` is what a model server updates for every batch it serves: one
compiled pass (no Python loop over rows) counts missing and out-of-range values per
feature, adds every value to the feature's histogram over the reference bins, and keeps
the newest rows in a column-major ring so KS and Wasserstein read contiguous columns.
Counts are mergeable, so replicas ship deltas and the monitor adds them up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels import _quality_kernels as _k
from kernels.errors import ShapeMismatchError
from kernels.profile import ReferenceProfile


@dataclass(frozen=True)
class FeatureQuality:
    """Data-quality counts of one feature over a live window."""

    name: str
    values: int
    missing: int
    out_of_range: int
    missing_rate: float
    out_of_range_rate: float
    reference_missing_rate: float


class LiveWindow:
    """Live histograms and quality counters for one reference profile, plus a sample ring.

    ``sample_capacity`` rows are kept for sample statistics (KS, Wasserstein); 0 keeps
    none, and the drift report then uses histogram statistics only. A window is not
    locked: one thread updates it (replicas ship deltas to the monitor, which merges).
    """

    def __init__(self, profile: ReferenceProfile, sample_capacity: int = 10_000) -> None:
        self.profile = profile
        self._layout = profile.layout()
        features = self._layout.n_features
        self.hist = np.zeros(self._layout.n_bins, dtype=np.int64)
        self.missing = np.zeros(features, dtype=np.int64)
        self.out_of_range = np.zeros(features, dtype=np.int64)
        self._samples = np.zeros((features, max(int(sample_capacity), 0)))
        self._state = np.zeros(_k.N_WINDOW_STATE, dtype=np.int64)

    def update(self, batch: Any) -> None:
        """Account for a batch of rows (rows x features; one row may be 1-D)."""
        matrix = np.ascontiguousarray(batch, dtype=np.float64)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape[1] != self._layout.n_features:
            raise ShapeMismatchError(
                f"Batch shape {matrix.shape} does not match the profile's "
                f"{self._layout.n_features} features; send rows x features.",
                detail={"expected_features": self._layout.n_features},
            )
        lay = self._layout
        _k.update_window(matrix, lay.kinds, lay.bin_offsets, lay.edge_offsets, lay.edges,
                         lay.padded_edges, lay.ref_min, lay.ref_max, self.hist, self.missing,
                         self.out_of_range, self._samples, self._state)

    @property
    def rows(self) -> int:
        """Rows accounted for (merged deltas included)."""
        return int(self._state[_k.W_ROWS])

    @property
    def sample_capacity(self) -> int:
        """Rows the sample ring can hold."""
        return int(self._samples.shape[1])

    def sample_columns(self) -> np.ndarray:
        """The held samples, column-major (features x held rows), in ring order (a view)."""
        return self._samples[:, : int(self._state[_k.W_SIZE])]

    def samples(self) -> np.ndarray:
        """The held rows, oldest first (rows x features, a copy)."""
        size = int(self._state[_k.W_SIZE])
        start = int(self._state[_k.W_NEXT]) if size == self.sample_capacity else 0
        order = (np.arange(size) + start) % max(self.sample_capacity, 1)
        return np.ascontiguousarray(self._samples[:, order].T)

    def merge(self, other: LiveWindow) -> LiveWindow:
        """Add another window's counts, and append its samples to this ring; returns self."""
        self._check(other)
        self.hist += other.hist
        self.missing += other.missing
        self.out_of_range += other.out_of_range
        rows = other.samples()
        if rows.size and self.sample_capacity:
            # Appending through the kernel also counts the rows; undo that, the counts
            # came with the histograms above.
            scratch = LiveWindow(self.profile, 0)
            lay = self._layout
            _k.update_window(rows, lay.kinds, lay.bin_offsets, lay.edge_offsets, lay.edges,
                             lay.padded_edges, lay.ref_min, lay.ref_max, scratch.hist,
                             scratch.missing, scratch.out_of_range, self._samples, self._state)
            self._state[_k.W_ROWS] -= rows.shape[0]
        self._state[_k.W_ROWS] += other.rows
        return self

    def subtract(self, other: LiveWindow) -> LiveWindow:
        """Remove another window's counts (its samples cannot be taken back); returns self."""
        self._check(other)
        if (np.any(other.hist > self.hist) or np.any(other.missing > self.missing)
                or np.any(other.out_of_range > self.out_of_range) or other.rows > self.rows):
            raise ShapeMismatchError("Cannot subtract a window with counts this one does not hold; "
                                     "subtract only a window that was merged in.")
        self.hist -= other.hist
        self.missing -= other.missing
        self.out_of_range -= other.out_of_range
        self._state[_k.W_ROWS] -= other.rows
        return self

    def reset(self) -> None:
        """Forget all counts and samples."""
        for array in (self.hist, self.missing, self.out_of_range, self._state):
            array[:] = 0

    def quality(self) -> tuple[FeatureQuality, ...]:
        """Per-feature missing and out-of-range counts and rates over the window."""
        out = []
        for i, feature in enumerate(self.profile.features):
            seen = int(self.hist[self._layout.bin_offsets[i]:self._layout.bin_offsets[i + 1]].sum())
            missing, wrong = int(self.missing[i]), int(self.out_of_range[i])
            total = seen + missing
            out.append(FeatureQuality(
                feature.name, seen, missing, wrong, missing / total if total else 0.0,
                wrong / seen if seen else 0.0, feature.missing_rate))
        return tuple(out)

    def feature_counts(self, index: int) -> np.ndarray:
        """The live histogram of feature ``index`` (a view)."""
        return self.hist[self._layout.bin_offsets[index]:self._layout.bin_offsets[index + 1]]

    def _check(self, other: LiveWindow) -> None:
        if other.profile is not self.profile and other.profile != self.profile:
            raise ShapeMismatchError("Live windows built on different reference profiles cannot be combined.")
