"""The link's tensor body: every dtype a model speaks survives the trip exactly, and a body
that is malformed, truncated or hostile is refused with the place named, never unpickled."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from serving.link_frames import MAGIC, MAX_TENSORS, LinkFrameError, decode_arrays, encode_arrays

DTYPES = ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8",
          "uint16", "uint32", "uint64", "bool", ">f4", ">i8"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (3, 2, 5), (0, 4), (), (7,)])
def test_numeric_arrays_arrive_bit_for_bit(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape) + len(dtype))
    array = (rng.normal(size=shape) * 100).astype(dtype)
    decoded = decode_arrays(encode_arrays({"x": array}))["x"]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()
    if decoded.size:
        decoded.flat[0] = decoded.flat[-1]  # writable: a model may scale its inputs in place


def test_non_contiguous_and_several_tensors_keep_their_values_and_order() -> None:
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    arrays = {"strided": base[:, ::2], "transposed": base.T, "ids": np.array([[3, 1]], np.int64)}
    decoded = decode_arrays(encode_arrays(arrays))
    assert list(decoded) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_bytes_and_text_tensors_arrive_as_bytes() -> None:
    texts = np.array([[b"great product", b""], ["\u00e9t\u00e9".encode(), b"\x00\xff"]], dtype=object)
    labels = np.array(["positive", "negative"])  # a NumPy str array, as a Python model may answer
    decoded = decode_arrays(encode_arrays({"text": texts, "label": labels}))
    assert decoded["text"].dtype == object and decoded["text"].shape == (2, 2)
    assert decoded["text"].tolist() == texts.tolist()
    assert decoded["label"].tolist() == [b"positive", b"negative"]


def _body(*parts: bytes) -> bytes:
    return b"".join(parts)


def _tensor(name: bytes = b"x", dtype: bytes = b"<f4", shape: tuple[int, ...] = (2,),
            size: int | None = None, data: bytes | None = None) -> bytes:
    data = bytes(8) if data is None else data
    return _body(struct.pack("<H", len(name)), name, struct.pack("<BB", 0, len(dtype)), dtype,
                 struct.pack("<B", len(shape)), *(struct.pack("<Q", d) for d in shape),
                 struct.pack("<Q", len(data) if size is None else size), data)


@pytest.mark.parametrize(("body", "named"), [
    (b"", "the magic"),
    (b"JSON{}", "bad magic"),
    (_body(MAGIC, struct.pack("<H", 1)), "tensor 0's name length"),
    (_body(MAGIC, struct.pack("<H", MAX_TENSORS + 1)), f"at most {MAX_TENSORS}"),
    (_body(MAGIC, struct.pack("<H", 1), _tensor(dtype=b"|O")), "not a plain numeric dtype"),
    (_body(MAGIC, struct.pack("<H", 1), _tensor(dtype=b"<c8")), "not a plain numeric dtype"),
    (_body(MAGIC, struct.pack("<H", 1), _tensor(dtype=b"pickle")), "unknown dtype"),
    (_body(MAGIC, struct.pack("<H", 1), _tensor(shape=(3,))), "8 bytes for shape [3]"),
    (_body(MAGIC, struct.pack("<H", 1), _tensor(size=2**40)), "1099511627776 bytes for shape [2]"),
    (_body(MAGIC, struct.pack("<H", 1), _tensor(size=8, data=b"1234")), "tensor 'x''s data"),
    (_body(MAGIC, struct.pack("<H", 1), _tensor(), b"!"), "1 bytes after the last tensor"),
    (_body(MAGIC, struct.pack("<H", 2), _tensor(), _tensor()), "'x' appears twice"),
    (_body(MAGIC, struct.pack("<H", 1), _tensor(name=b"\xff")), "not UTF-8"),
    (_body(MAGIC, struct.pack("<H", 1), struct.pack("<H", 1), b"x", struct.pack("<BB", 9, 0)),
     "unknown kind 9"),
    (_body(MAGIC, struct.pack("<H", 1), struct.pack("<H", 1), b"x", struct.pack("<BB", 0, 3),
           b"<f4", struct.pack("<B", 17)), "rank 17"),
    # A billion bytes elements announced in a 40-byte body: refused before anything is built.
    (_body(MAGIC, struct.pack("<H", 1), struct.pack("<H", 1), b"x", struct.pack("<BB", 1, 0),
           struct.pack("<B", 1), struct.pack("<Q", 10**9)), "larger than the body"),
])
def test_a_malformed_body_is_refused_naming_where(body: bytes, named: str) -> None:
    with pytest.raises(LinkFrameError) as refused:
        decode_arrays(body)
    assert named in str(refused.value)


def test_objects_that_are_not_bytes_or_text_never_travel() -> None:
    with pytest.raises(LinkFrameError, match="complex64"):
        encode_arrays({"z": np.ones(2, np.complex64)})
