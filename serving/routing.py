"""Choosing the version that answers a request: weights, stickiness, pins."""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass

from serving.errors import ModelNotFoundError
from serving.schemas import RouteTable


@dataclass(frozen=True)
class Router:
    """A compiled route table: cumulative weights for an O(log n) weighted pick."""

    versions: tuple[int, ...]
    cumulative: tuple[float, ...]
    shadows: tuple[int, ...]
    sticky_header: str

    @classmethod
    def compile(cls, table: RouteTable) -> Router:
        live = sorted((v, w) for v, w in table.weights.items() if w > 0)
        total = sum(w for _, w in live)
        cumulative, running = [], 0.0
        for _, weight in live:
            running += weight / total
            cumulative.append(running)
        if cumulative:
            cumulative[-1] = 1.0  # guard against rounding leaving a gap at the top
        return cls(
            versions=tuple(v for v, _ in live),
            cumulative=tuple(cumulative),
            shadows=tuple(table.shadows),
            sticky_header=table.sticky_header,
        )

    def pick(self, sticky_key: str | None = None, rng: random.Random | None = None) -> int:
        """The version for one request; the same sticky key always gets the same version."""
        if not self.versions:
            raise ModelNotFoundError("this endpoint routes no traffic to any version yet")
        point = _unit_hash(sticky_key) if sticky_key else (rng or random).random()
        return self.versions[min(bisect.bisect_right(self.cumulative, point), len(self.versions) - 1)]


def _unit_hash(key: str) -> float:
    # A stable hash (not Python's salted hash()) so every replica maps a key alike.
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
