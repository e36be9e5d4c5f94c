"""Stepped load: ``USERS:SECONDS`` pairs, and how many users run at a given second.

Kept apart from Locust (benchmarks/locust_steps.py imports it) so reading steps needs no
gevent in the process.
"""

from __future__ import annotations


def parse_steps(raw: str) -> list[tuple[int, float]]:
    """``"2:30,8:45"`` -> ``[(2, 30.0), (8, 45.0)]``."""
    steps = []
    for pair in raw.split(","):
        users, _, seconds = pair.partition(":")
        steps.append((int(users), float(seconds)))
    return steps


def users_at(steps: list[tuple[int, float]], elapsed: float) -> int | None:
    """The users running ``elapsed`` seconds in; None once the last step is over."""
    for users, seconds in steps:
        if elapsed < seconds:
            return users
        elapsed -= seconds
    return None
