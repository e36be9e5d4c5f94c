"""Moving a rollout's traffic: to a step, to the candidate (promotion), back to stable
(rollback or abort), and removing a version once it has drained.

Every move is one store transaction that writes the rollout's new state, its audit event
and the endpoint's route table together; the reconciler then makes Serve match. So the
store always describes the traffic a rollout set, and a restarted control plane resumes
from what is stored. What a move leaves owed (the candidate's rejection, the alert, the
replaced version's archive) commits with it and is finished by :mod:`followups`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from control_plane.deployments import Deployments, endpoint_row, read_routes
from control_plane.errors import ConflictError
from control_plane.registry import Registry
from control_plane.rollouts.followups import AlertSink, FollowUps, owe, owe_archive
from control_plane.rollouts.records import (
    CONTROLLER,
    event,
    rollout_out,
    rollout_row,
    step_traffic,
    steps,
    transition,
)
from control_plane.rollouts.schemas import RolloutOut
from control_plane.rollouts.states import ACTIVE_STATES, RolloutState, can_transition
from control_plane.schemas import CHAMPION_ALIAS, Stage, StageChange
from control_plane.store import Database
from control_plane.store.database import FencedOut, store_transient, store_unique_race
from control_plane.store.models import EndpointRow, RolloutRow
from serving.monitoring import VersionSnapshot

log = logging.getLogger(__name__)

CHAMPION = CHAMPION_ALIAS
# (endpoint, window in seconds, the ways of routing in the analysis sample) -> snapshots
StatsSource = Callable[[str, float, tuple[str, ...]], dict[int, VersionSnapshot]]


class TrafficMoves:
    """The controller's hands: every change a rollout makes to an endpoint's traffic."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        deployments: Deployments,
        *,
        stats: StatsSource,
        apply: Callable[[], Any] = lambda: None,
        alert: AlertSink | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        leading: Callable[[], bool] = lambda: True,
        fenced: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.db, self.registry, self.deployments = db, registry, deployments
        self._stats, self._apply, self._now, self._leading = stats, apply, now, leading
        # The control loops' fence (ControlPlane._fenced), for follow-ups finished on an
        # API call's thread: their writes, and the alert's, refused once another leads.
        self._fenced = fenced
        self._followups = FollowUps(db, alert, registry)
        # One decision at a time in this process: the loop and API calls share rollouts.
        self._lock = threading.RLock()
        self._ended: list[int] = []  # rollouts ended under the lock, their follow-ups owed

    def get(self, rollout_id: int) -> RolloutOut:
        with self.db.session(readonly=True) as session:
            return rollout_out(session, rollout_row(session, rollout_id))

    def _set_step(self, session: Session, row: RolloutRow, index: int, now: datetime) -> None:
        """Give the candidate step ``index``'s traffic; the step's hold starts ``now``."""
        step = steps(row)[index]
        endpoint = endpoint_row(session, row.endpoint)
        weights, shadows = step_traffic(row, step)
        self.deployments.write_routes(session, endpoint, weights, shadows)
        row.step_index, row.step_started_at, row.updated_at = index, now, now
        # A new step is judged on its own evidence.
        row.last_analysis = {}
        event(session, row, "step", CONTROLLER.name,
              f"step {index + 1}/{len(steps(row))}: "
              + ("candidate mirrored" if step.shadow else f"candidate at {step.candidate_weight:g}%"),
              {"weights": {str(k): v for k, v in weights.items()}, "shadows": shadows})

    def _promote(self, rollout: RolloutOut, actor: str, reason: str) -> None:
        """The candidate becomes the champion in production and takes 100%; stable drains."""
        # The alias, the stages and the traffic move in the rollout's own transaction,
        # behind its row lock: a rollback committed first leaves the registry untouched,
        # and one arriving later finds the rollout ended. A registry step that is refused
        # (policy, approval) undoes them all and ends the rollout failed, with traffic back
        # on stable, rather than erring every tick.
        try:
            with self.db.session() as session:
                row = rollout_row(session, rollout.id, for_update=True)
                if RolloutState(row.state).terminal:
                    return
                self._crown(session, rollout)
                now = self._now()
                endpoint = endpoint_row(session, row.endpoint)
                weights = {row.candidate_version: 100.0}
                if row.stable_version is not None:
                    weights[row.stable_version] = 0.0  # drains, then is removed and archived
                    row.retire_version = row.stable_version
                    row.retire_at = now + timedelta(seconds=float(row.spec.get("drain_s", 5.0)))
                self.deployments.write_routes(session, endpoint, weights, [])
                transition(session, row, RolloutState.SUCCEEDED, actor, reason,
                           {"weights": {str(k): v for k, v in weights.items()},
                            "alias": CHAMPION, "stage": Stage.PRODUCTION.value})
                row.finished_at = now
        except _PromotionRefused as refused:
            log.warning("promotion of rollout #%d failed at %s: %s", rollout.id, refused.step,
                        refused.error)
            self._end(self.get(rollout.id), RolloutState.FAILED, CONTROLLER.name,
                      f"promotion failed {refused.step}: {refused.error}; traffic restored to "
                      "the stable version", {"error": type(refused.error).__name__},
                      reject=False)

    def _crown(self, session: Session, rollout: RolloutOut) -> None:
        """Point the champion alias at the candidate and bring it to production."""
        name, version = rollout.model, rollout.candidate_version
        note = f"rollout #{rollout.id} on {rollout.endpoint}"
        step = f"moving the {CHAMPION} alias to v{version}"
        try:
            current = self.registry.point_alias(session, name, CHAMPION, version, CONTROLLER)
            if current.stage in (Stage.NONE, Stage.ARCHIVED):
                step = f"moving v{version} to staging"
                self.registry.move_stage(session, name, version, StageChange(
                    stage=Stage.STAGING, reason=note), CONTROLLER)
            step = f"moving v{version} to production"
            self.registry.move_stage(session, name, version, StageChange(
                stage=Stage.PRODUCTION, reason=note), CONTROLLER)
        except DBAPIError as error:
            if store_transient(error) or store_unique_race(error):
                # Not a refusal: the store could not take it now, or another writer got
                # there first; the transaction is rolled back whole and the next tick
                # (or the caller, told 409) tries again on what is stored then.
                raise
            raise _PromotionRefused(step, error) from error
        except Exception as error:
            raise _PromotionRefused(step, error) from error

    def _end(self, rollout: RolloutOut, state: RolloutState, actor: str, reason: str,
             data: dict[str, Any], *, reject: bool) -> None:
        """Roll back or abort: stable to 100% first, the candidate drained, then removed."""
        if not can_transition(rollout.state, state):
            raise ConflictError(f"rollout #{rollout.id} is {rollout.state} and cannot become "
                                f"{state}", detail={"field": "state"})
        with self.db.session() as session:
            row = rollout_row(session, rollout.id, for_update=True)
            if not can_transition(RolloutState(row.state), state):
                return
            now = self._now()
            endpoint = endpoint_row(session, row.endpoint)
            # The candidate drains where it has a route; one it never got (a rollout ended
            # before its first step) is not added, even at 0%.
            weights: dict[int, float] = {row.candidate_version: 0.0} if \
                read_routes(session, endpoint).get(row.candidate_version) is not None else {}
            if row.stable_version is not None:
                weights[row.stable_version] = 100.0
            self.deployments.write_routes(session, endpoint, weights, [], allow_rejected=True)
            if not row.spec.get("keep_candidate"):
                row.retire_version = row.candidate_version
                row.retire_at = now + timedelta(seconds=float(row.spec.get("drain_s", 5.0)))
            transition(session, row, state, actor, reason,
                       {**data, "weights": {str(k): v for k, v in weights.items()}})
            row.finished_at = now
            # What is still owed commits with the state, so a crash cannot lose it.
            owe(row, reject=reason if reject else None,
                alert=_rollback_alert(rollout, reason, data)
                if state == RolloutState.ROLLED_BACK else None)
        # Applied by the caller once it lets go of the lock (_settle): applying reaches
        # Serve's controller, and while that is slow no other decision or pause may wait.
        self._ended.append(rollout.id)

    def _settle(self) -> None:
        """Out of the lock: what is stored goes to Serve first, then the registry and the
        alert owed by the rollouts that ended can follow."""
        with self._lock:  # only the rollouts ended before this apply: theirs is applied
            ended, self._ended = self._ended, []
        self._apply()
        with self._lock:
            if self._leading():
                # Elsewhere the leader's next pass (a quarter second) finishes them: both
                # at once could each send the alert before either recorded it sent. Fenced
                # too, as the lead may pass between the look and the writes.
                try:
                    with self._fenced():
                        for rollout_id in ended:
                            self._followups.finish(rollout_id)
                except FencedOut:
                    log.info("the follow-ups of rollouts %s are the new leader's to finish",
                             ended)

    def _retire_drained(self) -> bool:
        """Remove versions whose drain time is over; archive a replaced stable version."""
        now = self._now()
        with self.db.session() as session:
            due = session.scalars(select(RolloutRow).where(
                RolloutRow.retire_at.is_not(None), RolloutRow.retire_at <= now)).all()
            archive: list[int] = []
            for row in due:
                version = row.retire_version
                row.retire_version, row.retire_at = None, None
                # Locked as every change of the route table locks it: a user's traffic
                # change in flight is seen below (and kept), not overwritten.
                endpoint = session.scalar(select(EndpointRow).where(
                    EndpointRow.name == row.endpoint).with_for_update())
                if endpoint is None or version is None:
                    continue
                routes = read_routes(session, endpoint)
                weights = routes.weights
                if weights.get(version) != 0.0 or any(
                        r.state in ACTIVE_STATES for r in session.scalars(select(RolloutRow).where(
                            RolloutRow.endpoint == row.endpoint, RolloutRow.id != row.id))):
                    continue  # taken back into service, or a newer rollout owns the table
                del weights[version]
                self.deployments.write_routes(session, endpoint, weights, routes.shadows,
                                              allow_rejected=True)
                event(session, row, "retired", CONTROLLER.name,
                      f"v{version} drained and removed from {row.endpoint}")
                if row.state == RolloutState.SUCCEEDED and version == row.stable_version:
                    # Owed with the removal: a crash before the archive cannot lose it.
                    owe_archive(row, version)
                    archive.append(row.id)
        for rollout_id in archive:
            self._followups.finish(rollout_id)
        return bool(due)


class _PromotionRefused(Exception):
    """A registry step of a promotion failed; its transaction is rolled back."""

    def __init__(self, step: str, error: Exception) -> None:
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


def _rollback_alert(rollout: RolloutOut, reason: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"name": "RolloutRolledBack", "severity": "critical",
            # The rollout names the event: a second rollback of the same version within
            # the dedup window is another event, not a repeat of the first.
            "labels": {"endpoint": rollout.endpoint, "model": rollout.model,
                       "version": str(rollout.candidate_version), "rollout": str(rollout.id)},
            "summary": f"rollout #{rollout.id} of {rollout.model}:{rollout.candidate_version} "
                       f"on {rollout.endpoint}: {reason}",
            "data": {"rollout": rollout.id, **data}}
