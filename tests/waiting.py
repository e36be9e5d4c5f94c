"""Polling for tests that wait on something outside the process (a job, a rollout)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition", *,
             interval: float = 0.2, seen: Callable[[], Any] | None = None) -> Any:
    """Call ``check`` until it returns something truthy and return that; AssertionError on
    timeout, saying what ``seen`` returns then (what was waited on, as it stood)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}"
                         + (f"; last seen: {seen()!r}" if seen is not None else ""))
