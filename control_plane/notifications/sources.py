"""Events of each part of the control plane, built from what that part knows.

Each builder returns an :class:`Event` (or None when there is nothing to say) and never
touches the network; the caller passes it to ``notify`` or ``notify_on_commit``. The
hooks called from inside other parts' transactions (:func:`rollout_transition`) catch
everything: a notification must never undo the change it reports.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from control_plane.notifications.events import Event, EventKind, Subject
from control_plane.notifications.service import notify, notify_on_commit
from control_plane.schemas import JOB_TAG

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("modelplane.notifications")

# ---------------------------------------------------------------- alerts


def alert_event(status: str, alert: dict[str, Any]) -> Event:
    """An alert's firing or resolved notification as an event (for the Slack format)."""
    labels = alert.get("labels") or {}
    if labels.get("endpoint"):
        subject = Subject("endpoint", labels["endpoint"])
    else:
        subject = Subject("alert", str(alert.get("name") or "alert"))
    details: dict[str, Any] = {"alert": alert.get("name"), "version": labels.get("version"),
                               "value": alert.get("value"), "kind": alert.get("kind")}
    details |= {k: v for k, v in labels.items()
                if k not in ("alertname", "endpoint", "version", "severity")}
    kind = EventKind.ALERT_FIRING if status == "firing" else EventKind.ALERT_RESOLVED
    return Event(kind, subject, str(alert.get("summary") or alert.get("name") or ""), details,
                 severity=_severity(alert.get("severity")) if status == "firing" else "info")


def _severity(value: Any) -> Any:
    return value if value in ("info", "warning", "critical") else "warning"


# ---------------------------------------------------------------- registry


def _version_link(model: str, version: int) -> str:
    return f"/api/models/{model}/versions/{version}"


def version_registered(model: str, version: int, *, actor: str, run_id: str | None = None,
                       description: str = "") -> Event:
    return Event(EventKind.VERSION_REGISTERED, Subject("model", model, version),
                 f"{model}:{version} registered by {actor}",
                 {"registered_by": actor, "run_id": run_id, "description": description},
                 link=_version_link(model, version))


def stage_changed(model: str, version: int, *, from_stage: str, to_stage: str, actor: str,
                  reason: str = "") -> Event:
    return Event(EventKind.STAGE_CHANGED, Subject("model", model, version),
                 f"{model}:{version} moved from {from_stage} to {to_stage} by {actor}"
                 + (f": {reason}" if reason else ""),
                 {"from_stage": from_stage, "to_stage": to_stage, "actor": actor, "reason": reason},
                 link=_version_link(model, version))


def approval_needed(model: str, version: int, *, why: str, endpoint: str | None = None,
                    rollout_id: int | None = None) -> Event:
    return Event(EventKind.APPROVAL_NEEDED, Subject("model", model, version),
                 f"{model}:{version} needs an approval: {why}; an approver runs "
                 f"`modelplane models approve {model}:{version}`",
                 {"endpoint": endpoint, "rollout_id": rollout_id},
                 link=_version_link(model, version))


def approval_decided(model: str, version: int, *, decision: str, approver: str,
                     comment: str = "") -> Event:
    kind = EventKind.APPROVED if decision == "approved" else EventKind.REJECTED
    return Event(kind, Subject("model", model, version),
                 f"{model}:{version} {decision} by {approver}" + (f": {comment}" if comment else ""),
                 {"decision": decision, "approver": approver, "comment": comment},
                 link=f"/api/models/{model}/versions/{version}/approvals")


def version_rejected(model: str, version: int, *, reason: str, actor: str) -> Event:
    return Event(EventKind.REJECTED, Subject("model", model, version),
                 f"{model}:{version} rejected by {actor}: {reason}",
                 {"decision": "rejected", "actor": actor, "reason": reason},
                 link=_version_link(model, version))


# ---------------------------------------------------------------- rollouts

_CONTROLLER = "rollout-controller"


def rollout_transition(session: Session, row: Any, current: str, target: str, actor: str,
                       reason: str) -> None:
    """Keep, within ``session``, the events of a rollout moving to ``target``.

    Called by :func:`control_plane.rollouts.records.transition` inside its transaction;
    raises only what the store raises (the transaction's own commit would meet it: hidden,
    a PostgreSQL transaction aborted by it was taken for a stored transition).
    """
    from control_plane.store.models import ModelRow

    model_row = session.get(ModelRow, row.model_id)
    model = model_row.name if model_row is not None else str(row.model_id)
    try:
        events = rollout_events(
            rollout_id=row.id, endpoint=row.endpoint, model=model,
            candidate=row.candidate_version, stable=row.stable_version,
            strategy=row.strategy, current=str(current), target=str(target), actor=actor,
            reason=reason)
    except Exception:  # a bug of the event's making: the transition stands without it
        log.exception("could not build the notification of rollout #%s", getattr(row, "id", "?"))
        return
    notify_on_commit(session, *events)


def rollout_events(*, rollout_id: int, endpoint: str, model: str, candidate: int,
                   stable: int | None, strategy: str, current: str, target: str, actor: str,
                   reason: str) -> list[Event]:
    """The events of one rollout transition (none for a move nobody needs to hear of)."""
    kinds: list[EventKind] = []
    if target in ("progressing", "awaiting_approval") and current == "pending":
        kinds.append(EventKind.ROLLOUT_STARTED)
    if target == "progressing" and current == "paused":
        kinds.append(EventKind.ROLLOUT_RESUMED)
    kinds += {"paused": [EventKind.ROLLOUT_PAUSED], "succeeded": [EventKind.ROLLOUT_PROMOTED],
              "rolled_back": [EventKind.ROLLOUT_ROLLED_BACK],
              "failed": [EventKind.ROLLOUT_FAILED if actor == _CONTROLLER
                         else EventKind.ROLLOUT_ABORTED]}.get(target, [])
    # What matters most first: a Slack message shows the first few details only.
    details = {"reason": reason, "actor": actor, "model": model, "candidate_version": candidate,
               "stable_version": stable, "rollout_id": rollout_id, "strategy": strategy,
               "from_state": current, "to_state": target}
    link = f"/api/rollouts/{rollout_id}"
    events = [Event(kind, Subject("endpoint", endpoint),
                    f"rollout #{rollout_id} of {model}:{candidate} on {endpoint}: "
                    f"{kind.title.split(' ', 1)[1]}" + (f" ({reason})" if reason else ""),
                    details, link=link)
              for kind in kinds]
    if target == "awaiting_approval":
        events.append(approval_needed(model, candidate, why=f"rollout #{rollout_id} on "
                                      f"{endpoint} waits for it" + (f" ({reason})" if reason else ""),
                                      endpoint=endpoint, rollout_id=rollout_id))
    return events


# ---------------------------------------------------------------- training

TRAINING_TAG = "ray_train_run"  # set by training.runner on every training job's run


def training_submitted(job_id: str, *, experiment: str, model: str, address: str = "",
                       actor: str = "") -> Event:
    return Event(EventKind.TRAINING_SUBMITTED, Subject("training_job", job_id),
                 f"training job {job_id} submitted (experiment {experiment}, model {model})"
                 + (f" by {actor}" if actor else ""),
                 {"experiment": experiment, "model": model, "ray_address": address,
                  "submitted_by": actor})


def training_ended(run: Any, experiment: str) -> Event | None:
    """The end of a training job's run (``finished``, ``failed`` or ``killed``); None for a
    run that is not a training job's or has not ended."""
    tags, params = run.tags or {}, run.params or {}
    status = str(getattr(run.status, "value", run.status))
    if TRAINING_TAG not in tags or status == "running":
        return None
    job = tags.get(JOB_TAG) or run.name or run.id
    model = params.get("registration.model_name") or experiment
    kind = EventKind.TRAINING_SUCCEEDED if status == "finished" else EventKind.TRAINING_FAILED
    outcome = {"finished": "succeeded", "killed": "was stopped"}.get(status, "failed")
    reason = params.get("failure_reason")
    return Event(kind, Subject("training_job", str(job)),
                 f"training job {job} {outcome} (run {run.id}, experiment {experiment})"
                 + (f": {reason}" if reason and status != "finished" else ""),
                 {"run_id": run.id, "experiment": experiment, "model": model, "status": status,
                  "metrics": dict(getattr(run, "latest_metrics", None) or {}), "reason": reason},
                 link=f"/api/runs/{run.id}")


# ---------------------------------------------------------------- pipelines

PipelineEventName = Literal["run_started", "stage_passed", "stage_failed", "run_succeeded",
                            "run_failed", "run_cancelled"]


def pipeline_event(run_id: str | int, pipeline: str, kind: PipelineEventName | EventKind | str,
                   stage: str | None = None, reason: str | None = None, *,
                   details: dict[str, Any] | None = None, link: str | None = None) -> Event:
    """Notify a pipeline run's event and return it; what the pipeline runner calls.

    ``kind`` is ``run_started``, ``stage_passed``, ``stage_failed``, ``run_succeeded``,
    ``run_failed`` or ``run_cancelled`` (or the full ``pipeline.…`` kind); the stage
    events need ``stage``. A wrong kind or a missing stage is the caller's bug and raises
    ValueError; delivery itself never raises and never blocks.
    """
    name = str(kind)
    full = name if name.startswith("pipeline.") else f"pipeline.{name}"
    try:
        event_kind = EventKind(full)
    except ValueError:
        event_kind = None
    if event_kind is None or event_kind.group != "pipeline":
        known = ", ".join(k.value.split(".", 1)[1] for k in EventKind if k.group == "pipeline")
        raise ValueError(f"{name!r} is not a pipeline event; use one of {known}")
    if event_kind in (EventKind.PIPELINE_STAGE_PASSED, EventKind.PIPELINE_STAGE_FAILED) and not stage:
        raise ValueError(f"{event_kind.value} needs the stage it is about")
    what = event_kind.title.split(" ", 1)[1]  # "stage passed"
    summary = f"pipeline {pipeline} run {run_id}: " + (
        f"stage {stage} {what.split(' ', 1)[1]}" if event_kind.value.startswith("pipeline.stage_")
        else what.split(" ", 1)[1]) + (f" ({reason})" if reason else "")
    event = Event(event_kind, Subject("pipeline", pipeline), summary,
                  {"run_id": str(run_id), "stage": stage, "reason": reason, **(details or {})},
                  link=link)
    notify(event)
    return event
