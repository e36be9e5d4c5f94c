"""Values as every backend stores them, so what one keeps the other does not refuse.

- **JSON**: a number that is not finite (NaN, ±infinity) is null. PostgreSQL's ``json``
  refuses ``NaN`` and SQLite stores it: a rollout's analysis holding an unknown bound
  (stable's p99 over too few requests) failed every write on PostgreSQL and stalled the
  rollout, while every SQLite test passed. Every JSON column is written through
  :func:`dumps`; readers that want a number take null back as NaN.
- **Text**: a NUL character, which PostgreSQL's text refuses, and a lone surrogate, which
  neither backend's driver can encode, become U+FFFD. Requests are refused such text at
  the API, naming the field (``control_plane.schemas.StoredText``); this is for text the
  platform writes itself (a failed job's last log line, an exception's message), whose
  write failed and left a pipeline run or a benchmark under way for good. Every
  statement's parameters pass through :func:`parameters`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# A NUL, or a surrogate code point (only ever alone in a str that came from outside).
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float, however deep in dicts, lists and tuples
    (a dataclass's pairs), made None; tuples become lists, as JSON has them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """The store's JSON serializer (the engines' ``json_serializer``)."""
    return json.dumps(json_safe(value), allow_nan=False)


def text(value: str) -> str:
    """``value`` with each NUL and lone surrogate made U+FFFD."""
    return UNSTORABLE_TEXT.sub(REPLACEMENT, value) if UNSTORABLE_TEXT.search(value) else value


def parameters(bound: Any) -> Any:
    """A statement's parameters (a mapping, a sequence, or a list of either for many rows)
    with their text made storable; the same object where nothing needed to change."""
    if isinstance(bound, str):
        return text(bound)
    if isinstance(bound, dict):
        changed = {key: parameters(value) for key, value in bound.items()}
        return bound if all(changed[k] is bound[k] for k in bound) else changed
    if isinstance(bound, list | tuple):
        items = [parameters(value) for value in bound]
        if all(new is old for new, old in zip(items, bound, strict=True)):
            return bound
        return type(bound)(items) if isinstance(bound, tuple) else items
    return bound
