"""Loops that run until their task is cancelled, around Python 3.11's ``asyncio.wait_for``.

Where a task is cancelled in the same turn of the loop as the future it waits on finishes,
3.11's ``wait_for`` returns that future's result and the cancellation is lost (3.12 raises
it). A loop around it then runs on for ever: a replica's shipper after Serve stopped it,
or an event loop that never closes because ``asyncio.run`` waits for its tasks. The task
still counts the request (``Task.cancelling``), so each loop asks at every turn.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` where the running task was asked to stop and a
    ``wait_for`` swallowed the request."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
