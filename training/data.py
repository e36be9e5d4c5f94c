"""Load a job's data: a bundled dataset or a CSV/Parquet file (path or fsspec URI).

The job loads the table once on the driver, checks it, splits it, and hands the arrays to
the workers through Ray's object store, so a file only has to be readable where the job
starts. The dataset's content digest (sha256 of the file, or of the bundled arrays) goes
into the registered version's lineage.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from control_plane.errors import InvalidInputError
from training.errors import InvalidJobSpecError
from training.schemas import DataSpec

# More distinct target values than this is a regression target, not classes.
MAX_CLASSES = 1000


@dataclass(frozen=True)
class Dataset:
    """Features and target of every row, with what lineage needs to know about them."""

    features: np.ndarray  # float32, rows x features (texts: object, rows x 1)
    target: np.ndarray  # int64 class indices, or float32 values for regression
    feature_names: list[str]
    class_labels: list[str] | None
    uri: str
    digest: str

    @property
    def n_outputs(self) -> int:
        return len(self.class_labels) if self.class_labels is not None else 1


@dataclass(frozen=True)
class Split:
    """Training and held-out validation rows, and the test rows kept out of training
    altogether (None without a test split)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def load_dataset(spec: DataSpec, task: str, *, text: bool = False,
                 opener: Callable[[str], Any] | None = None) -> Dataset:
    """Read, check and encode the data the spec names; with ``text``, its one feature
    column holds texts (features: an object array ``[rows, 1]`` of str). ``opener`` opens
    ``data.path`` for reading (the control plane's reads its data through the pipelines'
    bounded, checked one)."""
    labels: list[str] | None = None
    if spec.dataset is not None:
        frame, target, uri, digest, class_names = _bundled(spec.dataset)
        if task == "classification":
            # Keep scikit-learn's class order (breast_cancer: 0 is malignant).
            labels = class_names
    else:
        assert spec.path is not None and spec.target is not None
        table, digest = _read_table(spec, opener or _open)
        _check_columns(spec, list(table.columns))
        target = table[spec.target].to_numpy()
        frame = table.drop(columns=[spec.target])
        uri = spec.path
    if spec.digest is not None and digest != spec.digest:
        raise _error("data.digest", f"{uri} is not the data the spec pins: its digest is "
                     f"{digest[:12]}…, not {spec.digest[:12]}… (it changed since it was "
                     "checked); check it again, or unset data.digest")
    names = spec.features or [str(c) for c in frame.columns]
    unknown = [name for name in names if name not in frame.columns]
    if unknown:
        raise _error("data.features", f"columns {unknown} are not in {spec.uri} (it has "
                     f"{_preview([str(c) for c in frame.columns])})")
    features = _text_feature(frame[names], spec) if text else _numeric_features(frame[names], spec)
    if labels is not None:
        encoded = target.astype(np.int64)
    else:
        encoded, labels = _encode_target(target, task, spec)
    return Dataset(features, encoded, [str(n) for n in names], labels, uri, digest)


def split_dataset(dataset: Dataset, *, validation_split: float, seed: int,
                  test_split: float = 0.0) -> Split:
    """Hold out ``test_split`` of the rows as test rows, then ``validation_split`` of all
    rows from the rest, each stratified by class when every class can be. Without test
    rows the split is the one it always was: a pipeline reads a candidate's held-out rows
    again by splitting its data as its job did."""
    features, target = dataset.features, dataset.target
    x_test = y_test = None
    if test_split:
        features, x_test, target, y_test = _hold_out(
            dataset, features, target, test_split, seed, field="data.test_split", lump_rare=True)
        # A share of all the rows; a class the test rows took half of (two rows, one each
        # side) is stratified with the most common class rather than unstratifying all.
        validation_split = validation_split / (1 - test_split)
    x_train, x_val, y_train, y_val = _hold_out(
        dataset, features, target, validation_split, seed, field="data.validation_split",
        lump_rare=bool(test_split))
    if len(x_train) == 0 or len(x_val) == 0 or (x_test is not None and len(x_test) == 0):
        raise _error("data.test_split" if test_split else "data.validation_split",
                     f"leaves no rows on one side of the split ({len(dataset.target)} rows in all)")
    return Split(x_train, y_train, x_val, y_val, x_test, y_test)


def _hold_out(dataset: Dataset, features: np.ndarray, target: np.ndarray, share: float,
              seed: int, *, field: str, lump_rare: bool = False) -> list[np.ndarray]:
    from sklearn.model_selection import train_test_split

    stratify = None
    if dataset.class_labels is not None:
        strata = target
        counts = np.bincount(target, minlength=len(dataset.class_labels))
        if lump_rare and counts.max() >= 2:
            rare = np.flatnonzero(counts == 1)
            strata = np.where(np.isin(target, rare), int(counts.argmax()), target)
            counts = np.bincount(strata, minlength=len(counts))
        present = counts[counts > 0] if lump_rare else counts
        held_out = int(np.ceil(share * len(target)))
        if present.min() >= 2 and held_out >= len(present):
            stratify = strata
    try:
        return train_test_split(features, target, test_size=share, random_state=seed,
                                stratify=stratify)
    except ValueError as error:  # scikit-learn's: too few rows for a side, or its classes
        raise _error(field, f"cannot hold out {share:.0%} of {len(target)} rows ({error}); "
                            "lower data.validation_split or data.test_split") from error


def table_columns(spec: DataSpec) -> list[str]:
    """Column names of the spec's data, reading as little as possible (for checks before submit)."""
    if spec.dataset is not None:
        frame, *_ = _bundled(spec.dataset)
        return [str(c) for c in frame.columns]
    assert spec.path is not None
    kind = _format(spec)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            with _open(spec.path) as handle:
                return list(pq.read_schema(handle).names)
        import pandas as pd

        with _open(spec.path) as handle:
            return [str(c) for c in pd.read_csv(handle, nrows=0).columns]
    except InvalidJobSpecError:
        raise
    except Exception as error:  # pandas/pyarrow raise many types for a bad file
        raise _error("data.path", f"cannot read {spec.path} as {kind}: {_first_line(error)}") from None


def check_columns(spec: DataSpec) -> None:
    """Raise naming the field if the target or a feature column is missing (cheap)."""
    if spec.path is not None:
        _check_columns(spec, table_columns(spec))
    elif spec.features:
        columns = table_columns(spec)
        unknown = [name for name in spec.features if name not in columns]
        if unknown:
            raise _error("data.features", f"columns {unknown} are not in {spec.uri} "
                         f"(it has {_preview(columns)})")


def _bundled(name: str) -> tuple[Any, np.ndarray, str, str, list[str] | None]:
    import pandas as pd
    from sklearn import datasets

    if name == "reviews":
        from training.text import REVIEW_CLASSES, generate_reviews, reviews_digest

        texts, labels = generate_reviews()
        return (pd.DataFrame({"review": texts}), labels, "generated://reviews",
                reviews_digest(texts, labels), list(REVIEW_CLASSES))

    loaded = getattr(datasets, f"load_{name}")()
    names = [str(n) for n in loaded.feature_names]
    features = np.asarray(loaded.data, dtype=np.float64)
    target = np.asarray(loaded.target)
    hasher = hashlib.sha256(features.tobytes())
    hasher.update(target.tobytes())
    classes = [str(c) for c in loaded.target_names] if hasattr(loaded, "target_names") else None
    frame = pd.DataFrame(features, columns=names)
    return frame, target, f"sklearn://{name}", hasher.hexdigest(), classes


def _read_table(spec: DataSpec, opener: Callable[[str], Any]) -> tuple[Any, str]:
    """The table at ``data.path`` and the sha256 of the bytes it was parsed from, read
    once: hashed in a second read, a file replaced in between (new data landing) was
    recorded in the lineage as the data trained on."""
    import pandas as pd

    assert spec.path is not None
    kind = _format(spec)
    try:
        with opener(spec.path) as handle:
            if kind == "parquet":  # read by offsets: whole, then parsed from memory
                raw = handle.read()
                return pd.read_parquet(io.BytesIO(raw)), hashlib.sha256(raw).hexdigest()
            hashing = HashingReader(handle)
            table = pd.read_csv(hashing)
            return table, hashing.hexdigest()
    except (InvalidJobSpecError, InvalidInputError):  # the opener's own refusals, as they are
        raise
    except Exception as error:
        raise _error("data.path", f"cannot read {spec.path} as {kind}: {_first_line(error)}") from None


class HashingReader:
    """A file read from start to end, hashing what is read (what is left unread at the
    end too)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._hasher.update(data)
        return data  # type: ignore[no-any-return]

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        while chunk := self._handle.read(1 << 20):
            self._hasher.update(chunk)
        return self._hasher.hexdigest()

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def readline(self, size: int = -1) -> bytes:
        line = self._handle.readline(size)
        self._hasher.update(line)
        return line  # type: ignore[no-any-return]


def _open(location: str) -> Any:
    import fsspec

    try:
        return fsspec.open(location, "rb").open()
    except FileNotFoundError:
        raise _error("data.path", f"{location} does not exist") from None
    except Exception as error:
        raise _error("data.path", f"cannot open {location}: {_first_line(error)}") from None


def _format(spec: DataSpec) -> str:
    if spec.format != "auto":
        return spec.format
    assert spec.path is not None
    lowered = spec.path.lower().split("?", 1)[0]
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    raise _error("data.format", f"cannot tell the format of {spec.path} from its name; "
                 "set data.format to csv or parquet")


def _check_columns(spec: DataSpec, columns: list[str]) -> None:
    if spec.target not in columns:
        raise _error("data.target", f"column {spec.target!r} is not in {spec.path} "
                     f"(it has {_preview(columns)})")
    unknown = [name for name in spec.features or [] if name not in columns]
    if unknown:
        raise _error("data.features", f"columns {unknown} are not in {spec.path} "
                     f"(it has {_preview(columns)})")


def _text_feature(frame: Any, spec: DataSpec) -> np.ndarray:
    if frame.shape[1] != 1:
        raise _error("data.features", f"text_classifier reads one text column; the data has "
                     f"{frame.shape[1]} ({_preview([str(c) for c in frame.columns])}): name it "
                     "in data.features")
    column = frame.iloc[:, 0]
    if column.isna().any():
        raise _error("data.path", f"the text column {frame.columns[0]!r} has "
                     f"{int(column.isna().sum())} missing values; fill or drop those rows first")
    if len(column) < 2:
        raise _error("data.path", f"{spec.uri} has {len(column)} rows; at least 2 are needed")
    return column.astype(str).to_numpy(dtype=object).reshape(-1, 1)


def _numeric_features(frame: Any, spec: DataSpec) -> np.ndarray:
    import pandas as pd

    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise _error("data.features", f"columns {text} are not numeric; encode them as numbers "
                     "or leave them out of data.features")
    values = frame.to_numpy(dtype=np.float64)
    missing = ~np.isfinite(values)
    if missing.any():
        bad = [str(frame.columns[i]) for i in np.flatnonzero(missing.any(axis=0))]
        raise _error("data.path", f"feature columns {_preview(bad)} have {int(missing.sum())} "
                     "missing or infinite values; fill or drop those rows first")
    if len(values) < 2:
        raise _error("data.path", f"{spec.uri} has {len(values)} rows; at least 2 are needed")
    return values.astype(np.float32)


def _encode_target(target: np.ndarray, task: str, spec: DataSpec) -> tuple[np.ndarray, list[str] | None]:
    import pandas as pd

    if pd.isna(target).any():
        raise _error("data.target", f"the target has {int(pd.isna(target).sum())} missing values")
    if task == "regression":
        try:
            values = target.astype(np.float64)
        except (TypeError, ValueError):
            raise _error("data.target", "a regressor needs a numeric target; use a "
                         "classifier architecture for labels") from None
        if not np.isfinite(values).all():
            raise _error("data.target", "the target has infinite values")
        return values.astype(np.float32), None
    classes, encoded = np.unique(target, return_inverse=True)
    if len(classes) < 2:
        raise _error("data.target", f"a classifier needs at least 2 classes; the target has "
                     f"{len(classes)}")
    if len(classes) > MAX_CLASSES:
        raise _error("model.architecture", f"the target has {len(classes)} distinct values, "
                     "too many to be classes; use mlp_regressor for a continuous target")
    return encoded.astype(np.int64), [_label(c) for c in classes]


def _label(value: Any) -> str:
    # Integral floats read from CSV (1.0) are labelled as the integers people wrote.
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … {len(names) - limit} more" if len(names) > limit else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def _error(field: str, message: str) -> InvalidJobSpecError:
    return InvalidJobSpecError(f"{field}: {message}", detail={"field": field})
