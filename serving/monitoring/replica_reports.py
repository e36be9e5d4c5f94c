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
whose first request kills the replica) is not in its last shipment. It counts in every
window its lost seconds may fall in: those reaching back to its last shipment's interval,
so that a window shorter than the silence, or one that began after the last shipment,
still shows it.

A Monitor that starts while replicas serve (restarted, or replaced by `up`) hears from
them one by one, each sending what it kept while there was none. Until every replica has
been heard, the seconds the first backlog reaches back to hold only part of their
requests, and which replicas are still to come is unknowable: each finds the new Monitor
at its next shipment, so for the first silence after this Monitor first heard of the
endpoint (``Reporter.silence_s`` of the slowest replica heard in it) the seconds any late
shipment in it reached back to count as being caught up, as a known replica's backlog
does. Counts over them read as lower bounds, and no rate is taken from
them: a second replica's backlog a second behind the first's read as a lull.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serving.monitoring.snapshot import Replicas

# A replica is silent once it missed this many shipments in a row, and never sooner than
# SILENT_MIN_S: a second's stall of its event loop (a busy CPU) is not a crash. The lower
# these are, the sooner a crash shows and the more a stall does.
SILENT_INTERVALS = 3
SILENT_MIN_S = 3.0


@dataclass
class Reporter:
    """What the Monitor knows of one replica: when it last shipped, how often it ships,
    the number of the newest shipment merged, and, while it sends what it kept for a
    Monitor that was away (oldest first, one at a time), up to when its merged statistics
    reach (None: its newest shipment was on time)."""

    last: float
    every_s: float
    sequence: int
    reaches: float | None = None

    @property
    def silence_s(self) -> float:
        """The quiet after which this replica counts as silent."""
        return max(SILENT_MIN_S, SILENT_INTERVALS * self.every_s)

    def quiet_for(self, now: float) -> float:
        return now - self.last


class ReplicaReports:
    """Per endpoint, the replicas heard from in the last ``memory_s`` seconds, and those
    that said goodbye (a shipment after it, late or stray, is not a replica coming back)."""

    def __init__(self, clock: Callable[[], float], memory_s: float) -> None:
        self._clock = clock
        self._memory_s = memory_s
        self._endpoints: dict[str, dict[str, Reporter]] = {}
        self._left: dict[str, dict[str, float]] = {}
        self._pruned_at: dict[str, float] = {}
        # Per endpoint: when its first shipment to this Monitor came and the quiet after
        # which every replica serving then has been heard (the slowest one's silence);
        # and, while that lasts, the oldest second a late shipment reached back to.
        self._hearing: dict[str, tuple[float, float]] = {}
        self._backlog_from: dict[str, float] = {}

    def merged(self, endpoint: str, replica: str, sequence: int | None) -> bool:
        """Whether ``replica``'s shipment ``sequence`` was merged already: a replica sends
        again what it could not see arrive, and a Monitor that was only slow got it."""
        reporter = self._endpoints.get(endpoint, {}).get(replica)
        return sequence is not None and reporter is not None and sequence <= reporter.sequence

    def heard(self, endpoint: str, replica: str, every_s: float, sequence: int | None,
              late_by_s: float = 0.0, more: bool = False) -> None:
        """``replica`` shipped; statistics recorded ``late_by_s`` ago where the shipment
        was late (0: on time), ``more``: newer ones it kept follow. One without a
        ``sequence`` runs a release that ships only with traffic: its quiet is no silence,
        so it is not followed."""
        if sequence is None or replica in self._left.get(endpoint, {}):
            return
        now = self._clock()
        reporters = self._endpoints.setdefault(endpoint, {})
        reporter = reporters[replica] = Reporter(
            now, every_s, sequence, now - late_by_s if late_by_s > 0 and more else None)
        first_heard, silence_s = self._hearing.setdefault(endpoint, (now, reporter.silence_s))
        if now - first_heard <= silence_s:
            if reporter.silence_s > silence_s:  # a slower replica: the others have longer
                self._hearing[endpoint] = (first_heard, reporter.silence_s)
            if late_by_s > 0:
                self._backlog_from[endpoint] = min(self._backlog_from.get(endpoint, now),
                                                   now - late_by_s)
        if now - self._pruned_at.get(endpoint, -self._memory_s) >= 1.0:
            self._pruned_at[endpoint] = now
            for name in [n for n, r in reporters.items() if now - r.last > self._memory_s]:
                del reporters[name]
            left = self._left.get(endpoint, {})
            for name in [n for n, at in left.items() if now - at > self._memory_s]:
                del left[name]

    def left(self, endpoint: str, replica: str) -> None:
        """``replica`` stopped gracefully after its last shipment: nothing of it is missing."""
        self._endpoints.get(endpoint, {}).pop(replica, None)
        self._left.setdefault(endpoint, {})[replica] = self._clock()

    def forget(self, endpoint: str) -> None:
        for kept in (self._endpoints, self._left, self._pruned_at, self._hearing,
                     self._backlog_from):
            kept.pop(endpoint, None)

    def of_endpoint(self, endpoint: str, window_s: float) -> Replicas:
        """The replicas of ``endpoint`` that served in the last ``window_s`` seconds, and
        those of them silent now."""
        now = self._clock()
        serving = [r for r in self._endpoints.get(endpoint, {}).values()
                   if r.quiet_for(now) <= window_s + r.silence_s]
        silences = [r.quiet_for(now) for r in serving if r.quiet_for(now) > r.silence_s]
        # A silent one's lost seconds are told apart (``silent``), not as a catch-up.
        behind = [now - r.reaches for r in serving
                  if r.reaches is not None and r.quiet_for(now) <= r.silence_s]
        backlog_from = self._backlog_from.get(endpoint)
        if backlog_from is not None:
            first_heard, silence_s = self._hearing[endpoint]
            if now - first_heard <= silence_s:  # a replica serving then may be still to come
                behind.append(now - backlog_from)
            else:
                del self._backlog_from[endpoint]
        # No further back than the windows reach: a backlog older counts in totals alone.
        return Replicas(reporting=len(serving), silent=len(silences),
                        silent_for_s=max(silences, default=0.0),
                        catching_up_s=min(max(behind, default=0.0), self._memory_s))

    def count(self) -> int:
        """Replicas remembered, over every endpoint (bounded by ``memory_s``)."""
        return sum(len(reporters) for reporters in self._endpoints.values())
