"""The A/B statistics against SciPy, and simulated rollouts that look at every interval.

The simulations draw whole rollouts at once (NumPy, fixed seeds): counts that grow look by
look, with and without a true difference. Tolerances are binomial: a rate measured over
``R`` rollouts is compared with a bound through the binomial distribution's 0.999
quantile, not a hand-picked margin.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from control_plane.rollouts import ab_test as ab

ALPHA, POWER = 0.05, 0.8


# ---------------------------------------------------------------- against SciPy


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_binned_mann_whitney_is_scipys_on_the_bins_values(seed: int, alternative: str) -> None:
    rng = np.random.default_rng(seed)
    bins = 40
    candidate = rng.poisson(rng.uniform(0, 12, bins))
    stable = rng.poisson(rng.uniform(0, 30, bins))
    values = np.sort(rng.lognormal(0, 1, bins))  # any increasing values: ranks are what count
    c, s = np.repeat(values, candidate), np.repeat(values, stable)
    ours = ab.binned_mann_whitney(candidate, stable)
    theirs = stats.mannwhitneyu(c, s, alternative=alternative, method="asymptotic",
                                use_continuity=False)
    assert float(ours.effect) + 0.5 == pytest.approx(theirs.statistic / (c.size * s.size),
                                                     rel=1e-12)
    p = float(ours.p_value) if alternative == "greater" else 2 * min(
        float(ours.p_value), 1 - float(ours.p_value))
    assert p == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-15)


def test_rank_variance_is_delongs_from_the_placements() -> None:
    rng = np.random.default_rng(3)
    candidate, stable = rng.poisson(8, 25), rng.poisson(20, 25)
    values = np.arange(25.0)
    c, s = np.repeat(values, candidate), np.repeat(values, stable)
    # Placements written out pair by pair: the definition, not the binned shortcut.
    psi = (c[:, None] > s[None, :]) + 0.5 * (c[:, None] == s[None, :])
    auc = psi.mean()
    expected = psi.mean(axis=1).var(ddof=1) / c.size + psi.mean(axis=0).var(ddof=1) / s.size
    ours = ab.binned_mann_whitney(candidate, stable)
    assert float(ours.effect) == pytest.approx(auc - 0.5, rel=1e-12)
    assert float(ours.variance) == pytest.approx(expected, rel=1e-12)
    assert float(ours.unit_variance) == pytest.approx(expected * c.size, rel=1e-12)


def test_rank_variance_matches_the_tie_corrected_null_variance_without_a_difference() -> None:
    probabilities = np.full(30, 1 / 30)
    ours = ab.binned_mann_whitney(probabilities * 4e5, probabilities * 1.6e6)
    n_c, n_s = 4e5, 1.6e6
    n = n_c + n_s
    ties = probabilities * n
    null = n_c * n_s / 12 * ((n + 1) - (ties ** 3 - ties).sum() / (n * (n - 1)))
    assert float(ours.variance) == pytest.approx(null / (n_c * n_s) ** 2, rel=1e-3)


@pytest.mark.parametrize(("x_c", "n_c", "x_s", "n_s"),
                         [(30, 1000, 80, 4000), (0, 200, 3, 900), (55, 500, 50, 500)])
def test_pooled_two_proportion_z_test(x_c: int, n_c: int, x_s: int, n_s: int) -> None:
    ours = ab.two_proportions(x_c, n_c, x_s, n_s)
    # Written independently: the textbook pooled statistic and SciPy's normal tail.
    pooled = (x_c + x_s) / (n_c + n_s)
    z = (x_c / n_c - x_s / n_s) / np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_s))
    assert float(ours.z) == pytest.approx(z, rel=1e-12)
    assert float(ours.p_value) == pytest.approx(stats.norm.sf(z), rel=1e-9)
    # Agresti-Caffo: one success and one failure added to each side.
    p_c, p_s = (x_c + 1) / (n_c + 2), (x_s + 1) / (n_s + 2)
    assert float(ours.effect) == pytest.approx(p_c - p_s, rel=1e-12)
    assert float(ours.variance) == pytest.approx(
        p_c * (1 - p_c) / (n_c + 2) + p_s * (1 - p_s) / (n_s + 2), rel=1e-12)


def test_normal_tail_is_scipys() -> None:
    z = np.array([-3.0, -0.5, 0.0, 1.2, 4.5, 8.0])
    np.testing.assert_allclose(ab.normal_sf(z), stats.norm.sf(z), rtol=1e-12)


def test_the_mixture_boundary_is_robbins_normal_mixture_at_its_tightest_time() -> None:
    delta = 0.02
    tau2 = ab.mixture_scale(delta, ALPHA, POWER)
    design = (delta / (stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER))) ** 2
    # Waudby-Smith et al.: rho^2 = (-2 log a + log(1 - 2 log a)) / t*, so tau^2 / V* = rho^2 t*.
    assert tau2 / design == pytest.approx(-2 * np.log(ALPHA) + np.log(1 - 2 * np.log(ALPHA)))
    v = np.array([1e-6, design, 1e-2])
    # The mixture likelihood ratio sqrt(V / (V + tau2)) exp(tau2 w^2 / (2 V (V + tau2))) at
    # the boundary w is exactly 1 / alpha.
    w = ab.half_width(v, tau2, ALPHA)
    ratio = np.sqrt(v / (v + tau2)) * np.exp(tau2 * w ** 2 / (2 * v * (v + tau2)))
    np.testing.assert_allclose(ratio, 1 / ALPHA, rtol=1e-10)
    # Wider than the fixed-sample interval (the price of looking at will), never narrower.
    assert np.all(w > stats.norm.ppf(1 - ALPHA / 2) * np.sqrt(v))


def test_samples_needed_solve_the_power_equation() -> None:
    delta = 0.05
    tau2 = ab.mixture_scale(delta, ALPHA, POWER)
    v = ab.required_variance(delta, ALPHA, POWER, tau2)
    # At that variance an estimate at the minimum effect clears the boundary with `power`.
    assert stats.norm.cdf((delta - float(ab.half_width(v, tau2, ALPHA))) / np.sqrt(v)) == \
        pytest.approx(POWER, abs=1e-9)
    unit = 1 / 12 * (1 + 1 / 4)
    assert ab.samples_needed(unit, delta, ALPHA, POWER, tau2) == int(np.ceil(unit / v))


def test_decide_reads_the_interval() -> None:
    low = np.array([0.01, -0.01, -0.01, 0.001])
    high = np.array([0.03, 0.005, 0.03, 0.004])
    assert ab.decide(low, high, 0.02).tolist() == ["worse", "no_worse", "undecided", "worse"]


# ---------------------------------------------------------------- simulated rollouts


def first_decisions(decisions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rollout (row), the look at which the test first decided and what it decided: a
    sequential test stops there (looks past the last mean never)."""
    decided = decisions != "undecided"
    looks = decisions.shape[1]
    index = np.where(decided.any(axis=1), decided.argmax(axis=1), looks)
    value = np.where(index < looks,
                     decisions[np.arange(len(decisions)), np.minimum(index, looks - 1)],
                     "undecided")
    return index, value


def most_often(rate: float, rollouts: int) -> float:
    """The highest share of ``rollouts`` that a true rate ``rate`` yields, but once in 1000."""
    return float(stats.binom.ppf(0.999, rollouts, rate)) / rollouts


def least_often(rate: float, rollouts: int) -> float:
    """The lowest share of ``rollouts`` that a true rate ``rate`` yields, but once in 1000."""
    return float(stats.binom.ppf(0.001, rollouts, rate)) / rollouts


ROLLOUTS, LOOKS = 3000, 40
SPLIT = 4  # stable answers four requests for each of the candidate's (a 20% canary)


def simulate_error_rate(difference: float, *, base: float = 0.02, delta: float = 0.01,
                        seed: int = 7) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rollouts whose candidate errs ``difference`` more often than stable, looked at
    ``LOOKS`` times up to twice the samples the test asks for."""
    tau2 = ab.mixture_scale(delta, ALPHA, POWER)
    worse = base + delta
    needed = ab.samples_needed(worse * (1 - worse) + base * (1 - base) / SPLIT, delta,
                               ALPHA, POWER, tau2)
    per_look = int(np.ceil(2 * needed / LOOKS))
    rng = np.random.default_rng(seed)
    x_c = rng.binomial(per_look, base + difference, (ROLLOUTS, LOOKS)).cumsum(axis=1)
    x_s = rng.binomial(per_look * SPLIT, base, (ROLLOUTS, LOOKS)).cumsum(axis=1)
    n_c = per_look * np.arange(1, LOOKS + 1)
    estimate = ab.two_proportions(x_c, n_c, x_s, n_c * SPLIT)
    low, high = ab.confidence_sequence(estimate, tau2, ALPHA)
    index, value = first_decisions(ab.decide(low, high, delta))
    return index, value, needed, per_look


def latency_bins(shift: float, bins: int = 60) -> np.ndarray:
    """Bin probabilities of a normal log-latency moved by ``shift`` standard deviations."""
    edges = np.concatenate(([-np.inf], np.linspace(-3, 3, bins - 1), [np.inf]))
    return np.diff(stats.norm.cdf(edges - shift))


def shift_for(effect: float) -> float:
    """The shift at which P(candidate slower) + P(tie) / 2 - 1/2 is ``effect`` on the bins."""
    stable = latency_bins(0.0)
    low, high = 0.0, 2.0
    for _ in range(60):
        middle = (low + high) / 2
        reached = float(ab.binned_mann_whitney(latency_bins(middle), stable).effect)
        low, high = (middle, high) if reached < effect else (low, middle)
    return low


def simulate_latency(effect: float, *, delta: float = 0.05,
                     seed: int = 11) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rollouts whose candidate is slower by ``effect`` (as a rank effect), binned as the
    Monitor's sketches are, looked at ``LOOKS`` times up to twice the samples asked for."""
    tau2 = ab.mixture_scale(delta, ALPHA, POWER)
    stable = latency_bins(0.0)
    candidate = latency_bins(shift_for(effect))
    # The placements' spread of these distributions at this split (large counts: exact).
    unit = float(ab.binned_mann_whitney(candidate * 1e6, stable * SPLIT * 1e6).unit_variance)
    needed = ab.samples_needed(unit, delta, ALPHA, POWER, tau2)
    per_look = int(np.ceil(2 * needed / LOOKS))
    rng = np.random.default_rng(seed)
    c = rng.multinomial(per_look, candidate, size=(ROLLOUTS, LOOKS)).cumsum(axis=1)
    s = rng.multinomial(per_look * SPLIT, stable, size=(ROLLOUTS, LOOKS)).cumsum(axis=1)
    low, high = ab.confidence_sequence(ab.binned_mann_whitney(c, s), tau2, ALPHA)
    index, value = first_decisions(ab.decide(low, high, delta))
    return index, value, needed, per_look


SIMULATIONS = {"error rate": (simulate_error_rate, 0.01), "latency": (simulate_latency, 0.05)}


@pytest.mark.parametrize("metric", SIMULATIONS)
def test_without_a_difference_worse_stays_under_alpha_over_every_look(metric: str) -> None:
    simulate, _ = SIMULATIONS[metric]
    index, value, needed, per_look = simulate(0.0)
    false_worse = np.mean(value == "worse")
    assert false_worse <= most_often(ALPHA, ROLLOUTS), false_worse
    # ... and the test says "no worse" with the power it promised, by the samples it asked for.
    by_needed = np.mean((value == "no_worse") & ((index + 1) * per_look <= needed))
    assert by_needed >= least_often(POWER, ROLLOUTS), by_needed


@pytest.mark.parametrize("metric", SIMULATIONS)
def test_a_regression_of_the_minimum_effect_is_caught_at_the_predicted_sample_size(
        metric: str) -> None:
    simulate, delta = SIMULATIONS[metric]
    index, value, needed, per_look = simulate(delta)
    stopped_at = (index + 1) * per_look
    by_needed = np.mean((value == "worse") & (stopped_at <= needed))
    assert by_needed >= least_often(POWER, ROLLOUTS), by_needed
    # About there, not long before: with half the samples the power is not yet reached.
    by_half = np.mean((value == "worse") & (stopped_at <= needed / 2))
    assert by_half < POWER, by_half
    # Passing a candidate that is worse by the minimum effect is the other error: <= alpha.
    assert np.mean(value == "no_worse") <= most_often(ALPHA, ROLLOUTS)
