"""Tensor payloads: JSON ``data`` and binary-extension buffers to numpy arrays and back.

Numeric tensors never go through a per-element Python loop: JSON lists become arrays in
one ``np.asarray`` call and binary buffers are viewed with ``np.frombuffer`` (no copy).
BYTES tensors are lists of variable-length strings, so a loop over elements is the least
work there is. Every function takes ``field``, the path of the tensor in the request
(``inputs[1]``), so that its errors name what was wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from serving.errors import InvalidRequestError
from serving.protocol.datatypes import to_numpy_dtype

_LENGTH = struct.Struct("<I")
# Kinds np.asarray may infer from JSON numbers that fit each target kind: JSON true/false
# only fill BOOL, and floats never fill integer tensors (no silent truncation).
_ACCEPTED_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}
_WANTED = {"b": "true/false", "u": "integers", "i": "integers", "f": "numbers"}
_KIND_NAMES = {
    "b": "true/false",
    "i": "integers",
    "u": "integers",
    "f": "non-integer numbers",
    "U": "strings",
    "O": "nulls, objects or mixed values",
}


MAX_SPAN = 2**31  # the most elements a tensor's shape may span, its zero dimensions as one
MAX_DIMS = 32  # the most dimensions a tensor may have (NumPy's own limit is 64)


def element_count(shape: list[int], field: str = "inputs") -> int:
    """Number of elements a tensor of ``shape`` holds (1 for a scalar's empty shape). A
    shape spanning more than :data:`MAX_SPAN` elements, even one holding none (``[0,
    10**20]``), is refused: NumPy cannot make it, and the request failed as a server error."""
    if len(shape) > MAX_DIMS:  # NumPy makes no array of more (a server error, before)
        raise _invalid(f"{field}.shape has {len(shape)} dimensions; at most {MAX_DIMS}",
                       f"{field}.shape")
    # math.prod on Python ints cannot overflow, unlike np.prod on int64.
    if math.prod(max(dim, 1) for dim in shape) > MAX_SPAN:
        raise _invalid(f"{field}.shape {list(shape)[:8]} spans more than {MAX_SPAN:,} elements; "
                       "no tensor may", f"{field}.shape")
    return math.prod(shape)


def _invalid(message: str, field: str) -> InvalidRequestError:
    return InvalidRequestError(message, detail={"field": field})


def _count_mismatch(
    field: str, shape: list[int], expected: int, got: int | str, what: str
) -> InvalidRequestError:
    return _invalid(
        f"{field}.shape {shape} holds {expected} elements but {what} has {got}", f"{field}.shape"
    )


def array_from_json(data: Any, datatype: str, shape: list[int], field: str) -> np.ndarray:
    """Build the tensor ``field`` from its JSON ``data`` (flat or nested, row-major)."""
    expected = element_count(shape, field)
    if datatype == "BYTES":
        flat = _flatten_strings(data, f"{field}.data")
        if len(flat) != expected:
            raise _count_mismatch(field, shape, expected, len(flat), "data")
        array = np.empty(expected, dtype=np.object_)
        array[:] = flat
        return array.reshape(shape)
    try:
        # No dtype: let numpy infer what the JSON held, then check it before casting, so
        # that 1.5 for an INT32 or "2" for an FP32 is an error, not a silent change.
        raw = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise _invalid(
            f"{field}.data is not a rectangular nested list ({exc})", f"{field}.data"
        ) from None
    if raw.size != expected:
        raise _count_mismatch(field, shape, expected, raw.size, "data")
    target = to_numpy_dtype(datatype)
    if not expected:
        return np.empty(shape, dtype=target)
    kind = raw.dtype.kind
    if kind not in _ACCEPTED_KINDS[target.kind]:
        if kind in "fO" and target.kind in "iuf":
            # numpy infers float64 or object for integers past int64 (UINT64 data)
            # and for values such as null; sort those out element by element.
            return _exact_numbers(data, target, datatype, field).reshape(shape)
        raise _invalid(
            f"{field}.data must hold {_WANTED[target.kind]} for datatype {datatype}, got "
            f"{_KIND_NAMES.get(kind, 'mixed values')}",
            f"{field}.data",
        )
    if target.kind in "iu" and target != raw.dtype:
        info = np.iinfo(target)
        low, high = raw.min(), raw.max()
        if low < info.min or high > info.max:
            raise _out_of_range(low if low < info.min else high, datatype, field)
    # Floats past the target's range round to +-inf, as IEEE casts (and Triton) do; the
    # warning numpy would print for that is noise in a server log.
    with np.errstate(over="ignore"):
        return raw.astype(target, copy=False).reshape(shape)


def _exact_numbers(data: Any, target: np.dtype, datatype: str, field: str) -> np.ndarray:
    """Convert JSON numbers numpy could not type exactly, checking each element (rare path)."""
    # dtype=object keeps the parsed Python ints and floats as they are, not rounded.
    flat = np.asarray(data, dtype=np.object_).ravel().tolist()
    allowed = (int,) if target.kind in "iu" else (int, float)
    for index, value in enumerate(flat):
        if type(value) not in allowed:
            raise _invalid(
                f"{field}.data element {index} (row-major) is {value!r:.40}, not "
                f"{_WANTED[target.kind]} as datatype {datatype} needs",
                f"{field}.data",
            )
    try:
        with np.errstate(over="ignore"):
            return np.array(flat, dtype=target)
    except OverflowError:
        if target.kind == "f":
            raise _invalid(
                f"{field}.data holds an integer too large for {datatype}", f"{field}.data"
            ) from None
        info = np.iinfo(target)
        bad = next(v for v in flat if not info.min <= v <= info.max)
        raise _out_of_range(bad, datatype, field) from None


def _out_of_range(value: Any, datatype: str, field: str) -> InvalidRequestError:
    info = np.iinfo(to_numpy_dtype(datatype))
    return _invalid(
        f"{field}.data holds {value}, out of range for {datatype} [{info.min}, {info.max}]",
        f"{field}.data",
    )


def _flatten_strings(data: Any, field: str) -> list[bytes]:
    """The leaves of a (possibly nested) JSON list of strings, UTF-8 encoded, row-major."""
    out: list[bytes] = []
    # An explicit stack instead of recursion: nesting depth is client-controlled.
    stack = [iter(data if isinstance(data, list) else [data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str):
                out.append(item.encode("utf-8"))
            elif isinstance(item, list):
                stack.append(iter(item))
                break
            else:
                raise _invalid(
                    f"{field} must hold strings for datatype BYTES, got {type(item).__name__} "
                    f"{item!r:.40}",
                    field,
                )
        else:
            stack.pop()
    return out


def array_from_binary(
    buffer: memoryview, datatype: str, shape: list[int], field: str
) -> np.ndarray:
    """View the tensor ``field`` from its slice of the binary part of the body.

    Numeric arrays share memory with the body and are read-only; they are copied only when
    the slice is misaligned for the dtype (some consumers require aligned memory).
    """
    expected = element_count(shape, field)
    if datatype == "BYTES":
        array = decode_bytes_elements(buffer, field, at_most=expected)
        if array.size != expected:
            got = array.size if array.size < expected else f"more than {expected}"
            raise _count_mismatch(field, shape, expected, got, "its binary data")
        return array.reshape(shape)
    dtype = to_numpy_dtype(datatype)
    if len(buffer) != expected * dtype.itemsize:
        raise _invalid(
            f"{field}.parameters.binary_data_size is {len(buffer)} but shape {shape} of "
            f"{datatype} needs {expected * dtype.itemsize} bytes",
            f"{field}.parameters.binary_data_size",
        )
    array = np.frombuffer(buffer, dtype=dtype)
    if datatype == "BOOL" and expected and array.view(np.uint8).max() > 1:
        # numpy would read byte 2 as a bool that is neither True nor False.
        raise _invalid(f"{field} binary BOOL data holds a byte other than 0 or 1", field)
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def decode_bytes_elements(buffer: memoryview, field: str, at_most: int | None = None) -> np.ndarray:
    """Split a BYTES buffer (4-byte little-endian length, then the bytes; repeated); past
    ``at_most`` elements it stops at one more (the caller refuses it: a 60 MB buffer of
    5-byte elements is 12 million objects to make before saying so)."""
    items: list[bytes] = []
    offset, end = 0, len(buffer)
    while offset < end and (at_most is None or len(items) <= at_most):
        if end - offset < 4:
            raise _invalid(
                f"{field} BYTES element {len(items)} has a truncated 4-byte length prefix "
                f"({end - offset} bytes left)",
                field,
            )
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        if length > end - offset:
            raise _invalid(
                f"{field} BYTES element {len(items)} claims {length} bytes but only "
                f"{end - offset} remain in its binary data",
                field,
            )
        items.append(bytes(buffer[offset : offset + length]))
        offset += length
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def _element_bytes(item: Any) -> bytes:
    # The same rule as tritonclient's serialize_byte_tensor: bytes as they are,
    # anything else through str() and UTF-8.
    if isinstance(item, bytes):
        return item
    return str(item).encode("utf-8")


def encode_bytes_elements(array: np.ndarray) -> bytes:
    """Serialize a BYTES tensor into length-prefixed elements, row-major."""
    parts: list[bytes] = []
    for item in array.ravel(order="C").tolist():
        raw = _element_bytes(item)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def json_data(array: np.ndarray, datatype: str, field: str) -> list[Any]:
    """The flat JSON ``data`` list of a tensor (BYTES elements as UTF-8 strings)."""
    flat = array.ravel(order="C").tolist()
    if datatype != "BYTES":
        return flat
    out: list[str] = []
    for item in flat:
        if isinstance(item, bytes):
            try:
                out.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                raise _invalid(
                    f"{field} holds bytes that are not UTF-8 and cannot travel as JSON; request "
                    "it with parameters.binary_data: true",
                    field,
                ) from None
        else:
            out.append(str(item))
    return out


def binary_data(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """The binary-extension payload of a tensor: little-endian, row-major."""
    if datatype == "BYTES":
        return encode_bytes_elements(array)
    dtype = to_numpy_dtype(datatype)
    # A view when the array already is contiguous little-endian; a copy only otherwise.
    contiguous = np.ascontiguousarray(array, dtype=dtype)
    # Flattened to bytes so that 0-d and empty arrays become plain (possibly empty) buffers.
    return memoryview(contiguous.reshape(-1).view(np.uint8))


_BUFFERS = (bytes, bytearray)
_TEXTS = (bytes, str)


def held_bytes(arrays: Iterable[np.ndarray]) -> int:
    """What ``arrays`` keep alive: each one's buffer, or, for a view of a request's binary
    part, that whole body (counted once however many views share it), and the strings an
    object array points to. A 16-byte input from a 64 MiB body holds 64 MiB."""
    # Called for every monitored request: an array holding its own buffer, or a view of
    # one that does, is read without a call but the loop's own.
    total, seen = 0, set()
    for array in arrays:
        root: Any = array
        base = array.base
        while base is not None:
            root = base
            base = base.base if isinstance(base, np.ndarray) else None
        if type(root) is memoryview:
            root = root.obj
        key = id(root)
        if key not in seen:
            seen.add(key)
            total += (root.nbytes if type(root) is np.ndarray
                      else len(root) if isinstance(root, _BUFFERS)
                      else int(getattr(root, "nbytes", 0)))
        if array.dtype.kind == "O":
            total += sum(len(value) for value in array.flat if isinstance(value, _TEXTS))
    return total
