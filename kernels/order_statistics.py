"""Distribution-free confidence bounds on a quantile, from order statistics.

A p95 over ten requests is mostly luck: the q-quantile of n values is one draw of a
random variable whose spread a gate must respect. Whatever the latency distribution, the
k-th smallest of n values lies at or below the true q-quantile with probability
``P(Binomial(n, q) >= k)``, so a rank with that probability at least ``confidence`` is a
one-sided lower bound, and symmetrically for the upper bound. With too few values there is
no such rank (no upper bound on a p95 from ten values), and the bound is absent rather
than invented.
"""

from __future__ import annotations

import math
from functools import lru_cache

# Below this many values every binomial term is summed; above it only the terms within
# ``_TAIL_SDS`` standard deviations (plus a margin for skewed counts) of the mean, whose
# outside mass is far below any confidence a gate uses.
_EXACT_UP_TO = 500
_TAIL_SDS = 12.0


@lru_cache(maxsize=4096)
def quantile_bound_ranks(n: int, q: float, confidence: float) -> tuple[int | None, int | None]:
    """1-based ranks ``(low, high)`` of the order statistics that bound the ``q``-quantile of
    the distribution ``n`` values came from, each one-sided at ``confidence``:
    ``P(X_(low) <= x_q) >= confidence`` and ``P(X_(high) >= x_q) >= confidence``.

    ``None`` where ``n`` values cannot give that bound at that confidence.
    """
    if n < 1 or not 0.0 < q < 1.0 or not 0.5 <= confidence < 1.0:
        raise ValueError(f"need n >= 1, 0 < q < 1 and 0.5 <= confidence < 1; got n={n!r}, "
                         f"q={q!r}, confidence={confidence!r}")
    first, cdf = _binomial_cdf(n, q)
    # low: the largest k with P(B <= k - 1) <= 1 - confidence, i.e. the first j (0-based)
    # past it; none when even P(B <= 0) is over (terms before ``first`` are ~0).
    past = next(j for j, value in enumerate(cdf, start=first) if value > 1.0 - confidence)
    low = past if past > 0 else None
    # high: the smallest m with P(B <= m - 1) >= confidence, while m <= n.
    above = next((j for j, value in enumerate(cdf, start=first) if value >= confidence), n)
    high = above + 1 if above + 1 <= n else None
    return low, high


def _binomial_cdf(n: int, q: float) -> tuple[int, list[float]]:
    """``(first, cdf)``: ``cdf[i] = P(Binomial(n, q) <= first + i)`` over the terms that hold
    its mass (all of them for small ``n``)."""
    if n <= _EXACT_UP_TO:
        first, last = 0, n
    else:
        spread = _TAIL_SDS * math.sqrt(n * q * (1.0 - q)) + 50.0
        first = max(0, math.floor(n * q - spread))
        last = min(n, math.ceil(n * q + spread))
    log_q, log_not_q, log_n_factorial = math.log(q), math.log1p(-q), math.lgamma(n + 1)
    cdf, total = [], 0.0
    for j in range(first, last + 1):
        total += math.exp(log_n_factorial - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                          + j * log_q + (n - j) * log_not_q)
        cdf.append(min(total, 1.0))
    return first, cdf
