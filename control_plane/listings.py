"""Listings anyone may ask for, bounded in bytes as well as in items.

A page of 500 items of megabytes each would be held whole in the control plane's memory
and sent: a listing stops short of its ``limit`` once its items pass
:data:`LISTING_MAX_BYTES`, and says so by answering the number it holds as its limit (the
next page starts where it stopped)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel

LISTING_MAX_BYTES = 8 << 20
LISTING_ROWS_AT_ONCE = 16  # whole rows read from the store at a time

T = TypeVar("T", bound=BaseModel)


def within_listing_bytes(items: Iterable[T], limit: int) -> tuple[list[T], int]:
    """``items`` up to :data:`LISTING_MAX_BYTES` of JSON (one at least, whatever its size),
    and the page's limit: ``limit``, or the number taken where they stopped short."""
    taken: list[T] = []
    size = 0
    for item in items:
        size += len(item.model_dump_json())
        if taken and size > LISTING_MAX_BYTES:
            return taken, len(taken)
        taken.append(item)
    return taken, limit
