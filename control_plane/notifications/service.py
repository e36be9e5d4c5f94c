"""The notification service: ``notify(event)`` from anywhere in the control plane.

The service sits on the alerts' delivery (:class:`control_plane.alerts.notify.Notifier`):
the same receivers, each with its own queue, thread, retries and backoff. ``notify`` only
logs the event and puts it on the queue of every receiver that subscribed to its kind;
rendering and HTTP happen on the receivers' threads. So the action that caused the event
(a registry write, a rollout decision) never waits for a receiver and never fails for one.

One service is installed per process (the control plane's, by
:meth:`control_plane.service.ControlPlane.start`); with none installed, events go to the
log only. Code inside a store transaction calls :func:`notify_on_commit`, which keeps the
event in the receivers' outbox within that transaction: it is sent once its change is
committed, never for a change that was rolled back, and not lost to a kill between the two.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from control_plane.notifications.events import Event

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from control_plane.alerts.notify import Notifier

log = logging.getLogger("modelplane.notifications")
_PENDING = "modelplane.notifications"  # Session.info key: events waiting for the commit


class NotificationService:
    """Events to the log and to the receivers that chose their kind."""

    def __init__(self, notifier: Notifier, *, base_url: str = "") -> None:
        self.notifier = notifier
        self.base_url = base_url.rstrip("/")
        self.counters: Counter[str] = Counter()

    def notify(self, event: Event) -> None:
        """Keep ``event`` for its receivers (a store write each); never waits on one, never
        raises."""
        try:
            event = self._linked(event)
            self._announce(event)
            self.notifier.deliver(event)
        except Exception:  # whatever happens here, the caller's action stands
            log.exception("could not notify %s", getattr(event, "kind", event))

    def keep_in(self, session: Session, event: Event) -> Callable[[], None]:
        """Keep ``event`` for its receivers in the outbox within ``session``, the transaction
        of the change it tells of; what to run once that commits (it logs the event and
        wakes the receivers). Raises what the store raises."""
        event = self._linked(event)
        committed = self.notifier.keep_in(session, event)

        def announce_and_wake() -> None:
            try:
                self._announce(event)
                committed()
            except Exception:
                log.exception("could not notify %s", event.kind)

        return announce_and_wake

    def _linked(self, event: Event) -> Event:
        if event.link and event.link.startswith("/") and self.base_url:
            return replace(event, link=self.base_url + event.link)
        return event

    def _announce(self, event: Event) -> None:
        level = logging.WARNING if event.level != "info" else logging.INFO
        log.log(level, "%s: %s", event.describe(), event.summary)
        self.counters[event.kind.value] += 1

    def install(self) -> NotificationService:
        """Make this the service :func:`notify` uses in this process."""
        global _current
        with _lock:
            _current = self
        return self

    def uninstall(self) -> None:
        """Stop being the process's service (if it still is)."""
        global _current
        with _lock:
            if _current is self:
                _current = None


_current: NotificationService | None = None
_lock = threading.Lock()


def current() -> NotificationService | None:
    """The service installed in this process, if any."""
    return _current


def notify(event: Event | None) -> None:
    """Send ``event`` through the installed service (the log alone when none is)."""
    if event is None:
        return
    service = _current
    if service is not None:
        service.notify(event)
    else:
        log.info("%s: %s (no notification service)", event.describe(), event.summary)


def notify_on_commit(session: Session, *events: Event | None) -> None:
    """Keep ``events`` for their receivers within ``session``, so that they are kept (and
    sent) if and only if it commits: written after the commit, they were lost to a kill
    between the two. Raises only what the store raises, which the session's own commit
    would meet anyway; any other trouble sends the events after the commit instead."""
    wanted = [e for e in events if e is not None]
    if not wanted:
        return
    service = _current
    pending: list[Callable[[], None]] | None = session.info.get(_PENDING)
    if pending is None:
        from sqlalchemy import event as sa_event

        pending = session.info[_PENDING] = []
        sa_event.listen(session, "after_commit", _send_pending, once=True)
        sa_event.listen(session, "after_rollback", _drop_pending, once=True)
    for event in wanted:
        if service is None:
            pending.append(functools.partial(notify, event))
            continue
        try:
            pending.append(service.keep_in(session, event))
        except SQLAlchemyError:
            raise
        except Exception:
            log.exception("could not keep %s with its change; it is sent after the commit",
                          event.kind)
            pending.append(functools.partial(service.notify, event))


def _send_pending(session: Any) -> None:
    for send in session.info.pop(_PENDING, None) or []:
        send()


def _drop_pending(session: Any) -> None:
    session.info.pop(_PENDING, None)
