"""Turn a strategy and its settings into the sequence of traffic steps a rollout walks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import StrEnum

from control_plane.errors import InvalidInputError


class Strategy(StrEnum):
    CANARY = "canary"
    BLUE_GREEN = "blue_green"
    ROLLING = "rolling"
    SHADOW = "shadow"


@dataclass(frozen=True)
class Step:
    """One stage of a rollout: the candidate's traffic share (percent) or a shadow phase."""

    candidate_weight: float
    shadow: bool = False
    hold_s: float = 60.0

    @property
    def stable_weight(self) -> float:
        return 0.0 if self.shadow else 100.0 - self.candidate_weight


def plan_steps(
    strategy: Strategy,
    *,
    steps: list[float] | None = None,
    step_duration_s: float = 60.0,
    replicas: int = 1,
    shadow_then: Strategy | None = None,
) -> list[Step]:
    """The steps for ``strategy``; every plan ends with the candidate at 100%.

    - canary: the given weights (default 5, 25, 50, 100);
    - blue_green: a check with no traffic (the candidate warm, mirrored), then 100%;
    - rolling: one replica's share at a time (100/replicas, 200/replicas, …);
    - shadow: a mirrored phase, then ``shadow_then``'s steps (canary by default).
    """
    if step_duration_s <= 0:
        raise InvalidInputError("step duration must be positive", detail={"field": "step_duration"})
    if strategy == Strategy.CANARY:
        weights = steps or [5.0, 25.0, 50.0, 100.0]
        _check_weights(weights)
        return [Step(w, hold_s=step_duration_s) for w in weights]
    if strategy == Strategy.BLUE_GREEN:
        return [Step(0.0, shadow=True, hold_s=step_duration_s), Step(100.0, hold_s=step_duration_s)]
    if strategy == Strategy.ROLLING:
        if replicas < 1:
            raise InvalidInputError("rolling needs at least one replica", detail={"field": "replicas"})
        # One step a replica: 100 / (100 / 29) is 29.000000000000004, and a step count
        # from it held 29 replicas' last step at 100% twice.
        weights = [round(100.0 * (i + 1) / replicas, 6) for i in range(replicas)]
        return [Step(w, hold_s=step_duration_s) for w in weights]
    if strategy == Strategy.SHADOW:
        follow = shadow_then or Strategy.CANARY
        if follow == Strategy.SHADOW:
            raise InvalidInputError("a shadow rollout promotes through canary or blue_green",
                                    detail={"field": "shadow_then"})
        return [Step(0.0, shadow=True, hold_s=step_duration_s),
                *plan_steps(follow, steps=steps, step_duration_s=step_duration_s, replicas=replicas)]
    raise InvalidInputError(f"unknown strategy {strategy!r}", detail={"field": "strategy"})


def _check_weights(weights: list[float]) -> None:
    if not weights or any(not 0 < w <= 100 for w in weights):
        raise InvalidInputError("canary steps must be percentages in (0, 100]",
                                detail={"field": "steps"})
    if any(b <= a for a, b in itertools.pairwise(weights)):
        raise InvalidInputError("canary steps must increase", detail={"field": "steps"})
    if weights[-1] != 100:
        raise InvalidInputError("the last canary step must be 100", detail={"field": "steps"})
