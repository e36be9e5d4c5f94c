"""Which replicas report to the Monitor, and which went silent without saying goodbye.

A replica ships every ``stats_interval_s``, with or without traffic, and a last time when
Serve stops it gracefully (``leaving``). One that stops shipping without that goodbye
crashed, was killed or is stalled: the requests it had in flight were answered by the
proxy with an error no replica recorded, and its last second of statistics never came. A
version whose code kills its replica would otherwise show a clean error rate, so the
snapshot names such replicas and the rollout analysis waits rather than judge a window
that lost them.

A silent replica counts against every version of its endpoint: each replica holds them
all (a colocated replica loads them, an isolated router routes to them), and which it
held when it died is unknowable: a version added within its last interval (a candidate
whose first request kills the replica) is not in its last shipment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serving.monitoring.snapshot import Replicas

# A replica is silent once it missed this many shipments in a row, and never sooner than
# SILENT_MIN_S: a second's stall of its event loop (a busy CPU) is not a crash.
SILENT_INTERVALS = 5
SILENT_MIN_S = 5.0


@dataclass
class Reporter:
    """What the Monitor knows of one replica: when it last shipped and how often it ships."""

    last: float
    every_s: float
    sequence: int | None = None  # the newest shipment merged (replicas number theirs)

    def silent_for(self, now: float) -> float:
        """Seconds past the silence this replica's interval allows (0 while reporting)."""
        quiet = now - self.last
        return quiet if quiet > max(SILENT_MIN_S, SILENT_INTERVALS * self.every_s) else 0.0


class ReplicaReports:
    """Per endpoint, the replicas heard from in the last ``memory_s`` seconds."""

    def __init__(self, clock: Callable[[], float], memory_s: float) -> None:
        self._clock = clock
        self._memory_s = memory_s
        self._endpoints: dict[str, dict[str, Reporter]] = {}
        self._pruned_at: dict[str, float] = {}

    def merged(self, endpoint: str, replica: str, sequence: int | None) -> bool:
        """Whether ``replica``'s shipment ``sequence`` was merged already: a replica sends
        again what it could not see arrive, and a Monitor that was only slow got it."""
        reporter = self._endpoints.get(endpoint, {}).get(replica)
        return (sequence is not None and reporter is not None and reporter.sequence is not None
                and sequence <= reporter.sequence)

    def heard(self, endpoint: str, replica: str, every_s: float,
              sequence: int | None = None) -> None:
        now = self._clock()
        reporters = self._endpoints.setdefault(endpoint, {})
        reporters[replica] = Reporter(now, every_s, sequence)
        if now - self._pruned_at.get(endpoint, -self._memory_s) >= 1.0:
            self._pruned_at[endpoint] = now
            for name in [n for n, r in reporters.items() if now - r.last > self._memory_s]:
                del reporters[name]

    def left(self, endpoint: str, replica: str) -> None:
        """``replica`` stopped gracefully after its last shipment: nothing of it is missing."""
        self._endpoints.get(endpoint, {}).pop(replica, None)

    def forget(self, endpoint: str) -> None:
        self._endpoints.pop(endpoint, None)
        self._pruned_at.pop(endpoint, None)

    def of_endpoint(self, endpoint: str, window_s: float) -> Replicas:
        """The replicas of ``endpoint`` heard from in the last ``window_s`` seconds, and
        those of them silent now."""
        now = self._clock()
        reporting = [r for r in self._endpoints.get(endpoint, {}).values()
                     if now - r.last <= window_s]
        silences = [s for s in (r.silent_for(now) for r in reporting) if s > 0]
        return Replicas(reporting=len(reporting), silent=len(silences),
                        silent_for_s=max(silences, default=0.0))

    def count(self) -> int:
        """Replicas remembered, over every endpoint (bounded by ``memory_s``)."""
        return sum(len(reporters) for reporters in self._endpoints.values())
