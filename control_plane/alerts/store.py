"""Alerting's tables: rules, receivers, the alerts active now, and the history."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from control_plane.alerts.schemas import (
    AlertEventOut,
    AlertingChangeOut,
    AlertOut,
    AlertRuleOut,
    AlertRuleSpec,
    ReceiverOut,
    ReceiverSpec,
    SilenceCreate,
    SilenceOut,
)
from control_plane.alerts.states import Alert, AlertState
from control_plane.errors import ConflictError, NotFoundError
from control_plane.listings import within_listing_bytes
from control_plane.schemas import Page
from control_plane.store import Database
from control_plane.store.models import (
    AlertEventRow,
    AlertingChangeRow,
    AlertReceiverRow,
    AlertRow,
    AlertRuleRow,
    AlertSilenceRow,
    utcnow,
)


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


MAX_RULES = 1000
# Kept in an active alert's stored data (and shown with it): it fired under a silence and
# its receivers have not heard it yet.
UNPAGED = "fired_while_silenced"

log = logging.getLogger("modelplane.alerts")
T = TypeVar("T")

class AlertStore:
    """Every alerting read and write, each one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ rules

    def put_rule(self, spec: AlertRuleSpec, actor: str, *, subject: str | None = None) -> AlertRuleOut:
        """Create or replace the rule named ``spec.name``; a change is recorded
        (:meth:`changes`), a put of the same spec changes nothing."""
        document = spec.model_dump(mode="json")
        with self.db.session() as session:
            row = session.scalar(select(AlertRuleRow).where(AlertRuleRow.name == spec.name))
            if row is None:
                held = session.scalar(select(func.count(AlertRuleRow.id))) or 0
                if held >= MAX_RULES:  # every rule is evaluated on every pass of the loop
                    raise ConflictError(
                        f"{held} alert rules exist, at most {MAX_RULES}; delete some, or put "
                        "several endpoints under one rule (a rule without an endpoint watches them all)",
                        detail={"field": "name", "limit": MAX_RULES})
                row = AlertRuleRow(name=spec.name, spec=document, created_by=actor, updated_by=actor)
                session.add(row)
                _record(session, "rule", spec.name, "created", actor, subject, document)
            elif row.spec != document:
                row.spec, row.updated_at, row.updated_by = document, utcnow(), actor
                _record(session, "rule", spec.name, "replaced", actor, subject, document)
            session.flush()
            return _rule_out(row, session.get(AlertSilenceRow, spec.name))

    def delete_rule(self, name: str, actor: str, *, subject: str | None = None) -> None:
        with self.db.session() as session:
            row = session.scalar(select(AlertRuleRow).where(AlertRuleRow.name == name))
            if row is None:
                raise _no_rule(name)
            _record(session, "rule", name, "deleted", actor, subject, row.spec)
            session.delete(row)
            session.execute(delete(AlertSilenceRow).where(AlertSilenceRow.rule == name))

    def rules(self, unreadable: set[str] | None = None) -> list[AlertRuleOut]:
        """The rules this version can read; the names of the others go into ``unreadable``.
        One rule it cannot read (stored by a newer version of the platform sharing the
        store) must not stop every other rule, nor the API's list of them."""
        with self.db.session(readonly=True) as session:
            silences = {s.rule: s for s in session.scalars(select(AlertSilenceRow))}
            rows = session.scalars(select(AlertRuleRow).order_by(AlertRuleRow.name))
            return _readable(rows, lambda r: _rule_out(r, silences.get(r.name)), "alert rule",
                             unreadable)

    def silence(self, name: str, body: SilenceCreate, actor: str, now: datetime, *,
                subject: str | None = None) -> AlertRuleOut:
        """Silence rule ``name`` from ``now`` for ``body.duration_s`` (replacing any silence)."""
        from datetime import timedelta

        with self.db.session() as session:
            rule = session.scalar(select(AlertRuleRow).where(AlertRuleRow.name == name))
            if rule is None:
                raise _no_rule(name)
            row = session.get(AlertSilenceRow, name) or AlertSilenceRow(rule=name)
            row.until = now + timedelta(seconds=body.duration_s)
            row.reason, row.created_by, row.created_at = body.reason, actor, now
            session.add(row)
            _record(session, "rule", name, "silenced", actor, subject, rule.spec,
                    {"until": row.until.isoformat(), "reason": body.reason})
            session.flush()
            return _rule_out(rule, row)

    def unsilence(self, name: str, actor: str, *, subject: str | None = None) -> AlertRuleOut:
        with self.db.session() as session:
            rule = session.scalar(select(AlertRuleRow).where(AlertRuleRow.name == name))
            if rule is None:
                raise _no_rule(name)
            ended = session.get(AlertSilenceRow, name)
            if ended is not None:
                _record(session, "rule", name, "unsilenced", actor, subject, rule.spec, {
                    "ended": {"until": ended.until.isoformat(), "reason": ended.reason,
                              "by": ended.created_by}})
                session.delete(ended)
            return _rule_out(rule, None)

    # ------------------------------------------------------------ receivers

    def put_receiver(self, spec: ReceiverSpec, actor: str, *, subject: str | None = None) -> ReceiverOut:
        document = spec.model_dump(mode="json")
        with self.db.session() as session:
            row = session.scalar(select(AlertReceiverRow).where(AlertReceiverRow.name == spec.name))
            if row is None:
                row = AlertReceiverRow(name=spec.name, spec=document)
                session.add(row)
                _record(session, "receiver", spec.name, "created", actor, subject, _redacted(document))
            elif row.spec != document:
                row.spec = document
                _record(session, "receiver", spec.name, "replaced", actor, subject, _redacted(document))
            session.flush()
            return ReceiverOut(**row.spec, created_at=row.created_at)

    def delete_receiver(self, name: str, actor: str, *, subject: str | None = None) -> None:
        """Delete the receiver and what waits in the outbox for it."""
        from control_plane.alerts.outbox import forget

        with self.db.session() as session:
            row = session.scalar(select(AlertReceiverRow).where(AlertReceiverRow.name == name))
            if row is None:
                raise NotFoundError(f"no alert receiver named {name!r}", detail={"field": "name"})
            _record(session, "receiver", name, "deleted", actor, subject, _redacted(row.spec))
            session.delete(row)
            forget(session, name)

    def receivers(self) -> list[ReceiverOut]:
        """The receivers this version can read (see :meth:`rules`)."""
        with self.db.session(readonly=True) as session:
            rows = session.scalars(select(AlertReceiverRow).order_by(AlertReceiverRow.name))
            return _readable(rows, lambda r: ReceiverOut(**r.spec, created_at=r.created_at),
                             "alert receiver")

    # ------------------------------------------------------------ alerts and history

    def save(self, alert: Alert, *, notify: AlertState | None, kind: str = "rule",
             within: Callable[[Session], T] | None = None) -> T | None:
        """Persist an alert's state and, when it fired or resolved, its history entry; and
        whatever ``within`` adds (its notifications) in the same transaction, whose answer
        this returns once it committed."""
        with self.db.session() as session:
            added = within(session) if within is not None else None
            row = session.scalar(select(AlertRow).where(AlertRow.fingerprint == alert.fingerprint))
            if alert.active and kind == "rule":
                if row is None:
                    row = AlertRow(fingerprint=alert.fingerprint, started_at=_time(alert.started_at))
                    session.add(row)
                row.name, row.state, row.severity = alert.name, alert.state.value, alert.severity
                row.labels, row.summary, row.value = alert.labels, alert.summary, alert.value
                row.data = {**alert.data, UNPAGED: True} if alert.unpaged else alert.data
                row.fired_at, row.updated_at = _time(alert.fired_at), utcnow()
                row.started_at = _time(alert.started_at) or row.started_at
            elif row is not None:
                session.delete(row)
            if notify is not None:
                session.add(AlertEventRow(
                    fingerprint=alert.fingerprint, name=alert.name, state=notify.value, kind=kind,
                    endpoint=alert.labels.get("endpoint", "")[:128], severity=alert.severity, labels=alert.labels, summary=alert.summary,
                    value=alert.value, data=alert.data))
        return added

    def load_active(self) -> list[Alert]:
        """The alerts pending or firing when the control plane last stopped."""
        with self.db.session(readonly=True) as session:
            return [
                Alert(fingerprint=r.fingerprint, name=r.name, labels=dict(r.labels),
                      severity=r.severity, state=AlertState(r.state),
                      started_at=r.started_at.timestamp(),
                      fired_at=r.fired_at.timestamp() if r.fired_at else None,
                      value=r.value, summary=r.summary,
                      data={k: v for k, v in r.data.items() if k != UNPAGED},
                      unpaged=bool(r.data.get(UNPAGED)))
                for r in session.scalars(select(AlertRow))
            ]

    def active(self, now: datetime) -> list[AlertOut]:
        with self.db.session(readonly=True) as session:
            silenced = {s.rule: s.until for s in session.scalars(select(AlertSilenceRow))
                        if s.until > now}
            rows = session.scalars(select(AlertRow).order_by(AlertRow.started_at))
            return [AlertOut(fingerprint=r.fingerprint, name=r.name, state=r.state,  # type: ignore[arg-type]
                             severity=r.severity, labels=r.labels, summary=r.summary, value=r.value,
                             data=r.data, started_at=r.started_at, fired_at=r.fired_at,
                             stale=(r.data or {}).get("stale"), silenced_until=silenced.get(r.name))
                    for r in rows]

    def history(self, *, limit: int = 50, offset: int = 0, name: str | None = None,
                endpoint: str | None = None) -> Page[AlertEventOut]:
        """Newest first; ``endpoint`` matches the alerts' ``endpoint`` label."""
        query = select(AlertEventRow)
        if name:
            query = query.where(AlertEventRow.name == name)
        if endpoint:
            query = query.where(AlertEventRow.endpoint == endpoint)
        with self.db.session(readonly=True) as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            page = session.scalars(query.order_by(AlertEventRow.id.desc())
                                   .limit(limit).offset(offset))
            items, limit = within_listing_bytes((_event_out(r) for r in page), limit)
            return Page[AlertEventOut](items=items, total=total, limit=limit, offset=offset)


    def changes(self, kind: str, *, name: str | None = None, limit: int = 50,
                offset: int = 0) -> Page[AlertingChangeOut]:
        """Changes to rules or receivers (``kind``), newest first; ``name`` also finds
        those of a rule or receiver deleted since."""
        query = select(AlertingChangeRow).where(AlertingChangeRow.kind == kind)
        if name:
            query = query.where(AlertingChangeRow.name == name)
        with self.db.session(readonly=True) as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(AlertingChangeRow.id.desc())
                                   .limit(limit).offset(offset))
            items = [AlertingChangeOut(
                id=r.id, kind=r.kind, name=r.name, action=r.action, actor=r.actor,
                subject=r.subject, spec=r.spec, detail=r.detail or {}, created_at=r.created_at)
                for r in rows]
            return Page[AlertingChangeOut](items=items, total=total, limit=limit, offset=offset)


def _record(session: Any, kind: str, name: str, action: str, actor: str, subject: str | None,
            spec: dict[str, Any] | None, detail: dict[str, Any] | None = None) -> None:
    session.add(AlertingChangeRow(kind=kind, name=name, action=action, actor=actor,
                                  subject=subject or actor, spec=spec, detail=detail or {},
                                  created_at=utcnow()))


def _redacted(receiver: dict[str, Any]) -> dict[str, Any]:
    """A receiver's spec with its URL cut to scheme and host: paths, queries and user
    parts of webhook URLs carry secrets (a Slack hook's path is its key)."""
    # By hand, not urlsplit: the spec's pattern admits URLs whose port or brackets
    # urlsplit refuses, and a receiver must stay replaceable and deletable.
    scheme, separator, rest = str(receiver.get("url", "")).partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    return {**receiver, "url": f"{scheme}://{host}/…" if separator else "…"}


def _rule_out(row: AlertRuleRow, silence: AlertSilenceRow | None) -> AlertRuleOut:
    muted = None if silence is None else SilenceOut(
        until=silence.until, reason=silence.reason, created_by=silence.created_by,
        created_at=silence.created_at)
    return AlertRuleOut(**row.spec, created_by=row.created_by, created_at=row.created_at,
                        updated_at=row.updated_at, updated_by=row.updated_by, silence=muted)


_said_unreadable: set[tuple[str, str]] = set()  # (what, name): each told once a process


def _readable(rows: Iterable[Any], read: Callable[[Any], T], what: str,
              unreadable: set[str] | None = None) -> list[T]:
    """``read`` of every row that reads; one that does not is left out and logged."""
    readable = []
    for row in rows:
        try:
            readable.append(read(row))
        except (ValidationError, TypeError) as error:
            if unreadable is not None:
                unreadable.add(row.name)
            if (what, row.name) not in _said_unreadable:
                _said_unreadable.add((what, row.name))
                log.warning("%s %r as stored cannot be read by this version (%s); it is left "
                            "out until it is stored again or this version is upgraded", what,
                            row.name, str(error).splitlines()[0])
    return readable


def _no_rule(name: str) -> NotFoundError:
    return NotFoundError(f"no alert rule named {name!r}; `modelplane alerts rules` lists them",
                         detail={"field": "name"})


def _event_out(row: AlertEventRow) -> AlertEventOut:
    fields: dict[str, Any] = {
        "id": row.id, "fingerprint": row.fingerprint, "name": row.name, "state": row.state,
        "kind": row.kind, "severity": row.severity, "labels": row.labels, "summary": row.summary,
        "value": row.value, "data": row.data, "created_at": row.created_at,
    }
    return AlertEventOut(**fields)
