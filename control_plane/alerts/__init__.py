"""Alerting: rules over the monitoring signals, pending → firing → resolved, webhooks, history.

=================  ============================================================
module             what it holds
=================  ============================================================
``schemas``        rules, receivers, alerts, history entries, the YAML file
``signals``        the metrics a rule can watch, read from a version's snapshot
``states``         one alert's state machine and its fingerprint (deduplication)
``notify``         the log and webhook notifiers (own threads, retries, backoff)
``store``          rules, receivers, active alerts and history in the store
``service``        ``AlertService``: evaluation thread, events, the above together
=================  ============================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.alerts.service import AlertService

__all__ = ["AlertService"]


def __getattr__(name: str) -> Any:
    if name == "AlertService":
        from control_plane.alerts.service import AlertService

        return AlertService
    raise AttributeError(f"module 'control_plane.alerts' has no attribute {name!r}")
