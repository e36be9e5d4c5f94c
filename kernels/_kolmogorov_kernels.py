"""Survival function of the two-sided Kolmogorov statistic ``D_n`` for finite n.

A port of SciPy's ``scipy.stats.kstwo.sf`` (``scipy/stats/_ksstats.py``, Simard and
L'Ecuyer's choice of algorithm per region: Ruben-Gambino, Durbin matrix, Pomeranz,
Pelz-Good and the one-sided Smirnov sum). ``ks_2samp(method='asymp')`` reports
``kstwo.sf(D, round(n1 * n2 / (n1 + n2)))``; reproducing it here keeps p-values on the
request path free of SciPy while agreeing with it to ~1e-12. The Smirnov sum works in
logarithms of float64 rather than SciPy's double-double; its terms are all positive, so
nothing cancels (:mod:`kernels._smirnov_kernels`).
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import f64, helper, i64, kernel
from kernels._smirnov_kernels import smirnov_sf

_EP128 = 2.0**128
_EM128 = 2.0**-128
_LOG_2PI = math.log(2.0 * math.pi)
_SQRT2PI = math.sqrt(2.0 * math.pi)
_SQRT3 = math.sqrt(3.0)
_PI2 = math.pi**2
_PI4 = math.pi**4
_PI6 = math.pi**6
_STIRLING = np.array([-2.955065359477124183e-2, 6.4102564102564102564e-3,
                      -1.9175269175269175269e-3, 8.4175084175084175084e-4,
                      -5.952380952380952381e-4, 7.9365079365079365079e-4,
                      -2.7777777777777777778e-3, 8.3333333333333333333e-2])


@helper
def _clip(p):
    return min(max(p, 0.0), 1.0)


@helper
def _log_nfactorial_div_n_pow_n(n):
    rn = 1.0 / n
    x = rn / n
    poly = 0.0
    for c in _STIRLING:  # Horner, highest degree first, as numpy.polyval
        poly = poly * x + c
    return math.log(n) / 2 - n + _LOG_2PI / 2 + rn * poly


@helper
def _dmtw_cdf(n, d):
    """Durbin's matrix for P(D_n <= d), Marsaglia-Tsang-Wang scaling."""
    if d >= 1.0:
        return 1.0
    nd = n * d
    if nd <= 0.5:
        return 0.0
    k = math.ceil(nd)
    h = k - nd
    m = 2 * k - 1
    H = np.zeros((m, m))
    v = np.empty(m)
    w = np.empty(m)
    fac = 1.0
    for j in range(1, m + 1):
        w[j - 1] = fac
        fac /= j
        v[j - 1] = (1.0 - h**j) * fac
    tt = max(2 * h - 1.0, 0.0) ** m - 2 * h**m
    v[m - 1] = (1.0 + tt) * fac
    for i in range(1, m):
        for r in range(i - 1, m):
            H[r, i] = w[r - i + 1]
    for r in range(m):
        H[r, 0] = v[r]
    for c in range(m):
        H[m - 1, c] = v[m - 1 - c]
    power = np.eye(m)
    nn = n
    expnt = 0
    h_expnt = 0
    while nn > 0:
        if nn % 2:
            power = power @ H
            expnt += h_expnt
        H = H @ H
        h_expnt *= 2
        if abs(H[k - 1, k - 1]) > _EP128:
            H /= _EP128
            h_expnt += 128
        nn //= 2
    p = power[k - 1, k - 1]
    for i in range(1, n + 1):
        p = i * p / n
        if abs(p) < _EM128:
            p *= _EP128
            expnt -= 128
    if expnt != 0:
        p = math.ldexp(p, expnt)
    return _clip(p)


@helper
def _pomeranz_bounds(i, n, ll, ceilf, roundf):
    if i == 0:
        j1, j2 = -ll - ceilf - 1, ll + ceilf - 1
    else:
        half, odd = divmod(i + 1, 2)
        if odd == 0:
            if half == n + 1:
                j1, j2 = n - ll - ceilf - 1, n + ll + ceilf - 1
            else:
                j1, j2 = half - 1 - ll - roundf - 1, half + ll - 1 + ceilf - 1
        else:
            j1, j2 = half - 1 - ll - 1, half + ll + roundf - 1
    return max(j1 + 2, 0), min(j2, n)


@helper
def _pomeranz_cdf(n, x):
    """Pomeranz's recursion for P(D_n <= x), used for n <= 140."""
    t = n * x
    ll = math.floor(t)
    f = t - ll
    g = min(f, 1.0 - f)
    ceilf = 1 if f > 0 else 0
    roundf = 1 if f > 0.5 else 0
    npwrs = 2 * (ll + 1)
    gpower = np.empty(npwrs)
    twogpower = np.empty(npwrs)
    onem2gpower = np.empty(npwrs)
    gpower[0] = twogpower[0] = onem2gpower[0] = 1.0
    for m in range(1, npwrs):
        gpower[m] = gpower[m - 1] * (g / n) / m
        twogpower[m] = twogpower[m - 1] * (2 * g / n) / m
        onem2gpower[m] = onem2gpower[m - 1] * ((1 - 2 * g) / n) / m
    V0 = np.zeros(npwrs)
    V1 = np.zeros(npwrs)
    V1[0] = 1.0
    V0s = 0
    V1s = 0
    expnt = 0
    j1, j2 = _pomeranz_bounds(0, n, ll, ceilf, roundf)
    for i in range(1, 2 * n + 2):
        k1 = j1
        V0, V1 = V1, V0
        V0s, V1s = V1s, V0s
        V1[:] = 0.0
        j1, j2 = _pomeranz_bounds(i, n, ll, ceilf, roundf)
        if i == 1 or i == 2 * n + 1:
            pwrs = gpower
        else:
            pwrs = twogpower if i % 2 else onem2gpower
        ln2 = j2 - k1 + 1
        if ln2 > 0:
            conv = np.convolve(V0[k1 - V0s:k1 - V0s + ln2], pwrs[:ln2])
            start = j1 - k1
            length = j2 - j1 + 1
            V1[:length] = conv[start:start + length]
            top = V1.max()
            if 0 < top < _EM128:
                V1 *= _EP128
                expnt -= 128
            V1s = V0s + j1 - k1
    ans = V1[n - V1s]
    for m in range(1, n + 1):
        if abs(ans) > _EP128:
            ans *= _EM128
            expnt += 128
        ans *= m
    if expnt != 0:
        ans = math.ldexp(ans, expnt)
    return _clip(ans)


@helper
def _pelz_good_cdf(n, x):
    """Pelz-Good asymptotic series for P(D_n <= x)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    z = math.sqrt(n) * x
    z2 = z * z
    z3 = z2 * z
    z4 = z2 * z2
    z6 = z4 * z2
    qlog = -_PI2 / 8 / z2
    if qlog < -708:
        return 0.0
    q = math.exp(qlog)
    k1a = -z2
    k1b = _PI2 / 4
    k2a = 6 * z6 + 2 * z4
    k2b = (2 * z4 - 5 * z2) * _PI2 / 4
    k2c = _PI4 * (1 - 2 * z2) / 16
    k3d = _PI6 * (5 - 30 * z2) / 64
    k3c = _PI4 * (-60 * z2 + 212 * z4) / 16
    k3b = _PI2 * (135 * z4 - 96 * z6) / 4
    k3a = -30 * z6 - 90 * z**8
    K0 = K1 = K2 = K3 = 0.0
    maxk = math.ceil(16 * z / math.pi)
    for k in range(maxk, 0, -1):
        m = 2 * k - 1
        m2 = float(m * m)
        m4 = m2 * m2
        m6 = m4 * m2
        qpower = q ** (8 * k)
        K0 = K0 * qpower + 1.0
        K1 = K1 * qpower + (k1a + k1b * m2)
        K2 = K2 * qpower + (k2a + k2b * m2 + k2c * m4)
        K3 = K3 * qpower + (k3a + k3b * m2 + k3c * m4 + k3d * m6)
    scale = q * _SQRT2PI
    K0 = K0 * scale / z
    K1 = K1 * scale / (6 * z4)
    K2 = K2 * scale / (72 * z**7)
    K3 = K3 * scale / (6480 * z**10)
    q = math.exp(-_PI2 / 2 / z2)
    sqrt3z = _SQRT3 * z
    k2extra = 0.0
    k3extra = 0.0
    for k in range(maxk, 0, -1):
        k2 = float(k * k)
        qk = q**k2
        k2extra += k2 * qk
        kpi = math.pi * k
        k3extra += (sqrt3z + kpi) * (sqrt3z - kpi) * k2 * qk
    K2 += k2extra * (_PI2 * _SQRT2PI / (-36 * z3))
    K3 += k3extra * (_PI2 * _SQRT2PI / (216 * z6))
    rn = float(n)
    return K0 + K1 / rn**0.5 + K2 / rn + K3 / rn**1.5


@kernel(f64(i64, f64))
def kolmogorov_sf(n, x):
    """P(D_n >= x) for the two-sided one-sample statistic (``scipy.stats.kstwo.sf``)."""
    if n <= 0 or x != x:
        return math.nan
    if x >= 1.0:
        return 0.0
    if x <= 0.0:
        return 1.0
    t = n * x
    if t <= 1.0:  # Ruben-Gambino: 1/2n <= x <= 1/n
        if t <= 0.5:
            return 1.0
        if n <= 140:
            prob = 1.0
            for j in range(1, n + 1):
                prob *= j * (1.0 / n) * (2 * t - 1)
        else:
            prob = math.exp(_log_nfactorial_div_n_pow_n(n) + n * math.log(2 * t - 1))
        return _clip(1.0 - prob)
    if t >= n - 1:  # Ruben-Gambino
        return _clip(2 * (1.0 - x) ** n)
    if x >= 0.5:
        return _clip(2 * smirnov_sf(n, x))
    nxsquared = t * x
    if n <= 140:
        if nxsquared <= 0.754693:
            return _clip(1.0 - _dmtw_cdf(n, x))
        if nxsquared <= 4:
            return _clip(1.0 - _pomeranz_cdf(n, x))
        return _clip(2 * smirnov_sf(n, x))
    if nxsquared >= 370.0:
        return 0.0
    if nxsquared >= 2.2:
        return _clip(2 * smirnov_sf(n, x))
    if n <= 100000 and n * x**1.5 <= 1.4:
        return _clip(1.0 - _dmtw_cdf(n, x))
    return _clip(1.0 - _pelz_good_cdf(n, x))
