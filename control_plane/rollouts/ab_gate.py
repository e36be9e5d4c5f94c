"""The A/B gate: candidate against stable on the same window, by sequential tests.

Beside the threshold gates (:mod:`analysis`), a rollout with ``analysis.ab_test`` compares
the two versions' randomly routed samples on error rate (two proportions), latency (a
rank test on the sketches' bins) and online accuracy (two proportions of joined labels),
with the statistics of :mod:`ab_test`. Each test ends in ``worse`` (the analysis fails),
``no_worse`` (it passes) or ``undecided`` (inconclusive: the step holds, and the record
says how many more candidate requests a decision needs).

Why the error rate stays at ``alpha`` although the controller looks every interval:

- every look is covered by a confidence sequence, valid at all looks at once, and a test
  stops at its first decision for the step (the decision is carried to later analyses of
  the step, as the threshold gates go on judging each window);
- the evidence of a look is cumulative: the window runs from the step's start, so each
  look sees the previous look's requests and more. The Monitor answers for the last
  :data:`BLOCK_S` seconds only, so a step still undecided after that starts a fresh test
  on the next block of :data:`BLOCK_S` seconds (and so does a step whose hold restarts,
  on resuming);
- ``alpha`` is spent over everything that could err: split evenly between the tested
  steps and the tests switched on, and within a step halved from one fresh test (a
  *round*) to the next: the first gets half, the next a quarter … The sum is at most
  ``alpha``.

A step is tested where both versions take traffic (not mirrored, candidate under 100%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from control_plane.rollouts import ab_test
from control_plane.rollouts.analysis import (
    AnalysisConfig,
    load_imbalance,
    sample_counts,
)
from control_plane.rollouts.plan import Step
from control_plane.rollouts.schemas import (
    ABMetricOut,
    ABSample,
    ABTestOut,
    ABTestSettings,
    StepOut,
)
from serving.monitoring import VersionSnapshot
from serving.monitoring.snapshot import LatencyBins

# The Monitor's history (serving.monitoring.monitor: SLOTS * SLOT_SECONDS): the longest
# window it answers, so the longest stretch of a step one test can accumulate.
BLOCK_S = 300.0
_DECIDED = (ab_test.Decision.WORSE.value, ab_test.Decision.NO_WORSE.value)


@dataclass(frozen=True)
class ABWindow:
    """Both versions' statistics since the start of the step's current block."""

    window_s: float
    block: int
    candidate: VersionSnapshot | None
    stable: VersionSnapshot | None


def tested(step: StepOut | Step) -> bool:
    """Whether the A/B gate judges ``step``: both versions take traffic."""
    return not step.shadow and 0 < step.candidate_weight < 100


def tested_steps(steps: Sequence[StepOut | Step]) -> int:
    """How many steps of a plan the A/B gate judges (each gets its share of alpha)."""
    return sum(tested(step) for step in steps)


def block_window(started: datetime, now: datetime) -> tuple[int, float]:
    """(block, seconds): the step's current block of :data:`BLOCK_S` seconds, and the
    window from the block's start to ``now`` (at least one second)."""
    elapsed = max(0.0, (now - started).total_seconds())
    block = max(0, math.ceil(elapsed / BLOCK_S) - 1)
    return block, max(1.0, elapsed - block * BLOCK_S)


def test_alpha(settings: ABTestSettings, steps: int, round_: int) -> float:
    """One test's share of the rollout's alpha in round ``round_`` of its step."""
    return settings.alpha / (max(1, steps) * len(settings.effects)) / 2 ** (round_ + 1)


def round_of(window: ABWindow, previous: dict[str, Any] | None,
             samples: dict[str, int] | None = None,
             stream: dict[str, Any] | None = None) -> int:
    """Which fresh test of the step ``window`` belongs to, from the step's previous record:
    a later block starts a new round, and so does a new stream of evidence in the same
    block: the step's hold restarted (resumed after a pause or an approval: ``stream``'s
    ``step_started_at`` changed, or the window is shorter than the last one), or the
    Monitor restarted and counts from then on (``stream``'s ``seen_since`` moved on, or
    a version holds fewer requests than at the last look, ``samples``)."""
    if not previous or previous.get("round") is None or previous.get("block") is None:
        return window.block
    last_round, last_block = int(previous["round"]), int(previous["block"])
    if window.block > last_block:
        return last_round + window.block - last_block
    before = previous.get("samples") or {}
    recounted = any(count < int(before.get(side, 0)) for side, count in (samples or {}).items())
    restarted = window.block < last_block or recounted or \
        window.window_s < (previous.get("window_s") or 0) or _new_stream(previous, stream)
    return last_round + int(restarted)


SEEN_SINCE_SLACK_S = 5.0  # the Monitor's clock against the controller's, and a look's lag


def _new_stream(previous: dict[str, Any], stream: dict[str, Any] | None) -> bool:
    before = previous.get("stream") or {}
    if not stream or not before:
        return False
    if before.get("step_started_at") != stream.get("step_started_at"):
        return True
    seen_before, seen_now = before.get("seen_since"), stream.get("seen_since")
    return seen_before is not None and seen_now is not None and \
        seen_now > seen_before + SEEN_SINCE_SLACK_S


def _seen_s(stats: VersionSnapshot) -> float:
    return max(stats.traffic.observed_s, stats.traffic.seen_s)


def evidence_stream(window: ABWindow, step_started: datetime | None,
                    now: datetime) -> dict[str, Any]:
    """What identifies the window's stream of evidence: the step's start, and since when
    the Monitor has seen both versions (a Monitor that restarted sees them from then on)."""
    # Since the first statistics: the seconds a replica still catching up has not reached
    # are seen, only not yet whole (Traffic.seen_s).
    observed = [_seen_s(stats) for stats in (window.candidate, window.stable)
                if stats is not None]
    return {"step_started_at": step_started.isoformat() if step_started else None,
            "seen_since": round(now.timestamp() - min(observed), 1) if observed else None}


def window_samples(config: AnalysisConfig, window: ABWindow) -> dict[str, int]:
    """The requests in each version's sample of ``window``: within a block they only grow."""
    return {"candidate": sample_counts(config, window.candidate)[0],
            "stable": sample_counts(config, window.stable)[0]}


def judge(settings: ABTestSettings, config: AnalysisConfig, window: ABWindow | None, *,
          step: StepOut, steps: int, previous: dict[str, Any] | None, now: datetime,
          step_started: datetime | None = None) -> ABTestOut:
    """The A/B gate's answer for one analysis of ``step`` (one of ``steps`` tested ones).

    ``previous`` is the gate's record of the step's last analysis: a test decided there
    has stopped, and its decision is carried over."""
    if not tested(step):
        why = "mirrored step" if step.shadow else "stable takes no traffic at this step"
        return ABTestOut(decision="not_tested", reason=why, alpha=settings.alpha)
    if window is None:
        return ABTestOut(decision="undecided", reason="no A/B window from the Monitor",
                         alpha=settings.alpha)
    kept = (previous or {}).get("metrics", {})
    split = (100.0 - step.candidate_weight) / step.candidate_weight
    samples = window_samples(config, window)
    stream = evidence_stream(window, step_started, now)
    round_ = round_of(window, previous, samples, stream)
    alpha = test_alpha(settings, steps, round_)
    disturbed = _disturbed(config, window)
    metrics: dict[str, ABMetricOut] = {}
    for metric, min_effect in settings.effects.items():
        if kept.get(metric, {}).get("decision") in _DECIDED:
            metrics[metric] = ABMetricOut.model_validate(kept[metric])
            continue
        test = _TESTS[metric]
        result = test(config, window, min_effect, alpha, settings.power, split,
                      now).model_copy(update={"round": round_})
        if disturbed is not None and metric in _LOAD_SENSITIVE and \
                result.decision == disturbed[0]:
            # Not decided (so never carried): the load, not the candidate, may have made it.
            result = result.model_copy(update={"decision": "undecided", "decided_at": None,
                                               "reason": f"{result.reason}; {disturbed[1]}"})
        metrics[metric] = result
    return _overall(settings, window, round_, metrics).model_copy(
        update={"samples": samples, "stream": stream})


# The A/B tests whose figures load makes worse (the threshold gates' are LOAD_SENSITIVE).
_LOAD_SENSITIVE = frozenset({"error_rate", "latency"})


def _disturbed(config: AnalysisConfig, window: ABWindow) -> tuple[str, str] | None:
    """(the decision the window's load cannot make, why), or None: requests routed apart
    (pinned, or sticky where not counted) loaded one version past the threshold gates'
    imbalance. Load only makes errors and latency worse: where the candidate got it, a
    ``worse`` may be the load's doing; where stable got it, a ``no_worse``. Anyone may pin
    requests, so neither may decide (and be carried for the rest of the step)."""
    candidate, stable = window.candidate, window.stable
    if candidate is None or stable is None:
        return None
    imbalance = load_imbalance(config, candidate, stable)
    if imbalance is None:
        return None
    return ("worse" if imbalance.candidate_loaded else "no_worse"), imbalance.reason(
        "the A/B test does not decide")


def _overall(settings: ABTestSettings, window: ABWindow, round_: int,
             metrics: dict[str, ABMetricOut]) -> ABTestOut:
    by = {d: [f"{m}: {r.reason}" for m, r in metrics.items() if r.decision == d]
          for d in ("worse", "undecided", "no_worse")}
    decision = "worse" if by["worse"] else "undecided" if by["undecided"] else "no_worse"
    reason = "; ".join(by[decision]) if decision != "no_worse" else \
        "no worse than stable on " + ", ".join(m for m, r in metrics.items()
                                               if r.decision == "no_worse")
    return ABTestOut(decision=decision, reason=reason, alpha=settings.alpha,
                     window_s=window.window_s, block=window.block, round=round_,
                     metrics=metrics)


# ---------------------------------------------------------------- the three tests


def _error_rate(config: AnalysisConfig, window: ABWindow, min_effect: float, alpha: float,
                power: float, split: float, now: datetime) -> ABMetricOut:
    n_c, x_c = sample_counts(config, window.candidate)
    n_s, x_s = sample_counts(config, window.stable)
    return _proportions(n_c, x_c, n_s, x_s, config.min_samples, "requests", window, min_effect,
                        alpha, power, split, now)


def _accuracy(config: AnalysisConfig, window: ABWindow, min_effect: float, alpha: float,
              power: float, split: float, now: datetime) -> ABMetricOut:
    sides = []
    for stats in (window.candidate, window.stable):
        accuracy = stats.accuracy if stats is not None else None
        if accuracy is not None and accuracy.task == "regression":
            return ABMetricOut(decision="skipped", min_effect=min_effect,
                               reason="a regressor: accuracy is tested for classifiers")
        labelled = accuracy.labelled if accuracy is not None else 0
        rate = accuracy.accuracy if accuracy is not None else None
        # Misclassified labels: the Monitor counts correct ones, and accuracy is their share.
        wrong = labelled - round(rate * labelled) if rate is not None else 0
        sides.append((labelled, wrong))
    (n_c, x_c), (n_s, x_s) = sides
    return _proportions(n_c, x_c, n_s, x_s, config.min_labels, "labels", window, min_effect,
                        alpha, power, split, now)


def _proportions(n_c: int, x_c: int, n_s: int, x_s: int, minimum: int, unit: str,
                 window: ABWindow, min_effect: float, alpha: float, power: float,
                 split: float, now: datetime) -> ABMetricOut:
    """Two proportions, ``x / n``; a higher share of the candidate reads as worse."""
    estimate = ab_test.two_proportions(x_c, n_c, x_s, n_s)
    # For the samples a decision needs: the variance where the candidate is worse by the
    # minimum effect, at the window's split (the step's while the window is empty).
    ratio = n_s / n_c if n_c and n_s else split
    p_s = (x_s + 1) / (n_s + 2)
    p_c = min(1.0, max((x_c + 1) / (n_c + 2), p_s + min_effect))
    unit_variance = p_c * (1 - p_c) + p_s * (1 - p_s) / ratio
    sides = ABSample(n=n_c, count=x_c), ABSample(n=n_s, count=x_s)
    return _result(estimate, unit_variance, sides, minimum, unit, window, min_effect, alpha,
                   power, now)


def _latency(config: AnalysisConfig, window: ABWindow, min_effect: float, alpha: float,
             power: float, split: float, now: datetime) -> ABMetricOut:
    def bins(stats: VersionSnapshot | None) -> LatencyBins:
        # The sample's, cut by the Monitor as the rollout's ways of routing say.
        return stats.latency.sample_bins if stats is not None else LatencyBins()

    candidate, stable = aligned(bins(window.candidate), bins(window.stable))
    n_c, n_s = int(candidate.sum()), int(stable.sum())
    estimate = ab_test.binned_mann_whitney(candidate, stable)
    unit_variance = float(estimate.unit_variance)
    ratio = n_s / n_c if n_c and n_s else split
    if n_c < config.min_samples or n_s < config.min_samples or not math.isfinite(unit_variance):
        # Too few to estimate the placements' spread: their variance with no ties, 1/12.
        unit_variance = (1 + 1 / ratio) / 12
    if n_c and not float(estimate.variance) > 0:
        # Every request of both in one bin (a service at constant time, or both clamped at
        # the sketch's ceiling): no spread is no evidence, and a zero-width interval would
        # decide "no worse" at the first look. Judged at the variance with no ties instead.
        unit_variance = (1 + 1 / ratio) / 12
        estimate = replace(estimate, variance=np.float64(unit_variance / n_c),
                           unit_variance=np.float64(unit_variance))
    sides = ABSample(n=n_c), ABSample(n=n_s)
    return _result(estimate, unit_variance, sides, config.min_samples, "requests", window,
                   min_effect, alpha, power, now)


def aligned(candidate: LatencyBins, stable: LatencyBins) -> tuple[np.ndarray, np.ndarray]:
    """Both versions' counts over the union of their bins, in increasing order of latency."""
    keys = np.union1d(np.asarray(candidate.keys, dtype=np.int64),
                      np.asarray(stable.keys, dtype=np.int64))
    out = []
    for side in (candidate, stable):
        counts = np.zeros(keys.size, dtype=np.int64)
        counts[np.searchsorted(keys, np.asarray(side.keys, dtype=np.int64))] = side.counts
        out.append(counts)
    return out[0], out[1]


def _result(estimate: ab_test.Estimate, unit_variance: float, sides: tuple[ABSample, ABSample],
            minimum: int, unit: str, window: ABWindow, min_effect: float, alpha: float,
            power: float, now: datetime) -> ABMetricOut:
    """Decide on ``estimate`` once both versions have ``minimum`` samples; say what more a
    decision needs."""
    candidate, stable = sides
    tau2 = ab_test.mixture_scale(min_effect, alpha, power)
    needed = max(minimum, ab_test.samples_needed(unit_variance, min_effect, alpha, power, tau2))
    more = max(0, needed - candidate.n)
    rate = candidate.n / window.window_s
    figures: dict[str, Any] = {
        "min_effect": min_effect, "alpha": alpha, "candidate": candidate, "stable": stable,
        "samples_needed": needed, "more_needed": more,
        "eta_s": more / rate if rate > 0 else None,
        "effect": _number(estimate.effect), "z": _number(estimate.z),
        "p_value": _number(estimate.p_value)}
    if min(candidate.n, stable.n) < minimum:
        short = max(minimum - candidate.n, minimum - stable.n)
        return ABMetricOut(decision="undecided", **figures,
                           reason=f"{short} more {unit} per version before the test may decide; "
                                  f"{_need(more, unit, figures['eta_s'], rate)}")
    low, high = ab_test.confidence_sequence(estimate, tau2, alpha)
    decision = str(ab_test.decide(low, high, min_effect))
    interval = f"{_number(estimate.effect):+.4g} in [{float(low):+.4g}, {float(high):+.4g}]"
    reason = {
        "worse": f"worse than stable: {interval}",
        "no_worse": f"no worse than stable by {min_effect:g}: {interval}",
        "undecided": f"undecided, {interval}: {_need(more, unit, figures['eta_s'], rate)}",
    }[decision]
    return ABMetricOut(decision=decision, reason=reason, ci=(_number(low), _number(high)),
                       decided_at=now.isoformat() if decision in _DECIDED else None, **figures)


def _need(more: int, unit: str, eta_s: float | None, rate: float) -> str:
    if more <= 0:
        return "the samples for a decision are in; it needs a clearer difference"
    if eta_s is None:
        return f"needs about {more} more candidate {unit}"
    fits = "" if eta_s <= BLOCK_S else \
        f" (more than a {BLOCK_S:g}s block holds at {rate:.3g}/s: raise the step's weight " \
        "or the minimum effect)"
    return f"needs about {more} more candidate {unit}, {eta_s:.0f}s at the window's rate{fits}"


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


_TESTS = {"error_rate": _error_rate, "latency": _latency, "accuracy": _accuracy}
