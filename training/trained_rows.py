"""The rows a model saw while it trained, kept compactly, so no comparison scores it on them.

A pipeline's evaluate stage scores its candidate and the serving champion on held-out
rows. The champion was trained earlier, on the data as it was then and split its own way:
once rows are appended to the file (or the seed or shares change), a seeded split shuffles
anew, and half the rows held out for the candidate could be rows the champion trained on,
which flatter it and block a better candidate. A training job therefore keeps, with its
run, a Bloom filter of every row it trained or stopped early on (its training and
validation rows where it stopped early on them): the stage leaves out the held-out rows
the champion saw. A filter never misses a row it holds; it takes about one row in a
thousand for one it holds too, up to 37 million rows (:data:`MAX_BYTES`; more beyond), and
such a row is left out as well, which costs a comparison a little evidence and never its
fairness. Rows are known by their values, so a held-out row repeating a trained row's
values exactly is one the model saw.

A row is known by its values as the model reads them: numeric rows as float32 (the
precision models are served in, and the same whichever loader widened them), text rows as
their UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np

ARTIFACT_PATH = "data/trained_rows.bloom"  # a training run's artifact
MAGIC = b"MPTR1"
MAX_BYTES = 64 * 1024 * 1024
_CHUNK_ROWS = 65536  # rows hashed at a time: their bytes and positions, not the whole set
BITS_PER_ROW = 14.4  # one false positive in a thousand, with ten hashes
MAX_HASHES = 16
_HEADER = struct.Struct("<QQB")  # bits, rows, hashes


class TrainedRowsError(ValueError):
    """A kept filter that cannot be read; the message says why."""


def _row_hashes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of each row (the second odd, for double hashing)."""
    if rows.ndim == 1:  # one text (or one value) per row
        items = [(row if isinstance(row, bytes) else str(row).encode()) for row in rows.tolist()]
    else:
        as_float = np.ascontiguousarray(np.asarray(rows, dtype=np.float32).reshape(len(rows), -1))
        items = [row.tobytes() for row in as_float]
    first = np.empty(len(items), dtype=np.uint64)
    second = np.empty(len(items), dtype=np.uint64)
    for index, item in enumerate(items):
        digest = hashlib.blake2b(item, digest_size=16).digest()
        first[index] = int.from_bytes(digest[:8], "little")
        second[index] = int.from_bytes(digest[8:], "little") | 1
    return first, second


def _positions(rows: np.ndarray, bits: int, hashes: int):  # type: ignore[no-untyped-def]
    """Per chunk of ``rows``, its rows' bit positions (``chunk rows x hashes``)."""
    steps = np.arange(hashes, dtype=np.uint64)
    for start in range(0, len(rows), _CHUNK_ROWS):
        first, second = _row_hashes(rows[start:start + _CHUNK_ROWS])
        with np.errstate(over="ignore"):  # modulo 2**64, as double hashing means
            yield ((first[:, None] + steps[None, :] * second[:, None])
                   % np.uint64(bits)).astype(np.int64)


def build(*row_sets: np.ndarray | None) -> bytes:
    """A filter holding every row of ``row_sets`` (arrays of rows, or of texts)."""
    kept = tuple(rows for rows in row_sets if rows is not None and len(rows))
    count = sum(len(rows) for rows in kept)
    bits = max(64, min(MAX_BYTES * 8, math.ceil(count * BITS_PER_ROW / 8) * 8))
    hashes = max(1, min(MAX_HASHES, round(bits / max(count, 1) * math.log(2))))
    body = np.zeros(bits // 8, dtype=np.uint8)
    for rows in kept:
        for positions in _positions(rows, bits, hashes):
            flat = positions.reshape(-1)
            np.bitwise_or.at(body, flat >> 3, (1 << (flat & 7)).astype(np.uint8))
    return MAGIC + _HEADER.pack(bits, count, hashes) + body.tobytes()


def seen(kept: bytes, rows: np.ndarray) -> np.ndarray:
    """Per row of ``rows``, whether the filter ``kept`` (:func:`build`) holds it."""
    if not kept.startswith(MAGIC) or len(kept) < len(MAGIC) + _HEADER.size:
        raise TrainedRowsError("not a filter of trained rows (bad magic or header)")
    bits, _, hashes = _HEADER.unpack_from(kept, len(MAGIC))
    body = np.frombuffer(kept, dtype=np.uint8, offset=len(MAGIC) + _HEADER.size)
    if bits < 1 or not 1 <= hashes <= MAX_HASHES or body.size != (bits + 7) // 8:
        raise TrainedRowsError(f"a filter of {bits} bits and {hashes} hashes in "
                               f"{body.size} bytes")
    if not len(rows):
        return np.zeros(0, dtype=bool)
    held = [((body[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1).all(axis=1)
            for positions in _positions(rows, bits, hashes)]
    return np.concatenate(held).astype(bool)


def rows_held(kept: bytes) -> int:
    """How many rows the filter was built from."""
    if not kept.startswith(MAGIC) or len(kept) < len(MAGIC) + _HEADER.size:
        raise TrainedRowsError("not a filter of trained rows (bad magic or header)")
    return int(_HEADER.unpack_from(kept, len(MAGIC))[1])
