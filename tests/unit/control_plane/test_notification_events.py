"""Notification events: kinds, receivers' filters, the JSON and Slack formats, the pipeline
helper, and sending only what a transaction committed. No network: delivery is in
tests/integration/test_notifications.py."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

import control_plane.notifications as notifications
from control_plane.alerts.notify import Notification, Notifier
from control_plane.alerts.schemas import AlertsFile, ReceiverOut, ReceiverSpec
from control_plane.notifications.events import Event, EventKind, Subject, matches
from control_plane.notifications.formats import slack_message
from control_plane.notifications.service import NotificationService, notify_on_commit
from control_plane.notifications.sources import pipeline_event, rollout_events, training_ended
from control_plane.store import Database
from control_plane.store.models import ExperimentRow
from tests.slack_blocks import problems

ALERT = {"name": "input-drift", "fingerprint": "abc", "kind": "rule", "severity": "critical",
         "labels": {"alertname": "input-drift", "endpoint": "churn", "version": "2",
                    "severity": "critical", "team": "risk"},
         "summary": "churn v2: drift = 1 (== 1); drifted: income", "value": 1.0,
         "data": {"drifted_features": ["income"]}, "started_at": "2026-01-01T00:00:00+00:00",
         "fired_at": "2026-01-01T00:00:00+00:00", "resolved_at": None}


@pytest.fixture
def service() -> Iterator[NotificationService]:
    """The process's service, on a notifier with no receivers: its counters show what was sent."""
    installed = NotificationService(Notifier(), base_url="http://cp:8000").install()
    yield installed
    installed.uninstall()


def test_the_public_face_is_pinned() -> None:
    assert set(notifications.__all__) == {"Event", "EventKind", "NotificationService", "Subject",
                                          "notify", "pipeline_event"}
    for name in notifications.__all__:
        assert getattr(notifications, name) is not None


def test_kinds_are_grouped_and_titled() -> None:
    groups = {kind.group for kind in EventKind}
    assert groups == {"alert", "training", "registry", "rollout", "pipeline"}
    assert EventKind.ROLLOUT_ROLLED_BACK.title == "Rollout rolled back"
    assert EventKind.ROLLOUT_ROLLED_BACK.severity == "critical"
    assert EventKind.VERSION_REGISTERED.severity == "info"


def test_receivers_get_alerts_only_unless_they_choose_more() -> None:
    default = ReceiverSpec(name="ops", url="https://hooks.example.com/x")
    assert default.events == ["alert.*"] and default.format == "json"
    assert default.accepts("alert.firing") and default.accepts("alert.resolved")
    assert not default.accepts("registry.version_registered")
    chosen = ReceiverSpec(name="ml", url="https://hooks.example.com/y", format="slack",
                          events=["rollout.*", "registry.approval_needed", "rollout.*"])
    assert chosen.events == ["rollout.*", "registry.approval_needed"]  # duplicates dropped
    assert chosen.accepts("rollout.rolled_back") and chosen.accepts("registry.approval_needed")
    assert not chosen.accepts("registry.approved") and not chosen.accepts("alert.firing")
    assert matches(["*"], "pipeline.run_failed")


def test_a_receiver_stored_before_events_existed_loads_with_the_defaults() -> None:
    stored = {"name": "ops", "url": "https://hooks.example.com/x", "timeout_s": 5.0,
              "max_attempts": 4, "backoff_s": 0.5, "enabled": True}
    loaded = ReceiverOut(**stored, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert loaded.events == ["alert.*"] and loaded.format == "json"


@pytest.mark.parametrize("events, message", [
    (["rollouts.*"], "'rollouts.*' is not an event kind"),
    (["rollout.finished"], "'rollout.finished' is not an event kind"),
    (["alert"], "'alert' is not an event kind"),
    ([], "at least 1 item"),
])
def test_unknown_event_kinds_are_refused_with_the_choices(events: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as error:
        ReceiverSpec(name="ops", url="https://hooks.example.com/x", events=events)
    assert error.value.errors()[0]["loc"] == ("events",)


def test_a_bad_format_is_refused() -> None:
    with pytest.raises(ValidationError, match="'json' or 'slack'"):
        ReceiverSpec(name="ops", url="https://hooks.example.com/x", format="teams")  # type: ignore[arg-type]


def test_the_alerts_file_takes_the_new_fields() -> None:
    declared = AlertsFile.model_validate({"receivers": [
        {"name": "chat", "url": "https://hooks.slack.com/services/T/B/X", "format": "slack",
         "events": ["*"]}]})
    assert declared.receivers[0].format == "slack" and declared.receivers[0].events == ["*"]


# ---------------------------------------------------------------- formats


def test_alerts_keep_their_json_payload_shape() -> None:
    body = Notification("firing", ALERT).render("json")
    assert set(body) == {"version", "status", "alert", "sent_at"}
    assert body["version"] == 1 and body["status"] == "firing" and body["alert"] == ALERT


def test_an_event_document_is_versioned_and_json() -> None:
    event = Event(EventKind.VERSION_REGISTERED, Subject("model", "fraud", 3), "fraud:3 registered",
                  {"auc": math.nan, "when": datetime(2026, 1, 1, tzinfo=UTC), "tags": ("a", "b")},
                  link="http://cp:8000/api/models/fraud/versions/3")
    body = event.render("json")
    assert set(body) == {"version", "kind", "subject", "summary", "details", "link", "severity",
                         "time", "sent_at"}
    assert body["version"] == 1 and body["kind"] == "registry.version_registered"
    assert body["subject"] == {"type": "model", "name": "fraud", "version": 3}
    assert body["details"] == {"auc": None, "when": "2026-01-01T00:00:00+00:00", "tags": ["a", "b"]}
    json.dumps(body, allow_nan=False)  # strict JSON, as a receiver parses it


def _every_kind(summary: str = "something happened", **details: object) -> list[Event]:
    subjects = {"alert": Subject("endpoint", "churn"), "training": Subject("training_job", "job-1"),
                "registry": Subject("model", "fraud", 3), "rollout": Subject("endpoint", "fraud"),
                "pipeline": Subject("pipeline", "nightly")}
    return [Event(kind, subjects[kind.group], summary, details, link="http://cp:8000/api/x")
            for kind in EventKind]


def test_every_kind_makes_a_valid_slack_message() -> None:
    for event in _every_kind(reason="p95 <250 ms> & errors", run_id="r1", empty="", none=None):
        message = event.render("slack")
        assert problems(message) == [], (event.kind, problems(message))
        header, section, context = message["blocks"]
        assert header["type"] == "header" and event.kind.title in header["text"]["text"]
        assert section["text"]["text"] == "something happened"
        labels = [f["text"].split("\n")[0] for f in section["fields"]]
        assert labels == ["*Subject*", "*Event*", "*Severity*", "*Reason*", "*Run id*"]
        assert "&lt;250 ms&gt; &amp; errors" in section["fields"][3]["text"]  # mrkdwn escaped
        assert "<http://cp:8000/api/x|Open in modelplane>" in context["elements"][0]["text"]
        assert event.summary in message["text"]


def test_a_slack_messages_text_cannot_mention_or_link_either() -> None:
    """A trainer names its run "<!here> <https://evil.example|Re-authenticate>": the blocks
    escaped it, the notification's text (what a phone shows) did not."""
    forged = "<!here> <https://evil.example/login|Re-authenticate modelplane>"
    message = slack_message(Event(EventKind.TRAINING_FAILED, Subject("training_job", forged),
                                  f"{forged} failed", {}))
    assert "<" not in message["text"] and "&lt;!here&gt;" in message["text"]


def test_slack_messages_stay_within_the_limits_whatever_the_event_holds() -> None:
    details = {f"detail_{i}": "x" * 5000 for i in range(30)}
    event = Event(EventKind.PIPELINE_RUN_FAILED, Subject("pipeline", "p" * 400), "s" * 10_000,
                  details)
    message = slack_message(event)
    assert problems(message) == []
    section = message["blocks"][1]
    assert len(section["fields"]) == 10 and len(section["text"]["text"]) == 3000
    assert len(message["blocks"][0]["text"]["text"]) == 150


def test_alerts_render_for_slack_too() -> None:
    for status in ("firing", "resolved"):
        message = Notification(status, ALERT).render("slack")
        assert problems(message) == []
        assert message["blocks"][0]["text"]["text"] == f"Alert {status}: churn"
        fields = " ".join(f["text"] for f in message["blocks"][1]["fields"])
        assert "input-drift" in fields and "risk" in fields


def test_the_validator_finds_what_slack_refuses() -> None:
    good = slack_message(_every_kind()[0])
    assert problems(good) == []
    bad = json.loads(json.dumps(good))
    bad["blocks"][0]["text"] = {"type": "mrkdwn", "text": "h" * 151}
    bad["blocks"][1]["fields"] = [{"type": "mrkdwn", "text": "f"}] * 11 + [{"type": "html", "text": "x"}]
    bad["blocks"][2]["elements"] = []
    bad["blocks"] += [{"type": "divider"}] * 48 + [{"type": "table"}]
    found = "\n".join(problems(bad))
    for expected in ("blocks[0].text.type is 'mrkdwn'; use plain_text", "12 fields; at most 10",
                     "fields[11].type is 'html'", "blocks[2].elements must be a non-empty list",
                     "52 blocks; a message holds at most 50", "unknown block type 'table'"):
        assert expected in found, found
    assert "3001 characters" in "\n".join(problems({"text": "t", "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]}))


# ---------------------------------------------------------------- sources


def test_rollout_transitions_map_to_events() -> None:
    def kinds(current: str, target: str, actor: str = "alice") -> list[str]:
        return [e.kind.value for e in rollout_events(
            rollout_id=7, endpoint="fraud", model="fraud", candidate=2, stable=1,
            strategy="canary", current=current, target=target, actor=actor, reason="why")]

    assert kinds("pending", "progressing") == ["rollout.started"]
    assert kinds("pending", "awaiting_approval") == ["rollout.started", "registry.approval_needed"]
    assert kinds("progressing", "awaiting_approval") == ["registry.approval_needed"]
    assert kinds("progressing", "paused") == ["rollout.paused"]
    assert kinds("paused", "progressing") == ["rollout.resumed"]
    assert kinds("awaiting_approval", "progressing") == []  # the approval itself was notified
    assert kinds("progressing", "succeeded") == ["rollout.promoted"]
    assert kinds("progressing", "rolled_back", "rollout-controller") == ["rollout.rolled_back"]
    assert kinds("progressing", "failed", "alice") == ["rollout.aborted"]
    assert kinds("progressing", "failed", "rollout-controller") == ["rollout.failed"]


def test_a_training_jobs_run_ending_is_its_outcome() -> None:
    def run(status: str, **tags: str) -> SimpleNamespace:
        return SimpleNamespace(id="r1", name="digits-1", status=status, tags=tags,
                               params={"registration.model_name": "digits",
                                       "failure_reason": "out of memory"},
                               latest_metrics={"val_accuracy": 0.97})

    job = {"ray_train_run": "digits-1", "ray_job_submission_id": "raysubmit_1"}
    done = training_ended(run("finished", **job), "digits-exp")
    assert done is not None and done.kind == EventKind.TRAINING_SUCCEEDED
    assert done.subject == Subject("training_job", "raysubmit_1")
    assert done.details["model"] == "digits" and done.details["metrics"] == {"val_accuracy": 0.97}
    failed = training_ended(run("failed", **job), "digits-exp")
    assert failed is not None and failed.kind == EventKind.TRAINING_FAILED
    assert "out of memory" in failed.summary
    killed = training_ended(run("killed", **job), "digits-exp")
    assert killed is not None and "was stopped" in killed.summary
    assert training_ended(run("finished"), "digits-exp") is None  # not a training job's run
    assert training_ended(run("running", **job), "digits-exp") is None


def test_the_pipeline_helper_builds_and_sends_each_kind(service: NotificationService) -> None:
    started = pipeline_event(12, "nightly", "run_started")
    assert started.kind == EventKind.PIPELINE_RUN_STARTED
    assert started.subject == Subject("pipeline", "nightly")
    assert started.summary == "pipeline nightly run 12: started"
    assert started.details == {"run_id": "12", "stage": None, "reason": None}
    passed = pipeline_event("12", "nightly", "stage_passed", stage="train")
    assert passed.summary == "pipeline nightly run 12: stage train passed"
    failed = pipeline_event("12", "nightly", EventKind.PIPELINE_STAGE_FAILED, stage="evaluate",
                            reason="accuracy 0.81 < champion 0.84", details={"metric": "accuracy"})
    assert failed.summary == "pipeline nightly run 12: stage evaluate failed (accuracy 0.81 < champion 0.84)"
    assert failed.details["metric"] == "accuracy" and failed.level == "warning"
    for kind in ("run_succeeded", "run_failed", "pipeline.run_cancelled"):
        assert pipeline_event(12, "nightly", kind).kind.value.endswith(kind.split(".")[-1])
    assert service.counters == {"pipeline.run_started": 1, "pipeline.stage_passed": 1,
                                "pipeline.stage_failed": 1, "pipeline.run_succeeded": 1,
                                "pipeline.run_failed": 1, "pipeline.run_cancelled": 1}


def test_the_pipeline_helper_refuses_what_is_not_a_pipeline_event(service: NotificationService) -> None:
    with pytest.raises(ValueError, match="'run_exploded' is not a pipeline event; use one of run_started"):
        pipeline_event(1, "nightly", "run_exploded")
    with pytest.raises(ValueError, match="not a pipeline event"):
        pipeline_event(1, "nightly", "rollout.started")
    with pytest.raises(ValueError, match="pipeline.stage_failed needs the stage"):
        pipeline_event(1, "nightly", "stage_failed")
    assert not service.counters


def test_without_a_service_events_only_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    assert notifications.service.current() is None
    with caplog.at_level("INFO", logger="modelplane.notifications"):
        notifications.notify(Event(EventKind.APPROVED, Subject("model", "m", 1), "m:1 approved"))
    assert "registry.approved model m:1: m:1 approved (no notification service)" in caplog.text


def test_events_are_sent_when_their_transaction_commits_and_never_when_it_rolls_back(
        service: NotificationService, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'n.db'}")
    event = Event(EventKind.STAGE_CHANGED, Subject("model", "m", 1), "moved")
    with pytest.raises(RuntimeError), db.session() as session:
        session.add(ExperimentRow(name="never", description="", tags={}, created_by="t"))
        notify_on_commit(session, event)
        raise RuntimeError("the write fails")
    assert not service.counters
    with db.session() as session:
        session.add(ExperimentRow(name="kept", description="", tags={}, created_by="t"))
        notify_on_commit(session, event, None, event)
        assert not service.counters  # not before the commit
    assert service.counters == {"registry.stage_changed": 2}
    db.dispose()
