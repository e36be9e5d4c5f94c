"""JSON as the store keeps it: a number that is not finite (NaN, ±infinity) is null.

PostgreSQL's ``json`` refuses ``NaN`` and SQLite stores it, so without one rule a record
that one backend keeps the other refuses: a rollout's analysis holding an unknown bound
(stable's p99 over too few requests) failed every write on PostgreSQL and stalled the
rollout, while every SQLite test passed. Every JSON column is written through
:func:`dumps`, on both backends; readers that want a number take null back as NaN.
"""

from __future__ import annotations

import json
import math
from typing import Any


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
