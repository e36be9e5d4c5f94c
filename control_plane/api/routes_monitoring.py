"""REST routes for monitoring and alerting: signals per version, rules, receivers, alerts,
history and one-shot events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from control_plane.alerts.schemas import (
    AlertEventOut,
    AlertingChangeOut,
    AlertOut,
    AlertRuleOut,
    AlertRuleSpec,
    EventCreate,
    ReceiverOut,
    ReceiverSpec,
    SilenceCreate,
)
from control_plane.api.deps import CP, Limit, Offset, Reader, Writer
from control_plane.errors import InvalidInputError
from control_plane.schemas import Page, Role

router = APIRouter(tags=["monitoring"])
MONITORING_SECTIONS = ("drift", "quality", "accuracy", "anomalies")
Window = Annotated[float, Query(gt=0, le=300, description="Seconds to look back.")]


@router.get("/endpoints/{name}/monitoring")
def endpoint_monitoring(name: str, cp: CP, _: Reader, window: Window = 60.0) -> dict[str, Any]:
    """Drift, data quality, online accuracy and anomalies per version over ``window``."""
    from control_plane.observability import endpoint_stats

    cp.deployments.get(name)
    versions = {version: {k: stats.get(k) for k in MONITORING_SECTIONS}
                for version, stats in endpoint_stats(name, window).items() if version != "0"}
    return {"endpoint": name, "window_s": window, "versions": versions}


@router.get("/endpoints/{name}/monitoring/histograms")
def endpoint_histograms(name: str, cp: CP, _: Reader,
                        version: Annotated[int, Query(ge=1, description="The version.")],
                        window: Window = 60.0) -> dict[str, Any]:
    """Per input and prediction feature of ``version``: its reference bins (edges, counts)
    and the live counts over ``window`` in the same bins."""
    from control_plane.observability import feature_histograms

    cp.deployments.get(name)
    return {"endpoint": name, "version": version, "window_s": window,
            **feature_histograms(name, version, window)}


@router.get("/monitoring/signals")
def signals(_: Reader) -> dict[str, str]:
    """The metrics an alert rule can watch, with what each means."""
    from control_plane.alerts.signals import SIGNALS

    return {name: signal.description for name, signal in SIGNALS.items()}


@router.get("/alerts", response_model=list[AlertOut])
def active_alerts(cp: CP, _: Reader) -> list[AlertOut]:
    """Alerts pending or firing now."""
    return cp.alerts.active()


@router.get("/alerts/history", response_model=Page[AlertEventOut])
def alert_history(
    cp: CP, _: Reader, limit: Limit = 50, offset: Offset = 0,
    name: Annotated[str | None, Query(max_length=128, description="Only this alert.")] = None,
    endpoint: Annotated[str | None, Query(max_length=128, description="Only this endpoint.")] = None,
) -> Page[AlertEventOut]:
    """Alerts that fired or resolved and one-shot events, newest first."""
    return cp.alerts.history(limit=limit, offset=offset, name=name, endpoint=endpoint)


ChangedName = Annotated[str | None, Query(max_length=128, description="Only this name (deleted ones too).")]


@router.get("/alerts/changes", response_model=Page[AlertingChangeOut])
def rule_changes(cp: CP, _: Reader, limit: Limit = 50, offset: Offset = 0,
                 name: ChangedName = None) -> Page[AlertingChangeOut]:
    """Who created, replaced, deleted, silenced or unsilenced which rule, newest first."""
    return cp.alerts.changes("rule", limit=limit, offset=offset, name=name)


@router.get("/alerts/receivers/changes", response_model=Page[AlertingChangeOut])
def receiver_changes(cp: CP, actor: Writer, limit: Limit = 50, offset: Offset = 0,
                     name: ChangedName = None) -> Page[AlertingChangeOut]:
    """Who created, replaced or deleted which receiver, newest first (URLs cut to their host)."""
    actor.require(Role.ADMIN)
    return cp.alerts.changes("receiver", limit=limit, offset=offset, name=name)


@router.post("/alerts/events", status_code=202)
def fire_event(body: EventCreate, cp: CP, actor: Writer) -> dict[str, str]:
    """Raise a one-shot alert: recorded in the history and notified at once."""
    actor.require(Role.DEPLOYER)
    cp.alerts.fire_event(body.name, severity=body.severity, labels={**body.labels, "actor": actor.name},
                         summary=body.summary, data=body.data)
    return {"status": "accepted"}


@router.get("/alerts/rules", response_model=list[AlertRuleOut])
def list_rules(cp: CP, _: Reader) -> list[AlertRuleOut]:
    return cp.alerts.rules()


@router.put("/alerts/rules/{name}", response_model=AlertRuleOut)
def put_rule(name: str, body: AlertRuleSpec, cp: CP, actor: Writer) -> AlertRuleOut:
    """Create or replace an alert rule."""
    actor.require(Role.DEPLOYER)
    _same_name(name, body.name)
    return cp.alerts.put_rule(body, actor.name, subject=actor.subject)


@router.delete("/alerts/rules/{name}", status_code=204)
def delete_rule(name: str, cp: CP, actor: Writer) -> Response:
    """Delete a rule; its firing alerts resolve."""
    actor.require(Role.DEPLOYER)
    cp.alerts.delete_rule(name, actor.name, subject=actor.subject)
    return Response(status_code=204)


@router.post("/alerts/rules/{name}/silence", response_model=AlertRuleOut)
def silence_rule(name: str, body: SilenceCreate, cp: CP, actor: Writer) -> AlertRuleOut:
    """Notify no receiver of the rule's alerts for a while (replacing any silence); they
    are still evaluated, listed and recorded."""
    actor.require(Role.DEPLOYER)
    return cp.alerts.silence(name, body, actor.name, subject=actor.subject)


@router.delete("/alerts/rules/{name}/silence", response_model=AlertRuleOut)
def unsilence_rule(name: str, cp: CP, actor: Writer) -> AlertRuleOut:
    """End the rule's silence now."""
    actor.require(Role.DEPLOYER)
    return cp.alerts.unsilence(name, actor.name, subject=actor.subject)


# Receivers are admin-only, reads included: a webhook URL often carries a secret.
@router.get("/alerts/receivers", response_model=list[ReceiverOut])
def list_receivers(cp: CP, actor: Writer) -> list[ReceiverOut]:
    actor.require(Role.ADMIN)
    return cp.alerts.receivers()


@router.put("/alerts/receivers/{name}", response_model=ReceiverOut)
def put_receiver(name: str, body: ReceiverSpec, cp: CP, actor: Writer) -> ReceiverOut:
    """Create or replace a webhook receiver of every alert notification."""
    actor.require(Role.ADMIN)
    _same_name(name, body.name)
    return cp.alerts.put_receiver(body, actor.name, subject=actor.subject)


@router.delete("/alerts/receivers/{name}", status_code=204)
def delete_receiver(name: str, cp: CP, actor: Writer) -> Response:
    actor.require(Role.ADMIN)
    cp.alerts.delete_receiver(name, actor.name, subject=actor.subject)
    return Response(status_code=204)


def _same_name(path: str, body: str) -> None:
    if path != body:
        raise InvalidInputError(f"the body names {body!r} but the URL names {path!r}; make them agree",
                                detail={"field": "name"})
