"""One-sided Smirnov survival function ``P(D+_n > x)``, as ``scipy.special.smirnov``.

The Birnbaum-Tingey sum, with SciPy's special cases and early exit. SciPy sums in
double-double; here each term is formed in float64 logarithms, which is enough because
every term is positive (nothing cancels): results agree with SciPy to ~1e-11 relative.

For large ``n`` the sum has thousands of terms that lie under one smooth, broad bump
(``n = 9090``: about 8,000 terms, a bump a few hundred terms wide), and summing them one
by one took ~160 µs, most of a drift report's p-value time. There the sum is taken on a
coarse grid instead (:func:`_coarse_sum`): for a smooth summand whose terms are negligible
at both ends, the sum over every integer and the trapezoid rule on a grid a fraction of
the bump's width apart both equal the integral up to terms that fall like
``exp(-2 pi^2 (width / step)^2)`` (Poisson summation), far below double precision at the
steps used. Where the bump is narrow or reaches an end, the exact sum runs.
"""

from __future__ import annotations

import math

from kernels._jit import f64, helper, i64, kernel

_MIN_LOG = -708.3964185322641  # log of the smallest normal float64
_EPS = 2.220446049250313e-16
_LOG_SQRT_2PI = 0.9189385332046728
# The coarse sum runs for at least this many terms (below, the exact sum is cheap) …
_COARSE_MIN_TERMS = 1024
# … on a grid this fraction of the bump's width apart (Poisson error ~exp(-2 pi^2 * 256); a fine
# grid keeps 8 steps clear of the singularities closer in, so more tails take this path) …
_COARSE_STEPS_PER_WIDTH = 16.0
# … and covers the terms within this many log units of the largest (e^-46 ~ 1e-20),
_COARSE_LOG_SPAN = 46.0
# … each at least this many steps from the summand's singularities.
_COARSE_RESOLUTION = 8.0


@helper
def _clip(p):
    return min(max(p, 0.0), 1.0)


@helper
def _stirling_error(x):
    """``lgamma(x + 1) - (x + 1/2) log x + x - log sqrt(2 pi)`` without the cancellation
    of subtracting numbers near ``x log x`` (Loader's ``stirlerr``)."""
    if x <= 15.0:
        return math.lgamma(x + 1.0) - (x + 0.5) * math.log(x) + x - _LOG_SQRT_2PI
    inverse_square = 1.0 / (x * x)
    return (1.0 / 12.0 - inverse_square * (1.0 / 360.0 - inverse_square * (
        1.0 / 1260.0 - inverse_square * (1.0 / 1680.0)))) / x


@helper
def _deviance(x, mean):
    """``x log(x / mean) + mean - x`` to full relative precision (Loader's ``bd0``)."""
    if abs(x - mean) < 0.1 * (x + mean):
        ratio = (x - mean) / (x + mean)
        total = (x - mean) * ratio
        power = 2.0 * x * ratio
        square = ratio * ratio
        for j in range(1, 1000):
            power *= square
            following = total + power / (2 * j + 1)
            if following == total:
                return following
            total = following
        return total
    return x * math.log(x / mean) + mean - x


@helper
def _log_term(n, nx, v):
    """Log of the Birnbaum-Tingey term ``v`` for real ``0 < v < n - nx``: the term is a
    binomial probability ``C(n, v) p^v (1 - p)^(n - v)`` at ``p = (v + nx) / n``, divided by
    ``p``, and the probability is formed as Loader's saddle-point expansion, accurate to
    a few ulps where differences of ``lgamma`` lose ``n log n`` ulps."""
    rest = n - v
    success = v + nx  # n p
    failure = rest - nx  # n (1 - p)
    return (_stirling_error(float(n)) - _stirling_error(v) - _stirling_error(rest)
            - _deviance(v, success) - _deviance(rest, failure)
            + 0.5 * math.log(n / (2.0 * math.pi * v * rest)) - math.log(success / n))


@helper
def _coarse_sum(n, nx, terms):
    """The sum of terms ``0..terms-1`` by the trapezoid rule on a coarse grid, or -1 when
    the summand is not a broad bump clear of both ends (the caller sums exactly)."""
    last = terms - 1.0
    first = 1.0  # term 0 has no binomial form; the exact sum covers a bump that reaches it
    # The peak: the log-terms are concave in v, so a golden-section search finds it.
    lo, hi = first, last
    ratio = 0.6180339887498949
    a = hi - ratio * (hi - lo)
    b = lo + ratio * (hi - lo)
    fa = _log_term(n, nx, a)
    fb = _log_term(n, nx, b)
    while hi - lo > 1.0:
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _log_term(n, nx, b)
        else:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _log_term(n, nx, a)
    peak = 0.5 * (lo + hi)
    top = _log_term(n, nx, peak)
    # The bump's width from the curvature at the peak (a Gaussian's sigma).
    probe = 8.0
    if peak - probe < first or peak + probe > last:
        return -1.0
    curvature = (_log_term(n, nx, peak - probe) - 2.0 * top
                 + _log_term(n, nx, peak + probe)) / (probe * probe)
    if not curvature < 0.0:
        return -1.0
    width = 1.0 / math.sqrt(-curvature)
    step = math.floor(width / _COARSE_STEPS_PER_WIDTH)
    if step < 8.0:
        return -1.0  # a narrow bump: few terms matter, the exact sum is as fast
    # Integer grid points, so the trapezoid sum and the exact sum share their nodes.
    start = math.floor(peak)
    total = 0.0
    for direction in (-1.0, 1.0):
        v = start if direction < 0.0 else start + step
        while True:
            if v < first or v > last:
                return -1.0  # the bump reaches an end: its terms there still count
            log_term = _log_term(n, nx, v)
            if log_term < top - _COARSE_LOG_SPAN:
                break
            # The summand bends on the scale of its distance to the nearest singularity
            # (v = -1, or v = n - nx at the other end); a grid that does not resolve it
            # where the terms still count would be off, so the exact sum runs instead.
            if min(v + 1.0, n - nx - v) < _COARSE_RESOLUTION * step:
                return -1.0
            total += math.exp(log_term)
            v += direction * step
    return total * step


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
    if terms >= _COARSE_MIN_TERMS:
        total = _coarse_sum(n, nx, terms)
        if total >= 0.0:
            return _clip(x * total)
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
