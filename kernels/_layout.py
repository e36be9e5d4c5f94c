"""A reference profile packed into flat arrays, the only form kernels read.

Ragged per-feature data (bins, edges, samples) is concatenated with an offsets array per
kind of data, so one compiled call walks every feature without Python in the loop.
Built with NumPy only; no Numba here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kernels.profile import FeatureProfile, ReferenceProfile

KIND_NUMERIC = 0
KIND_CATEGORICAL = 1
# Edges per row of ``padded_edges``: a numeric feature with at most this many has its bin
# counted by a loop of this fixed length (kernels._quality_kernels).
PADDED_EDGES = 16

# Rank-lookup cells per distinct sample value: enough that most cells hold at most one
# value, so finding a live value's rank is one multiply and a short scan.
_CELLS_PER_VALUE = 8


@dataclass(frozen=True, eq=False)
class ProfileLayout:
    """Packed profile. ``*_offsets[f]:*_offsets[f+1]`` slices feature ``f``'s part."""

    kinds: np.ndarray  # int64[F]
    bin_offsets: np.ndarray  # int64[F+1] into ref_counts and any live histogram
    ref_counts: np.ndarray  # int64[total bins]
    edge_offsets: np.ndarray  # int64[F+1] into edges
    edges: np.ndarray  # float64: inner edges (numeric) or category codes (categorical)
    padded_edges: np.ndarray  # float64[F, PADDED_EDGES]: short numeric features' edges, +inf after
    ref_n: np.ndarray  # int64[F] non-missing reference values
    ref_min: np.ndarray  # float64[F]
    ref_max: np.ndarray  # float64[F]
    sample_offsets: np.ndarray  # int64[F+1] into uniques and cumulative
    uniques: np.ndarray  # float64: distinct sorted sample values, padded (pad_sample)
    cumulative: np.ndarray  # int64: sample values <= each distinct value, padded
    sample_n: np.ndarray  # int64[F] sample size (0 for categorical or empty)
    table_offsets: np.ndarray  # int64[F+1] into table (each feature: cells + 1 entries)
    table: np.ndarray  # int32 (half the cache footprint): values in cells before each cell
    table_lo: np.ndarray  # float64[F] value where cell 0 starts
    table_scale: np.ndarray  # float64[F] cells per unit of value
    cache: dict = field(default_factory=dict)  # derived per-profile results (null models)

    @property
    def n_features(self) -> int:
        """Number of features."""
        return int(self.kinds.size)

    @property
    def n_bins(self) -> int:
        """Total histogram bins over all features."""
        return int(self.bin_offsets[-1])

    @classmethod
    def build(cls, profile: ReferenceProfile) -> ProfileLayout:
        """Pack ``profile``."""
        features = profile.features
        kinds = np.array([KIND_CATEGORICAL if f.kind == "categorical" else KIND_NUMERIC
                          for f in features], dtype=np.int64)
        uniques, cumulative, tables, lows, scales, sizes = [], [], [], [], [], []
        for f in features:
            sample = np.asarray(f.sample, dtype=np.float64)
            values, counts = np.unique(sample, return_counts=True)
            uniques.append(pad_sample(values))
            cumulative.append(pad_cumulative(counts))
            sizes.append(sample.size)
            table, lo, scale = rank_table(values)
            tables.append(table)
            lows.append(lo)
            scales.append(scale)
        return cls(
            kinds=kinds,
            bin_offsets=_offsets([len(f.counts) for f in features]),
            ref_counts=_concat([np.asarray(f.counts, dtype=np.int64) for f in features], np.int64),
            edge_offsets=_offsets([len(f.edges) for f in features]),
            edges=_concat([np.asarray(f.edges, dtype=np.float64) for f in features], np.float64),
            padded_edges=padded_edges(features),
            ref_n=np.array([f.count for f in features], dtype=np.int64),
            ref_min=np.array([f.min for f in features], dtype=np.float64),
            ref_max=np.array([f.max for f in features], dtype=np.float64),
            sample_offsets=_offsets([v.size for v in uniques]),
            uniques=_concat(uniques, np.float64),
            cumulative=_concat(cumulative, np.int64),
            sample_n=np.array(sizes, dtype=np.int64),
            table_offsets=_offsets([t.size for t in tables]),
            table=_concat(tables, np.int32),
            table_lo=np.array(lows, dtype=np.float64),
            table_scale=np.array(scales, dtype=np.float64),
        )


def padded_edges(features: Sequence[FeatureProfile]) -> np.ndarray:
    """Per feature, its inner edges followed by +inf up to ``PADDED_EDGES`` (no finite
    value is at or above +inf, so the padding never counts); all +inf for a feature the
    kernels bin another way (categorical, or more edges)."""
    padded = np.full((len(features), PADDED_EDGES), np.inf)
    for index, feature in enumerate(features):
        if feature.kind != "categorical" and len(feature.edges) <= PADDED_EDGES:
            padded[index, :len(feature.edges)] = feature.edges
    return padded


def rank_table(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Cell table for ranking a value among sorted distinct ``values``.

    Cell of x: ``min(int((x - lo) * scale), cells - 1)`` for ``lo <= x <= values[-1]``;
    ``table[c]`` counts values whose cell is below ``c`` (stored as ``-1 - count`` when
    cell ``c`` holds more than one value). Because the cell formula is monotone in x,
    every value counted by ``table[c]`` is below any x in cell ``c`` and every value
    counted from ``table[c+1]`` on is above it, whatever the rounding: the kernel only
    compares x with the values inside cell ``c``. This NumPy arithmetic must stay the
    same as the kernel's, which it is (IEEE float64 subtract, multiply, truncate).
    """
    if values.size == 0:
        return np.zeros(2, dtype=np.int32), 0.0, 0.0
    cells = _CELLS_PER_VALUE * values.size
    lo = float(values[0])
    spread = float(values[-1]) - lo
    scale = cells / spread if spread > 0 else 0.0
    if not np.isfinite(scale):  # a spread so small (subnormal) or large its inverse is not
        scale = 0.0
    cell_of = np.minimum(((values - lo) * scale).astype(np.int64), cells - 1)
    table = np.searchsorted(cell_of, np.arange(cells + 1), side="left").astype(np.int64)
    # Flag cells holding two or more values (entry -1 - count): the kernel takes its slow
    # path only there, so the common path needs no second look at the values.
    crowded = np.flatnonzero(np.diff(table) > 1)
    table[crowded] = -1 - table[crowded]
    return table.astype(np.int32), lo, scale


def pad_sample(values: np.ndarray) -> np.ndarray:
    """``[u0, u0..u(M-1), NaN]``: the rank kernel reads one past either end without a
    bounds check, and NaN compares False so a scan stops there."""
    if values.size == 0:
        return np.array([np.nan, np.nan])
    return np.concatenate(([values[0]], values, [np.nan]))


def pad_cumulative(counts: np.ndarray) -> np.ndarray:
    """``[0, c0..c(M-1), m]`` for distinct-value counts: ``cj`` values are <= the j-th."""
    cumulative = np.cumsum(counts, dtype=np.int64)
    total = cumulative[-1] if cumulative.size else 0
    return np.concatenate(([0], cumulative, [total])).astype(np.int64)


def _offsets(sizes: list[int]) -> np.ndarray:
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0), dtype=dtype)
