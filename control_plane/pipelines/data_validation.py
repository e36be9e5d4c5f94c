"""The "validate data" stage: does new data look like what the model expects and was trained on?

:func:`validate_data` runs every check a :class:`DataExpectations` asks for on a table
and returns one :class:`DataValidationReport`, whose ``reason`` names the first failure:

- schema: each expected column is present and of its kind; no unexpected columns (unless
  allowed); with a reference profile, each profiled feature is present too;
- row count within bounds;
- missing values: the share of missing cells overall and per column (NaN and infinities
  in numeric columns count as missing, as in the drift kernels);
- values within each column's range, and categories within each column's allowed set;
- drift against the champion's reference profile (the manifest's ``reference_profile``),
  by the platform's calibrated statistics (:func:`kernels.drift_report`), p-values
  adjusted across features (Benjamini-Hochberg).

Checks run in that order, so a missing column is reported before the drift it causes.
Drift decides per feature with the statistic docs/drift.md recommends (``auto``:
Wasserstein for numeric features, chi-square for categorical ones) or the one chosen, and
fails the data when more than ``max_drifted_share`` of the judged features drifted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from control_plane.pipelines.data_sources import dataset_digest, load_dataset
from control_plane.schemas import Finite, Wire

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DataCheck",
    "DataExpectations",
    "DataValidationReport",
    "DriftExpectations",
    "DriftSummary",
    "ValueRange",
    "dataset_digest",
    "load_dataset",
    "validate_data",
]

ColumnKind = Literal["float", "int", "category", "bool", "string"]
# The statistics kernels.drift_report calibrates (kernels.calibration.STATISTICS).
DriftTest = Literal["auto", "psi", "kl", "js", "hellinger", "chi2", "ks", "wasserstein"]
AUTO_NUMERIC_TEST = "wasserstein"
AUTO_CATEGORICAL_TEST = "chi2"
CORRECTION = "bh"
Share = Annotated[float, Field(ge=0.0, le=1.0)]
# Unknown categories and offending values quoted in a message, at most.
_SHOWN = 5


class ValueRange(Wire):
    """Inclusive bounds of a numeric column; either may be left open."""

    # Finite: a NaN bound compares false with every value, so it would pass anything.
    min: Finite | None = Field(None, description="Smallest allowed value.")
    max: Finite | None = Field(None, description="Largest allowed value.")

    @model_validator(mode="after")
    def _ordered(self) -> ValueRange:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is greater than max {self.max:g}")
        return self

    def __str__(self) -> str:
        low = "-inf" if self.min is None else f"{self.min:g}"
        high = "inf" if self.max is None else f"{self.max:g}"
        return f"[{low}, {high}]"


class DriftExpectations(Wire):
    """How new data is compared with the champion's reference profile."""

    test: DriftTest = Field(
        "auto", description="Statistic that decides per feature: auto (wasserstein for numeric "
        "features, chi2 for categorical ones; docs/drift.md) or one for all features.")
    alpha: float = Field(
        0.01, gt=0.0, lt=1.0,
        description="A feature drifted when its p-value, adjusted across features "
                    "(Benjamini-Hochberg), is at most this.")
    max_drifted_share: Share = Field(
        0.0, description="Most drifted features allowed, as a share of the features judged "
                         "(0: any drifted feature fails the data).")
    min_rows: int = Field(
        100, ge=10, description="Fewer rows than this cannot be judged and fail the check.")


class DataExpectations(Wire):
    """What the data of a pipeline must satisfy; every part is optional."""

    columns: dict[str, ColumnKind] = Field(
        default_factory=dict,
        description="Expected columns, name to kind: float, int, category, bool or string.")
    allow_extra_columns: bool = Field(
        False, description="Allow columns beyond those in columns (only checked when columns "
                           "is given).")
    min_rows: int | None = Field(1, ge=0, description="Fewest rows.")
    max_rows: int | None = Field(None, ge=0, description="Most rows.")
    max_missing_rate: Share | None = Field(
        0.0, description="Largest share of missing cells over the checked columns (training "
                         "refuses missing feature values; raise it when a step fills them).")
    max_column_missing_rate: Share | None = Field(
        None, description="Largest share of missing values in any one column.")
    column_missing_rates: dict[str, Share] = Field(
        default_factory=dict, description="Largest share of missing values, per column.")
    ranges: dict[str, ValueRange] = Field(
        default_factory=dict, description="Allowed values of numeric columns (inclusive).")
    categories: dict[str, list[str | int | bool]] = Field(
        default_factory=dict, description="Allowed values of categorical columns.")
    drift: DriftExpectations | None = Field(
        default_factory=DriftExpectations,
        description="Drift against the champion's reference profile; null: no drift check.")

    @field_validator("categories")
    @classmethod
    def _some_categories(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [name for name, allowed in value.items() if not allowed]
        if empty:
            raise ValueError(f"column {empty[0]!r} allows no category; list at least one")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataExpectations:
        if self.min_rows is not None and self.max_rows is not None and self.min_rows > self.max_rows:
            raise ValueError(f"min_rows {self.min_rows} is greater than max_rows {self.max_rows}")
        if self.columns:
            for field in ("column_missing_rates", "ranges", "categories"):
                unknown = [name for name in getattr(self, field) if name not in self.columns]
                if unknown:
                    raise ValueError(f"{field}: column {unknown[0]!r} is not among columns "
                                     f"({_preview(list(self.columns))})")
            for name in self.ranges:
                if self.columns[name] not in ("float", "int"):
                    raise ValueError(f"ranges: column {name!r} is {self.columns[name]}; ranges "
                                     "apply to float and int columns")
        return self


class DataCheck(Wire):
    """One check's outcome. ``gating`` checks decide the report; the others inform it."""

    name: str = Field(description="column_present, column_kind, extra_columns, row_count, "
                      "missing_rate, column_missing_rate, range, categories, drift, drift_share.")
    column: str | None = None
    observed: Any = Field(None, description="What was measured (JSON value).")
    limit: Any = Field(None, description="What it was held against (JSON value).")
    passed: bool
    gating: bool = True
    message: str = ""


class DriftSummary(Wire):
    """The drift check in numbers."""

    test: str
    alpha: float
    correction: str = CORRECTION
    rows: int
    judged: list[str] = Field(description="Features with a verdict.")
    drifted: list[str]
    unjudged: dict[str, str] = Field(default_factory=dict, description="Feature: why no verdict.")
    drifted_share: float | None = None


class DataValidationReport(Wire):
    """Everything :func:`validate_data` checked; ``reason`` names the first failure."""

    passed: bool
    reason: str = Field("", description="Cause of the first gating failure; empty when passed.")
    rows: int
    columns: list[str]
    digest: str = Field(description="dataset_digest of the data checked.")
    checks: list[DataCheck]
    drift: DriftSummary | None = None

    @property
    def failures(self) -> list[DataCheck]:
        """Gating checks that failed, in the order they ran."""
        return [check for check in self.checks if check.gating and not check.passed]


def validate_data(data: pd.DataFrame | Mapping[str, Any] | np.ndarray,
                  expectations: DataExpectations | Mapping[str, Any],
                  reference_profile: Mapping[str, Any] | None = None, *,
                  feature_names: Sequence[str] | None = None,
                  target: str | None = None) -> DataValidationReport:
    """Check ``data`` against ``expectations`` and, for drift, ``reference_profile`` (a
    manifest's ``reference_profile``, as built by
    :func:`serving.monitoring.profiles.build_reference_profile`).

    ``data`` is a DataFrame, a mapping of column name to values, or a rows x features array
    whose columns are ``feature_names`` (default: the profile's features, in order).
    ``target`` names its label column: the expectations may name it (its kind, missing
    values, range or categories), but it is no feature: not drift-checked, not an extra
    column, not in the digest. A column the expectations name that the data lacks fails.
    """
    spec = DataExpectations.model_validate(expectations)
    profile = _input_profile(reference_profile)
    table = _as_frame(data, feature_names, profile)
    frame = table.drop(columns=[target]) if target is not None and target in table.columns \
        else table
    checks: list[DataCheck] = []
    checked = _schema_checks(table, frame, spec, profile, checks)
    _row_checks(frame, spec, checks)
    _missing_checks(table, spec, checked, checks)
    _range_checks(table, spec, checks)
    _category_checks(table, spec, checks)
    summary = None
    if spec.drift is not None and profile is not None:
        summary = _drift_checks(frame, spec.drift, profile, checks)
    failures = [check for check in checks if check.gating and not check.passed]
    return DataValidationReport(
        passed=not failures, reason=failures[0].message if failures else "",
        rows=len(frame), columns=[str(c) for c in frame.columns], digest=dataset_digest(frame),
        checks=checks, drift=summary)


# ---------------------------------------------------------------- schema


def _schema_checks(table: pd.DataFrame, frame: pd.DataFrame, spec: DataExpectations,
                   profile: Any, checks: list[DataCheck]) -> list[str]:
    """Presence and kind checks over ``table`` (``frame``: its features, the label column
    left out); returns the columns the missing-value checks cover."""
    present = {str(c) for c in table.columns}
    expected = list(spec.columns)
    if profile is not None:
        # The model takes every profiled feature: each must be in the data too.
        expected += [name for name in profile.names if name not in spec.columns]
    # A range, categories or missing-value limit on a column the data lacks checked
    # nothing, silently: a misspelt name switched its check off.
    expected = list(dict.fromkeys([*expected, *spec.column_missing_rates, *spec.ranges,
                                   *spec.categories]))
    for name in expected:
        if name not in present:
            checks.append(DataCheck(name="column_present", column=name, observed=False, limit=True,
                                    passed=False, message=f"column {name!r} is missing"))
    for name, kind in spec.columns.items():
        if name in present:
            observed = _kind(table[name])
            ok = _compatible(kind, observed, table[name])
            checks.append(DataCheck(
                name="column_kind", column=name, observed=observed, limit=kind, passed=ok,
                message="" if ok else f"column {name!r} is {observed}, expected {kind}"))
    if profile is not None:
        # The model takes numbers: a profiled feature of another kind cannot be fed to it.
        for name in profile.names:
            if name in present and name not in spec.columns:
                observed = _kind(table[name])
                if observed not in ("float", "int", "bool"):
                    checks.append(DataCheck(
                        name="column_kind", column=name, observed=observed, limit="float",
                        passed=False, message=f"column {name!r} is {observed}, the model takes "
                        "numbers there (it is a feature of the reference profile)"))
    if spec.columns:
        extra = [name for name in map(str, frame.columns) if name not in spec.columns]
        ok = spec.allow_extra_columns or not extra
        checks.append(DataCheck(
            name="extra_columns", observed=extra, limit=[] if not spec.allow_extra_columns else None,
            passed=ok, message="" if ok else f"unexpected columns {_preview(extra)} (set "
            "allow_extra_columns, or list them in columns)"))
    names = [name for name in spec.columns if name in present]
    if profile is not None:
        names += [name for name in profile.names if name in present and name not in names]
    return names or [str(c) for c in frame.columns]


def _kind(column: pd.Series) -> str:
    import pandas as pd

    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    values = column.dropna().tolist()
    if not values:
        return "empty"  # nothing to tell the kind by; the missing-value checks report it
    if all(isinstance(v, bool | np.bool_) for v in values):
        return "bool"
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values):
        return "float"
    return "mixed"


def _compatible(expected: str, observed: str, column: pd.Series) -> bool:
    if expected == observed or observed == "empty":
        return True
    numeric = observed in ("int", "float")
    if expected == "float":
        return observed == "int"
    if expected == "int":
        # A missing value turns an integer column into floats in pandas.
        return observed == "float" and _integral(column)
    if expected == "bool":
        return numeric and set(_numbers(column).tolist()) <= {0.0, 1.0}
    if expected == "category":
        return observed in ("string", "int", "bool") or (observed == "float" and _integral(column))
    return expected == "string" and observed == "category"


def _numbers(column: pd.Series) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def _integral(column: pd.Series) -> bool:
    values = _numbers(column)
    return bool(np.all(values == np.round(values)))


# ---------------------------------------------------------------- rows, missing values


def _row_checks(frame: pd.DataFrame, spec: DataExpectations, checks: list[DataCheck]) -> None:
    rows = len(frame)
    if spec.min_rows is not None:
        ok = rows >= spec.min_rows
        checks.append(DataCheck(name="row_count", observed=rows, limit=f">= {spec.min_rows}",
                                passed=ok, message="" if ok else
                                f"{rows} rows, fewer than min_rows {spec.min_rows}"))
    if spec.max_rows is not None:
        ok = rows <= spec.max_rows
        checks.append(DataCheck(name="row_count", observed=rows, limit=f"<= {spec.max_rows}",
                                passed=ok, message="" if ok else
                                f"{rows} rows, more than max_rows {spec.max_rows}"))


def _missing(column: pd.Series) -> np.ndarray:
    import pandas as pd

    missing = column.isna().to_numpy(dtype=bool)
    if pd.api.types.is_float_dtype(column.dtype):
        # Infinities count as missing, as in the drift kernels' quality counters.
        missing = missing | ~np.isfinite(column.to_numpy(dtype=np.float64, na_value=np.nan))
    return missing


def _missing_checks(frame: pd.DataFrame, spec: DataExpectations, columns: list[str],
                    checks: list[DataCheck]) -> None:
    rows = len(frame)
    counts = {name: int(_missing(frame[name]).sum()) for name in columns}
    if spec.max_missing_rate is not None and columns:
        cells = rows * len(columns)
        rate = sum(counts.values()) / cells if cells else 0.0
        ok = rate <= spec.max_missing_rate
        worst = max(counts, key=counts.__getitem__)
        checks.append(DataCheck(
            name="missing_rate", observed=rate, limit=spec.max_missing_rate, passed=ok,
            message="" if ok else f"{rate:.2%} of values are missing, more than max_missing_rate "
            f"{spec.max_missing_rate:.2%} (most in column {worst!r}: {counts[worst]} of {rows})"))
    limits = {name: spec.max_column_missing_rate for name in columns
              if spec.max_column_missing_rate is not None}
    limits.update({name: rate for name, rate in spec.column_missing_rates.items()
                   if name in frame.columns})
    for name, limit in limits.items():
        count = counts[name] if name in counts else int(_missing(frame[name]).sum())
        rate = count / rows if rows else 0.0
        ok = rate <= limit
        checks.append(DataCheck(
            name="column_missing_rate", column=name, observed=rate, limit=limit, passed=ok,
            message="" if ok else f"column {name!r} has {rate:.2%} missing values "
            f"({count} of {rows}), more than {limit:.2%}"))


# ---------------------------------------------------------------- ranges, categories


def _range_checks(frame: pd.DataFrame, spec: DataExpectations, checks: list[DataCheck]) -> None:
    import pandas as pd

    for name, bounds in spec.ranges.items():
        if name not in frame.columns:
            continue  # reported by column_present
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        values = values[np.isfinite(values)]
        outside = np.zeros(values.shape, dtype=bool)
        if bounds.min is not None:
            outside |= values < bounds.min
        if bounds.max is not None:
            outside |= values > bounds.max
        count = int(outside.sum())
        message = ""
        if count:
            bad = values[outside]
            message = (f"column {name!r} has {count} values outside {bounds} (lowest "
                       f"{bad.min():.4g}, highest {bad.max():.4g})")
        checks.append(DataCheck(name="range", column=name, observed=count, limit=str(bounds),
                                passed=not count, message=message))


def _category_checks(frame: pd.DataFrame, spec: DataExpectations, checks: list[DataCheck]) -> None:
    for name, allowed in spec.categories.items():
        if name not in frame.columns:
            continue
        known = {_label(value) for value in allowed}
        column = frame[name]
        labels = [_label(value) for value in column[~column.isna()].tolist()]
        unknown = [label for label in labels if label not in known]
        distinct = sorted(set(unknown))
        message = ""
        if unknown:
            message = (f"column {name!r} has {len(unknown)} values in unknown categories "
                       f"{_preview(distinct, _SHOWN)}")
        checks.append(DataCheck(name="categories", column=name, observed=distinct[:_SHOWN * 4],
                                limit=sorted(known), passed=not unknown, message=message))


def _label(value: Any) -> str:
    # 1, 1.0 (an integer column read with a missing value) and "1" are one category.
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------- drift


def _input_profile(document: Mapping[str, Any] | None) -> Any:
    if not document:
        return None
    from serving.monitoring.profiles import load_profiles

    inputs, _ = load_profiles(dict(document))
    return inputs


def _drift_checks(frame: pd.DataFrame, settings: DriftExpectations, profile: Any,
                  checks: list[DataCheck]) -> DriftSummary:
    import pandas as pd

    from kernels import ReferenceProfile, adjust_pvalues, drift_report

    rows = len(frame)
    test = AUTO_NUMERIC_TEST if settings.test == "auto" else settings.test
    summary = {"test": settings.test, "alpha": settings.alpha, "rows": rows}
    if rows < settings.min_rows:
        message = f"{rows} rows are too few to judge drift (drift.min_rows {settings.min_rows})"
        checks.append(DataCheck(name="drift_share", observed=None, limit=settings.max_drifted_share,
                                passed=False, message=message))
        return DriftSummary(**summary, judged=[], drifted=[],
                            unjudged={name: "too few rows" for name in profile.names})
    unjudged: dict[str, str] = {}
    features, columns = [], []
    for feature in profile.features:
        if feature.name not in frame.columns:
            unjudged[feature.name] = "column missing"
            continue
        column = frame[feature.name]
        if not (pd.api.types.is_numeric_dtype(column.dtype) or _kind(column) == "bool"):
            unjudged[feature.name] = f"column is {_kind(column)}, the profile's values are numbers"
            continue
        features.append(feature)
        columns.append(pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
    tested: list[tuple[str, str, float]] = []  # (feature, statistic, raw p-value)
    if features:
        part = ReferenceProfile(tuple(features))
        live = np.ascontiguousarray(np.column_stack(columns))
        # Uncorrected here: the correction runs once, over the p-values actually chosen.
        report = drift_report(part, live, alpha=settings.alpha, correction="none", test=test)
        for verdict in report.features:
            statistic, pvalue = verdict.test, verdict.pvalue
            wanted = AUTO_CATEGORICAL_TEST if settings.test == "auto" and verdict.kind == "categorical" else None
            if wanted is not None and not math.isnan(verdict.pvalues[wanted]):
                statistic, pvalue = wanted, verdict.pvalues[wanted]
            if math.isnan(pvalue):
                unjudged[verdict.name] = "; ".join(verdict.declined.values()) or "no live values"
            tested.append((verdict.name, statistic, pvalue))
    adjusted = adjust_pvalues([p for _, _, p in tested], CORRECTION).tolist() if tested else []
    judged, drifted = [], []
    for (name, statistic, raw), p in zip(tested, adjusted, strict=True):
        if math.isnan(p):
            checks.append(DataCheck(name="drift", column=name, limit=settings.alpha, passed=False,
                                    gating=False, message=f"feature {name!r}: no drift verdict "
                                    f"({unjudged.get(name, 'no p-value')})"))
            continue
        judged.append(name)
        hit = p <= settings.alpha
        if hit:
            drifted.append((p, name, statistic))
        checks.append(DataCheck(
            name="drift", column=name, observed=p, limit=settings.alpha, passed=not hit,
            gating=False, message=f"feature {name!r} drifted: adjusted p={p:.2g} <= "
            f"{settings.alpha:g} ({statistic}, raw p={raw:.2g})" if hit else ""))
    share = len(drifted) / len(judged) if judged else None
    ok = share is not None and share <= settings.max_drifted_share
    checks.append(DataCheck(name="drift_share", observed=share, limit=settings.max_drifted_share,
                            passed=ok, message="" if ok else _drift_message(drifted, judged, settings)))
    return DriftSummary(**summary, judged=judged, drifted=[name for _, name, _ in drifted],
                        unjudged=unjudged, drifted_share=share)


def _drift_message(drifted: list[tuple[float, str, str]], judged: list[str],
                   settings: DriftExpectations) -> str:
    if not judged:
        return "no feature of the reference profile could be judged for drift"
    ordered = sorted(drifted)
    p, name, statistic = ordered[0]
    first = f"feature {name!r} drifted: adjusted p={p:.2g} <= {settings.alpha:g} ({statistic})"
    if len(ordered) == 1 and settings.max_drifted_share == 0:
        return first
    return (f"{len(ordered)} of {len(judged)} features drifted ({len(ordered) / len(judged):.0%}, "
            f"more than max_drifted_share {settings.max_drifted_share:.0%}); most: {first}")


# ---------------------------------------------------------------- input


def _as_frame(data: Any, feature_names: Sequence[str] | None, profile: Any) -> pd.DataFrame:
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data.rename(columns=str)
    if isinstance(data, Mapping):
        return pd.DataFrame({str(name): np.asarray(values) for name, values in data.items()})
    array = np.asarray(data)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        from control_plane.errors import InvalidInputError

        raise InvalidInputError(f"data must be a table (rows x columns), got shape {array.shape}",
                                detail={"field": "data"})
    names = list(feature_names) if feature_names is not None else None
    if names is None and profile is not None and profile.n_features == array.shape[1]:
        names = list(profile.names)
    if names is None:
        names = [f"f{i}" for i in range(array.shape[1])]
    return pd.DataFrame(array, columns=[str(n) for n in names])


def _preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … {len(names) - limit} more" if len(names) > limit else "")
