"""The compiled p-value functions against SciPy across every algorithm region."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from kernels._gamma_kernels import chi2_sf, gammaincc
from kernels._kolmogorov_kernels import kolmogorov_sf
from kernels._smirnov_kernels import smirnov_sf

# Sizes straddle SciPy's switch points: n <= 140 (Durbin, Pomeranz), the Pelz-Good and
# Durbin regions above, and very large n.
SIZES = [1, 2, 3, 7, 40, 140, 141, 500, 909, 6667, 9091, 100_001]


@pytest.mark.parametrize("n", SIZES)
def test_kolmogorov_sf_matches_scipy_kstwo(n: int) -> None:
    rng = np.random.default_rng(n)
    scale = 1.0 / np.sqrt(n)
    xs = np.concatenate([rng.uniform(0, 1, 40), rng.uniform(0, 4 * scale, 60),
                         rng.uniform(0, 1.5 / n, 10), [0.0, 0.5, 1.0, 1.0 / n, 0.5 / n]])
    for x in xs:
        expected = stats.kstwo.sf(x, n)
        assert abs(kolmogorov_sf(n, x) - expected) <= 1e-10 + 1e-9 * expected, (n, x)


@pytest.mark.parametrize("n", [2, 10, 100, 1000, 10_000])
def test_smirnov_matches_scipy(n: int) -> None:
    for x in np.random.default_rng(n).uniform(0, 1, 50):
        expected = special.smirnov(n, x)
        assert abs(smirnov_sf(n, x) - expected) <= 1e-12 + 1e-9 * expected


@pytest.mark.parametrize("n", [1024, 1500, 5000, 9091, 20_000, 100_001])
def test_smirnov_tail_matches_scipy_where_the_sum_is_taken_on_a_coarse_grid(n: int) -> None:
    # Large n and nx^2 past the Kolmogorov switch: the region where the thousands of
    # Birnbaum-Tingey terms are summed on a coarse grid, down to p-values near 1e-300.
    rng = np.random.default_rng(n)
    # SciPy's reference costs about 0.1 s a point at n = 100,001: fewer points there.
    random_points = 200 if n <= 20_000 else 50
    for x in np.concatenate([rng.uniform(1.0 / np.sqrt(n), 25.0 / np.sqrt(n), random_points),
                             np.linspace(1.5, 25.0, 60) / np.sqrt(n)]):
        expected = special.smirnov(n, x)
        assert abs(smirnov_sf(n, x) - expected) <= 1e-300 + 1e-9 * expected, (n, x)


@pytest.mark.parametrize("dof", [1, 2, 9, 19, 99, 999])
def test_chi2_sf_matches_scipy(dof: int) -> None:
    xs = np.concatenate([np.linspace(0, 5 * dof + 20, 50), [1e-8, dof, 10 * dof + 100]])
    for x in xs:
        expected = stats.chi2.sf(x, dof)
        assert abs(chi2_sf(x, float(dof)) - expected) <= 1e-300 + 1e-9 * expected


def test_gamma_domain_edges() -> None:
    assert gammaincc(2.0, 0.0) == 1.0
    assert gammaincc(2.0, np.inf) == 0.0
    assert np.isnan(gammaincc(0.0, 1.0)) and np.isnan(gammaincc(1.0, -1.0))
    assert chi2_sf(3.0, 0.0) == 1.0
    assert np.isnan(kolmogorov_sf(0, 0.5))
