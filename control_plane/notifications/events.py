"""The notification event: one model for everything receivers hear about, and its kinds.

An event says what happened (``kind``, e.g. ``rollout.rolled_back``), to what (``subject``:
a model version, an endpoint, a pipeline, a training job), in a sentence (``summary``),
with structured ``details``, a ``link`` to look at it and the ``time`` it happened.
Kinds are ``group.name``; a receiver picks kinds by name, by group (``rollout.*``) or all
(``*``), see :func:`matches`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

SubjectType = Literal["model", "endpoint", "pipeline", "training_job", "alert"]
Severity = Literal["info", "warning", "critical"]


class EventKind(StrEnum):
    """Every kind of event a receiver can subscribe to."""

    ALERT_FIRING = "alert.firing"
    ALERT_RESOLVED = "alert.resolved"
    TRAINING_SUBMITTED = "training.submitted"
    TRAINING_SUCCEEDED = "training.succeeded"
    TRAINING_FAILED = "training.failed"
    VERSION_REGISTERED = "registry.version_registered"
    STAGE_CHANGED = "registry.stage_changed"
    APPROVAL_NEEDED = "registry.approval_needed"
    APPROVED = "registry.approved"
    REJECTED = "registry.rejected"
    ROLLOUT_STARTED = "rollout.started"
    ROLLOUT_PAUSED = "rollout.paused"
    ROLLOUT_RESUMED = "rollout.resumed"
    ROLLOUT_PROMOTED = "rollout.promoted"
    ROLLOUT_ROLLED_BACK = "rollout.rolled_back"
    ROLLOUT_ABORTED = "rollout.aborted"
    ROLLOUT_FAILED = "rollout.failed"
    PIPELINE_RUN_STARTED = "pipeline.run_started"
    PIPELINE_STAGE_PASSED = "pipeline.stage_passed"
    PIPELINE_STAGE_FAILED = "pipeline.stage_failed"
    PIPELINE_RUN_SUCCEEDED = "pipeline.run_succeeded"
    PIPELINE_RUN_FAILED = "pipeline.run_failed"
    PIPELINE_RUN_CANCELLED = "pipeline.run_cancelled"

    @property
    def group(self) -> str:
        return self.value.split(".", 1)[0]

    @property
    def title(self) -> str:
        """``rollout.rolled_back`` → ``Rollout rolled back`` (a message's headline)."""
        group, name = self.value.split(".", 1)
        return f"{group.capitalize()} {name.replace('_', ' ')}"

    @property
    def severity(self) -> Severity:
        return _SEVERITY.get(self, "info")


_SEVERITY: dict[EventKind, Severity] = {
    EventKind.ALERT_FIRING: "warning",
    EventKind.TRAINING_FAILED: "warning",
    EventKind.APPROVAL_NEEDED: "warning",
    EventKind.REJECTED: "warning",
    EventKind.ROLLOUT_PAUSED: "warning",
    EventKind.ROLLOUT_ROLLED_BACK: "critical",
    EventKind.ROLLOUT_ABORTED: "warning",
    EventKind.ROLLOUT_FAILED: "critical",
    EventKind.PIPELINE_STAGE_FAILED: "warning",
    EventKind.PIPELINE_RUN_FAILED: "critical",
    EventKind.PIPELINE_RUN_CANCELLED: "warning",
}
GROUPS = tuple(dict.fromkeys(kind.group for kind in EventKind))
# What a receiver gets unless it says otherwise: alerts, as before events existed.
DEFAULT_EVENTS = ("alert.*",)


@dataclass(frozen=True)
class Subject:
    """What an event is about: a model (and version), an endpoint, a pipeline, a job."""

    type: SubjectType
    name: str
    version: int | None = None

    def __str__(self) -> str:
        suffix = f":{self.version}" if self.version is not None else ""
        return f"{self.type.replace('_', ' ')} {self.name}{suffix}"

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name}
        if self.version is not None:
            out["version"] = self.version
        return out


@dataclass(frozen=True)
class Event:
    """Something receivers may want to hear about; built by the part where it happened.

    ``severity`` is the kind's unless given (an alert carries its rule's). ``link`` may be
    a path (``/api/…``): the notification service makes it absolute with the control
    plane's URL.
    """

    kind: EventKind
    subject: Subject
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    link: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    severity: Severity | None = None

    @property
    def level(self) -> Severity:
        return self.severity or self.kind.severity

    def render(self, format: str) -> dict[str, Any]:
        """The body a receiver of ``format`` (``json`` or ``slack``) is sent."""
        from control_plane.notifications.formats import event_json, slack_message

        return slack_message(self) if format == "slack" else event_json(self)

    def describe(self) -> str:
        """One line for logs."""
        return f"{self.kind.value} {self.subject}"


def check_pattern(pattern: str) -> str:
    """``pattern`` when it names a kind, a group (``rollout.*``) or everything (``*``)."""
    if pattern == "*" or pattern in EventKind._value2member_map_:
        return pattern
    if pattern.endswith(".*") and pattern[:-2] in GROUPS:
        return pattern
    groups = ", ".join(f"{g}.*" for g in GROUPS)
    raise ValueError(f"{pattern!r} is not an event kind; use '*', a group ({groups}) or a "
                     f"kind ({', '.join(k.value for k in EventKind)})")


def matches(patterns: Iterable[str], kind: str) -> bool:
    """Whether an event of ``kind`` is selected by any of ``patterns``."""
    group = kind.split(".", 1)[0]
    return any(p == "*" or p == kind or p == f"{group}.*" for p in patterns)
