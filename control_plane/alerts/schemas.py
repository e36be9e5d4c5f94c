"""Wire objects of alerting: rules, webhook receivers, alerts, history, the YAML file.

A rules file (``modelplane alerts apply rules.yaml``) holds the same objects the REST API
takes::

    receivers:
      - name: ops
        url: https://hooks.example.com/modelplane
      - name: ml-team                # a Slack incoming webhook
        url: https://hooks.slack.com/services/T000/B000/XXXX
        format: slack
        events: ["alert.*", "rollout.*", "registry.approval_needed"]
    rules:
      - name: input-drift
        metric: drift            # see `modelplane alerts rules --metrics`
        comparison: "=="
        threshold: 1
        window_s: 60
        for_s: 120
        severity: critical
        labels: {team: fraud}
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from control_plane.notifications.events import DEFAULT_EVENTS, check_pattern, matches
from control_plane.schemas import Finite, FiniteJson, FreeText, Name, Wire

Comparison = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["info", "warning", "critical"]
ReceiverFormat = Literal["json", "slack"]
MAX_EVENT_DATA_BYTES = 64 * 1024
LabelMap = Annotated[dict[Annotated[FreeText, Field(max_length=64)],
                          Annotated[FreeText, Field(max_length=256)]],
                     Field(max_length=32)]


class AlertRuleSpec(Wire):
    """When a metric of an endpoint's version crosses a threshold for long enough."""

    name: Name
    metric: str = Field(description="A monitoring signal; `modelplane alerts rules --metrics` lists them.")
    comparison: Comparison = ">"
    threshold: Finite
    window_s: float = Field(60.0, gt=0, le=300, description="Monitor window the metric is read over.")
    for_s: float = Field(0.0, ge=0, le=7 * 86400,
                         description="How long the condition must hold before the alert fires.")
    every_s: float = Field(10.0, ge=0.5, le=3600, description="Evaluation interval.")
    severity: Severity = "warning"
    endpoint: Name | None = Field(None, description="Only this endpoint (default: every endpoint).")
    version: int | None = Field(None, ge=1, description="Only this version (default: every version).")
    labels: LabelMap = Field(default_factory=dict, description="Added to every alert of the rule.")
    summary: FreeText = Field("", max_length=500, description=(
        "Message template with named fields only: {endpoint} {version} {metric} {value} "
        "{comparison} {threshold} {details} (no format specs, conversions, attributes or "
        "indexes; {{ and }} are literal braces)."))
    enabled: bool = True

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        from control_plane.alerts.signals import SIGNALS

        if value not in SIGNALS:
            raise ValueError(f"unknown metric {value!r}; use one of {sorted(SIGNALS)}")
        return value

    @field_validator("summary")
    @classmethod
    def _safe_template(cls, value: str) -> str:
        from control_plane.alerts.templates import template_problem

        problem = template_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class SilenceCreate(Wire):
    """Mute a rule's notifications for a while; its alerts are still evaluated and shown."""

    duration_s: float = Field(gt=0, le=30 * 86400, description="How long, in seconds (at most 30 days).")
    reason: FreeText = Field("", max_length=500, description="Why: shown beside the rule.")


class SilenceOut(Wire):
    until: datetime
    reason: str
    created_by: str
    created_at: datetime


class AlertRuleOut(AlertRuleSpec):
    created_by: str
    created_at: datetime
    updated_at: datetime
    updated_by: str | None = Field(None, description=(
        "Who last created or replaced the rule's spec (`modelplane alerts changes` has every change)."))
    silence: SilenceOut | None = Field(None, description=(
        "While set (and ``until`` is ahead), the rule's alerts notify no receiver."))

    @field_validator("summary")
    @classmethod
    def _safe_template(cls, value: str) -> str:
        # A rule stored before templates were checked still loads: it renders safely
        # (control_plane.alerts.templates) and the evaluator must not fail on it.
        return value


class ReceiverSpec(Wire):
    """A webhook: the events it chose (by default every firing and resolved alert) are
    POSTed to ``url`` in its format."""

    name: Name
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000)
    timeout_s: float = Field(5.0, gt=0, le=60)
    max_attempts: int = Field(4, ge=1, le=10, description="Tries per notification.")
    backoff_s: float = Field(0.5, ge=0, le=60, description="First retry delay; doubles each try.")
    enabled: bool = True
    events: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS), min_length=1, max_length=64, description=(
            "Event kinds sent to this receiver: a kind (`rollout.rolled_back`), a group "
            "(`alert.*`, `training.*`, `registry.*`, `rollout.*`, `pipeline.*`) or `*` for "
            "all. Default: alerts only."))
    format: ReceiverFormat = Field("json", description=(
        "`json`: the alert payload as ever for alerts, a versioned event document for the "
        "rest; `slack`: a Slack Block Kit message (for an incoming webhook)."))

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(check_pattern(p) for p in value))

    def accepts(self, kind: str) -> bool:
        """Whether an event of ``kind`` is sent to this receiver."""
        return matches(self.events, kind)


class ReceiverOut(ReceiverSpec):
    created_at: datetime


ChangeKind = Literal["rule", "receiver"]
ChangeAction = Literal["created", "replaced", "deleted", "silenced", "unsilenced"]


class AlertingChangeOut(Wire):
    """One change to alerting: who made it, and the spec it left (before, for a deletion).
    A receiver's URL is kept as its scheme and host only: the rest often carries a secret."""

    id: int
    kind: ChangeKind
    name: str
    action: ChangeAction
    actor: str = Field(description="The token's name.")
    subject: str = Field(description="Whom the token was issued to.")
    spec: dict[str, Any] | None
    detail: dict[str, Any] = Field(description="A silence's end and reason; the silence an unsilence ended.")
    created_at: datetime


class AlertsFile(Wire):
    """A YAML file of rules and receivers (``modelplane alerts apply``)."""

    rules: list[AlertRuleSpec] = Field(default_factory=list)
    receivers: list[ReceiverSpec] = Field(default_factory=list)


class AlertOut(Wire):
    """An alert of a rule that is pending or firing now (``silenced_until``: its rule is
    silenced, so it notifies no one until then)."""

    fingerprint: str
    name: str
    state: Literal["pending", "firing"]
    severity: str
    labels: dict[str, str]
    summary: str
    value: float | None
    data: dict[str, Any]
    started_at: datetime
    fired_at: datetime | None
    stale: str | None = Field(None, description=(
        "Why the alert's data is stale (the Monitor did not answer); it keeps its last "
        "state until the Monitor answers again."))
    silenced_until: datetime | None = None


class AlertEventOut(Wire):
    """One entry of the alert history: a rule's alert firing or resolving, or an event."""

    id: int
    fingerprint: str
    name: str
    state: Literal["firing", "resolved"]
    kind: Literal["rule", "event"]
    severity: str
    labels: dict[str, str]
    summary: str
    value: float | None
    data: dict[str, Any]
    created_at: datetime


class EventCreate(Wire):
    """A one-shot alert (fires once, never resolves): rollbacks, operator notes."""

    name: Name
    severity: Severity = "warning"
    labels: LabelMap = Field(default_factory=dict)
    summary: FreeText = Field("", max_length=2000)
    data: FiniteJson = Field(default_factory=dict, description=(
        f"Free-form JSON, at most {MAX_EVENT_DATA_BYTES // 1024} KiB: it is kept in the "
        "alerts' history and sent to every receiver."))

    @field_validator("data")
    @classmethod
    def _data_fits(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":")))
        if size > MAX_EVENT_DATA_BYTES:
            raise ValueError(f"data takes {size:,} bytes as JSON and may take at most "
                             f"{MAX_EVENT_DATA_BYTES:,}")
        return value
