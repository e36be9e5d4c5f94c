"""Checks a spec's data must pass before anything is submitted.

The job runs them again when it starts (a spec may reach the cluster through plain
``ray job submit``), so a bad spec fails in seconds with a message naming the field.
Whether the cluster can hold the workers is :mod:`training.capacity`.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from training.data import check_columns, table_columns
from training.errors import InvalidJobSpecError, TrainingError
from training.schemas import JobSpec

# A submitter reads the data's columns before it submits: a network mount or an object
# store that stalls must not hold the command for good (the job, which reads them again,
# has its setup deadline; the submitter had none).
DATA_CHECK_TIMEOUT_S = 120.0


def check_data_within(spec: JobSpec, timeout_s: float = DATA_CHECK_TIMEOUT_S) -> None:
    """:func:`check_data` in a thread of its own, waited for ``timeout_s`` at most."""
    checked: Future[None] = Future()

    def run() -> None:
        try:
            check_data(spec)
        except BaseException as error:
            checked.set_exception(error)
        else:
            checked.set_result(None)

    threading.Thread(target=run, name="data-check", daemon=True).start()
    try:
        checked.result(timeout=timeout_s)
    except FutureTimeout:
        raise TrainingError(
            f"reading the columns of {spec.data.uri} took longer than {timeout_s:g} s; check "
            "that its storage answers (a stalled mount, an object store out of reach) and "
            "submit again", detail={"field": "data"}) from None


def check_data(spec: JobSpec) -> None:
    """The target and feature columns exist, and a CNN's image shape fits the row."""
    check_columns(spec.data)
    shape = spec.model.image_shape
    if spec.model.architecture != "cnn_classifier" or shape is None:
        return
    if spec.data.features:
        width = len(spec.data.features)
    else:
        columns = table_columns(spec.data)
        width = len(columns) - (1 if spec.data.target in columns else 0)
    if math.prod(shape) != width:
        raise _error("model.image_shape", f"{list(shape)} holds {math.prod(shape)} values but "
                     f"each row of {spec.data.uri} has {width} features")


def _error(field: str, message: str) -> InvalidJobSpecError:
    return InvalidJobSpecError(f"{field}: {message}", detail={"field": field})
