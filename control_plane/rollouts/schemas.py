"""Rollout wire objects: what a user asks for, and what the API answers.

Durations accept seconds as a number or a string with a unit (``"500ms"``, ``"60s"``,
``"2m"``, ``"1h"``) so a ``rollout.yaml`` reads the way people write it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from control_plane.rollouts.analysis import AnalysisConfig
from control_plane.rollouts.plan import Strategy
from control_plane.rollouts.states import RolloutState
from control_plane.schemas import AliasName, Name, Reason, Wire

_DURATION = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """``"90s"`` → 90.0; numbers pass through; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration; write e.g. 30, '30s', '500ms', '2m'")
        return float(match["value"]) * _UNIT_SECONDS[match["unit"]]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=7 * 86400)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=7 * 86400)]


class ABTestSettings(Wire):
    """The A/B gate: the candidate against stable on the same window, by sequential tests
    that may be read at every analysis (docs/rollouts.md, "A/B statistics").

    Each ``*_effect`` is the smallest regression the gate must detect, with probability
    ``power``; ``null`` switches that test off. The gate calls a candidate worse when it
    is not, or no worse when it is worse by the effect, with probability at most ``alpha``
    over the whole rollout: every tested step, metric and look together.
    """

    alpha: Annotated[float, Field(gt=0, le=0.2)] = Field(
        0.05, description="Error probability of the gate over the whole rollout.")
    power: Annotated[float, Field(ge=0.5, lt=1)] = Field(
        0.8, description="Probability of a decision once the samples the gate asks for "
                         "are in, when the effect is 0 or the minimum effect.")
    error_rate_effect: Annotated[float, Field(gt=0, le=1)] | None = Field(
        0.01, description="Smallest increase of the 5xx rate over stable's to detect "
                          "(absolute: 0.01 is one percentage point); two-proportion test.")
    latency_effect: Annotated[float, Field(gt=0, lt=0.5)] | None = Field(
        0.05, description="Smallest rise of P(a candidate request is slower than a stable "
                          "one) above 1/2 to detect; rank (Mann-Whitney) test on the "
                          "latency sketches' bins.")
    accuracy_effect: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="Smallest drop of online accuracy (classifiers, joined feedback) "
                          "below stable's to detect; waits for min_labels labels per version.")

    @model_validator(mode="after")
    def _some_test(self) -> ABTestSettings:
        if (self.error_rate_effect, self.latency_effect, self.accuracy_effect) == (None,) * 3:
            raise ValueError("set at least one of error_rate_effect, latency_effect and "
                             "accuracy_effect, or switch the A/B gate off with ab_test: null")
        return self

    @property
    def effects(self) -> dict[str, float]:
        """The minimum effect of each test switched on, by metric."""
        return {metric: effect for metric, effect in (
            ("error_rate", self.error_rate_effect), ("latency", self.latency_effect),
            ("accuracy", self.accuracy_effect)) if effect is not None}


class AnalysisSettings(Wire):
    """The gates every step must pass; ``null`` switches a check off."""

    interval_s: Annotated[PositiveSeconds, Field(ge=1)] = 10.0
    window_s: Annotated[PositiveSeconds, Field(le=300)] = 60.0
    min_samples: Annotated[int, Field(ge=1)] = 100
    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = 0.01
    max_error_rate_increase: Annotated[float, Field(ge=0, le=1)] | None = None
    max_refused_rate_increase: Annotated[float, Field(ge=0, le=1)] | None = Field(
        0.01, description="Fail when the candidate refuses (4xx) a larger share of the "
                          "requests routed to it than stable does, by more than this (judged "
                          "on the difference's 95% lower bound): a stricter signature turns "
                          "away what stable answers. null switches it off.")
    max_not_finite_rate_increase: Annotated[float, Field(ge=0, le=1)] | None = Field(
        0.01, description="Fail when a larger share of the candidate's answers than of "
                          "stable's holds a NaN or an infinity, by more than this (judged on "
                          "the difference's 95% lower bound): a broken model still answers 200. "
                          "null switches it off.")
    max_abandoned_rate_increase: Annotated[float, Field(ge=0, le=1)] | None = Field(
        0.01, description="Fail when a larger share of the requests routed to the candidate "
                          "than to stable end with the caller gone before an answer (a "
                          "disconnect, a gRPC deadline), by more than this (judged on the "
                          "difference's 95% lower bound): a candidate that hangs past its "
                          "callers' deadlines is otherwise judged on what it answers. null "
                          "switches it off.")
    max_p95_ms: Annotated[float, Field(gt=0)] | None = None
    max_p99_ms: Annotated[float, Field(gt=0)] | None = None
    max_p95_ratio: Annotated[float, Field(gt=0)] | None = 1.5
    min_shadow_agreement: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="Fail a shadow step when fewer of the shadow's answers than this "
                          "share agree with the primary's on the top class (classifiers).")
    max_shadow_mae: Annotated[float, Field(ge=0)] | None = Field(
        None, description="Fail a shadow step when the mean absolute difference between the "
                          "shadow's first output and the primary's is above this (any task; "
                          "a regressor's counterpart of min_shadow_agreement).")
    # Off unless asked: a calibrated test still flags some windows of clean traffic, and a
    # rollout reads many overlapping windows.
    fail_on_drift: bool = False
    min_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    max_mae: Annotated[float, Field(ge=0)] | None = None
    min_labels: Annotated[int, Field(ge=1)] = Field(
        50, description="Labels joined in the window that min_accuracy or max_mae needs; "
                        "with fewer, an analysis that asks for either is inconclusive.")
    failures_to_rollback: Annotated[int, Field(ge=1, le=100)] = 2
    inconclusive_deadline_s: PositiveSeconds | None = Field(
        1800.0, description="A progressing rollout whose analyses stay inconclusive this long "
                            "fails and traffic returns to the stable version; null waits forever.")
    # The sample is randomly routed traffic: callers choose the version of pinned and
    # sticky requests, so counting them lets anyone fill or poison a candidate's evidence.
    include_sticky: bool = Field(False, description="Count sticky-keyed (A/B by user) requests "
                                 "in every check: samples, error rate, latency, drift and "
                                 "online accuracy.")
    include_pinned: bool = Field(False, description="Count requests pinned to a version "
                                 "(/versions/{v}/infer) in every check: samples, error rate, "
                                 "latency, drift and online accuracy.")

    ab_test: ABTestSettings | None = Field(
        None, description="Compare the candidate with stable by sequential A/B tests on "
                          "error rate, latency and online accuracy; null: threshold gates only.")

    def to_config(self) -> AnalysisConfig:
        return AnalysisConfig(**self.model_dump(
            exclude={"interval_s", "window_s", "inconclusive_deadline_s", "ab_test"}))


MAX_STEPS = 100


class RolloutTemplate(Wire):
    """How to roll out: strategy, steps and gates (an endpoint's default, or one rollout's)."""

    strategy: Strategy = Strategy.CANARY
    # Bounded: the plan is stored with the rollout and read back on every pass of the loop.
    steps: list[Annotated[float, Field(gt=0, le=100)]] | None = Field(
        None, max_length=MAX_STEPS,
        description=f"Canary weights in percent, increasing, ending at 100 (at most {MAX_STEPS}).")
    step_duration_s: PositiveSeconds = 60.0
    shadow_then: Strategy | None = Field(
        None, description="For strategy shadow: promote through canary (default) or blue_green.")
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    keep_warm_s: Seconds = Field(
        0.0, description="Hold the final 100% step at least this long with the old version "
                         "loaded at 0%, so switching back is instant.")
    drain_s: Seconds = Field(
        5.0, description="How long a version stays loaded at 0% before it is removed.")
    keep_candidate: bool = Field(
        False, description="After a rollback, keep the candidate loaded at 0% for inspection.")
    require_approval: bool | None = Field(
        None, description="true: wait for an approval as if the model's policy required one. "
                          "Never weakens the policy: false or null leave it in force.")


class RolloutCreate(RolloutTemplate):
    endpoint: Name
    model_ref: str = Field(description="name:version or name@alias of the candidate.")


class RolloutPolicy(Wire):
    """Registry-driven deployment for one endpoint: moving ``track_alias`` starts a rollout."""

    track_alias: AliasName
    template: RolloutTemplate = Field(default_factory=RolloutTemplate)


class RolloutAction(Wire):
    reason: Reason = ""


class StepOut(Wire):
    candidate_weight: float
    shadow: bool
    hold_s: float


class ABSample(Wire):
    """One version's side of an A/B test: its samples, and the count the test compares
    (5xx for the error rate, misclassified labels for accuracy; none for latency)."""

    n: int
    count: int | None = None


class ABMetricOut(Wire):
    """One A/B test of the last analysis: the effect (positive: the candidate is worse),
    its anytime-valid interval, the decision and what a decision still needs."""

    decision: Literal["worse", "no_worse", "undecided", "skipped"]
    reason: str
    min_effect: float
    effect: float | None = None
    ci: tuple[float | None, float | None] | None = Field(
        None, description="Confidence sequence at this test's alpha: it holds the effect at "
                          "every look with probability 1 - alpha.")
    alpha: float | None = Field(None, description="This test's share of the rollout's alpha.")
    z: float | None = Field(None, description="Fixed-sample z of 'no difference' (reference).")
    p_value: float | None = Field(None, description="One-sided fixed-sample p-value "
                                  "(reference; decisions use ci).")
    candidate: ABSample | None = None
    stable: ABSample | None = None
    samples_needed: int | None = Field(
        None, description="Candidate samples at which the test decides with the configured "
                          "power, at the window's split between the versions.")
    more_needed: int | None = Field(None, description="Candidate samples still to come.")
    eta_s: float | None = Field(None, description="Seconds until then at the window's rate.")
    round: int = Field(0, description="Which fresh test of the step this is (a new "
                       "300-second block or a restarted hold starts one; alpha halves each).")
    decided_at: str | None = Field(None, description="When the test stopped (ISO time).")


class ABTestOut(Wire):
    """The A/B gate's part of an analysis (``last_analysis["ab_test"]``)."""

    decision: Literal["worse", "no_worse", "undecided", "not_tested"]
    reason: str
    alpha: float = Field(description="The rollout's alpha, shared by every test and look.")
    window_s: float | None = Field(None, description="The A/B window: from the start of "
                                   "the step's current 300-second block.")
    block: int | None = Field(None, description="Which 300-second block of the step.")
    round: int | None = Field(None, description="Which fresh test of the step (see metrics).")
    samples: dict[str, int] | None = Field(
        None, description="Requests in the candidate's and stable's samples of the window.")
    stream: dict[str, Any] | None = Field(
        None, description="What identifies the window's stream of evidence (the step's "
                          "start, and since when the Monitor has seen both versions): a "
                          "new stream is a new round.")
    metrics: dict[str, ABMetricOut] = Field(default_factory=dict)


class RolloutOut(Wire):
    id: int
    endpoint: str
    model: str
    candidate_version: int
    stable_version: int | None
    strategy: Strategy
    state: RolloutState
    step_index: int
    steps: list[StepOut]
    step_started_at: datetime | None
    failures: int
    last_analysis: dict[str, Any]
    ab_test: ABTestOut | None = Field(
        None, description="The A/B gate's part of last_analysis, typed; null when off.")
    reason: str
    spec: dict[str, Any]
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @model_validator(mode="after")
    def _step_in_range(self) -> RolloutOut:
        if self.steps and not 0 <= self.step_index < len(self.steps):
            raise ValueError("step_index outside the plan")
        return self

    @property
    def current_step(self) -> StepOut:
        return self.steps[self.step_index]


class RolloutEventOut(Wire):
    id: int
    rollout_id: int
    kind: str
    from_state: str
    to_state: str
    step_index: int
    actor: str
    reason: str
    data: dict[str, Any]
    created_at: datetime
