"""The inconclusive deadline: a rollout cannot wait for evidence forever.

Analyses are inconclusive while evidence is missing (too few requests, the Monitor gone
or stale). A progressing rollout whose analyses have stayed inconclusive for
``analysis.inconclusive_deadline_s`` seconds without a break ends by this rule: it
**fails, and traffic goes back to the stable version**; the candidate is not rejected,
since nothing showed it to be bad (start a new rollout once traffic or the Monitor is
back). Waiting for an approval, or paused, is not waiting for evidence: the clock starts
afresh on the first inconclusive analysis of a progressing step.

A pass that cannot decide at all (it raises: a store refusing the analysis, a fault in the
controller) is no better than one without evidence, and may never record the inconclusive
analyses that would run this clock: a progressing rollout that has stored no analysis for
the deadline since a pass first failed, every analysis since having failed, ends the same
way (:func:`failing_past_deadline`, counted by the leading process while the rollout
progresses), naming the error, rather than holding its candidate's share for good.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from control_plane.rollouts.analysis import Verdict
from control_plane.rollouts.schemas import AnalysisSettings
from control_plane.rollouts.states import RolloutState


def inconclusive_for(previous: dict[str, Any], verdict: Verdict, now: datetime,
                     step_started: datetime, state: RolloutState) -> str | None:
    """When the current unbroken run of inconclusive analyses began (ISO time), or None."""
    if verdict != Verdict.INCONCLUSIVE or state != RolloutState.PROGRESSING:
        return None
    since = previous.get("inconclusive_since")
    if since is None:
        return now.isoformat()
    # A resumed step restarts its clock: paused time is not time spent waiting for evidence.
    return max(datetime.fromisoformat(since), step_started).isoformat()


def past_deadline(record: dict[str, Any], settings: AnalysisSettings,
                  state: RolloutState) -> str | None:
    """The reason to end the rollout when its evidence is overdue, None while within time."""
    since, at = record.get("inconclusive_since"), record.get("at")
    if settings.inconclusive_deadline_s is None or state != RolloutState.PROGRESSING \
            or since is None or at is None:
        return None
    waited = (datetime.fromisoformat(at) - datetime.fromisoformat(since)).total_seconds()
    if waited < settings.inconclusive_deadline_s:
        return None
    return (f"analysis inconclusive for {waited:.0f}s, past inconclusive_deadline_s="
            f"{settings.inconclusive_deadline_s:g} ({record.get('reason', '')}); failed and "
            "traffic restored to the stable version")


def failing_past_deadline(since: datetime, now: datetime, settings: AnalysisSettings,
                          state: RolloutState, error: BaseException) -> str | None:
    """The reason to end a rollout that has stored no analysis since a pass first failed at
    ``since`` (the last with ``error``), None while within the inconclusive deadline."""
    failing = (now - since).total_seconds()
    if settings.inconclusive_deadline_s is None or state != RolloutState.PROGRESSING \
            or failing < settings.inconclusive_deadline_s:
        return None
    said = (str(error).splitlines() or [""])[0][:200]
    return (f"the controller could not advance it for {failing:.0f}s, past "
            f"inconclusive_deadline_s={settings.inconclusive_deadline_s:g} "
            f"({type(error).__name__}: {said}); failed and traffic restored to the stable version")
