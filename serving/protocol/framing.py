"""The body around the tensors: size limits, HTTP headers and request decompression.

Transport-agnostic: headers are any ``Mapping`` (a plain dict, Starlette's ``Headers``);
names are matched without regard to case, as HTTP requires.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Final

from serving.errors import InvalidRequestError, PayloadTooLargeError

INFERENCE_HEADER_CONTENT_LENGTH: Final = "Inference-Header-Content-Length"
"""Header of the binary tensor extension: byte length of the JSON part of a body."""

DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024 * 1024
"""Default limit on a request body, compressed or not (64 MiB)."""

# wbits per Content-Encoding: gzip framing, and zlib framing for "deflate" (what HTTP
# means by it, and what tritonclient sends).
_WBITS: Final = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


def check_body_size(size: int, limit: int | None, *, what: str = "request body") -> None:
    """Raise ``PayloadTooLargeError`` when ``size`` bytes exceed ``limit`` (``None``: no limit).

    Call it with the declared ``Content-Length`` before reading a body, so that an
    oversized upload is refused without buffering it, and again on the bytes read.
    """
    if limit is not None and size > limit:
        raise PayloadTooLargeError(
            f"the {what} is {size} bytes, over the limit of {limit} bytes; send smaller "
            "batches or raise the server's body limit",
            detail={"field": "body", "size": size, "limit": limit},
        )


def get_header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """The value of header ``name`` in ``headers``, matched case-insensitively."""
    if not headers:
        return None
    # Case-insensitive mappings (Starlette, httpx) answer directly; plain dicts need a scan.
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def json_header_length(headers: Mapping[str, Any] | None, body_size: int) -> int | None:
    """``Inference-Header-Content-Length`` as an int checked against the body, or ``None``."""
    raw = get_header(headers, INFERENCE_HEADER_CONTENT_LENGTH)
    if raw is None:
        return None
    field = INFERENCE_HEADER_CONTENT_LENGTH
    try:
        length = int(raw.strip())
    except ValueError:
        raise InvalidRequestError(
            f"header {field} must be a byte count, got {raw!r:.40}", detail={"field": field}
        ) from None
    if length < 0:
        raise InvalidRequestError(
            f"header {field} is {length}; it must not be negative", detail={"field": field}
        )
    if length > body_size:
        raise InvalidRequestError(
            f"header {field} is {length} but the body has only {body_size} bytes",
            detail={"field": field},
        )
    return length


def decompress_body(body: bytes, content_encoding: str | None, limit: int | None) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate, identity), never inflating past ``limit``."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InvalidRequestError(
            f"header Content-Encoding {content_encoding!r} is not supported; use gzip, deflate "
            "or none",
            detail={"field": "Content-Encoding"},
        )
    inflater = zlib.decompressobj(wbits=wbits)
    try:
        # max_length bounds memory against a small body that inflates enormously.
        data = inflater.decompress(body, 0 if limit is None else limit + 1)
    except zlib.error as exc:
        raise InvalidRequestError(
            f"the body is not valid {encoding} data, as its Content-Encoding says ({exc})",
            detail={"field": "Content-Encoding"},
        ) from None
    check_body_size(len(data), limit, what="decompressed request body")
    if not inflater.eof or inflater.unused_data:
        raise InvalidRequestError(
            f"the body is truncated or has trailing bytes after its Content-Encoding {encoding} stream",
            detail={"field": "Content-Encoding"},
        )
    return data
