"""Reference profiles: what the training data looked like, per feature, for drift checks.

A profile travels inside the model manifest, so it is plain data: frozen dataclasses of
tuples with :meth:`ReferenceProfile.to_dict` (strict JSON, no NaN) and
:meth:`ReferenceProfile.to_bytes`. Kernels read it through a packed layout of flat
arrays built once on first use (:mod:`kernels._layout`). This module does not import
Numba.

Non-finite values (NaN, +-inf) count as missing, in the reference and in live data alike.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kernels.errors import InvalidValueError, ShapeMismatchError

NUMERIC = "numeric"
CATEGORICAL = "categorical"
_BYTES_MAGIC = b"MPRP1"


@dataclass(frozen=True, eq=False)
class FeatureProfile:
    """One feature of the reference data.

    Numeric: ``edges`` are the inner bin edges, ascending; bin ``j`` holds
    ``edges[j-1] <= x < edges[j]``, and the outer bins are open-ended. Categorical:
    ``edges`` are the category codes, ascending, one bin each, plus a last bin for codes
    the reference never saw. Either way ``len(counts) == len(edges) + 1``.

    ``sample`` is the sorted reference values (numeric only) for KS and Wasserstein: all
    of them, or ``sample_size`` evenly spaced order statistics when there are more, which
    keeps each empirical CDF point within ``1 / (2 * sample_size)`` of the full data's.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    missing: int
    min: float
    max: float
    sample: tuple[float, ...] = ()

    @property
    def bins(self) -> int:
        """Number of histogram bins (at least 1)."""
        return len(self.counts)

    def _key(self) -> tuple[Any, ...]:
        # Missing extrema are NaN, and NaN != NaN would make a feature unequal to its own
        # copy (pickled or parsed): compare them as None.
        return (self.name, self.kind, self.edges, self.counts, self.count, self.missing,
                _json_float(self.min), _json_float(self.max), self.sample)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureProfile):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def missing_rate(self) -> float:
        """Fraction of reference rows where this feature was missing."""
        total = self.count + self.missing
        return self.missing / total if total else 0.0


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-feature reference histograms, extrema, missing rates and samples."""

    features: tuple[FeatureProfile, ...]
    _layout: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_matrix(cls, data: Any, *, names: Sequence[str] | None = None, bins: int = 10,
                    categorical: Sequence[int | str] = (), sample_size: int = 1024) -> ReferenceProfile:
        """Profile a training matrix (rows x features).

        ``bins`` quantile-based bins per numeric feature (fewer when values repeat);
        ``categorical`` lists feature indices or names whose values are category codes.
        """
        matrix = np.asarray(data, dtype=np.float64)
        if matrix.ndim == 1:
            matrix = matrix[:, None]
        if matrix.ndim != 2:
            raise ShapeMismatchError(f"A reference matrix must be 2-D (rows x features), got shape {matrix.shape}.")
        if bins < 1 or sample_size < 1:
            raise InvalidValueError(f"bins and sample_size must be >= 1, got {bins!r} and {sample_size!r}.")
        width = matrix.shape[1]
        names = [f"f{i}" for i in range(width)] if names is None else [str(n) for n in names]
        if len(names) != width or len(set(names)) != width:
            raise ShapeMismatchError(f"Need {width} distinct feature names, got {names!r}.")
        wanted = {names[c] if isinstance(c, int | np.integer) else str(c) for c in categorical}
        if unknown := wanted - set(names):
            raise ShapeMismatchError(f"Categorical features {sorted(unknown)} are not among {names}.")
        features = tuple(
            _profile_column(name, matrix[:, i], name in wanted, bins, sample_size)
            for i, name in enumerate(names)
        )
        return cls(features)

    def __getstate__(self) -> dict[str, Any]:
        # The packed layout is derived (and holds caches); rebuild it after unpickling
        # rather than shipping it between Ray actors.
        return {**self.__dict__, "_layout": None}

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names, in column order."""
        return tuple(f.name for f in self.features)

    @property
    def n_features(self) -> int:
        """Number of features (columns) the profile expects."""
        return len(self.features)

    def feature(self, name: str) -> FeatureProfile:
        """The profile of one feature by name."""
        for f in self.features:
            if f.name == name:
                return f
        raise ShapeMismatchError(f"No feature named {name!r}; the profile has {list(self.names)}.")

    def layout(self) -> Any:
        """The packed arrays kernels read (built once, then cached on this profile)."""
        if self._layout is None:
            from kernels._layout import ProfileLayout

            object.__setattr__(self, "_layout", ProfileLayout.build(self))
        return self._layout

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-safe dict (missing extrema become ``None``)."""
        return {"version": 1, "features": [
            {"name": f.name, "kind": f.kind, "edges": list(f.edges), "counts": list(f.counts),
             "count": f.count, "missing": f.missing, "min": _json_float(f.min),
             "max": _json_float(f.max), "sample": list(f.sample)}
            for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceProfile:
        """Rebuild from :meth:`to_dict` output, checking its invariants."""
        if data.get("version") != 1:
            raise InvalidValueError(f"Unsupported reference profile version {data.get('version')!r}; expected 1.")
        features = []
        for raw in data["features"]:
            f = FeatureProfile(
                name=str(raw["name"]), kind=raw["kind"],
                edges=tuple(float(e) for e in raw["edges"]),
                counts=tuple(int(c) for c in raw["counts"]), count=int(raw["count"]),
                missing=int(raw["missing"]), min=_float(raw["min"]), max=_float(raw["max"]),
                sample=tuple(float(s) for s in raw.get("sample", ())))
            _validate(f)
            features.append(f)
        return cls(tuple(features))

    def to_bytes(self) -> bytes:
        """Compressed JSON with a magic prefix, for artifact stores and Ray object refs."""
        return _BYTES_MAGIC + zlib.compress(json.dumps(self.to_dict(), allow_nan=False).encode())

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceProfile:
        """Decode :meth:`to_bytes` output."""
        if not data.startswith(_BYTES_MAGIC):
            raise InvalidValueError("Not a reference profile encoding; expected to_bytes() output.")
        return cls.from_dict(json.loads(zlib.decompress(data[len(_BYTES_MAGIC):])))


def _profile_column(name: str, column: np.ndarray, is_categorical: bool, bins: int,
                    sample_size: int) -> FeatureProfile:
    finite = column[np.isfinite(column)]
    missing = column.size - finite.size
    if finite.size == 0:
        return FeatureProfile(name, CATEGORICAL if is_categorical else NUMERIC, (), (0,), 0,
                              missing, math.nan, math.nan)
    lo, hi = float(finite.min()), float(finite.max())
    if is_categorical:
        codes, counts = np.unique(finite, return_counts=True)
        return FeatureProfile(name, CATEGORICAL, tuple(codes.tolist()), (*counts.tolist(), 0),
                              int(finite.size), missing, lo, hi)
    ordered = np.sort(finite)
    distinct = np.unique(ordered)
    if distinct.size <= bins:
        # Few distinct values (binary, small integers, a constant): one bin per value plus
        # an empty bin on either side. Quantile edges would merge a rare value into its
        # neighbour (a 0/1 feature with 5% ones got one bin and no histogram drift at
        # all), and the outer bins make a never-seen value visible to every statistic.
        above = np.nextafter(distinct[-1], np.inf)
        edges = np.append(distinct, above) if np.isfinite(above) else distinct
    else:
        edges = np.unique(np.quantile(ordered, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        # An edge at the minimum would leave the first bin empty in the reference.
        edges = edges[edges > lo]
    counts = np.bincount(np.searchsorted(edges, ordered, side="right"), minlength=edges.size + 1)
    if ordered.size > sample_size:
        picks = ((np.arange(sample_size) + 0.5) * (ordered.size / sample_size)).astype(np.int64)
        ordered = ordered[picks]
    return FeatureProfile(name, NUMERIC, tuple(edges.tolist()), tuple(counts.tolist()),
                          int(finite.size), missing, lo, hi, tuple(ordered.tolist()))


def _validate(f: FeatureProfile) -> None:
    problems = []
    if f.kind not in (NUMERIC, CATEGORICAL):
        problems.append(f"kind {f.kind!r} is neither numeric nor categorical")
    if len(f.counts) != len(f.edges) + 1:
        problems.append("counts must have one more entry than edges")
    if any(b <= a for a, b in zip(f.edges, f.edges[1:], strict=False)):
        problems.append("edges must be strictly ascending")
    if sum(f.counts) != f.count or min(f.counts) < 0:
        problems.append("counts must be non-negative and sum to count")
    if any(b < a for a, b in zip(f.sample, f.sample[1:], strict=False)):
        problems.append("sample must be sorted")
    if not all(map(math.isfinite, (*f.edges, *f.sample))):
        problems.append("edges and sample must be finite")
    if problems:
        raise InvalidValueError(f"Invalid profile for feature {f.name!r}: {'; '.join(problems)}.")


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
