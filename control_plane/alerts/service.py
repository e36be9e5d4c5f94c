"""The alert service: rules evaluated against the Monitor, one-shot events, notification.

An evaluator thread wakes every :data:`TICK_S` and evaluates each enabled rule whose
``every_s`` has elapsed: it reads the rule's metric for every (endpoint, version) in scope
over the rule's window, steps each alert's state machine (:mod:`control_plane.alerts.states`)
and, on a transition to firing or resolved, writes the history and notifies the log and
the webhooks (:mod:`control_plane.alerts.notify`). Events (``fire_event``: a rollout's
automatic rollback) go through the same history and notification path at once.

Reading the Monitor and listing endpoints are injected, so the evaluation is tested with
plain functions and a fake clock; the control plane passes the real ones.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from control_plane.alerts.notify import Notification, Notifier
from control_plane.alerts.schemas import (
    AlertEventOut,
    AlertingChangeOut,
    AlertOut,
    AlertRuleOut,
    AlertRuleSpec,
    ReceiverOut,
    ReceiverSpec,
    SilenceCreate,
)
from control_plane.alerts.signals import COMPARE, SIGNALS, evidence
from control_plane.alerts.states import Alert, AlertState, fingerprint
from control_plane.alerts.store import AlertStore
from control_plane.alerts.templates import render_template
from control_plane.errors import InvalidInputError
from control_plane.schemas import Page
from control_plane.store import Database
from control_plane.store.database import FencedOut, in_fenced_pass, store_could_not_take
from serving.monitoring import VersionSnapshot

log = logging.getLogger(__name__)
ALL_VERSIONS = -1  # an endpoint-wide signal's one reading (labelled version "all")
TICK_S = 0.25
# Rules (and their silences) are read again at least this often: another control plane
# serving the API may have changed them.
RULES_REFRESH_S = 5.0
# Why an active alert's value is missing when its window held nothing to read it from.
NO_EVIDENCE = "no evidence in the window (no requests, labels or rows to read the metric from)"
EVENT_DEDUP_S = 60.0  # the same event (name and labels) again within this is dropped
ReadStats = Callable[[str, float], dict[int, VersionSnapshot]]  # (endpoint, window_s) -> by version
ListEndpoints = Callable[[], list[str]]


# Alert writes held while the store is away; past this, the oldest are dropped (logged).
MAX_UNSAVED = 10_000


@dataclass
class _Unsaved:
    """An alert's state waiting for the store, with the notification to keep beside it
    (None once sent or kept)."""

    alert: Alert
    notify: AlertState | None
    kind: str
    notification: Notification | None
    term: int | None = None  # the control loops' lease term the state was derived in


class AlertService:
    """Alert rules, their alerts' states, events, history and notification."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.store = AlertStore(db)
        self.notifier = Notifier(db)
        self.counters: Counter[str] = Counter()
        self._clock = clock
        # The control loops' lease term this process holds now (None: no lease, as for a
        # process that is the only control plane): unstored alert states derived in a term
        # survive a lapse of the lead within it, and only within it.
        self.lease_term: Callable[[], int | None] | None = None
        self._lock = threading.RLock()  # evaluator, REST calls and rollouts share the state
        self._alerts: dict[str, Alert] = {}
        self._due: dict[str, float] = {}
        self._recent_events: dict[str, float] = {}
        self._rules: list[AlertRuleOut] | None = None
        # Changes to each rule through this process's API: a pass applies a rule's readings
        # only if the rule did not change while they were read (a deleted rule's alert
        # would otherwise fire again, with no rule left to resolve it).
        self._rule_edits: Counter[str] = Counter()
        self._rules_read_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (alert as it was, notification, kind) the store has not taken yet, in order.
        self._unsaved: list[_Unsaved] = []
        # False once a tick found another control plane leading: on taking over, this one
        # reads what that one fired, resolved and configured before evaluating (catch_up).
        self._caught_up = True
        # None until the first tick says; a follower reads the leader's alerts and the
        # receivers from the store every RULES_REFRESH_S (metrics, events it delivers).
        self._leading: bool | None = None
        self._followed_at = 0.0
        try:
            self._alerts = _carried(self.store.load_active())
            self.notifier.configure(self.store.receivers())
        except Exception:  # a broken store must not stop the control plane from starting
            log.exception("could not load alert state; starting with none")

    # ------------------------------------------------------------ rules and receivers

    def put_rule(self, spec: AlertRuleSpec, actor: str, *, subject: str | None = None) -> AlertRuleOut:
        if spec.version is not None and SIGNALS[spec.metric].endpoint_wide:
            raise InvalidInputError(
                f"version: {spec.metric} is the endpoint's figure, the same for every version; "
                "leave version out (the rule's one alert per endpoint is labelled version=all)")
        result = self.store.put_rule(spec, actor, subject=subject)
        with self._lock:
            self._rule_changed(spec.name)
            self._due.pop(spec.name, None)
        return result

    def delete_rule(self, name: str, actor: str, *, subject: str | None = None) -> None:
        self.store.delete_rule(name, actor, subject=subject)
        with self._lock:
            self._rule_changed(name)
            if self._leading is False:
                return  # the leader's state, which it resolves on its next read of the rules
            for alert in [a for a in self._alerts.values() if a.name == name]:
                self._transition(alert, alert.step(False, self._clock(), 0.0))
                self._alerts.pop(alert.fingerprint, None)

    def rules(self) -> list[AlertRuleOut]:
        """The rules; a silence that has ended is left out."""
        now = _datetime(self._clock())
        return [r if r.silence is None or r.silence.until > now else r.model_copy(update={"silence": None})
                for r in self.store.rules()]

    def silence(self, name: str, body: SilenceCreate, actor: str, *,
                subject: str | None = None) -> AlertRuleOut:
        """Notify no receiver of rule ``name``'s alerts for ``body.duration_s``; they are
        still evaluated, listed and recorded in the history."""
        result = self.store.silence(name, body, actor, _datetime(self._clock()), subject=subject)
        with self._lock:
            self._rule_changed(name)
        return result

    def unsilence(self, name: str, actor: str, *, subject: str | None = None) -> AlertRuleOut:
        result = self.store.unsilence(name, actor, subject=subject)
        with self._lock:
            self._rule_changed(name)
        return result

    def _rule_changed(self, name: str) -> None:
        self._rules = None
        self._rule_edits[name] += 1

    def put_receiver(self, spec: ReceiverSpec, actor: str, *, subject: str | None = None) -> ReceiverOut:
        result = self.store.put_receiver(spec, actor, subject=subject)
        self.notifier.configure(self.store.receivers())
        return result

    def delete_receiver(self, name: str, actor: str, *, subject: str | None = None) -> None:
        self.store.delete_receiver(name, actor, subject=subject)
        self.notifier.configure(self.store.receivers())

    def receivers(self) -> list[ReceiverOut]:
        return self.store.receivers()

    def changes(self, kind: str, **query: Any) -> Page[AlertingChangeOut]:
        """Who changed which rule (``kind="rule"``) or receiver, newest first."""
        return self.store.changes(kind, **query)

    def active(self) -> list[AlertOut]:
        return self.store.active(_datetime(self._clock()))

    def history(self, **filters: Any) -> Page[AlertEventOut]:
        return self.store.history(**filters)

    # ------------------------------------------------------------ events

    def fire_event(self, name: str, *, severity: str, labels: dict[str, str], summary: str,
                   data: dict[str, Any] | None = None) -> None:
        """Record and notify a one-shot alert (firing at once, never resolving).

        Safe from any thread and never raises: a failing store or receiver is logged, and
        the caller (a rollback in progress) carries on.
        """
        try:
            labels = {str(k): str(v) for k, v in labels.items()}
            now = self._clock()
            key = fingerprint(name, labels)
            with self._lock:
                last = self._recent_events.get(key)
                if last is not None and now - last < EVENT_DEDUP_S:
                    self.counters["events_deduplicated"] += 1
                    return
                self._recent_events = {k: t for k, t in self._recent_events.items()
                                       if now - t < EVENT_DEDUP_S}
                self._recent_events[key] = now
            alert = Alert(fingerprint=key, name=name, labels=labels, severity=severity,
                          state=AlertState.FIRING, started_at=now, fired_at=now, summary=summary,
                          data=dict(data or {}))
            self._transition(alert, AlertState.FIRING, kind="event")
        except FencedOut as lost:  # raised by a pass that outlived its lead: not sent
            with self._lock:
                self._recent_events.pop(key, None)  # the new leader's may come from here
            log.warning("alert event %s not raised: %s", name, lost)
        except Exception:
            log.exception("could not record the alert event %s", name)

    # ------------------------------------------------------------ evaluation

    def evaluate(self, read_stats: ReadStats, list_endpoints: ListEndpoints,
                 now: float | None = None) -> int:
        """Evaluate every rule that is due; returns how many were evaluated."""
        now = self._clock() if now is None else now
        refreshed = False
        with self._lock:
            if self._rules is None or now - self._rules_read_at >= RULES_REFRESH_S:
                unreadable: set[str] = set()  # their alerts stay as they are
                self._rules, self._rules_read_at = list(self.store.rules(unreadable)), now
                refreshed = True
                self._resolve_orphans({r.name for r in self._rules if r.enabled} | unreadable,
                                      now)
            due = [r for r in self._rules if r.enabled and self._due.get(r.name, 0.0) <= now]
            edits = {r.name: self._rule_edits[r.name] for r in due}
        if refreshed:  # receivers added or removed through another control plane's API too
            self.notifier.configure(self.store.receivers())
        if not due:
            return 0
        cache: dict[tuple[str, float], dict[int, VersionSnapshot] | str] = {}
        endpoints: list[str] | None = None
        for rule in due:
            if endpoints is None:
                endpoints = list_endpoints()
            # A rule's own endpoint too, only while it is deployed: the Monitor still holds
            # a deleted one's statistics, which would keep its alert from resolving.
            watched = endpoints if rule.endpoint is None else \
                [rule.endpoint] if rule.endpoint in endpoints else []
            unknown: dict[str, str] = {}
            readings = self._read(rule, watched, read_stats, cache, unknown)
            with self._lock:
                if self._rule_edits[rule.name] != edits[rule.name]:
                    continue  # changed or deleted meanwhile: the next tick reads it afresh
                self._due[rule.name] = now + rule.every_s
                self._apply(rule, readings, now, unknown)
        return len(due)

    def _resolve_orphans(self, rules: set[str], now: float) -> None:
        """Resolve the alerts of rules the store no longer has, or has disabled: nothing
        evaluates those again, so nothing else would resolve them. Deleted through another
        control plane's API, a rule's own resolution could not reach this one's state."""
        for alert in [a for a in self._alerts.values() if a.name not in rules]:
            self._transition(alert, alert.step(False, now, 0.0))
            self._alerts.pop(alert.fingerprint, None)

    def _read(self, rule: AlertRuleSpec, endpoints: list[str], read_stats: ReadStats,
              cache: dict[tuple[str, float], dict[int, VersionSnapshot] | str],
              unknown: dict[str, str]) -> dict[str, tuple[dict[str, str], float | None, dict[str, Any]]]:
        """Per alert fingerprint: labels, value and details of the rule's metric.

        An endpoint whose statistics could not be read lands in ``unknown`` (endpoint →
        why), not in the readings: no answer is not evidence that a condition stopped.
        """
        signal = SIGNALS[rule.metric]
        readings = {}
        # In whole seconds, as the Monitor cuts windows: rules of float windows that are
        # one window share one read.
        window_s = float(math.ceil(rule.window_s))
        for endpoint in endpoints:
            key = (endpoint, window_s)
            if key not in cache:
                try:
                    cache[key] = read_stats(endpoint, window_s)
                except Exception as error:  # one unreachable endpoint must not stop the rest
                    log.warning("alert rule %s could not read %s: %s", rule.name, endpoint, error)
                    cache[key] = str(getattr(error, "message", None) or error) or type(error).__name__
            read = cache[key]
            if isinstance(read, str) or not read:
                # Nothing at all for a listed endpoint: a Monitor that just (re)started.
                unknown[endpoint] = read or "the Monitor has no statistics for this endpoint yet"
                continue
            versions = sorted((int(version), stats) for version, stats in read.items() if int(version))
            if signal.endpoint_wide:
                versions = [(ALL_VERSIONS, versions[0][1])] if versions else []
            for number, stats in versions:
                if number != ALL_VERSIONS and rule.version is not None and number != rule.version:
                    continue
                labels = {**rule.labels, "alertname": rule.name, "endpoint": endpoint,
                          "version": "all" if number == ALL_VERSIONS else str(number),
                          "severity": rule.severity}
                value, details = signal.read(stats)
                readings[fingerprint(rule.name, labels)] = (labels, value, details)
        return readings

    def _apply(self, rule: AlertRuleOut, readings: dict[str, Any], now: float,
               unknown: dict[str, str] | None = None) -> None:
        compare = COMPARE[rule.comparison]
        muted = rule.silence is not None and rule.silence.until.timestamp() > now
        unknown = unknown or {}
        seen = set()
        for key, (labels, value, details) in readings.items():
            seen.add(key)
            alert = self._alerts.get(key) or Alert(key, rule.name, labels, rule.severity)
            value = evidence(value, details, rule.comparison, rule.threshold)
            finite = value if value is not None and math.isfinite(value) else None
            if finite is None and alert.state == AlertState.PENDING:
                # No evidence breaks the run a pending alert must hold for for_s: it counts
                # again from the next window that holds (one drifted window after ten
                # quiet minutes fired it at once, and started a retrain).
                self._restart_pending(alert, now, rule.for_s)
                continue
            if finite is None and alert.active:
                # No evidence in the window (no requests, no labels, too few rows for a
                # verdict) is no answer: the alert keeps its state and says why, as when
                # the Monitor is away, rather than resolving until the evidence is back.
                if "stale" not in alert.data:
                    alert.data = {**alert.data, "stale": NO_EVIDENCE, "stale_since": _iso(now)}
                    self._transition(alert, None)
                continue
            holds = finite is not None and compare(finite, rule.threshold)
            was, was_stale = alert.state, "stale" in alert.data
            waits_again = holds and alert.carried and alert.state == AlertState.PENDING
            if waits_again:
                # Whether its condition held while no control plane evaluated it (down an
                # hour, or between two leaders) is unknown: its wait counts from this
                # look. Counted across the gap, one bad window fired a for_s=600 rule at once.
                alert.started_at = now
            alert.carried = False
            notify = alert.step(holds, now, rule.for_s)
            if notify is None and alert.unpaged and not muted and \
                    alert.state == AlertState.FIRING:
                notify = AlertState.FIRING  # fired under a silence now over: heard now
            if holds or alert.state == AlertState.RESOLVED or was_stale:
                alert.value = finite
                alert.data = details
                alert.summary = _summary(rule, labels, value, details)
            if alert.active:
                self._alerts[key] = alert
            else:
                self._alerts.pop(key, None)
            if notify is not None or alert.state != was or was_stale or waits_again:
                self._transition(alert, notify, muted=muted)
        # Alerts of this rule whose version no longer reports (undeployed) resolve; those
        # whose endpoint could not be read keep their state and say their data is stale.
        for alert in [a for a in self._alerts.values() if a.name == rule.name and a.fingerprint not in seen]:
            why = unknown.get(alert.labels.get("endpoint", ""))
            if why is not None and alert.state == AlertState.PENDING:
                self._restart_pending(alert, now, rule.for_s)
                continue
            if why is not None:
                if "stale" not in alert.data:
                    alert.data = {**alert.data, "stale": why, "stale_since": _iso(now)}
                    self._transition(alert, None)
                continue
            self._transition(alert, alert.step(False, now, rule.for_s), muted=muted)
            if not alert.active:
                self._alerts.pop(alert.fingerprint, None)

    def _restart_pending(self, alert: Alert, now: float, for_s: float) -> None:
        """A pending alert without evidence goes back to inactive (its wait starts again)."""
        alert.step(False, now, for_s)
        self._alerts.pop(alert.fingerprint, None)
        self._transition(alert, None)

    def _transition(self, alert: Alert, notify: AlertState | None, kind: str = "rule", *,
                    muted: bool = False) -> None:
        """Store the alert's new state (and history entry) with its receivers'
        notifications, in one transaction: a kill between the two had left an alert firing
        in the store whose page was never sent, and never would be.

        The store's write is queued in order behind any the store could not take yet, and
        tried again each evaluator pass (:meth:`_store_unsaved`), since an alert's state
        changes only once: a write lost to a store blip left no active row and no history
        (no drift-triggered retrain, a page again after a restart, a resolution never sent).
        Receivers hear at once all the same: where the store cannot take the write now,
        or refuses it, the notification goes out on its own (from memory while the store
        is away). A write refused by the control loops' lease (a pass that outlived its
        lead) is neither kept nor sent: the new leader decides."""
        if notify is AlertState.FIRING:
            alert.unpaged = muted
        elif notify is AlertState.RESOLVED and alert.unpaged:
            alert.unpaged, muted = False, True  # its receivers never heard it fire
        elif notify is AlertState.RESOLVED:
            # Its receivers heard it fire: they hear it end, silenced since or not (an
            # incident opened by the page stayed open for good).
            muted = False
        notification = None if notify is None or muted else \
            Notification(notify.value, _alert_document(alert, kind))
        entry = _Unsaved(replace(alert, labels=dict(alert.labels), data=dict(alert.data)),
                         notify, kind, notification,
                         self.lease_term() if self.lease_term is not None else None)
        with self._lock:
            self._unsaved.append(entry)
            try:
                # A rule's state is written by a pass that leads; an event raised through
                # the API on any control plane writes only events.
                self._store_unsaved(states=self._deriving())
            except FencedOut:
                self._forget(entry)
                raise
            unsent = entry.notification  # None once kept with the state
            entry.notification = None  # a later write of the state sends nothing again
        if notify is not None and muted:
            self.counters["notifications_silenced"] += 1
        elif unsent is not None:
            self.notifier.notify(unsent)

    def _store_unsaved(self, *, states: bool = True) -> None:
        """Write the queued alert states, oldest first, until the store cannot answer; a
        write it refuses (not one it could not take) is dropped, not tried for ever ahead
        of every later one. Without ``states`` (not leading) only one-shot events are
        written; rules' states wait in their order for a pass that leads."""
        with self._lock:
            if len(self._unsaved) > MAX_UNSAVED:
                dropped = len(self._unsaved) - MAX_UNSAVED
                log.error("%d alert writes waited too long for the store and are dropped",
                          dropped)
                del self._unsaved[:dropped]
            if states:
                self._drop_other_terms()
            while True:
                entry = next((e for e in self._unsaved if states or e.kind != "rule"), None)
                if entry is None:
                    return
                notification = entry.notification
                try:
                    wake = self.store.save(
                        entry.alert, notify=entry.notify, kind=entry.kind,
                        within=None if notification is None else functools.partial(
                            self.notifier.keep_in, item=notification))
                except FencedOut:  # this thread's pass is over; the queue waits for another
                    raise
                except Exception as error:
                    if store_could_not_take(error):
                        log.warning("could not store alert %s (%d writes wait for the store, "
                                    "tried again each pass): %s", entry.alert.name,
                                    len(self._unsaved), error)
                        return
                    log.error("the store refused alert %s's state; it is not stored",
                              entry.alert.name, exc_info=error)
                    self._forget(entry)
                    continue
                if wake is not None:  # its notification kept with it
                    entry.notification = None
                    self.notifier.announce(notification)
                    wake()
                self._forget(entry)

    def _forget(self, entry: _Unsaved) -> None:
        """Take ``entry`` itself off the queue (an equal one queued later stays)."""
        with self._lock:
            for index, queued in enumerate(self._unsaved):  # almost always the first
                if queued is entry:
                    del self._unsaved[index]
                    return

    # ------------------------------------------------------------ the evaluator thread

    def start(self, read_stats: ReadStats, list_endpoints: ListEndpoints, *,
              active: Callable[[], bool] = lambda: True,
              fenced: Callable[[], AbstractContextManager[None]] = nullcontext,
              lease_term: Callable[[], int | None] | None = None) -> None:
        """Evaluate in a background thread until :meth:`stop` (idempotent), in each tick
        where ``active()`` (this process leads the control loops, in the lease's
        ``lease_term()``), its writes made inside ``fenced()`` there (refused once another
        process leads: rule states are then that one's to derive, and events are written
        in a later tick, unfenced)."""
        if self._thread is not None and self._thread.is_alive():
            return
        if lease_term is not None:
            self.lease_term = lease_term
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(TICK_S):
                try:
                    leading = active()
                    with fenced() if leading else nullcontext():
                        self.tick(read_stats, list_endpoints, leading=leading)
                except FencedOut as lost:  # another control plane leads from here on
                    log.warning("alert evaluation stopped: %s", lost)
                except Exception:  # keep evaluating; the next pass may succeed
                    log.exception("alert evaluation failed")

        self._thread = threading.Thread(target=run, name="alert-evaluator", daemon=True)
        self._thread.start()

    def tick(self, read_stats: ReadStats, list_endpoints: ListEndpoints, *,
             leading: bool) -> None:
        """One pass of the evaluator: nothing where another control plane leads; where this
        one has just taken over, the alerts' state and receivers are read from the store
        first, so an alert the last leader resolved fires again (rather than being held
        firing here, silently) and one it fired is not paged twice."""
        self._leading = leading
        if not leading:
            self._caught_up = False
            self._store_unsaved(states=False)
            if self._clock() - self._followed_at >= RULES_REFRESH_S:
                self._followed_at = self._clock()
                self._read_store()
            return
        self._store_unsaved()
        if not self._caught_up:
            with self._lock:
                waiting = any(entry.kind == "rule" for entry in self._unsaved)
            if waiting:
                # Read back without the states still waiting, an alert paged while the
                # store was away would be paged again: the next pass tries again.
                return
            self.catch_up()
        self.evaluate(read_stats, list_endpoints)

    def _deriving(self) -> bool:
        """Whether this thread may write the rules' states now: a pass that leads (fenced),
        an API call on the leader, or any call where there is no lease (the only control
        plane)."""
        return self.lease_term is None or in_fenced_pass() or self._leading is True

    def _drop_other_terms(self) -> None:
        """Forget the unstored rule states derived in another lease term than this one's.

        Another control plane held the lease in between: it derived those alerts' states
        itself and may have stored newer ones, which these would overwrite. Within one
        term (the lead lapsed while the store was away, and nobody else took it) they are
        kept: their receivers heard those pages from memory, and read back without them,
        an alert was paged a second time, or its resolution never sent."""
        if self.lease_term is None:
            return
        term = self.lease_term()
        with self._lock:
            self._unsaved = [entry for entry in self._unsaved
                             if entry.kind != "rule" or entry.term == term]

    def catch_up(self) -> None:
        """Take the alerts' state, the rules and the receivers from the store."""
        self._read_store()
        self._caught_up = True

    def _read_store(self) -> None:
        alerts = _carried(self.store.load_active())
        receivers = self.store.receivers()
        with self._lock:
            self._alerts, self._rules = alerts, None
        self.notifier.configure(receivers)

    def stop_evaluating(self) -> threading.Thread | None:
        """Let the evaluator finish its pass in flight and stop; returns its thread, to be
        waited for before another control plane may evaluate."""
        self._stop.set()
        return self._thread

    def stop(self) -> None:
        evaluator = self.stop_evaluating()
        if evaluator is not None:
            evaluator.join(timeout=5)
        self.notifier.close()

    def metrics(self) -> dict[str, Any]:
        """For the Prometheus exposition: active alerts and notification counters."""
        with self._lock:
            active = [(a.name, a.severity, a.state.value) for a in self._alerts.values()]
        return {"active": active, "receivers": self.notifier.stats(),
                "notifications": dict(self.notifier.counters)}


def _carried(alerts: list[Alert]) -> dict[str, Alert]:
    """Alerts read from the store, by fingerprint, marked as not yet evaluated here."""
    for alert in alerts:
        alert.carried = True
    return {alert.fingerprint: alert for alert in alerts}


def _summary(rule: AlertRuleSpec, labels: dict[str, str], value: float | None,
             details: dict[str, Any]) -> str:
    named = ", ".join(details.get("drifted_features") or [])
    fields = {"endpoint": labels["endpoint"], "version": labels["version"], "metric": rule.metric,
              "value": "none" if value is None else f"{value:.4g}", "threshold": f"{rule.threshold:g}",
              "details": named}
    fields["comparison"] = rule.comparison
    default = ("{endpoint}" if labels["version"] == "all" else "{endpoint} v{version}") + \
        ": {metric} = {value} ({comparison} {threshold})"
    if named:
        default += "; drifted: {details}"
    # Never str.format: a stored template from before templates were checked may hold a
    # format spec or attribute access; render_template refuses those and we fall back.
    rendered = render_template(rule.summary, fields) if rule.summary else None
    return rendered or render_template(default, fields) or f"{rule.name}: {rule.metric}"


def _datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def _alert_document(alert: Alert, kind: str) -> dict[str, Any]:
    iso = _iso
    return {"name": alert.name, "fingerprint": alert.fingerprint, "kind": kind,
            "severity": alert.severity, "labels": alert.labels, "summary": alert.summary,
            "value": alert.value, "data": alert.data, "started_at": iso(alert.started_at),
            "fired_at": iso(alert.fired_at), "resolved_at": iso(alert.resolved_at)}
