"""Tensors on the isolated placement's link: a compact binary body, and its strict reader.

The router sends a version's replicas the arrays it has already decoded and checked, and
gets the model's arrays back; JSON (or the v2 binary extension, with its JSON header)
would cost a parse and an encode on each side for nothing. A body is:

    b"MPL1", u16 tensor count, then per tensor:
    u16 name length, name (UTF-8), u8 kind (0: numeric, 1: bytes), u8 dtype length,
    dtype (NumPy's ``dtype.str``, numeric kinds only), u8 rank, rank x u64 dimensions,
    then the data: numeric: u64 byte count and the C-ordered bytes; bytes: per element
    u32 length and the element.

Everything little-endian. The listener answering it can be reached by anyone who can reach
the node's ingress, so the reader trusts nothing: the magic, every length, the dtype (only
plain numeric ones; never Python objects, so nothing is unpickled), the rank, the element
count against the data, and no trailing bytes. A body it refuses raises
:class:`LinkFrameError` naming what was wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

MAGIC = b"MPL1"
CONTENT_TYPE = "application/x-modelplane-tensors"
MAX_TENSORS = 256
MAX_RANK = 16
# Plain numeric dtypes only: their bytes are the values, whatever they are.
NUMERIC_KINDS = frozenset("biuf")

_COUNT = struct.Struct("<H")
_NAME = struct.Struct("<H")
_KIND = struct.Struct("<BB")
_RANK = struct.Struct("<B")
_SIZE = struct.Struct("<Q")
_ITEM = struct.Struct("<I")
_BYTES_KIND, _NUMERIC_KIND = 1, 0
_SHAPES = [struct.Struct(f"<{rank}Q") for rank in range(MAX_RANK + 1)]
_DTYPES: dict[bytes, np.dtype] = {}  # the numeric dtypes read so far, by their spelling


class LinkFrameError(ValueError):
    """A link body that cannot be read; the message says where."""


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``arrays`` as one link body (numeric arrays as their bytes, object arrays of bytes
    or str element by element)."""
    parts = [MAGIC, _COUNT.pack(len(arrays))]
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.ndim > MAX_RANK:
            raise LinkFrameError(f"tensor {name!r}: rank {array.ndim}; at most {MAX_RANK}")
        encoded = name.encode()
        parts += [_NAME.pack(len(encoded)), encoded]
        if array.dtype.kind == "O" or array.dtype.kind in "SU":
            parts += [_KIND.pack(_BYTES_KIND, 0), _RANK.pack(array.ndim),
                      _SHAPES[array.ndim].pack(*array.shape)]
            for item in array.reshape(-1).tolist():
                data = item if isinstance(item, bytes) else str(item).encode()
                parts += [_ITEM.pack(len(data)), data]
            continue
        if array.dtype.kind not in NUMERIC_KINDS:
            raise LinkFrameError(f"tensor {name!r}: dtype {array.dtype} cannot travel on the link")
        dtype = array.dtype.str.encode()
        data = np.ascontiguousarray(array).data
        parts += [_KIND.pack(_NUMERIC_KIND, len(dtype)), dtype, _RANK.pack(array.ndim)]
        parts += [_SHAPES[array.ndim].pack(*array.shape), _SIZE.pack(data.nbytes), data]
    return b"".join(parts)


def decode_arrays(body: bytes | bytearray) -> dict[str, np.ndarray]:
    """The arrays of a link body; numeric ones are writable views of one copy of it."""
    view = memoryview(bytearray(body))  # one copy: the model may write into its inputs
    reader = _Reader(view)
    if bytes(reader.take(len(MAGIC), "the magic")) != MAGIC:
        raise LinkFrameError("not a link body (bad magic)")
    (count,) = reader.unpack(_COUNT, "the tensor count")
    if count > MAX_TENSORS:
        raise LinkFrameError(f"{count} tensors; at most {MAX_TENSORS}")
    arrays: dict[str, np.ndarray] = {}
    for index in range(count):
        (length,) = reader.unpack(_NAME, "tensor {}'s name length", index)
        try:
            name = bytes(reader.take(length, "tensor {}'s name", index)).decode()
        except UnicodeDecodeError:
            raise LinkFrameError(f"tensor {index}'s name is not UTF-8") from None
        if name in arrays:
            raise LinkFrameError(f"tensor {name!r} appears twice")
        kind, dtype_length = reader.unpack(_KIND, "tensor {!r}'s kind", name)
        if kind not in (_NUMERIC_KIND, _BYTES_KIND):
            raise LinkFrameError(f"tensor {name!r}: unknown kind {kind}")
        dtype = _numeric_dtype(reader, name, dtype_length) if kind == _NUMERIC_KIND else None
        (rank,) = reader.unpack(_RANK, "tensor {!r}'s rank", name)
        if rank > MAX_RANK:
            raise LinkFrameError(f"tensor {name!r}: rank {rank}; at most {MAX_RANK}")
        shape = reader.unpack(_SHAPES[rank], "tensor {!r}'s shape", name)
        elements = 1
        for dim in shape:
            elements *= dim
        if dtype is not None:
            (size,) = reader.unpack(_SIZE, "tensor {!r}'s byte count", name)
            if size != elements * dtype.itemsize:
                raise LinkFrameError(f"tensor {name!r}: {size} bytes for shape {list(shape)} "
                                     f"of {dtype}")
            data = reader.take(size, "tensor {!r}'s data", name)
            arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
            continue
        if elements > reader.left // _ITEM.size:  # each element costs at least its length
            raise LinkFrameError(f"tensor {name!r}: shape {list(shape)} is larger than the body")
        items = [bytes(reader.take(reader.unpack(_ITEM, "tensor {!r}'s element", name)[0],
                                   "tensor {!r}'s element", name)) for _ in range(elements)]
        array = np.empty(elements, dtype=object)
        array[:] = items
        arrays[name] = array.reshape(shape)
    if reader.left:
        raise LinkFrameError(f"{reader.left} bytes after the last tensor")
    return arrays


def _numeric_dtype(reader: _Reader, name: str, length: int) -> np.dtype:
    text = bytes(reader.take(length, "tensor {!r}'s dtype", name))
    known = _DTYPES.get(text)
    if known is not None:
        return known
    try:
        dtype = np.dtype(text.decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError):
        raise LinkFrameError(f"tensor {name!r}: unknown dtype {text[:32]!r}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None:
        raise LinkFrameError(f"tensor {name!r}: dtype {dtype} is not a plain numeric dtype")
    if len(_DTYPES) < 256:  # a few dozen valid spellings exist; the bound is for safety
        _DTYPES[text] = dtype
    return dtype


class _Reader:
    __slots__ = ("offset", "view")

    def __init__(self, view: memoryview) -> None:
        self.view, self.offset = view, 0

    @property
    def left(self) -> int:
        return len(self.view) - self.offset

    def take(self, size: int, what: str, subject: object = None) -> memoryview:
        """``size`` bytes; ``what`` (with ``subject`` put in, only on failure) names them."""
        if size > len(self.view) - self.offset:
            raise LinkFrameError(f"the body ends inside {what.format(subject)}")
        start, self.offset = self.offset, self.offset + size
        return self.view[start:self.offset]

    def unpack(self, layout: struct.Struct, what: str, subject: object = None) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size, what, subject))
