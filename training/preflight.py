"""Checks a spec's data must pass before anything is submitted.

The job runs them again when it starts (a spec may reach the cluster through plain
``ray job submit``), so a bad spec fails in seconds with a message naming the field.
Whether the cluster can hold the workers is :mod:`training.capacity`.
"""

from __future__ import annotations

import math

from training.data import check_columns, table_columns
from training.errors import InvalidJobSpecError
from training.schemas import JobSpec


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
