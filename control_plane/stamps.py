"""Times stored as ISO 8601 text (in JSON columns and records)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_stamp(text: Any) -> datetime | None:
    """The time ``text`` holds, in UTC where it names no zone; None where it is empty.
    Raises ValueError for text that is no ISO 8601 time."""
    if not text:
        return None
    moment = datetime.fromisoformat(str(text))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
