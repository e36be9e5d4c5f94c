"""Rollout lifecycle: pending → progressing ⇄ paused | awaiting_approval → terminal states."""

from __future__ import annotations

from enum import StrEnum


class RolloutState(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK, RolloutState.FAILED})
# As stored values, for queries: a rollout in one of these owns its endpoint's traffic.
ACTIVE_STATES = tuple(s.value for s in RolloutState if s not in _TERMINAL)

TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    # awaiting_approval straight from pending: an unapproved candidate whose first step
    # would exceed the approval limit waits with no traffic at all.
    RolloutState.PENDING: frozenset({
        RolloutState.PROGRESSING, RolloutState.AWAITING_APPROVAL, RolloutState.FAILED,
    }),
    RolloutState.PROGRESSING: frozenset({
        RolloutState.PAUSED, RolloutState.AWAITING_APPROVAL, RolloutState.SUCCEEDED,
        RolloutState.ROLLED_BACK, RolloutState.FAILED,
    }),
    RolloutState.PAUSED: frozenset({
        RolloutState.PROGRESSING, RolloutState.ROLLED_BACK, RolloutState.FAILED,
    }),
    RolloutState.AWAITING_APPROVAL: frozenset({
        RolloutState.PROGRESSING, RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK,
        RolloutState.FAILED,
    }),
    RolloutState.SUCCEEDED: frozenset(),
    RolloutState.ROLLED_BACK: frozenset(),
    RolloutState.FAILED: frozenset(),
}


def can_transition(current: RolloutState, target: RolloutState) -> bool:
    """Whether the lifecycle allows moving from ``current`` to ``target``."""
    return target in TRANSITIONS[current]
