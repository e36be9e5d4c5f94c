"""Loading a job's data: bundled datasets, CSV and Parquet files, and what is wrong with them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from training import InvalidJobSpecError
from training.data import check_columns, load_dataset, split_dataset, table_columns
from training.schemas import DataSpec


def test_bundled_classification_keeps_scikit_learns_class_order() -> None:
    dataset = load_dataset(DataSpec(dataset="breast_cancer"), "classification")
    assert dataset.class_labels == ["malignant", "benign"]
    assert dataset.features.shape == (569, 30) and dataset.features.dtype == np.float32
    assert dataset.target.dtype == np.int64 and set(np.unique(dataset.target)) == {0, 1}
    assert dataset.uri == "sklearn://breast_cancer"
    again = load_dataset(DataSpec(dataset="breast_cancer"), "classification")
    assert dataset.digest == again.digest and len(dataset.digest) == 64


def test_bundled_regression_and_a_feature_subset() -> None:
    dataset = load_dataset(DataSpec(dataset="diabetes", features=["age", "bmi"]), "regression")
    assert dataset.feature_names == ["age", "bmi"] and dataset.class_labels is None
    assert dataset.target.dtype == np.float32 and dataset.n_outputs == 1
    with pytest.raises(InvalidJobSpecError, match=r"data.features: columns \['weight'\]"):
        load_dataset(DataSpec(dataset="diabetes", features=["weight"]), "regression")


def test_split_is_seeded_and_stratified() -> None:
    dataset = load_dataset(DataSpec(dataset="wine"), "classification")
    first = split_dataset(dataset, validation_split=0.25, seed=3)
    second = split_dataset(dataset, validation_split=0.25, seed=3)
    np.testing.assert_array_equal(first.y_val, second.y_val)
    assert len(first.x_val) == 45 and len(first.x_train) == 133
    assert set(np.unique(first.y_val)) == {0, 1, 2}


def test_test_rows_are_kept_apart_and_the_split_without_them_is_unchanged() -> None:
    """Test rows are neither trained nor validated on; without them the rows split as they
    always did (a pipeline reads a candidate's held-out rows again by splitting its data)."""
    from sklearn.model_selection import train_test_split

    dataset = load_dataset(DataSpec(dataset="wine"), "classification")
    plain = split_dataset(dataset, validation_split=0.25, seed=3)
    reference = train_test_split(dataset.features, dataset.target, test_size=0.25,
                                 random_state=3, stratify=dataset.target)
    np.testing.assert_array_equal(plain.x_val, reference[1])
    assert plain.x_test is None and plain.y_test is None
    split = split_dataset(dataset, validation_split=0.25, seed=3, test_split=0.2)
    assert split.x_test is not None and split.y_test is not None
    assert (len(split.x_train), len(split.x_val), len(split.x_test)) == (97, 45, 36)
    rows = [set(map(bytes, part)) for part in (split.x_train, split.x_val, split.x_test)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert set().union(*rows) == set(map(bytes, dataset.features))
    assert set(np.unique(split.y_test)) == {0, 1, 2}  # stratified too
    again = split_dataset(dataset, validation_split=0.25, seed=3, test_split=0.2)
    np.testing.assert_array_equal(split.x_test, again.x_test)
    with pytest.raises(ValueError, match="test_split"):
        DataSpec(dataset="wine", validation_split=0.5, test_split=0.5)


def test_a_rare_class_keeps_the_validation_split_stratified_and_small_data_names_the_field() -> None:
    """A class of two rows gave one to the test rows; the one left made the validation
    split unstratified as a whole (one class 12 rows, another 6, of 40 each)."""
    from training.data import Dataset

    target = np.array([0] * 40 + [1] * 40 + [2] * 40 + [3] * 2)
    rows = np.arange(len(target), dtype=np.float32)[:, None]
    dataset = Dataset(rows, target, ["a"], ["a", "b", "c", "d"], "memory://", "0")
    split = split_dataset(dataset, validation_split=0.2, seed=0, test_split=0.2)
    assert split.y_test is not None
    validated = np.bincount(split.y_val, minlength=4)[:3]
    assert validated.max() - validated.min() <= 1, validated
    assert np.bincount(split.y_test, minlength=4).tolist() == [8, 8, 8, 1]
    few = Dataset(rows[:20], np.array([0, 1, 2, 3] * 5), ["a"], ["a", "b", "c", "d"], "memory://", "0")
    with pytest.raises(InvalidJobSpecError, match=r"data.validation_split: cannot hold out .* "
                                                  r"lower data.validation_split or data.test_split"):
        split_dataset(few, validation_split=0.6, seed=0, test_split=0.3)


def test_csv_with_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b,kind\n1,2,cat\n3,4,dog\n5,6,cat\n7,8,dog\n")
    dataset = load_dataset(DataSpec(path=str(path), target="kind"), "classification")
    assert dataset.feature_names == ["a", "b"] and dataset.class_labels == ["cat", "dog"]
    assert dataset.target.tolist() == [0, 1, 0, 1]
    assert dataset.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert dataset.uri == str(path)


def test_parquet_is_read_by_extension(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "table.parquet"
    pd.DataFrame({"x": [0.5, 1.5, 2.5], "y": [1.0, 2.0, 3.0]}).to_parquet(path)
    assert table_columns(DataSpec(path=str(path), target="y")) == ["x", "y"]
    dataset = load_dataset(DataSpec(path=str(path), target="y"), "regression")
    assert dataset.target.tolist() == [1.0, 2.0, 3.0]


def test_a_missing_target_column_is_named_from_the_header_alone(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b,label\n1,2,0\n")
    with pytest.raises(InvalidJobSpecError) as caught:
        check_columns(DataSpec(path=str(path), target="outcome"))
    assert caught.value.detail["field"] == "data.target"
    assert "column 'outcome' is not in" in caught.value.message and "a, b, label" in caught.value.message


@pytest.mark.parametrize(("content", "task", "field", "words"), [
    ("a,b,y\nx,2,0\ny,4,1\n", "classification", "data.features", "not numeric"),
    ("a,y\n1,0\n,1\n3,0\n", "classification", "data.path", "missing or infinite"),
    ("a,y\n1,0\n2,0\n", "classification", "data.target", "at least 2 classes"),
    ("a,y\n1,low\n2,high\n", "regression", "data.target", "numeric target"),
    ("a,y\n1,0\n2,\n3,1\n", "classification", "data.target", "missing values"),
])
def test_bad_tables_name_the_field(tmp_path: Path, content: str, task: str, field: str,
                                   words: str) -> None:
    path = tmp_path / "table.csv"
    path.write_text(content)
    with pytest.raises(InvalidJobSpecError) as caught:
        load_dataset(DataSpec(path=str(path), target="y"), task)
    assert caught.value.detail["field"] == field and words in caught.value.message


def test_unreadable_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidJobSpecError, match=r"data.path: .* does not exist"):
        check_columns(DataSpec(path=str(tmp_path / "nope.csv"), target="y"))
    odd = tmp_path / "table.data"
    odd.write_text("a,y\n1,2\n")
    with pytest.raises(InvalidJobSpecError, match="data.format"):
        check_columns(DataSpec(path=str(odd), target="y"))
    assert table_columns(DataSpec(path=str(odd), target="y", format="csv")) == ["a", "y"]
