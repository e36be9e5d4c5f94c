"""The life of one alert: inactive → pending → firing → resolved, deduplicated.

An alert is one rule applied to one (endpoint, version), identified by a fingerprint of
the rule's name and its labels. Each evaluation feeds it whether the condition holds;
only the transitions to ``firing`` and to ``resolved`` are notified, so a condition that
stays true for hours sends one notification, not one per evaluation. A condition that
stops holding while pending returns to ``inactive`` without a word. Pure: the clock is
passed in, so the machine is tested without waiting.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AlertState(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


def fingerprint(name: str, labels: dict[str, str]) -> str:
    """Stable identity of an alert: the same rule on the same labels is the same alert."""
    document = json.dumps([name, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(document.encode()).hexdigest()[:16]


@dataclass
class Alert:
    """One alert's state; times are seconds on the service's clock."""

    fingerprint: str
    name: str
    labels: dict[str, str]
    severity: str
    state: AlertState = AlertState.INACTIVE
    started_at: float | None = None  # when the condition started holding
    fired_at: float | None = None
    resolved_at: float | None = None
    value: float | None = None
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    # Fired while its rule was silenced: its receivers hear it once the silence ends, if
    # it still fires then (and not of its resolution, if it resolves first).
    unpaged: bool = False
    # Read from the store (a restart, or a lead taken over), not yet evaluated here.
    carried: bool = field(default=False, compare=False)

    @property
    def active(self) -> bool:
        return self.state in (AlertState.PENDING, AlertState.FIRING)

    def step(self, holds: bool, now: float, for_s: float) -> AlertState | None:
        """Advance on one evaluation; returns the new state when it must be notified."""
        if holds:
            if self.state in (AlertState.INACTIVE, AlertState.RESOLVED):
                self.state, self.started_at = AlertState.PENDING, now
                self.fired_at = self.resolved_at = None
            started = self.started_at if self.started_at is not None else now
            if self.state == AlertState.PENDING and now - started >= for_s:
                self.state, self.fired_at = AlertState.FIRING, now
                return AlertState.FIRING
            return None
        if self.state == AlertState.FIRING:
            self.state, self.resolved_at = AlertState.RESOLVED, now
            return AlertState.RESOLVED
        if self.state == AlertState.PENDING:
            self.state, self.started_at = AlertState.INACTIVE, None
        return None
