"""Analysis gates: judge a candidate against its SLOs and the stable version over a window.

Input is the Monitor's per-version snapshot (:class:`serving.monitoring.VersionSnapshot`).
A check needs ``min_samples`` requests in the window before it may decide anything; with
fewer it is inconclusive, never a pass and never a failure, save for one finding: a
candidate that refuses (4xx) so much of what stable answers that it has too few answers
fails on ``max_refused_rate_increase``, judged over the requests routed to each.

The sample is the randomly routed traffic the version answered: requests pinned to a
version (``/versions/{v}/infer``) or carrying a stickiness key let the caller choose the
version, so anyone could fill the candidate's sample or post its errors; requests refused
with a 4xx were never judged by the model. Pinned and sticky requests count only where a
rollout opts in (``include_pinned``, ``include_sticky``); 4xx never count in the sample,
its error rate or its latency, and are judged apart, against stable's share
(``max_refused_rate_increase``); so are answers holding a NaN or an infinity
(``max_not_finite_rate_increase``). The latency gates read the same sample's p95/p99.

Online accuracy and MAE come from a handful of labels, so their point values swing widely
(16 right out of 19 is 0.84 for a model whose accuracy is 0.94): their checks fail only
when the one-sided ``GATE_CONFIDENCE`` bound is past the limit (Wilson's upper bound on
accuracy below ``min_accuracy``; the normal lower bound on MAE above ``max_mae``), so a
good candidate is not rolled back on a thin window's luck. Nor do they pass without
evidence: while fewer than ``min_labels`` labels are joined in the window, an analysis that
asks for either is inconclusive, so a label source that stops (or predictions evicted
before their labels came) runs the rollout into its inconclusive deadline, back to stable,
rather than promoting on the other checks alone. The latency gates judge the
same way: ``max_p95_ms`` and ``max_p99_ms`` fail when the quantile's distribution-free
lower bound is past the limit, and ``max_p95_ratio`` when the candidate p95's lower bound
over stable p95's upper bound is (:mod:`kernels.order_statistics`; a p95 over ten
requests has no upper bound, so such a ratio never fails).

A window in which a replica of the endpoint went silent without a graceful stop
(``VersionSnapshot.replicas``) is inconclusive unless a check already failed: the requests
a crashing replica takes down are answered by the proxy and counted nowhere, so a model
that kills its replica would otherwise show a clean error rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from statistics import NormalDist
from typing import Any

import numpy as np

from control_plane.rollouts.ab_test import two_proportions
from serving.monitoring import Replicas, ShadowComparison, Traffic, VersionSnapshot
from serving.monitoring.routing import ROUTED_PINNED, ROUTED_RANDOMLY, ROUTED_STICKY
from serving.monitoring.snapshot import RoutedRequests

GATE_CONFIDENCE = 0.95
_Z = NormalDist().inv_cdf(GATE_CONFIDENCE)
# Requests routed apart (pinned, or sticky where not counted) load a version as its sample
# does. Spread like the sample (keys hash by the weights) they load candidate and stable
# alike; chosen by a caller they can load one alone, and its latency, 5xx and dropped
# shadows then say how much load it got, not how good it is. Past this ratio between the
# versions' loads per sampled request, those checks are not judged in the window.
MAX_LOAD_IMBALANCE = 1.5
# The checks whose values rise with the candidate's load (the relative ones also fall with
# stable's).
RELATIVE_LOAD_SENSITIVE = frozenset({"error_rate_increase", "p95_ratio",
                                     "abandoned_rate_increase"})
LOAD_SENSITIVE = frozenset({"error_rate", "p95_ms", "p99_ms"}) | RELATIVE_LOAD_SENSITIVE
# The checks of shares and ratios that what callers send moves (malformed or heavy requests,
# callers hanging up, inputs that overflow): fair against stable's figures in the same
# window, where random routing gives both versions the same mix; against stable's from an
# earlier window (or against nothing), anyone could fail them by changing the mix.
CALLER_MOVABLE = frozenset({"error_rate_increase", "p95_ratio", "refused_rate_increase",
                            "abandoned_rate_increase", "not_finite_rate_increase",
                            "not_finite_rate"})
# The absolute gates that what callers send moves as well: heavy requests are slow on
# whichever version answers them, and far-off rows drift on it. At a step that routes
# stable a share of the same requests, a failure is the candidate's own (but for latency
# that stable's share is as slow on: _slow_on_stable_too); judged alone (a step that
# routes stable nothing, or no stable version), anyone could fail them.
MOVABLE_ALONE = frozenset({"p95_ms", "p99_ms", "drift", "not_finite_rate"})


def proportion_lower_bound(share: float, n: int, z: float = _Z) -> float:
    """Wilson's one-sided lower confidence bound on a proportion seen as ``share`` in
    ``n`` trials (0 without any)."""
    return max(0.0, 1.0 - accuracy_upper_bound(1.0 - share, n, z)) if n > 0 else 0.0


def accuracy_upper_bound(accuracy: float, labelled: int, z: float = _Z) -> float:
    """Wilson's one-sided upper confidence bound on a proportion seen as ``accuracy`` in
    ``labelled`` trials."""
    n = labelled
    centre = accuracy + z * z / (2 * n)
    spread = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def mae_lower_bound(mae: float, rmse: float | None, labelled: int, z: float = _Z) -> float:
    """The normal one-sided lower confidence bound on the mean absolute error; the absolute
    errors' variance is ``rmse² - mae²``."""
    variance = max(0.0, (rmse or mae) ** 2 - mae ** 2)
    return max(0.0, mae - z * math.sqrt(variance / labelled))


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class AnalysisConfig:
    """Thresholds for one rollout; ``None`` switches a check off."""

    min_samples: int = 100
    max_error_rate: float | None = 0.01
    max_error_rate_increase: float | None = None  # absolute, over stable's rate
    # Absolute, over stable's share of the requests routed to it that it refused (4xx): a
    # candidate whose signature or limits turn away what stable answers. Judged on evidence.
    max_refused_rate_increase: float | None = 0.01
    # The same of the answers holding a NaN or an infinity: a broken model answers 200.
    max_not_finite_rate_increase: float | None = 0.01
    # The same of the requests whose callers gave up before an answer: a candidate that
    # hangs past its callers' deadlines has them leave, and is judged on what it answers.
    max_abandoned_rate_increase: float | None = 0.01
    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    max_p95_ratio: float | None = 1.5  # candidate p95 / stable p95
    min_shadow_agreement: float | None = None
    max_shadow_mae: float | None = None  # shadow against primary, first output
    fail_on_drift: bool = False
    min_accuracy: float | None = None  # online accuracy from ground-truth feedback
    max_mae: float | None = None  # the same, for regression
    min_labels: int = 50  # joined feedback pairs needed before accuracy may decide
    failures_to_rollback: int = 2  # consecutive failing analyses
    include_sticky: bool = False  # count sticky-keyed requests in the sample (A/B by user)
    include_pinned: bool = False  # count requests pinned to a version (callers choose it)


def sample_counts(config: AnalysisConfig, stats: VersionSnapshot | None) -> tuple[int, int]:
    """(requests, 5xx) of the sample in one version's snapshot: randomly routed requests
    the version answered, plus sticky or pinned ones where ``config`` says so."""
    counted = _routed(config, stats)
    return (sum(routed.requests for routed in counted),
            sum(routed.server_errors for routed in counted))


def sample_routings(config: AnalysisConfig) -> tuple[str, ...]:
    """The ways of routing in the sample: random, and sticky or pinned where ``config``
    counts them (the Monitor's snapshot judges drift and accuracy on these too)."""
    return (ROUTED_RANDOMLY, *((ROUTED_STICKY,) * config.include_sticky),
            *((ROUTED_PINNED,) * config.include_pinned))


def _routed(config: AnalysisConfig, stats: VersionSnapshot | None) -> list[RoutedRequests]:
    """The sample's kinds of routing in ``stats``."""
    routing = stats.traffic.routing if stats is not None else {}
    return [routing[kind] for kind in sample_routings(config) if kind in routing]


def refused_counts(config: AnalysisConfig, stats: VersionSnapshot | None) -> tuple[int, int]:
    """(requests routed, 4xx among them) of the sample's kinds of routing in ``stats``."""
    counted = _routed(config, stats)
    return (sum(r.requests + r.refused for r in counted), sum(r.refused for r in counted))


def abandoned_counts(config: AnalysisConfig, stats: VersionSnapshot | None) -> tuple[int, int]:
    """(requests routed, those whose callers gave up before an answer) of the sample's
    kinds of routing in ``stats``."""
    counted = _routed(config, stats)
    return (sum(r.requests + r.refused + r.abandoned for r in counted),
            sum(r.abandoned for r in counted))


def not_finite_counts(config: AnalysisConfig, stats: VersionSnapshot | None) -> tuple[int, int]:
    """(requests answered, answers holding a NaN or an infinity) of the sample's kinds of
    routing in ``stats``."""
    counted = _routed(config, stats)
    return (sum(r.requests - r.server_errors for r in counted),
            sum(r.not_finite for r in counted))


def share_increase(config: AnalysisConfig, candidate: VersionSnapshot,
                   stable: VersionSnapshot | None,
                   counts: Callable[[AnalysisConfig, VersionSnapshot | None], tuple[int, int]],
                   ) -> tuple[float, float, str] | None:
    """The candidate's share of ``counts`` minus stable's, the difference's one-sided lower
    bound (Agresti and Caffo's interval, as the A/B gate estimates it) and the evidence;
    None until both have ``min_samples`` requests counted."""
    n_c, x_c = counts(config, candidate)
    n_s, x_s = counts(config, stable)
    if n_c < config.min_samples or n_s < config.min_samples:
        return None
    estimate = two_proportions(x_c, n_c, x_s, n_s)
    bound = float(estimate.effect - _Z * np.sqrt(estimate.variance))
    return x_c / n_c - x_s / n_s, bound, f"{n_c} and {n_s} requests"


def sample_of(config: AnalysisConfig, stats: VersionSnapshot | None) -> tuple[int, float]:
    """(requests, error rate) of the sample (see :func:`sample_counts`)."""
    requests, errors = sample_counts(config, stats)
    return requests, (errors / requests if requests else 0.0)


def load_per_sample(config: AnalysisConfig, stats: VersionSnapshot | None) -> float | None:
    """Requests routed to the version per request of its sample (1.0: none routed apart);
    None without a sample."""
    routing = stats.traffic.routing if stats is not None else {}
    every = sum(routed.requests + routed.refused for routed in routing.values())
    sample = sum(routed.requests + routed.refused for routed in _routed(config, stats))
    return every / sample if sample else None


@dataclass(frozen=True)
class LoadImbalance:
    """Requests routed apart loaded one version past :data:`MAX_LOAD_IMBALANCE` more than
    the other: requests per sampled one, the candidate's (``own``) and stable's (None:
    no stable, its sample's 1.0 counts)."""

    own: float
    other: float | None

    @property
    def candidate_loaded(self) -> bool:
        return self.own > (1.0 if self.other is None else self.other)

    def reason(self, consequence: str = "error rate and latency are not judged") -> str:
        stable_part = "" if self.other is None else f", stable {self.other:.2f}"
        return (f"requests routed apart (pinned, or sticky where not counted) loaded the "
                f"versions unevenly: the candidate got {self.own:.2f} requests per sampled "
                f"one{stable_part} (more than {MAX_LOAD_IMBALANCE:g}x apart), so "
                f"{consequence} in this window")


def load_imbalance(config: AnalysisConfig, candidate: VersionSnapshot,
                   stable: VersionSnapshot | None) -> LoadImbalance | None:
    """How requests routed apart loaded the versions unevenly (or, without stable, the
    candidate alone more than its sample) past :data:`MAX_LOAD_IMBALANCE`; None where
    they did not, and the window's load-sensitive checks can be judged."""
    own = load_per_sample(config, candidate)
    if own is None:
        return None
    other = load_per_sample(config, stable) if stable is not None else None
    against = 1.0 if other is None else other
    if max(own, against) / min(own, against) <= MAX_LOAD_IMBALANCE:
        return None
    return LoadImbalance(own, other)


def _heavier_than_baseline(candidate: VersionSnapshot,
                           baseline: VersionSnapshot | None) -> float | None:
    """The candidate's requests per second over stable's in its baseline, where past
    :data:`MAX_LOAD_IMBALANCE`; None where not (or unknown)."""
    if baseline is None:
        return None
    then, now = baseline.traffic.throughput_rps, candidate.traffic.throughput_rps
    if not then or not now or math.isnan(then) or math.isnan(now):
        return None
    ratio = now / then
    return ratio if ratio > MAX_LOAD_IMBALANCE else None


@dataclass(frozen=True)
class CheckResult:
    """One analysis: the verdict, each check's value and limit, and why."""

    verdict: Verdict
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""
    # Inconclusive for want of evidence that other evidence does not need (a value past
    # its limit, not yet on evidence; a replica gone silent): the A/B test's "worse" still
    # decides.
    worse_decides: bool = False
    # A failure is evidence against the candidate itself, so a rollback on it rejects the
    # version; not where every failed check is one callers can move (CALLER_MOVABLE,
    # MOVABLE_ALONE) judged without stable's share of the same requests beside it: traffic
    # goes back to stable (a rollback all the same, alert and all), and the version may try
    # again.
    rejects: bool = True


def wants_baseline(config: AnalysisConfig, stable: VersionSnapshot | None, *,
                   shadow: bool) -> bool:
    """Whether a step's analysis looks for stable's baseline: stable answered too little
    in the window to compare with (a mirrored step judges the shadow alone)."""
    return not shadow and sample_of(config, stable)[0] < config.min_samples


def baseline_in_use(config: AnalysisConfig, stable: VersionSnapshot | None,
                    baseline: VersionSnapshot | None) -> bool:
    """Whether the relative checks compare with ``baseline`` (stable's figures over a
    longer, earlier window) rather than ``stable``'s in the window: where stable answered
    too little in it (every step at 100%: blue-green's switch, a canary's last step) and
    the baseline has a sample."""
    return (baseline is not None and wants_baseline(config, stable, shadow=False)
            and sample_of(config, baseline)[0] >= config.min_samples)


def analyse(config: AnalysisConfig, candidate: VersionSnapshot | None,
            stable: VersionSnapshot | None, *, shadow: bool = False,
            baseline: VersionSnapshot | None = None, has_stable: bool | None = None,
            stable_routed: bool = True, holds_end: bool = True) -> CheckResult:
    """Judge ``candidate``'s window statistics (and ``stable``'s, for relative checks;
    ``baseline``'s where stable answered too little in the window, :func:`baseline_in_use`).

    ``has_stable``: whether there is a stable version to compare with (by default, whether
    ``stable`` is given). Where there is, a relative check that was asked for and has no
    figures of stable's to compare with is unknown, and the analysis inconclusive: a
    restarted Monitor, or a step without stable's traffic held past the Monitor's memory,
    must not pass a candidate on the absolute checks alone.

    ``stable_routed``: whether the step routes stable a share of the requests. Where it
    does not (blue-green's switch, a canary's last step), stable's figures in the window
    are from before the switch, whatever their number, and no failure that callers can
    cause rejects the candidate (:data:`CALLER_MOVABLE`, :data:`MOVABLE_ALONE`).

    ``holds_end``: whether an inconclusive step ends by a deadline. Only then may requests
    slow on both versions hold a step (:func:`_slow_on_stable_too`) rather than fail it:
    without one, whoever kept stable slow would hold a slow candidate at its share for
    good."""
    if shadow:
        return _analyse_shadow(config, candidate)
    # Without it, at a step where stable takes no traffic every check against stable was
    # skipped: with the defaults a blue-green switch judged no latency at all.
    compared = baseline if baseline_in_use(config, stable, baseline) else stable
    refused = (share_increase(config, candidate, compared, refused_counts)
               if candidate is not None and config.max_refused_rate_increase is not None else None)
    abandoned = (share_increase(config, candidate, compared, abandoned_counts)
                 if candidate is not None and config.max_abandoned_rate_increase is not None
                 else None)
    samples, error_rate = sample_of(config, candidate)
    # Too few answers to judge the model can be the finding: it refuses what stable answers,
    # or keeps its callers waiting until they leave.
    refuses = refused is not None and refused[1] > (config.max_refused_rate_increase or 0.0)
    loses = abandoned is not None and abandoned[1] > (config.max_abandoned_rate_increase or 0.0)
    if samples < config.min_samples and not (refuses or loses):
        traffic = candidate.traffic if candidate is not None else Traffic()
        apart = ", ".join(f"{count} {what}" for what, count, counted in (
            ("pinned", traffic.pinned_requests, config.include_pinned),
            ("sticky", traffic.sticky_requests, config.include_sticky),
            ("rejected", traffic.rejected_requests, False)) if not counted)
        return CheckResult(Verdict.INCONCLUSIVE,
                           reason=f"{samples} randomly routed requests answered in the window, "
                                  f"need {config.min_samples} (not counted: {apart})")
    assert candidate is not None
    stable_samples, _ = sample_of(config, compared)
    checks: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}  # check name → why it failed
    unproven: dict[str, str] = {}  # check name → why it neither passed nor failed
    accuracy = candidate.accuracy
    labelled = accuracy.labelled

    def check(name: str, value: float, limit: float | None, worse_if_above: bool = True,
              bound: float | None = None, evidence: str = "") -> None:
        """Fail when ``value`` (or, where given, its confidence ``bound``) is past ``limit``;
        pass when ``value`` is within it; else (past it, but not on evidence: the bound
        within, or NaN for too little evidence) neither."""
        if limit is None or value is None or math.isnan(value):
            return

        def past(figure: float) -> bool:
            return figure > limit if worse_if_above else figure < limit

        failed = past(value if bound is None else bound)
        checks[name] = {"value": value, "limit": limit, "passed": not past(value)}
        if bound is not None:
            checks[name]["bound"] = None if math.isnan(bound) else bound
        sign = '>' if worse_if_above else '<'
        side = "lower" if worse_if_above else "upper"
        if failed:
            why = "" if bound is None else (
                f" ({GATE_CONFIDENCE:.0%} {side} bound {bound:.4g} over {evidence})")
            failures[name] = f"{name} {value:.4g} {sign} {limit:.4g}{why}"
        elif past(value):
            # A look that passed on "not proven bad" advanced a candidate with three times
            # the error rate allowed, over 100 requests, two times in five.
            checks[name]["unproven"] = True
            unproven[name] = (f"{name} {value:.4g} {sign} {limit:.4g}, not yet on evidence ("
                              + (f"no {side} bound over {evidence}" if bound is None
                                 or math.isnan(bound) else f"{GATE_CONFIDENCE:.0%} {side} "
                                 f"bound {bound:.4g} over {evidence}") + ")")

    # The sample's latency, which the Monitor cut as the rollout's ways of routing say
    # (sample_routings): sticky or pinned requests only where the rollout counts them.
    latency = candidate.latency.sample
    requests = f"{latency.count} requests"
    # On evidence, as every other share: two stray 5xx in a thin window are not a verdict.
    check("error_rate", error_rate, config.max_error_rate,
          bound=proportion_lower_bound(error_rate, samples), evidence=f"{samples} requests")
    check("p95_ms", latency.p95_ms, config.max_p95_ms, bound=latency.p95_bounds_ms[0],
          evidence=requests)
    check("p99_ms", latency.p99_ms, config.max_p99_ms, bound=latency.p99_bounds_ms[0],
          evidence=requests)
    if refused is not None:
        check("refused_rate_increase", refused[0], config.max_refused_rate_increase,
              bound=refused[1], evidence=refused[2])
    if abandoned is not None:
        check("abandoned_rate_increase", abandoned[0], config.max_abandoned_rate_increase,
              bound=abandoned[1], evidence=abandoned[2])
    not_finite = (share_increase(config, candidate, compared, not_finite_counts)
                  if config.max_not_finite_rate_increase is not None else None)
    if not_finite is not None:
        check("not_finite_rate_increase", not_finite[0], config.max_not_finite_rate_increase,
              bound=not_finite[1], evidence=not_finite[2])
    elif config.max_not_finite_rate_increase is not None:
        # Stable answered too little in the window to compare with (every step at 100%,
        # blue-green's switch): a working model's answers are finite, so the candidate's
        # share is judged alone rather than not at all.
        answered, broken = not_finite_counts(config, candidate)
        if answered >= config.min_samples:
            share = broken / answered
            check("not_finite_rate", share, config.max_not_finite_rate_increase,
                  bound=proportion_lower_bound(share, answered), evidence=f"{answered} answers")
    if compared and stable_samples >= config.min_samples:
        increase = (share_increase(config, candidate, compared, sample_counts)
                    if config.max_error_rate_increase is not None else None)
        if increase is not None:  # on evidence, as the error rate: two 5xx are not a verdict
            check("error_rate_increase", increase[0], config.max_error_rate_increase,
                  bound=increase[1], evidence=increase[2])
        stable_latency = compared.latency.sample
        if stable_latency.p95_ms > 0 and not math.isnan(stable_latency.p95_ms):
            # Evidence of a slower candidate: its p95's lower bound over stable's upper one,
            # each at the paired confidence, so that the two together hold at 95%.
            check("p95_ratio", latency.p95_ms / stable_latency.p95_ms, config.max_p95_ratio,
                  bound=latency.p95_paired_bounds_ms[0] / stable_latency.p95_paired_bounds_ms[1],
                  evidence=f"{latency.count} and {stable_latency.count} requests")
    # Stable takes its share of the same requests only at a step that routes it some: at
    # 100% its figures in the window are its last second or two before the switch.
    beside = stable_routed and stable is not None
    if config.fail_on_drift and candidate.drift.verdict.judged:
        drifted = _drifted(candidate)
        # Stable answers the same randomly routed stream: what drifted there too is the
        # traffic's doing, not the candidate's (a shift in the world, or anyone sending
        # far-off rows), and rolling back would not undo it. Judged alone without stable.
        on_stable = _drifted(stable) if stable is not None and stable.drift.verdict.judged else []
        own = [name for name in drifted if name not in on_stable]
        checks["drift"] = {"value": own, "limit": [], "passed": not own,
                           "also_on_stable": [name for name in drifted if name in on_stable]}
        if own:
            failures["drift"] = f"drift in {', '.join(own)}"
    if labelled >= config.min_labels:
        if accuracy.accuracy is not None:
            value = float(accuracy.accuracy)
            check("accuracy", value, config.min_accuracy, worse_if_above=False,
                  bound=accuracy_upper_bound(value, labelled), evidence=f"{labelled} labels")
        if accuracy.mae is not None:
            check("mae", float(accuracy.mae), config.max_mae,
                  bound=mae_lower_bound(float(accuracy.mae), accuracy.rmse, labelled),
                  evidence=f"{labelled} labels")
    disturbed = load_imbalance(config, candidate, compared)
    unjudged = False
    why_unjudged = disturbed.reason() if disturbed is not None else ""
    heavier = _heavier_than_baseline(candidate, compared) if compared is not stable else None
    if heavier is not None:
        # Stable's baseline was its traffic at its load then: a candidate now taking far
        # more (isolated replicas given everything) may be slower for the load alone.
        for name in RELATIVE_LOAD_SENSITIVE & checks.keys():
            checks[name]["disturbed"] = True
        if RELATIVE_LOAD_SENSITIVE & failures.keys():
            failures = {name: why for name, why in failures.items()
                        if name not in RELATIVE_LOAD_SENSITIVE}
            unjudged, why_unjudged = True, (
                f"the candidate takes {heavier:.2f}x the requests per second stable took in "
                f"its baseline (more than {MAX_LOAD_IMBALANCE:g}x), so the checks against "
                "that baseline are not judged in this window")
    if disturbed is not None:
        # Load only makes latency and errors worse. Where the candidate was the one loaded,
        # its failures may be the load's doing (its passes stand); where stable was, a
        # relative check's pass may be (stable's figures were worse), and the candidate's
        # failures are its own.
        for name in LOAD_SENSITIVE & checks.keys():
            checks[name]["disturbed"] = True
        if disturbed.candidate_loaded:
            unjudged = unjudged or any(name in LOAD_SENSITIVE for name in failures)
            failures = {name: why for name, why in failures.items()
                        if name not in LOAD_SENSITIVE}
        else:
            unjudged = unjudged or bool(RELATIVE_LOAD_SENSITIVE & checks.keys())
    shared = (_slow_on_stable_too(config, failures, checks, candidate, stable)
              if beside and holds_end else [])
    if failures:
        # The failures that rest on nothing of stable's from this window: what callers send
        # could have caused them alone.
        against_then = {name for name in failures if name in CALLER_MOVABLE and name
                        not in MOVABLE_ALONE and not (beside and compared is stable)}
        alone = {name for name in failures if name in MOVABLE_ALONE
                 and (name == "not_finite_rate" or not beside)}
        if failures.keys() - against_then - alone:
            return CheckResult(Verdict.FAIL, checks, "; ".join(failures.values()))
        why = [*([] if not against_then else [
            "against stable's figures from before the step, not the same requests: a change "
            "in what callers send can cause this"]), *([] if not alone else [
                f"{', '.join(sorted(alone))} judged without stable beside it on the same "
                "requests"])]
        return CheckResult(Verdict.FAIL, checks, "; ".join(failures.values())
                           + f" ({'; '.join(why)})", rejects=False)
    silent = _silent_replicas(candidate)
    if silent:
        return CheckResult(Verdict.INCONCLUSIVE, checks, silent, worse_decides=True)
    if unjudged:
        # The A/B test's "worse" still decides over a gate held for stable's slowness.
        return CheckResult(Verdict.INCONCLUSIVE, checks, "; ".join([why_unjudged, *shared]),
                           worse_decides=bool(shared))
    if shared:
        # Never a pass: a slow candidate whose stable is slow too is not shown fast. The A/B
        # test's "worse" still decides, as the p95 ratio does, on the same requests.
        return CheckResult(Verdict.INCONCLUSIVE, checks, "; ".join(shared) + (
            ": the requests are slow on both versions, not on the candidate alone; waiting "
            "for traffic that tells them apart"), worse_decides=True)
    if unproven:
        return CheckResult(Verdict.INCONCLUSIVE, checks, "; ".join(unproven.values()) + (
            ": past the limit, waiting for the evidence to decide"), worse_decides=True)
    uncompared = [name for name, limit in relative_limits(config)
                  if limit is not None and name not in checks]
    if uncompared and (stable is not None if has_stable is None else has_stable):
        return CheckResult(Verdict.INCONCLUSIVE, checks, (
            f"stable answered {stable_samples} requests to compare with (in the window"
            f"{', or in its baseline' if compared is not stable else ''}), need "
            f"{config.min_samples}: {', '.join(uncompared)} cannot be judged; the other "
            "checks passed (set those limits to null to judge the candidate alone)"))
    asked = [name for name, limit in (("min_accuracy", config.min_accuracy),
                                      ("max_mae", config.max_mae)) if limit is not None]
    if asked and labelled < config.min_labels:
        # A gate that was asked for and has no evidence yet is unknown, not passed: labels
        # that never come (a label source down, its predictions evicted) must not let a
        # candidate through on the other checks alone.
        apart = (f" (not counted: {accuracy.labelled_apart} joined with pinned or sticky "
                 "requests)" if accuracy.labelled_apart else "")
        return CheckResult(Verdict.INCONCLUSIVE, checks,
                           f"{labelled} labels joined in the window, need {config.min_labels} "
                           f"(min_labels) for {' and '.join(asked)}{apart}; the other checks "
                           "passed")
    if config.fail_on_drift and not candidate.drift.verdict.judged:
        # The same for the drift gate: too few rows for a verdict (a quiet candidate, fewer
        # than the Monitor's rows for one) is no evidence that the inputs did not drift.
        return CheckResult(Verdict.INCONCLUSIVE, checks, (
            f"the candidate's drift cannot be judged in the window "
            f"({candidate.drift.reason or 'too few rows'}), and fail_on_drift asks for it; "
            "the other checks passed"))
    return CheckResult(Verdict.PASS, checks, "all checks passed")


def _slow_on_stable_too(config: AnalysisConfig, failures: dict[str, str],
                        checks: dict[str, dict[str, Any]], candidate: VersionSnapshot,
                        stable: VersionSnapshot | None) -> list[str]:
    """Where every failure is an absolute latency gate that ``stable`` (its share of the
    same randomly routed requests in the window, at a step routing it some) fails too,
    the candidate not shown slower than stable on that quantile, take them out of
    ``failures`` and say why each is not the candidate's: heavy requests sent at a step
    routing both versions are slow on whichever answers them, and failed a good candidate
    (rejected for good).

    Only a random sample: pinned requests, and sticky keys (a caller may pick keys that
    land on stable), would let a caller make stable's figures whatever it likes. Whatever
    else made stable slow (a flood pinned to it, its own load), the step only holds: a
    candidate is never passed this way."""
    if (stable is None or config.include_pinned or config.include_sticky
            or sample_of(config, stable)[0] < config.min_samples):
        return []
    mine, theirs = candidate.latency.sample, stable.latency.sample
    # Slower than stable on the same requests by more than the ratio allowed (by anything
    # where no ratio is asked for) is the candidate's own slowness: its lower bound (a gate
    # fails only where there is one) against stable's figure, not stable's upper bound,
    # which one slow request of stable's stretches.
    tolerance = config.max_p95_ratio or 1.0
    excusable = {}
    for name, value, limit, low in (
            ("p95_ms", theirs.p95_ms, config.max_p95_ms, mine.p95_bounds_ms[0]),
            ("p99_ms", theirs.p99_ms, config.max_p99_ms, mine.p99_bounds_ms[0])):
        # Stable's point figure past the limit, not its bound: at a high candidate weight
        # stable's share is thin, and an excuse only ever holds the step.
        if name in failures and limit is not None and value > limit \
                and low <= value * tolerance:
            excusable[name] = value
    if not excusable or failures.keys() - excusable.keys():
        return []  # another failure of its own: the candidate fails on all of them
    shared = []
    for name, value in excusable.items():
        shared.append(f"{failures.pop(name)}, and stable's {value:.4g} on the same requests")
        checks[name]["also_on_stable"] = value
    return shared


def relative_limits(config: AnalysisConfig) -> tuple[tuple[str, float | None], ...]:
    """The checks that compare the candidate with stable, and their limits in ``config``
    (the not-finite share has a check of its own without stable)."""
    return (("error_rate_increase", config.max_error_rate_increase),
            ("p95_ratio", config.max_p95_ratio),
            ("refused_rate_increase", config.max_refused_rate_increase),
            ("abandoned_rate_increase", config.max_abandoned_rate_increase))


def _drifted(stats: VersionSnapshot) -> list[str]:
    """The features whose drift ``stats`` found, and ``<prediction>`` where its
    predictions drifted."""
    drift = stats.drift
    return [*drift.drifted_features, *(["<prediction>"] if drift.prediction.drifted else [])]


def _analyse_shadow(config: AnalysisConfig, candidate: VersionSnapshot | None) -> CheckResult:
    shadow = candidate.shadow if candidate is not None else ShadowComparison()
    compared = shadow.compared
    # Every mirrored request is evidence, its failures too: a shadow that fails them all
    # compares none, and waiting for comparisons would never judge it.
    mirrored = compared + shadow.errors + shadow.dropped
    if mirrored < config.min_samples:
        return CheckResult(Verdict.INCONCLUSIVE, reason=(
            f"{mirrored} mirrored requests ({compared} compared), need {config.min_samples}"))
    checks: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    agreement = shadow.agreement
    if config.min_shadow_agreement is not None and agreement is not None and not math.isnan(agreement):
        passed = agreement >= config.min_shadow_agreement
        checks["shadow_agreement"] = {"value": agreement, "limit": config.min_shadow_agreement,
                                      "passed": passed}
        if not passed:
            failures.append(f"shadow_agreement {agreement:.4g} < {config.min_shadow_agreement:.4g}")
    if config.max_shadow_mae is not None and compared:
        difference = shadow.mean_abs_diff
        # Not finite: the answers' shapes differed (compare_outputs counts that as inf).
        passed = math.isfinite(difference) and difference <= config.max_shadow_mae
        checks["shadow_mae"] = {"value": difference if math.isfinite(difference) else None,
                                "limit": config.max_shadow_mae, "passed": passed}
        if not passed:
            failures.append(f"shadow_mae {difference:.4g} > {config.max_shadow_mae:.4g}")
    # A mirrored request the shadow never got (too many of its calls in flight: it hangs
    # or cannot keep up) fails like one it failed, or only its quick answers are judged.
    errors = shadow.errors + shadow.dropped
    error_rate = errors / mirrored if mirrored else 0.0
    limit = config.max_error_rate
    unjudged = None
    checks["shadow_error_rate"] = {"value": error_rate, "limit": limit,
                                   "passed": limit is None or error_rate <= limit}
    if limit is not None and error_rate > limit:
        answered = shadow.errors + compared
        # Its own failures are judged, flood or not; none answered is no evidence of any.
        own_rate = shadow.errors / answered if answered else 0.0
        unjudged = _crowded_out(shadow, candidate) if own_rate <= limit else None
        if unjudged is not None:
            checks["shadow_error_rate"] = {"value": error_rate, "limit": limit,
                                           "disturbed": True}
        else:
            failures.insert(0, f"shadow_error_rate {error_rate:.4g} > {limit:.4g}")
    if failures:
        return CheckResult(Verdict.FAIL, checks, "; ".join(failures))
    silent = _silent_replicas(candidate)
    if silent:
        return CheckResult(Verdict.INCONCLUSIVE, checks, silent)
    if unjudged is not None:
        return CheckResult(Verdict.INCONCLUSIVE, checks, unjudged)
    if not compared:  # not one answer to judge: passing it would promote a shadow unseen
        return CheckResult(Verdict.INCONCLUSIVE, checks, (
            f"none of {mirrored} mirrored requests was answered (failed {shadow.errors}, "
            f"dropped {shadow.dropped})"))
    return CheckResult(Verdict.PASS, checks, "shadow checks passed")


def _silent_replicas(candidate: VersionSnapshot | None) -> str | None:
    """Why the window misses evidence of the candidate's, or None: replicas of the endpoint
    went silent without a graceful stop. Its failures stand; a pass would not, as the
    requests those replicas took down with them (a model that kills its replica) are in no
    count."""
    replicas = candidate.replicas if candidate is not None else Replicas()
    if not replicas.silent:
        return None
    return (f"{replicas.silent} of the {replicas.reporting} replicas that served the endpoint "
            f"in the window went silent without a graceful stop (crashed, killed or stalled; "
            f"silent for {replicas.silent_for_s:.0f}s): what they had in flight and had not "
            "shipped is missing, so the window is not judged")


def _crowded_out(shadow: ShadowComparison, candidate: VersionSnapshot | None) -> str | None:
    """Why the shadow's dropped mirrored requests are no evidence, or None: requests pinned
    to it filled the calls it may have in flight as its mirrored ones do, and past the
    imbalance, the mirrored requests it dropped say how loaded it was."""
    routed_apart = sum(r.requests + r.refused for r in (candidate.traffic.routing.values()
                                                         if candidate is not None else ()))
    if not shadow.dropped or routed_apart <= (MAX_LOAD_IMBALANCE - 1) * shadow.compared:
        return None
    return (f"{shadow.dropped} mirrored requests were dropped while the shadow also answered "
            f"{routed_apart} requests sent to it directly; its error rate is not judged in "
            "this window")


@dataclass(frozen=True)
class FailureStreak:
    """Consecutive failing analyses; a rollback needs ``needed`` in a row.

    Inconclusive analyses neither extend nor break a streak: too little traffic is not
    evidence either way. The one implementation of the rule: ``decide`` (in
    ``control_plane.rollouts.decision``) counts a rollout's analyses with it, and the
    store keeps ``count`` as the rollout's ``failures``.
    """

    needed: int
    count: int = 0

    def after(self, verdict: Verdict) -> FailureStreak:
        """The streak once one more analysis, with ``verdict``, is counted."""
        if verdict == Verdict.FAIL:
            return replace(self, count=self.count + 1)
        if verdict == Verdict.PASS:
            return replace(self, count=0)
        return self

    @property
    def reached(self) -> bool:
        """Whether the candidate must be rolled back."""
        return self.count >= self.needed
