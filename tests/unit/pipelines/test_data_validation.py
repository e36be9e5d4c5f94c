"""The "validate data" stage on scikit-learn's breast cancer data, drift judged against a
reference profile built by the platform's own builder from the training rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from control_plane.errors import InvalidInputError
from control_plane.pipelines.data_validation import (
    DataExpectations,
    DataValidationReport,
    dataset_digest,
    load_dataset,
    validate_data,
)
from serving.monitoring.profiles import build_reference_profile

URI = "sklearn://breast_cancer"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return load_dataset(URI)


@pytest.fixture(scope="module")
def features(table: pd.DataFrame) -> list[str]:
    return [name for name in table.columns if name != "target"]


@pytest.fixture(scope="module")
def split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng(0).permutation(len(table))
    cut = int(0.75 * len(table))
    return (table.iloc[order[:cut]].reset_index(drop=True),
            table.iloc[order[cut:]].reset_index(drop=True))


@pytest.fixture(scope="module")
def profile(split: tuple[pd.DataFrame, pd.DataFrame], features: list[str]) -> dict:
    # What a trained version carries in its manifest (training.registration's sample size).
    train, _ = split
    return build_reference_profile(train[features].to_numpy(), feature_names=features,
                                   sample_size=256)


@pytest.fixture(scope="module")
def expectations(table: pd.DataFrame, features: list[str]) -> DataExpectations:
    return DataExpectations(
        columns={**{name: "float" for name in features}, "target": "category"},
        ranges={name: {"min": 0.0, "max": float(table[name].max()) * 1.5} for name in features},
        categories={"target": [0, 1]},
        min_rows=50,
    )


def _failed(report: DataValidationReport) -> list[tuple[str, str | None]]:
    return [(check.name, check.column) for check in report.failures]


def test_the_data_passes_against_itself_and_its_held_out_rows(
        table: pd.DataFrame, split: tuple[pd.DataFrame, pd.DataFrame], profile: dict,
        expectations: DataExpectations) -> None:
    for frame in (table, split[1]):
        report = validate_data(frame, expectations, profile)
        assert report.passed, report.reason
        assert report.reason == "" and report.failures == []
        assert report.drift is not None and len(report.drift.judged) == 30
        assert report.drift.drifted == [] and report.drift.drifted_share == 0.0
        assert report.rows == len(frame) and report.digest == dataset_digest(frame)
    names = {check.name for check in report.checks}
    assert {"column_kind", "extra_columns", "row_count", "missing_rate", "range", "categories",
            "drift", "drift_share"} <= names


def test_a_dropped_column_is_named(split: tuple[pd.DataFrame, pd.DataFrame], profile: dict,
                                   expectations: DataExpectations) -> None:
    report = validate_data(split[1].drop(columns=["mean radius"]), expectations, profile)
    assert not report.passed
    assert report.reason == "column 'mean radius' is missing"
    assert _failed(report)[0] == ("column_present", "mean radius")
    # Drift still judges the other 29 features.
    assert report.drift is not None and len(report.drift.judged) == 29
    assert report.drift.unjudged == {"mean radius": "column missing"}


def test_a_profiled_feature_is_required_without_a_column_list(
        split: tuple[pd.DataFrame, pd.DataFrame], profile: dict) -> None:
    report = validate_data(split[1].drop(columns=["worst area"]), {}, profile)
    assert report.reason == "column 'worst area' is missing"


def test_a_shifted_feature_drifts_and_is_named(
        split: tuple[pd.DataFrame, pd.DataFrame], profile: dict,
        expectations: DataExpectations) -> None:
    frame = split[1].copy()
    frame["worst area"] += 3 * split[0]["worst area"].std()
    report = validate_data(frame, expectations.model_copy(update={"ranges": {}}), profile)
    assert not report.passed
    assert report.reason.startswith("feature 'worst area' drifted: adjusted p=")
    assert "<= 0.01 (wasserstein)" in report.reason
    assert report.drift is not None and report.drift.drifted == ["worst area"]
    worst = next(c for c in report.checks if c.name == "drift" and c.column == "worst area")
    assert worst.observed < 1e-6 and not worst.passed and not worst.gating
    share = next(c for c in report.checks if c.name == "drift_share")
    assert share.observed == pytest.approx(1 / 30) and not share.passed
    # One drifted feature in 30 is within a 10% allowance.
    lenient = expectations.model_copy(update={
        "ranges": {}, "drift": expectations.drift.model_copy(update={"max_drifted_share": 0.1})})
    assert validate_data(frame, lenient, profile).passed


def test_several_drifted_features_are_counted(
        split: tuple[pd.DataFrame, pd.DataFrame], profile: dict) -> None:
    frame = split[1].copy()
    for name in ("mean radius", "mean texture", "worst area"):
        frame[name] += 3 * split[0][name].std()
    spec = DataExpectations(drift={"max_drifted_share": 0.05, "test": "ks"})
    report = validate_data(frame, spec, profile)
    assert report.reason.startswith("3 of 30 features drifted (10%, more than max_drifted_share 5%)")
    assert report.drift is not None and report.drift.test == "ks"
    assert sorted(report.drift.drifted) == ["mean radius", "mean texture", "worst area"]


def test_out_of_range_values_are_counted(split: tuple[pd.DataFrame, pd.DataFrame], profile: dict,
                                         expectations: DataExpectations) -> None:
    frame = split[1].copy()
    frame.loc[[3, 7], "mean radius"] = [-1.0, -2.5]
    report = validate_data(frame, expectations, profile)
    assert report.reason.startswith("column 'mean radius' has 2 values outside [0, ")
    assert "(lowest -2.5, highest -1)" in report.reason
    assert _failed(report) == [("range", "mean radius")]


def test_the_label_column_is_held_to_what_names_it_and_is_no_feature(
        split: tuple[pd.DataFrame, pd.DataFrame], profile: dict,
        expectations: DataExpectations, features: list[str]) -> None:
    """The pipeline's data stage gives the label column apart. It left it out of the table:
    expectations naming it (its kind, its classes) failed as a missing column, and a range
    or categories on a column the data lacks (a misspelt name) checked nothing, silently."""
    held_out = split[1]
    report = validate_data(held_out, expectations, profile, target="target")
    assert report.passed, report.reason
    # No feature: neither in the digest (the data trigger's) nor among the columns.
    assert report.digest == validate_data(held_out[features], {}, profile).digest
    assert "target" not in report.columns and report.rows == len(held_out)
    strange = held_out.assign(target=held_out["target"].where(held_out.index != 3, 7))
    assert validate_data(strange, expectations, profile, target="target").reason \
        == "column 'target' has 1 values in unknown categories '7'"
    misspelt = DataExpectations(ranges={"mean raduis": {"min": 0}},
                                categories={"diagnosis": ["benign"]},
                                column_missing_rates={"mean radius": 0.0})
    report = validate_data(held_out, misspelt, target="target")
    assert _failed(report) == [("column_present", "mean raduis"), ("column_present", "diagnosis")]
    assert report.reason == "column 'mean raduis' is missing"


def test_an_unknown_category_is_named(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    frame = split[1].copy()
    frame["diagnosis"] = np.where(frame["target"] == 0, "malignant", "benign")
    spec = DataExpectations(columns={"diagnosis": "category"}, allow_extra_columns=True,
                            categories={"diagnosis": ["malignant", "benign"]})
    assert validate_data(frame, spec).passed
    frame.loc[[0, 5, 9], "diagnosis"] = ["cyst", "cyst", "unknown"]
    report = validate_data(frame, spec)
    assert report.reason == "column 'diagnosis' has 3 values in unknown categories 'cyst', 'unknown'"
    check = report.failures[0]
    assert check.observed == ["cyst", "unknown"] and check.limit == ["benign", "malignant"]
    # Integer codes and their float spelling are one category; 2 is not allowed.
    codes = split[1][["target"]].astype(float)
    assert validate_data(codes, {"categories": {"target": [0, 1]}}).passed
    codes.loc[0, "target"] = 2.0
    assert "unknown categories '2'" in validate_data(codes, {"categories": {"target": [0, 1]}}).reason


def test_too_many_missing_values(split: tuple[pd.DataFrame, pd.DataFrame], profile: dict,
                                 expectations: DataExpectations) -> None:
    frame = split[1].copy()
    frame.loc[frame.index[:20], "mean texture"] = np.nan
    frame.loc[frame.index[20], "mean texture"] = np.inf  # infinities count as missing
    spec = expectations.model_copy(update={"max_missing_rate": 0.001})
    report = validate_data(frame, spec, profile)
    rate = 21 / (len(frame) * 31)
    assert report.reason == (f"{rate:.2%} of values are missing, more than max_missing_rate "
                             f"0.10% (most in column 'mean texture': 21 of {len(frame)})")
    per_column = expectations.model_copy(update={
        "max_missing_rate": None, "column_missing_rates": {"mean texture": 0.1}})
    report = validate_data(frame, per_column, profile)
    assert report.reason == (f"column 'mean texture' has {21 / len(frame):.2%} missing values "
                             f"(21 of {len(frame)}), more than 10.00%")
    # Within the limits, the drift test judges the values present.
    loose = expectations.model_copy(update={"max_missing_rate": 0.01})
    assert validate_data(frame, loose, profile).passed


def test_too_few_rows(split: tuple[pd.DataFrame, pd.DataFrame], profile: dict,
                      expectations: DataExpectations) -> None:
    few = split[1].iloc[:40]
    report = validate_data(few, expectations, profile)
    assert report.reason == "40 rows, fewer than min_rows 50"
    # Enough rows for the row check but not for a drift verdict: unknown is not a pass.
    report = validate_data(split[1].iloc[:80], expectations, profile)
    assert report.reason == "80 rows are too few to judge drift (drift.min_rows 100)"
    too_many = expectations.model_copy(update={"max_rows": 100})
    assert validate_data(split[1], too_many, profile).reason == (
        f"{len(split[1])} rows, more than max_rows 100")


def test_column_kinds_and_extra_columns(split: tuple[pd.DataFrame, pd.DataFrame],
                                        expectations: DataExpectations) -> None:
    frame = split[1].copy()
    frame["mean radius"] = frame["mean radius"].map(lambda v: f"{v:.2f} mm")
    report = validate_data(frame, expectations)
    assert report.reason == "column 'mean radius' is string, expected float"
    frame = split[1].assign(batch="b7")
    assert validate_data(frame, expectations).reason == (
        "unexpected columns 'batch' (set allow_extra_columns, or list them in columns)")
    assert validate_data(frame, expectations.model_copy(update={"allow_extra_columns": True})).passed
    # An integer column with a missing value reads as floats: still int.
    ints = pd.DataFrame({"count": [1.0, 2.0, np.nan, 4.0], "flag": [0, 1, 1, 0]})
    spec = {"columns": {"count": "int", "flag": "bool"}, "max_missing_rate": 0.2}
    assert validate_data(ints, spec).passed


def test_arrays_take_the_profiles_feature_names(split: tuple[pd.DataFrame, pd.DataFrame],
                                                features: list[str], profile: dict) -> None:
    rows = split[1][features].to_numpy()
    report = validate_data(rows, {}, profile)
    assert report.passed and report.columns == features
    report = validate_data({"a": [1.0, 2.0], "b": [3.0, np.nan]}, {"max_missing_rate": 0.3})
    assert report.passed and report.drift is None


def test_the_report_is_json(split: tuple[pd.DataFrame, pd.DataFrame], profile: dict,
                            expectations: DataExpectations) -> None:
    frame = split[1].drop(columns=["mean area"])
    report = validate_data(frame, expectations, profile)
    text = report.model_dump_json()
    assert DataValidationReport.model_validate_json(text) == report
    assert json.loads(text)["reason"] == "column 'mean area' is missing"


def test_expectations_refuse_mistakes_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"max_mising_rate\n  Extra inputs are not permitted"):
        DataExpectations.model_validate({"max_mising_rate": 0.1})
    with pytest.raises(ValidationError, match=r"columns\.x\n  Input should be 'float'"):
        DataExpectations.model_validate({"columns": {"x": "double"}})
    with pytest.raises(ValidationError, match=r"ranges: column 'y' is not among columns \('x'\)"):
        DataExpectations.model_validate({"columns": {"x": "float"}, "ranges": {"y": {"min": 0}}})
    with pytest.raises(ValidationError, match=r"ranges\.x\n  Value error, min 2 is greater than max 1"):
        DataExpectations.model_validate({"ranges": {"x": {"min": 2, "max": 1}}})
    with pytest.raises(ValidationError, match=r"drift\.alpha\n  Input should be less than 1"):
        DataExpectations.model_validate({"drift": {"alpha": 1.5}})
    with pytest.raises(ValidationError, match=r"drift\.test\n  Input should be 'auto'"):
        DataExpectations.model_validate({"drift": {"test": "t-test"}})
    with pytest.raises(ValidationError, match="ranges: column 'kind' is category"):
        DataExpectations.model_validate({"columns": {"kind": "category"},
                                         "ranges": {"kind": {"max": 3}}})


def test_drift_statistics_are_the_kernels_own() -> None:
    from typing import get_args

    from control_plane.pipelines.data_validation import DriftTest
    from kernels.calibration import STATISTICS

    assert set(get_args(DriftTest)) == {"auto", *STATISTICS}


def test_digest_is_of_content_not_of_the_file(tmp_path: Path, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    frame = split[1].assign(diagnosis=np.where(split[1]["target"] == 0, "malignant", "benign"))
    csv, parquet = tmp_path / "rows.csv", tmp_path / "rows.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)
    from_csv, from_parquet = load_dataset(str(csv)), load_dataset(f"file://{parquet}")
    # CSV round-trips floats to the last digit, so both read back the same numbers.
    assert dataset_digest(from_csv) == dataset_digest(from_parquet) == dataset_digest(frame)
    assert dataset_digest(str(csv)) == dataset_digest(frame)
    changed = frame.copy()
    changed.loc[0, "mean radius"] += 1e-9
    assert dataset_digest(changed) != dataset_digest(frame)
    assert dataset_digest(frame[frame.columns[::-1]]) != dataset_digest(frame)
    assert dataset_digest(URI) == dataset_digest(load_dataset(URI))
    assert len(dataset_digest(URI)) == 64


def test_load_dataset_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown bundled dataset 'iris'"):
        load_dataset("sklearn://iris")
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.csv"))
    with pytest.raises(InvalidInputError, match="cannot tell the format"):
        load_dataset(str(tmp_path / "rows.json"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidInputError, match="cannot read .*bad.parquet as parquet"):
        load_dataset(str(tmp_path / "bad.parquet"))
    table = load_dataset("sklearn://diabetes")
    assert table.shape == (442, 11) and table.columns[-1] == "target"


def test_a_categorical_feature_is_judged_by_chi_square() -> None:
    rng = np.random.default_rng(4)
    train = pd.DataFrame({"size": rng.normal(0, 1, 3000), "kind": rng.choice([0, 1, 2], 3000, p=[0.6, 0.3, 0.1])})
    profile = build_reference_profile(train.to_numpy(), feature_names=["size", "kind"],
                                      categorical=["kind"], sample_size=256)
    same = pd.DataFrame({"size": rng.normal(0, 1, 500), "kind": rng.choice([0, 1, 2], 500, p=[0.6, 0.3, 0.1])})
    assert validate_data(same, {}, profile).passed
    moved = same.assign(kind=rng.choice([0, 1, 2], 500, p=[0.3, 0.3, 0.4]))
    report = validate_data(moved, {}, profile)
    assert report.reason.startswith("feature 'kind' drifted: adjusted p=")
    assert report.reason.endswith("(chi2)")


def test_a_profiled_feature_must_hold_numbers(split: tuple[pd.DataFrame, pd.DataFrame],
                                              profile: dict) -> None:
    frame = split[1].assign(**{"mean smoothness": "high"})
    report = validate_data(frame, {}, profile)
    assert report.reason == ("column 'mean smoothness' is string, the model takes numbers there "
                             "(it is a feature of the reference profile)")
    assert report.drift is not None and "mean smoothness" in report.drift.unjudged


@pytest.mark.parametrize("kind", ["csv", "parquet", "bundled"])
def test_the_data_stage_reads_the_digest_a_version_trained_on_it_records(
        tmp_path: Path, split: tuple[pd.DataFrame, pd.DataFrame], kind: str) -> None:
    """The data stage checked a table whose content digest no lineage records: nothing
    showed that the data a version trained on was the data checked. Read once, the table
    comes with the digest training records for the same bytes (the training stage holds
    the candidate to it)."""
    from control_plane.pipelines.data_sources import read_dataset
    from training.data import load_dataset as load_training_data
    from training.errors import InvalidJobSpecError
    from training.schemas import DataSpec

    if kind == "bundled":
        spec, uri = DataSpec(dataset="breast_cancer"), "sklearn://breast_cancer"
    else:
        path = tmp_path / f"rows.{kind}"
        split[1].to_csv(path, index=False) if kind == "csv" else split[1].to_parquet(path)
        spec, uri = DataSpec(path=str(path), target="target"), str(path)
    table, digest = read_dataset(uri)
    assert len(table) == (569 if kind == "bundled" else len(split[1]))
    assert digest == load_training_data(spec, "classification").digest
    pinned = spec.model_copy(update={"digest": digest})  # as a pipeline sends its job
    assert load_training_data(pinned, "classification").digest == digest
    if kind == "csv":  # a row appended after the stage read it: the job refuses it
        with Path(uri).open("a") as appended:
            appended.write(",".join(["1"] * len(split[1].columns)) + "\n")
        assert load_training_data(spec, "classification").digest != digest
        with pytest.raises(InvalidJobSpecError, match="not the data the spec pins") as refused:
            load_training_data(pinned, "classification")
        assert refused.value.detail == {"field": "data.digest"}
