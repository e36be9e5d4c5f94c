"""Progressive delivery: rollout plans, analysis gates and the rollout state machine.

The modules here are pure logic (no store, no Ray, an injected clock) so that every
decision is unit-tested: a rollout decides in one function, ``decision.decide``; the
controller (``controller``, with ``moves``, ``manual`` and ``aliases``) gathers its
evidence, stores what it decides and moves traffic.
"""

from control_plane.rollouts.analysis import (
    AnalysisConfig,
    CheckResult,
    FailureStreak,
    Verdict,
    analyse,
)
from control_plane.rollouts.plan import Step, Strategy, plan_steps
from control_plane.rollouts.states import RolloutState, can_transition

__all__ = [
    "AnalysisConfig",
    "CheckResult",
    "FailureStreak",
    "RolloutState",
    "Step",
    "Strategy",
    "Verdict",
    "analyse",
    "can_transition",
    "plan_steps",
]
