"""How a request reached its version, as monitoring keeps it apart.

Only randomly routed requests are a rollout's analysis sample: a caller picks the version
of a pinned request, and a sticky key lets a caller pick one too (by trying keys), so
their counts, latencies, drift counts and joined labels are each kept per way of routing,
and a rollout counts sticky or pinned ones only where it opts in.
"""

from __future__ import annotations

ROUTED_RANDOMLY = "random"
ROUTED_PINNED = "pinned"
ROUTED_STICKY = "sticky"
ROUTINGS = (ROUTED_RANDOMLY, ROUTED_STICKY, ROUTED_PINNED)
