"""A rollout's follow-ups: the work still owed after its terminal state is committed.

A rollback moves traffic first (stable to 100%, the candidate drained) and then owes two
things: the candidate's rejection in the registry (not where its analysis rested only on
figures callers can move: ``Decision.rejects``), and the ``RolloutRolledBack`` alert.
Both are recorded as pending (``RolloutRow.followups``) in the very transaction that
commits the terminal state, and each is removed once done; so a control plane that dies
in between leaves them for the next pass, which finishes them. Draining needs no entry:
``retire_version``/``retire_at`` are written in that same transaction. After a promotion,
the replaced stable version's archive is owed the same way, written in the transaction
that removes the drained version from the route table.

- The rejection and the removal of its entry commit together: it happens exactly once.
- The archive is a stage change through the registry, then its entry removed: a crash
  between the two repeats it, and the registry records no event for a version already in
  the stage asked for, so it too happens exactly once. An archive the registry refuses
  (e.g. the version is still served by another endpoint) is dropped with a
  ``followup_failed`` event; the version keeps its stage and the rollout its state.
- The alert is sent, then its entry removed: a crash between the two sends it again on
  the next pass (at least once; an alert lost to a crash would be worse than a repeat).
- A registry step that fails (the store refuses the write) is not retried every tick:
  the rollout ends ``failed`` with the reason, and the follow-up is dropped. A store that
  cannot answer, or a transaction lost to another (``store_transient``), refuses nothing:
  the rejection stays owed and the next pass makes it. An alert
  sink that fails is logged and dropped, because an alert must never undo a rollback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.auth import Principal
from control_plane.registry import Registry, mark_rejected
from control_plane.rollouts.states import RolloutState
from control_plane.schemas import Role, Stage, StageChange
from control_plane.storable import json_safe
from control_plane.store import Database
from control_plane.store.database import FencedOut, store_could_not_take
from control_plane.store.models import ModelRow, ModelVersionRow, RolloutEventRow, RolloutRow

log = logging.getLogger(__name__)

REJECT = "reject"
ALERT = "alert"
ARCHIVE = "archive"
ACTOR = "rollout-controller"
AlertSink = Callable[..., None]


def owe(row: RolloutRow, *, reject: str | None = None,
        alert: dict[str, Any] | None = None) -> None:
    """Record, inside the terminal transaction, what the next step must finish."""
    pending: dict[str, Any] = {}
    if reject is not None:
        pending[REJECT] = reject
    if alert is not None:
        pending[ALERT] = json_safe(alert)
    row.followups = pending or None


def owe_reject(row: RolloutRow, reason: str) -> None:
    """Record the candidate's rejection, owed after the terminal state (a person's rollback
    of a rollout its analysis rolled back without rejecting), unless one is owed already."""
    if REJECT not in (row.followups or {}):
        row.followups = {**(row.followups or {}), REJECT: reason}


def owe_archive(row: RolloutRow, version: int) -> None:
    """Record, inside the transaction that removes the drained ``version``, its archive."""
    row.followups = {**(row.followups or {}), ARCHIVE: version}


class FollowUps:
    """Finishes pending follow-ups, each once; safe to call on every controller pass."""

    def __init__(self, db: Database, alert: AlertSink | None,
                 registry: Registry | None = None) -> None:
        self._db, self._alert, self._registry = db, alert, registry

    def finish_all(self) -> bool:
        """Finish every rollout's pending follow-ups; True if anything was done."""
        with self._db.session(readonly=True) as session:
            due = session.scalars(select(RolloutRow.id).where(
                RolloutRow.followups.is_not(None)).order_by(RolloutRow.id)).all()
        for rollout_id in due:
            self.finish(rollout_id)
        return bool(due)

    def finish(self, rollout_id: int) -> None:
        self._reject(rollout_id)
        self._raise_alert(rollout_id)
        self._archive(rollout_id)

    def _reject(self, rollout_id: int) -> None:
        try:
            with self._db.session() as session:
                row = session.get(RolloutRow, rollout_id, with_for_update=True)
                if row is None or REJECT not in (row.followups or {}):
                    return
                pending = dict(row.followups or {})
                reason = pending.pop(REJECT)
                version = session.scalar(select(ModelVersionRow).where(
                    ModelVersionRow.model_id == row.model_id,
                    ModelVersionRow.version == row.candidate_version))
                row.followups = pending or None
                if version is not None and version.stage == Stage.PRODUCTION.value:
                    # Promoted on another endpoint meanwhile: rejected, it would be in
                    # production while the registry says it may never reach it.
                    _event(row, session, "followup_failed",
                           f"v{row.candidate_version} not rejected in the registry: it is in "
                           f"production (on another endpoint); {reason}")
                    return
                if version is not None:
                    mark_rejected(version, reason)
                _event(row, session, "followup",
                       f"v{row.candidate_version} rejected in the registry: {reason}")
        except FencedOut:  # another control plane leads: the rejection is its to make
            raise
        except Exception as error:
            if store_could_not_take(error):  # not a refusal: owed still, tried next pass
                log.warning("rejecting the candidate of rollout #%d waits for the store: %s",
                            rollout_id, error)
                return
            log.error("rejecting the candidate of rollout #%d failed", rollout_id,
                      exc_info=error)
            self._fail(rollout_id, REJECT, f"rejecting the candidate in the registry failed "
                                           f"({type(error).__name__}: {error})")

    def _raise_alert(self, rollout_id: int) -> None:
        with self._db.session(readonly=True) as session:
            row = session.get(RolloutRow, rollout_id)
            alert = (row.followups or {}).get(ALERT) if row is not None else None
        if alert is None:
            return
        failure = ""
        if self._alert is None:  # a controller built without alerting: the log is the sink
            log.warning("alert %s: %s", alert["name"], alert.get("summary", ""))
        else:
            try:
                self._alert(alert["name"], **{k: v for k, v in alert.items() if k != "name"})
            except FencedOut:  # not raised here (nor paged): the new leader owes it still
                raise
            except Exception as error:  # an alert sink failure must never undo a rollback
                log.exception("raising the rollback alert of rollout #%d failed", rollout_id)
                failure = f"{type(error).__name__}: {error}"
        self._settle(rollout_id, ALERT, f"raising the {alert['name']} alert failed: {failure}"
                     if failure else f"{alert['name']} alert raised", failed=bool(failure))

    def _archive(self, rollout_id: int) -> None:
        with self._db.session(readonly=True) as session:
            row = session.get(RolloutRow, rollout_id)
            version = (row.followups or {}).get(ARCHIVE) if row is not None else None
            model = session.get(ModelRow, row.model_id) if version is not None else None
        if version is None or model is None or self._registry is None:
            return
        failure = ""
        try:
            self._registry.transition_stage(model.name, version, StageChange(
                stage=Stage.ARCHIVED, reason="replaced by a rollout"),
                Principal(name=ACTOR, role=Role.ADMIN))
        except Exception as error:  # e.g. still served by another endpoint
            log.info("not archiving %s:%d: %s", model.name, version, error)
            failure = f"{type(error).__name__}: {error}"
        self._settle(rollout_id, ARCHIVE, f"v{version} not archived: {failure}" if failure
                     else f"v{version} archived in the registry", failed=bool(failure))

    def _settle(self, rollout_id: int, step: str, reason: str, *, failed: bool) -> None:
        """The follow-up ``step`` is no longer owed; its outcome goes into the audit log."""
        with self._db.session() as session:
            row = session.get(RolloutRow, rollout_id, with_for_update=True)
            if row is None:
                return
            _drop(row, step)
            _event(row, session, "followup_failed" if failed else "followup", reason)

    def _fail(self, rollout_id: int, step: str, reason: str) -> None:
        """A registry step failed: drop it, and the rollout ends failed with the reason."""
        with self._db.session() as session:
            row = session.get(RolloutRow, rollout_id, with_for_update=True)
            if row is None:
                return
            _drop(row, step)
            previous = row.state
            # The one move out of a terminal state: the rollback happened (traffic is on
            # stable) but its registry step did not, and "rolled_back" would claim it did.
            row.state, row.reason = RolloutState.FAILED.value, f"{row.reason}; {reason}"
            row.updated_at = datetime.now(UTC)
            _event(row, session, "transition", reason, from_state=previous,
                   to_state=RolloutState.FAILED.value)


def _drop(row: RolloutRow, step: str) -> None:
    pending = dict(row.followups or {})
    pending.pop(step, None)
    row.followups = pending or None


def _event(row: RolloutRow, session: Session, kind: str, reason: str, *, from_state: str = "",
           to_state: str = "") -> None:
    session.add(RolloutEventRow(
        rollout_id=row.id, kind=kind, from_state=from_state, to_state=to_state,
        step_index=row.step_index or 0, actor=ACTOR, reason=reason, data={}))
