"""People's actions on a rollout: pause, resume, promote, roll back, abort.

Each takes the controller's lock, so it never interleaves with a decision of the loop,
and asks the reconciler to apply at once where traffic moved.
"""

from __future__ import annotations

from control_plane.auth import Principal
from control_plane.errors import ConflictError
from control_plane.rollouts.approvals import approval_gate
from control_plane.rollouts.followups import owe_reject
from control_plane.rollouts.moves import TrafficMoves
from control_plane.rollouts.records import rollout_out, rollout_row, transition
from control_plane.rollouts.schemas import AnalysisSettings, RolloutOut
from control_plane.rollouts.states import RolloutState
from control_plane.schemas import Role


class ManualActions(TrafficMoves):
    """What a deployer may do to a rollout by hand."""

    def pause(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Hold traffic where it is and stop analysing until resumed."""
        actor.require(Role.DEPLOYER)
        with self._lock, self.db.session() as session:
            row = rollout_row(session, rollout_id, for_update=True)
            transition(session, row, RolloutState.PAUSED, actor.name, reason or "paused")
            return rollout_out(session, row)

    def resume(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Continue a paused rollout; the current step's hold starts again."""
        actor.require(Role.DEPLOYER)
        with self._lock, self.db.session() as session:
            row = rollout_row(session, rollout_id, for_update=True)
            if row.state != RolloutState.PAUSED:
                raise ConflictError(f"rollout #{row.id} is {row.state}, not paused",
                                    detail={"field": "state"})
            transition(session, row, RolloutState.PROGRESSING, actor.name, reason or "resumed")
            # The step starts again, judged on its own evidence: an analysis from before the
            # pause let the hold's end advance it with no look since the resume, and a
            # failure streak begun before it rolled back on one failing look after. A streak
            # at its limit is a rollback decided (stored before it was done): it stands.
            row.step_started_at = self._now()
            limit = AnalysisSettings.model_validate(row.spec["analysis"]).failures_to_rollback
            if row.failures < limit:
                row.last_analysis, row.failures = {}, 0
            return rollout_out(session, row)

    def promote(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Skip the remaining steps: the candidate takes 100% and is promoted (approval permitting)."""
        actor.require(Role.DEPLOYER)
        with self._lock:
            current = self.get(rollout_id)
            if current.state == RolloutState.SUCCEEDED:
                return current  # asked again (an answer lost, a retry): it is so already
            if current.state not in (RolloutState.PROGRESSING, RolloutState.AWAITING_APPROVAL):
                raise ConflictError(
                    f"rollout #{current.id} is {current.state}; only a progressing or "
                    "approval-waiting rollout can be promoted (resume it first if paused)",
                    detail={"field": "state"})
            with self.db.session(readonly=True) as session:
                approval_gate(session, rollout_row(session, rollout_id)).refuse_promotion(rollout_id)
            self._promote(current, actor.name, reason or f"promoted by {actor.name}")
        self._settle()
        return self.get(rollout_id)

    def rollback(self, rollout_id: int, actor: Principal, reason: str = "") -> RolloutOut:
        """Stable back to 100% now; the candidate is rejected in the registry."""
        return self._end_by_hand(rollout_id, actor, reason, "rolled back", RolloutState.ROLLED_BACK,
                                 reject=True)

    def _rejected(self, rollout: RolloutOut) -> bool:
        """Whether the candidate is rejected already (or gone: nothing left to reject)."""
        from control_plane.errors import NotFoundError

        try:
            version = self.registry.get_version(rollout.model, rollout.candidate_version)
        except NotFoundError:
            return True
        return version.status == "rejected"

    def abort(self, rollout_id: int, actor: Principal, reason: str = "", *,
              settle: bool = True) -> RolloutOut:
        """Stop the rollout and restore the stable version, without judging the candidate.

        ``settle=False``: stored only; the rollout loop's next pass applies it to Serve.
        For a control loop of its own (a pipeline's): Serve's calls have no deadline, and a
        wedged Serve controller held the pass, and every pipeline with it, for good."""
        return self._end_by_hand(rollout_id, actor, reason, "aborted", RolloutState.FAILED,
                                 reject=False, settle=settle)

    def _end_by_hand(self, rollout_id: int, actor: Principal, reason: str, verb: str,
                     state: RolloutState, *, reject: bool, settle: bool = True) -> RolloutOut:
        actor.require(Role.DEPLOYER)
        why = f"{verb} by {actor.name}" + (f": {reason}" if reason else "")
        with self._lock:
            current = self.get(rollout_id)
            if current.state == state:
                if reject and not self._rejected(current):
                    # Rolled back by its analysis on figures callers can move, which does
                    # not reject (analysis.CALLER_MOVABLE, MOVABLE_ALONE): a person's does.
                    with self.db.session() as session:
                        owe_reject(rollout_row(session, current.id, for_update=True), why)
                    self._ended.append(current.id)
                else:
                    return current  # asked again (an answer lost, a retry): it is so already
            else:
                self._end(current, state, actor.name, why, {}, reject=reject)
        if settle:
            self._settle()
        else:  # a store write, no wait: the leader's loop applies it within half a second
            from control_plane.leadership import request_apply

            request_apply(self.db, current.endpoint)
        return self.get(rollout_id)
