"""Notifications: events of the whole control plane, delivered to the alert receivers.

=============  ===============================================================
module         what it holds
=============  ===============================================================
``events``     ``Event``, ``Subject``, ``EventKind`` and receivers' kind filters
``formats``    the generic JSON document and the Slack Block Kit message
``service``    ``NotificationService``, ``notify`` and ``notify_on_commit``
``sources``    the events of the registry, rollouts, training jobs and pipelines
=============  ===============================================================

Receivers are the alerts' (``modelplane alerts apply``): each chooses the kinds it gets
(``events``, default alerts only) and its ``format`` (``json`` or ``slack``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.notifications.events import Event, EventKind, Subject
    from control_plane.notifications.service import NotificationService, notify
    from control_plane.notifications.sources import pipeline_event

__all__ = ["Event", "EventKind", "NotificationService", "Subject", "notify", "pipeline_event"]

_HOMES = {"Event": "events", "EventKind": "events", "Subject": "events",
          "NotificationService": "service", "notify": "service", "pipeline_event": "sources"}


def __getattr__(name: str) -> Any:
    # Lazy, like the other packages: importing this one costs nothing until it is used.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"control_plane.notifications.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'control_plane.notifications' has no attribute {name!r}")
