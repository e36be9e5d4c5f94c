"""Delivering alerts: to the log always, and to each webhook receiver by HTTP POST of JSON.

Every receiver has its own bounded queue and its own thread, so delivery never runs on
the caller's thread (the evaluator, a rollout, a REST call) and a receiver that is slow
or down delays nobody else: it is retried with exponential backoff, and when its queue
is full new notifications for it are dropped and counted rather than held without bound.
Retries happen on transport errors, 429 and 5xx; any other 4xx means the receiver refuses
the payload, and trying again would not change its mind. Where the notifier has a store,
what a receiver has not acknowledged waits there, not in memory (:mod:`outbox`): a control
plane that dies loses none of it. Every try of one notification carries the same
``Idempotency-Key`` header.

Besides alerts, the channels carry the control plane's other events
(:mod:`control_plane.notifications`): a receiver gets only the kinds its ``events``
select, rendered in its ``format`` on its own thread.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from control_plane.alerts.outbox import CLAIM_MARGIN_S, MAX_AGE_S, Outbox
from control_plane.alerts.schemas import ReceiverSpec

if TYPE_CHECKING:
    from control_plane.store import Database

log = logging.getLogger("modelplane.alerts")

# A send is a connection, the request's write and the answer's head, each bounded by the
# receiver's timeout (per read: a receiver trickling its head byte by byte can outlast the
# claim, and the notification is then sent again, under its one idempotency key).
_SEND_STEPS = 3
QUEUE_LIMIT = 1000
PAYLOAD_VERSION = 1
POLL_S = 0.5
_IDLE: Any = object()  # a wake-up with nothing new on the queue
_REFUSED = "refused: "


def _nothing() -> None:
    pass


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

    def idempotency_key(self, receiver: str) -> str | None:
        """One key for this change of this alert, whoever sends it and however often: a
        one-shot event by what names it (a rollback by its rollout), a rule's alert by
        when it fired or resolved. A leader that takes over a rollback whose alert was
        raised but not yet noted as raised raises it again; the receiver reads it as the
        same notification."""
        alert = self.alert
        if not alert.get("fingerprint"):
            return None  # not an alert's change (a test's, a hand-made one): a key of its own
        when = "" if alert.get("kind") == "event" else (
            alert.get("fired_at") if self.status == "firing" else alert.get("resolved_at"))
        material = "\x00".join(str(part) for part in (
            receiver, alert.get("fingerprint"), self.status, when or ""))
        return hashlib.sha256(material.encode()).hexdigest()[:32]


class WebhookChannel:
    """One receiver's queue and delivery thread; with an outbox (``control_plane.alerts.
    outbox``), what it takes from the queue is kept in the store until the receiver
    acknowledges it, and what a dead control plane left for this receiver is sent too."""

    def __init__(self, spec: ReceiverSpec, outbox: Outbox | None = None) -> None:
        import httpx

        self.spec = spec
        self.counters: Counter[str] = Counter()
        self._counting = threading.Lock()  # callers' threads count too (submit)
        self._outbox = outbox
        self._store_trouble: str | None = None  # said once until the store answers again
        self._queue: queue.Queue[Deliverable | None] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=spec.timeout_s, follow_redirects=False)
        self._thread = threading.Thread(target=self._run, name=f"alert-webhook-{spec.name}",
                                        daemon=True)
        self._thread.start()

    def _count(self, what: str, n: int = 1) -> None:
        with self._counting:
            self.counters[what] += n

    def accepts(self, kind: str) -> bool:
        """Whether this receiver chose events of ``kind``."""
        return self.spec.accepts(kind)

    def submit(self, notification: Deliverable) -> None:
        # Kept in the store on the caller's thread: queued in memory for this channel's
        # thread, it was lost to a kill while that thread waited on a send.
        if self._outbox is not None and self._take(notification, from_memory=False):
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_IDLE)  # wakes the thread to send it
            return
        try:
            self._queue.put_nowait(notification)
        except queue.Full:
            self._count("dropped", 1)
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
        # With an outbox the thread also wakes every POLL_S: for retries that are due and
        # for what another control plane left behind.
        wait = POLL_S if self._outbox is not None else None
        try:
            while not self._stop.is_set():
                try:
                    notification = self._queue.get(timeout=wait)
                except queue.Empty:
                    notification = _IDLE
                if notification is None:
                    return
                if notification is not _IDLE:
                    self._take(notification)
                if self._outbox is not None:
                    self._send_waiting()
        finally:
            if self._outbox is not None:  # stopping: the outbox keeps what is still queued
                self._keep_queued()

    def _keep_queued(self) -> None:
        """Take whatever waits on the queue into the outbox (from memory, without one)."""
        while True:
            try:
                notification = self._queue.get_nowait()
            except queue.Empty:
                return
            if notification is not None and notification is not _IDLE:
                self._take(notification)

    def _render(self, notification: Deliverable) -> tuple[dict[str, Any], str] | None:
        """The body and idempotency key this receiver gets for ``notification``; None where
        no body can be built (counted failed and dropped: trying again would not help)."""
        spec = self.spec
        try:
            payload = notification.render(spec.format)
        except Exception:
            self._count("failed", 1)
            log.exception("webhook %s: could not render %s", spec.name, notification.describe())
            return None
        # One key, kept by a try sent from memory too: where the outbox's write did land
        # after all, the receiver reads both tries as one notification.
        named = getattr(notification, "idempotency_key", None)
        return payload, (named(spec.name) if named is not None else None) or uuid.uuid4().hex

    def keep_in(self, session: Any, notification: Deliverable) -> Callable[[], None] | None:
        """Add ``notification`` to the outbox within ``session``, the transaction of the
        change it tells of; what to run once that commits (None: no outbox here)."""
        if self._outbox is None:
            return None
        rendered = self._render(notification)
        if rendered is None:
            return _nothing
        payload, key = rendered
        kept = self._outbox.put_in(session, self.spec.name, notification.describe(), payload,
                                   limit=QUEUE_LIMIT, key=key)

        def committed() -> None:
            if kept is None:
                self._dropped(notification)
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_IDLE)  # wakes the thread to send it

        return committed

    def _take(self, notification: Deliverable, *, from_memory: bool = True) -> bool:
        """Keep ``notification`` in the outbox; without one, or where the store cannot
        keep it, send it from memory as it is (``from_memory``), or say it was not taken
        (False)."""
        rendered = self._render(notification)
        if rendered is None:
            return True
        payload, key = rendered
        spec, description = self.spec, notification.describe()
        if self._outbox is None:
            self._deliver(payload, description, key)
            return True
        try:
            kept = self._outbox.put(spec.name, description, payload, limit=QUEUE_LIMIT, key=key)
        except Exception as error:
            if not from_memory:
                return False
            self._count("unstored", 1)
            self._trouble(error)
            self._deliver(payload, description, key)
            return True
        if kept is None:
            self._dropped(notification)
        return True

    def _dropped(self, notification: Deliverable) -> None:
        self._count("dropped", 1)
        log.warning("webhook %s is behind by %d notifications; dropped %s",
                    self.spec.name, QUEUE_LIMIT, notification.describe())

    def _send_waiting(self) -> None:
        """Send what waits for this receiver in the outbox, oldest first, until the oldest
        is not due (a retry's backoff, another control plane sending it) or none is left."""
        assert self._outbox is not None
        spec = self.spec
        while not self._stop.is_set():
            self._keep_queued()  # into the store before this send, however long it takes
            try:
                waiting, expired = self._outbox.claim(
                    spec.name, for_s=spec.timeout_s * _SEND_STEPS + CLAIM_MARGIN_S)
                if expired:
                    self._count("expired", expired)
                    log.warning("webhook %s: %d notifications waited over %.0f h and are "
                                "dropped", spec.name, expired, MAX_AGE_S / 3600)
                if waiting is None:
                    self._store_trouble = None
                    return
                sent, problem = self._post(waiting.body, waiting.key)
                tries = waiting.attempts + 1
                # Counted once the store has let go of it: whoever reads the counts
                # then finds the outbox already settled.
                if sent:
                    self._outbox.done(waiting.key)
                    self._count("sent", 1)
                elif problem.startswith(_REFUSED) or tries >= spec.max_attempts:
                    self._outbox.done(waiting.key)
                    self._count("failed", 1)
                    log.warning("webhook %s could not be notified of %s (%s)", spec.name,
                                waiting.description, problem.removeprefix(_REFUSED))
                else:
                    self._outbox.later(waiting.key, attempts=tries,
                                       after_s=spec.backoff_s * 2 ** (tries - 1))
                    self._count("retries", 1)
                    return
            except Exception as error:  # the store: tried again at the next wake-up
                self._trouble(error)
                return

    def _trouble(self, error: BaseException) -> None:
        why = f"{type(error).__name__}: {error}"
        if self._store_trouble is None:
            log.warning("webhook %s: the outbox in the store cannot be used (%s); "
                        "notifications are sent from memory meanwhile", self.spec.name, why)
        self._store_trouble = why

    def _post(self, payload: dict[str, Any], key: str) -> tuple[bool, str]:
        """One try: whether the receiver acknowledged it, else why not (prefixed with
        ``_REFUSED`` where trying again would not change the receiver's mind)."""
        import httpx

        try:
            # The answer's status is all that counts: its body is never read, since a
            # receiver trickling one held the send (each read within the timeout) past
            # the claim, and another control plane sent the notification again.
            with self._http.stream("POST", self.spec.url, json=payload,
                                   headers={"idempotency-key": key}) as response:
                pass
        except httpx.HTTPError as error:
            return False, f"{type(error).__name__}: {error}"
        if response.is_success:
            return True, ""
        problem = f"HTTP {response.status_code}"
        if response.status_code < 500 and response.status_code != 429:
            return False, _REFUSED + problem
        return False, problem

    def _deliver(self, payload: dict[str, Any], description: str, key: str) -> None:
        """Send from memory, with every try and backoff on this thread."""
        spec, problem = self.spec, ""
        for attempt in range(spec.max_attempts):
            if attempt:
                self._count("retries", 1)
                # The wait ends early on stop, so shutting down never hangs on a backoff.
                if self._stop.wait(spec.backoff_s * 2 ** (attempt - 1)):
                    return
            sent, problem = self._post(payload, key)
            if sent:
                self._count("sent", 1)
                return
            if problem.startswith(_REFUSED):
                break
        self._count("failed", 1)
        log.warning("webhook %s could not be notified of %s (%s)", spec.name, description,
                    problem.removeprefix(_REFUSED))


def _stored(spec: ReceiverSpec) -> dict[str, Any]:
    """The receiver's settings as the store keeps them (``AlertStore.put_receiver``)."""
    return ReceiverSpec.model_validate(
        spec.model_dump(include=set(ReceiverSpec.model_fields))).model_dump(mode="json")


class Notifier:
    """Fans notifications out to the log and to every enabled webhook receiver."""

    def __init__(self, db: Database | None = None) -> None:
        self._db = db  # where the channels keep their outbox; None: memory only
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
                    # One outbox holder per channel: a channel that replaces another
                    # (its spec changed) never sends what the old one has claimed.
                    self._channels[name] = WebhookChannel(spec, None if self._db is None else
                                                          Outbox(self._db, spec=_stored(spec)))
        for channel in stale:
            channel.stop()

    def notify(self, notification: Notification) -> None:
        """Keep a notification for every receiver (in the store's outbox: one write each);
        never waits on a receiver, never raises."""
        self.announce(notification)
        self.deliver(notification)

    def announce(self, notification: Notification) -> None:
        """Log and count ``notification`` (what :meth:`notify` does besides delivering)."""
        alert = notification.alert
        level = logging.WARNING if notification.status == "firing" else logging.INFO
        log.log(level, "alert %s %s [%s] %s %s", alert.get("name"), notification.status,
                alert.get("severity"), alert.get("labels"), alert.get("summary"))
        with self._lock:
            self.counters[notification.status] += 1

    def deliver(self, item: Deliverable) -> None:
        """Keep ``item`` for every receiver that chose its kind (see :meth:`notify`)."""
        for channel in self._accepting(item):
            channel.submit(item)

    def keep_in(self, session: Any, item: Deliverable) -> Callable[[], None]:
        """Keep ``item`` for every receiver that chose its kind, in the outbox within
        ``session``: the change it tells of and its notifications commit together, where
        a kill between two transactions had lost the page. Returns what to run once the
        session commits (it wakes the receivers' threads; a receiver without an outbox is
        handed ``item`` then). Raises what the store raises, which fails the change too."""
        after = []
        for channel in self._accepting(item):
            committed = channel.keep_in(session, item)
            after.append(committed if committed is not None
                         else functools.partial(channel.submit, item))

        def committed_all() -> None:
            for committed in after:
                committed()

        return committed_all

    def _accepting(self, item: Deliverable) -> list[WebhookChannel]:
        with self._lock:
            return [c for c in self._channels.values() if c.accepts(item.kind)]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per receiver: notifications sent, failed, dropped and retries."""
        with self._lock:
            return {name: dict(c.counters) for name, c in self._channels.items()}

    def close(self) -> None:
        self.configure([])
