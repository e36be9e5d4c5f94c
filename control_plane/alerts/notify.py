"""Delivering alerts: to the log always, and to each webhook receiver by HTTP POST of JSON.

Every receiver has its own bounded queue and its own thread, so delivery never runs on
the caller's thread (the evaluator, a rollout, a REST call) and a receiver that is slow
or down delays nobody else: it is retried with exponential backoff, and when its queue
is full new notifications for it are dropped and counted rather than held without bound.
Retries happen on transport errors, 429 and 5xx; any other 4xx means the receiver refuses
the payload, and trying again would not change its mind.

Besides alerts, the channels carry the control plane's other events
(:mod:`control_plane.notifications`): a receiver gets only the kinds its ``events``
select, rendered in its ``format`` on its own thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from control_plane.alerts.schemas import ReceiverSpec

log = logging.getLogger("modelplane.alerts")
QUEUE_LIMIT = 1000
PAYLOAD_VERSION = 1


class Deliverable(Protocol):
    """What a channel delivers: an alert's notification or another event."""

    @property
    def kind(self) -> str: ...

    def render(self, format: str) -> dict[str, Any]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Notification:
    """What receivers get: the alert and whether it fires or resolves."""

    status: str  # "firing" or "resolved"
    alert: dict[str, Any]

    @property
    def kind(self) -> str:
        return f"alert.{self.status}"

    def payload(self) -> dict[str, Any]:
        return {"version": PAYLOAD_VERSION, "status": self.status, "alert": self.alert,
                "sent_at": datetime.now(UTC).isoformat()}

    def render(self, format: str) -> dict[str, Any]:
        """The body for a receiver of ``format``: ``json`` is :meth:`payload`, unchanged."""
        if format == "slack":
            from control_plane.notifications.formats import slack_message
            from control_plane.notifications.sources import alert_event

            return slack_message(alert_event(self.status, self.alert))
        return self.payload()

    def describe(self) -> str:
        return f"{self.alert.get('name')} {self.status}"


class WebhookChannel:
    """One receiver's queue and delivery thread."""

    def __init__(self, spec: ReceiverSpec) -> None:
        import httpx

        self.spec = spec
        self.counters: Counter[str] = Counter()
        self._queue: queue.Queue[Deliverable | None] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=spec.timeout_s, follow_redirects=False)
        self._thread = threading.Thread(target=self._run, name=f"alert-webhook-{spec.name}",
                                        daemon=True)
        self._thread.start()

    def accepts(self, kind: str) -> bool:
        """Whether this receiver chose events of ``kind``."""
        return self.spec.accepts(kind)

    def submit(self, notification: Deliverable) -> None:
        try:
            self._queue.put_nowait(notification)
        except queue.Full:
            self.counters["dropped"] += 1
            log.warning("webhook %s is behind by %d notifications; dropped one",
                        self.spec.name, QUEUE_LIMIT)

    def stop(self) -> None:
        self._stop.set()
        # A full queue is fine: the thread sees the stop flag after its current delivery.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=2)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            notification = self._queue.get()
            if notification is None:
                return
            self._deliver(notification)

    def _deliver(self, notification: Deliverable) -> None:
        import httpx

        spec = self.spec
        try:
            payload = notification.render(spec.format)
        except Exception:  # a payload that cannot be built is dropped, not retried
            self.counters["failed"] += 1
            log.exception("webhook %s: could not render %s", spec.name, notification.describe())
            return
        problem = ""
        for attempt in range(spec.max_attempts):
            if attempt:
                self.counters["retries"] += 1
                # The wait ends early on stop, so shutting down never hangs on a backoff.
                if self._stop.wait(spec.backoff_s * 2 ** (attempt - 1)):
                    return
            try:
                response = self._http.post(spec.url, json=payload)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            if response.is_success:
                self.counters["sent"] += 1
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break
        self.counters["failed"] += 1
        log.warning("webhook %s could not be notified of %s (%s)", spec.name,
                    notification.describe(), problem)


class Notifier:
    """Fans notifications out to the log and to every enabled webhook receiver."""

    def __init__(self) -> None:
        self._channels: dict[str, WebhookChannel] = {}
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()

    def configure(self, receivers: list[ReceiverSpec]) -> None:
        """Start channels for new or changed receivers and stop the others."""
        wanted = {r.name: r for r in receivers if r.enabled}
        with self._lock:
            stale = [c for name, c in self._channels.items() if wanted.get(name) != c.spec]
            for channel in stale:
                del self._channels[channel.spec.name]
            for name, spec in wanted.items():
                if name not in self._channels:
                    self._channels[name] = WebhookChannel(spec)
        for channel in stale:
            channel.stop()

    def notify(self, notification: Notification) -> None:
        """Queue a notification everywhere; never blocks on a receiver, never raises."""
        alert = notification.alert
        level = logging.WARNING if notification.status == "firing" else logging.INFO
        log.log(level, "alert %s %s [%s] %s %s", alert.get("name"), notification.status,
                alert.get("severity"), alert.get("labels"), alert.get("summary"))
        self.counters[notification.status] += 1
        self.deliver(notification)

    def deliver(self, item: Deliverable) -> None:
        """Queue ``item`` for every receiver that chose its kind; never blocks or raises."""
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            if channel.accepts(item.kind):
                channel.submit(item)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per receiver: notifications sent, failed, dropped and retries."""
        with self._lock:
            return {name: dict(c.counters) for name, c in self._channels.items()}

    def close(self) -> None:
        self.configure([])
