"""The tensor datatypes of the Open Inference Protocol v2 and their numpy counterparts.

The v2 protocol names eleven fixed-width numeric types, BOOL and BYTES. Numeric and BOOL
tensors travel as raw little-endian buffers in the binary extension, so each maps to one
numpy dtype with an explicit byte order. BYTES tensors hold variable-length byte strings;
in numpy they are ``object`` arrays whose elements are ``bytes``. Triton's BF16 is an
extension outside the v2 spec (and needs ``ml_dtypes``), so it is not accepted.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import numpy as np


class Datatype(StrEnum):
    """A v2 tensor datatype, spelled as it appears on the wire."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


V2_DATATYPES: Final[tuple[str, ...]] = tuple(member.value for member in Datatype)
"""Every datatype name the protocol allows, in the order the spec lists them."""

# Explicit little-endian dtypes: the binary extension fixes the byte order, so a
# big-endian host must still read and write little-endian bytes.
_TO_NUMPY: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# Keyed by (kind, itemsize) so that byte order does not matter when classifying an
# array a model produced.
_FROM_NUMPY: Final[dict[tuple[str, int], str]] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in _TO_NUMPY.items() if name != "BYTES"
}


def is_datatype(name: object) -> bool:
    """Whether ``name`` is one of the v2 datatype names (case-sensitive, as the spec says)."""
    return isinstance(name, str) and name in _TO_NUMPY


def to_numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype that holds a tensor of the v2 ``datatype``.

    Raises ``KeyError`` for a name that is not a v2 datatype; callers validate first
    (``is_datatype``) so that they can name the offending field in their error.
    """
    return _TO_NUMPY[datatype]


def from_numpy_dtype(dtype: np.dtype | type) -> str | None:
    """The v2 datatype for a numpy dtype, or ``None`` when the protocol has no match.

    ``object``, ``bytes_`` (``S``) and ``str_`` (``U``) arrays all map to BYTES: a model
    may return strings in any of these forms and each has one obvious encoding.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    return _FROM_NUMPY.get((dtype.kind, dtype.itemsize))


def itemsize(datatype: str) -> int | None:
    """Bytes per element of a fixed-width datatype; ``None`` for BYTES (variable width)."""
    if datatype == "BYTES":
        return None
    return _TO_NUMPY[datatype].itemsize
