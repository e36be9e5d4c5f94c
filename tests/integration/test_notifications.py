"""Notifications of the whole control plane to real local webhook receivers over HTTP.

Registry, rollout, training and pipeline events reach the receivers that chose them, in
their format (the generic JSON, or Slack Block Kit that validates); alerts keep their
payload; a receiver that is down never slows the registry call that caused the event.
No Ray: the control plane runs in-process, or as a real server process for the REST API
and the CLI.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.alerts.schemas import ReceiverSpec
from control_plane.client import Client
from control_plane.notifications import pipeline_event
from control_plane.rollouts.controller import RolloutController
from control_plane.rollouts.schemas import RolloutCreate
from control_plane.schemas import (
    ApprovalCreate,
    DeployRequest,
    ModelCreate,
    ModelPolicy,
    RunCreate,
    RunStatus,
    RunUpdate,
    Stage,
    StageChange,
    VersionCreate,
)
from control_plane.service import ControlPlane
from modelplane.settings import Settings
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.servers import ControlPlaneProcess
from tests.slack_blocks import problems
from tests.unit.control_plane.conftest import ALICE, BOB
from tests.webhooks import Receiver

pytestmark = pytest.mark.no_ray


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made: dict[str, Receiver] = {}

    class Made(dict):  # type: ignore[type-arg]
        def __missing__(self, name: str) -> Receiver:
            made[name] = self[name] = Receiver()
            return made[name]

    yield Made()
    for receiver in made.values():
        receiver.close()


@pytest.fixture
def cp(settings: Settings) -> Iterator[ControlPlane]:
    """The control plane in this process, without Ray (nothing here needs Serve)."""
    plane = ControlPlane.start(settings)
    yield plane
    plane.close()


def listen(cp: ControlPlane, receiver: Receiver, name: str, events: list[str] | None = None,
           format: str = "json", **spec: Any) -> None:
    fields = {"events": events} if events is not None else {}
    cp.alerts.put_receiver(ReceiverSpec(name=name, url=receiver.url, format=format,  # type: ignore[arg-type]
                                        **fields, **spec), "alice")


def register(cp: ControlPlane, model: str, seed: int) -> int:
    info = cp.artifacts.put([linear_classifier(seed=seed)])
    return cp.registry.register_version(model, VersionCreate(
        artifact_digest=info.digest, manifest=linear_classifier_manifest()), ALICE).version


def assert_slack(bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        assert problems(body) == [], (body, problems(body))


def test_registry_events_reach_the_receivers_that_chose_them(cp: ControlPlane, receivers) -> None:
    listen(cp, receivers["all"], "all", ["*"])
    listen(cp, receivers["chat"], "chat", ["registry.*"], format="slack")
    listen(cp, receivers["approvers"], "approvers", ["registry.approval_needed"], format="slack")
    listen(cp, receivers["ops"], "ops")  # as configured before events existed: alerts only
    cp.registry.create_model(ModelCreate(name="fraud", policy=ModelPolicy(
        require_approval_for_production=True)), ALICE)
    register(cp, "fraud", seed=1)
    cp.registry.transition_stage("fraud", 1, StageChange(stage=Stage.STAGING), ALICE)
    cp.registry.approve("fraud", 1, ApprovalCreate(decision="approved", comment="lgtm"), BOB)
    cp.registry.transition_stage("fraud", 1, StageChange(stage=Stage.PRODUCTION, reason="go"), ALICE)
    cp.alerts.fire_event("operator-note", severity="info", labels={"endpoint": "fraud"},
                         summary="maintenance at noon")

    everything = receivers["all"].wait(6)
    assert receivers["all"].kinds() == [
        "registry.version_registered", "registry.approval_needed", "registry.stage_changed",
        "registry.approved", "registry.stage_changed", "alert.firing"]
    registered, needed, staged, approved, promoted, alert = everything
    assert registered["version"] == 1
    assert registered["subject"] == {"type": "model", "name": "fraud", "version": 1}
    assert registered["summary"] == "fraud:1 registered by alice"
    assert registered["link"] == f"{cp.settings.url}/api/models/fraud/versions/1"
    assert "modelplane models approve fraud:1" in needed["summary"]
    assert staged["details"]["from_stage"] == "none" and staged["details"]["to_stage"] == "staging"
    assert approved["details"] == {"decision": "approved", "approver": "bob", "comment": "lgtm"}
    assert promoted["details"]["reason"] == "go"
    # The alert's payload is the one receivers always had.
    assert set(alert) == {"version", "status", "alert", "sent_at"}
    assert alert["alert"]["name"] == "operator-note" and alert["alert"]["kind"] == "event"

    chat = receivers["chat"].wait(5)
    assert_slack(chat)
    assert [m["blocks"][0]["text"]["text"] for m in chat] == [
        "Registry version registered: fraud:1", "Registry approval needed: fraud:1",
        "Registry stage changed: fraud:1", "Registry approved: fraud:1",
        "Registry stage changed: fraud:1"]
    [needed_message] = receivers["approvers"].wait(1)
    assert_slack([needed_message])
    assert f"<{cp.settings.url}/api/models/fraud/versions/1|Open in modelplane>" in \
        needed_message["blocks"][2]["elements"][0]["text"]
    [only_alert] = receivers["ops"].wait(1)
    assert only_alert["status"] == "firing"
    time.sleep(0.3)  # nothing else arrives
    assert len(receivers["ops"].received) == 1 and len(receivers["chat"].received) == 5
    assert len(receivers["approvers"].received) == 1


def test_rollout_events_from_start_to_promotion_and_rollback(cp: ControlPlane, receivers) -> None:
    listen(cp, receivers["deploys"], "deploys", ["rollout.*"])
    listen(cp, receivers["chat"], "chat", ["rollout.*"], format="slack")
    for seed in range(3):
        register(cp, "iris", seed)
    cp.deployments.deploy(DeployRequest(endpoint="iris", model_ref="iris:1"), ALICE)
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    controller = RolloutController(cp.db, cp.registry, cp.deployments,
                                   stats=lambda endpoint, window, sample: {}, now=lambda: clock[0])

    def tick() -> None:
        clock[0] += timedelta(seconds=1)
        controller.tick()

    first = controller.start(RolloutCreate(endpoint="iris", model_ref="iris:2", steps=[20, 100],
                                           step_duration_s=60), ALICE).id
    tick()
    controller.pause(first, ALICE, "looking at the dashboards")
    controller.resume(first, ALICE)
    controller.promote(first, ALICE, "looks good")
    second = controller.start(RolloutCreate(endpoint="iris", model_ref="iris:3", steps=[20, 100],
                                            step_duration_s=60), ALICE).id
    tick()
    controller.rollback(second, ALICE, "wrong features")

    bodies = receivers["deploys"].wait(6)
    assert receivers["deploys"].kinds() == [
        "rollout.started", "rollout.paused", "rollout.resumed", "rollout.promoted",
        "rollout.started", "rollout.rolled_back"]
    assert {b["subject"]["name"] for b in bodies} == {"iris"}
    assert bodies[1]["details"]["reason"] == "looking at the dashboards"
    assert bodies[3]["details"]["candidate_version"] == 2
    assert bodies[5]["details"]["rollout_id"] == second and "wrong features" in bodies[5]["summary"]
    assert bodies[5]["severity"] == "critical"
    assert bodies[5]["link"] == f"{cp.settings.url}/api/rollouts/{second}"
    chat = receivers["chat"].wait(6)
    assert_slack(chat)
    assert chat[5]["blocks"][0]["text"]["text"] == "Rollout rolled back: iris"


def test_training_and_pipeline_events(cp: ControlPlane, receivers) -> None:
    listen(cp, receivers["ml"], "ml", ["training.*", "pipeline.*"], format="slack")
    listen(cp, receivers["json"], "json", ["training.succeeded", "pipeline.run_failed"])
    tags = {"ray_train_run": "digits-1", "ray_job_submission_id": "raysubmit_abc"}
    done = cp.tracker.start_run(RunCreate(experiment="digits", tags=tags,
                                          params={"registration.model_name": "digits"}), ALICE)
    cp.tracker.update_run(done.id, RunUpdate(status=RunStatus.FINISHED), ALICE)
    failed = cp.tracker.start_run(RunCreate(experiment="digits", tags=tags), ALICE)
    cp.tracker.update_run(failed.id, RunUpdate(status=RunStatus.FAILED), ALICE)
    plain = cp.tracker.start_run(RunCreate(experiment="notebook"), ALICE)  # not a training job
    cp.tracker.update_run(plain.id, RunUpdate(status=RunStatus.FINISHED), ALICE)
    pipeline_event(4, "nightly", "run_started")
    pipeline_event(4, "nightly", "stage_failed", stage="evaluate", reason="worse than champion")
    pipeline_event(4, "nightly", "run_failed", reason="stage evaluate failed")

    chat = receivers["ml"].wait(5)
    assert_slack(chat)
    assert [m["blocks"][0]["text"]["text"] for m in chat] == [
        "Training succeeded: raysubmit_abc", "Training failed: raysubmit_abc",
        "Pipeline run started: nightly", "Pipeline stage failed: nightly",
        "Pipeline run failed: nightly"]
    succeeded, run_failed = receivers["json"].wait(2)
    assert succeeded["kind"] == "training.succeeded"
    assert succeeded["subject"] == {"type": "training_job", "name": "raysubmit_abc"}
    assert succeeded["details"]["model"] == "digits" and succeeded["details"]["run_id"] == done.id
    assert run_failed["kind"] == "pipeline.run_failed"
    assert run_failed["details"] == {"run_id": "4", "stage": None, "reason": "stage evaluate failed"}
    time.sleep(0.3)
    assert len(receivers["ml"].received) == 5 and len(receivers["json"].received) == 2


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port whose listener accepts connections and never answers (a hung receiver)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


def test_a_receiver_that_is_down_does_not_slow_the_registry(cp: ControlPlane, receivers,
                                                             hanging_port: int) -> None:
    cp.alerts.put_receiver(ReceiverSpec(name="hung", url=f"http://127.0.0.1:{hanging_port}/hook",
                                        events=["registry.*"], timeout_s=10, max_attempts=3,
                                        backoff_s=0.5), "alice")
    listen(cp, receivers["healthy"], "healthy", ["registry.*"])
    register(cp, "churn", seed=5)
    took = []
    for stage in (Stage.STAGING, Stage.NONE, Stage.STAGING, Stage.PRODUCTION):
        started = time.monotonic()
        cp.registry.transition_stage("churn", 1, StageChange(stage=stage), ALICE)
        took.append(time.monotonic() - started)
    # Each delivery to the hung receiver takes 3 tries of 10 s plus backoff; every registry
    # call returned long before its first try could have ended, and while it is still
    # being retried the healthy receiver has heard everything.
    assert max(took) < 9, took  # held by the hung receiver, one would take its 10 s
    assert len(receivers["healthy"].wait(5, timeout=10)) == 5
    hung = cp.alerts.notifier.stats()["hung"]
    assert hung.get("sent", 0) == 0 and hung.get("failed", 0) == 0, hung


# ---------------------------------------------------------------- REST API and CLI


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("notify") / "home").start()
    yield process
    process.stop()


def cli(server: ControlPlaneProcess, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "modelplane.cli", *args],
                            env={**server.env, "COLUMNS": "250"}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_receivers_over_rest_and_the_cli(server: ControlPlaneProcess, receivers,
                                         tmp_path: Path) -> None:
    with Client(server.url, server.admin_token) as admin:
        created = admin.put_alert_receiver({"name": "chat", "url": receivers["chat"].url,
                                            "format": "slack", "events": ["training.*", "registry.*"]})
        assert created.format == "slack" and created.events == ["training.*", "registry.*"]
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump({"receivers": [
            {"name": "ops", "url": receivers["ops"].url},
            {"name": "hub", "url": receivers["hub"].url, "events": ["training.submitted"]}]}))
        applied = cli(server, "alerts", "apply", str(rules))
        assert f"receiver ops: {receivers['ops'].url} (json; alert.*)" in applied
        shown = {r["name"]: r for r in json.loads(cli(server, "alerts", "receivers", "--json"))}
        assert shown["chat"]["format"] == "slack" and shown["ops"]["events"] == ["alert.*"]
        assert shown["hub"]["events"] == ["training.submitted"] and shown["hub"]["format"] == "json"
        table = cli(server, "alerts", "receivers")
        assert "training.*, registry.*" in table and "slack" in table

        admin.report_training_submission("raysubmit_xyz", experiment="digits", model="digits",
                                         address="http://head:8265")
        version = admin.register_version("http-fraud", linear_classifier(seed=3),
                                         linear_classifier_manifest())
    submitted, registered = receivers["chat"].wait(2)
    assert_slack([submitted, registered])
    assert submitted["blocks"][0]["text"]["text"] == "Training submitted: raysubmit_xyz"
    assert "by admin" in submitted["text"]
    assert registered["blocks"][0]["text"]["text"] == f"Registry version registered: http-fraud:{version.version}"
    assert f"<{server.url}/api/models/http-fraud/versions/1|" in \
        registered["blocks"][2]["elements"][0]["text"]
    [hub] = receivers["hub"].wait(1)
    assert hub["kind"] == "training.submitted" and hub["details"]["ray_address"] == "http://head:8265"
    time.sleep(0.3)
    assert receivers["ops"].received == []


def test_what_a_killed_control_plane_owed_a_receiver_is_sent_after_its_restart(
        tmp_path: Path, receivers) -> None:
    """A receiver down while the control plane is killed (kill -9: nothing runs on the way
    out) still hears of every event once both are back, each under the key it was first
    tried with, so it can drop a repeat."""
    pager = receivers["pager"]
    pager.status = 503
    server = ControlPlaneProcess(tmp_path / "home").start()
    try:
        with Client(url=server.url, token=server.admin_token) as api:
            api.put_alert_receiver(ReceiverSpec(name="pager", url=pager.url,
                                                events=["registry.*"], backoff_s=0.2,
                                                max_attempts=10))
            model = tmp_path / "m.onnx"
            model.write_bytes(linear_classifier(seed=3))
            api.register_version("churn", model, manifest=linear_classifier_manifest())
        deadline = time.monotonic() + 20
        while not pager.tries and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pager.tries, "the control plane never tried the receiver"
        server.kill()
        pager.status = 200
        server.start()
        # A delivery claimed when the kill came is sent once its claim runs out (25 s here).
        [body] = pager.wait(1, timeout=60)
        assert body["kind"] == "registry.version_registered"
        assert pager.keys == [pager.tries[0]]
    finally:
        server.stop()
