"""What a receiver is sent: the generic JSON document or a Slack Block Kit message.

``json``, version 1 (alerts keep the payload they always had, see
:class:`control_plane.alerts.notify.Notification`)::

    {"version": 1, "kind": "rollout.rolled_back",
     "subject": {"type": "model", "name": "fraud", "version": 4},
     "summary": "…", "details": {…}, "link": "http://…", "severity": "critical",
     "time": "2025-…+00:00", "sent_at": "2025-…+00:00"}

``slack``: a message for an incoming webhook: ``text`` (the notification's fallback) and
``blocks``: a header, a section with the summary and up to ten fields (subject, event,
details), and a context line with the time and the link. Every text is cut to Slack's
limits (header 150 characters, section text 3,000, a field 2,000), so a long summary or
reason never makes Slack refuse the whole message.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from control_plane.notifications.events import Event

PAYLOAD_VERSION = 1
HEADER_CHARS = 150
SECTION_CHARS = 3000
FIELD_CHARS = 2000
MAX_FIELDS = 10
FALLBACK_CHARS = 3000
_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


def event_json(event: Event) -> dict[str, Any]:
    """The generic JSON document of a non-alert event (versioned, documented above)."""
    return {
        "version": PAYLOAD_VERSION, "kind": event.kind.value, "subject": event.subject.document(),
        "summary": event.summary, "details": _plain(dict(event.details)), "link": event.link,
        "severity": event.level, "time": event.time.isoformat(),
        "sent_at": datetime.now(UTC).isoformat(),
    }


def slack_message(event: Event) -> dict[str, Any]:
    """A Slack Block Kit message for ``event``: fallback ``text`` plus ``blocks``."""
    title = f"{event.kind.title}: {event.subject.name}"
    if event.subject.version is not None:
        title += f":{event.subject.version}"
    fields = [_field("Subject", str(event.subject)), _field("Event", f"`{event.kind.value}`"),
              _field("Severity", event.level)]
    for key, value in event.details.items():
        if len(fields) == MAX_FIELDS:
            break
        if value is None or (isinstance(value, str | dict | list) and not value):
            continue
        fields.append(_field(key.replace("_", " ").capitalize(), _text_of(value)))
    summary = event.summary or event.kind.title
    context = f"<!date^{int(event.time.timestamp())}^{{date_short_pretty}} {{time_secs}}|{event.time.isoformat()}>"
    if event.link and event.link.startswith(("http://", "https://")):  # Slack needs a URL
        context += f" · <{_escape(event.link)}|Open in modelplane>"
    emoji = _EMOJI.get(event.level, "")
    return {
        # The notification's text (push notifications, clients without blocks) is read as
        # mrkdwn too: a run's name of "<!here>" would mention the channel.
        "text": _cut(_escape(f"{emoji} {title}: {summary}".strip()), FALLBACK_CHARS),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _cut(title, HEADER_CHARS),
                                        "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(_escape(summary), SECTION_CHARS)},
             "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(f"*{_escape(label)}*\n{_escape(value)}", FIELD_CHARS)}


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(_plain(value), sort_keys=True, default=str)


def _escape(text: str) -> str:
    """Slack's mrkdwn control characters: &, < and > (a link or mention otherwise)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, with an ellipsis where it was cut. Never empty:
    Slack refuses an empty text object."""
    text = text or "-"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(value: Any) -> Any:
    """``value`` as JSON allows: numbers that are not finite become null, times ISO 8601
    text, anything else JSON cannot hold its text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
