"""Rollouts on a real local Ray + Serve, under load from a background client.

Analysis runs every second over a few seconds of traffic so each rollout takes seconds;
the decisions are the same ones a production rollout makes over minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import ray

from control_plane.client import Client
from control_plane.errors import ConflictError, PermissionDeniedError
from control_plane.schemas import ModelPolicy, ModelUpdate
from tests.load import BackgroundLoad
from tests.onnx_models import (
    calibrate_slow,
    flaky_classifier,
    linear_classifier,
    linear_classifier_manifest,
    slow_classifier,
)
from tests.platform import Platform
from tests.waiting import wait_for

ANALYSIS = {"interval_s": 1, "window_s": 3, "min_samples": 15, "failures_to_rollback": 2,
            "max_p95_ratio": None}
SMALL = {"num_cpus": 0.05}


def rollout_ends(client: Client, rollout_id: int, timeout: float = 90.0) -> Any:
    return wait_for(lambda: (r := client.get_rollout(rollout_id)).state.terminal and r,
                    timeout, f"rollout #{rollout_id} to end")


def stored_weights(client: Client, endpoint: str) -> dict[int, float]:
    return {r.version: r.weight for r in client.get_endpoint(endpoint).routes if not r.shadow}


@pytest.fixture
def endpoint(platform: Platform, request: pytest.FixtureRequest) -> Iterator[tuple[str, Client]]:
    """A fresh model and endpoint per test, serving v1 (a linear classifier); removed after."""
    name = f"ro-{request.node.name.split('[')[0].removeprefix('test_')[:40].replace('_', '-')}"
    client = platform.client()
    client.register_version(name, linear_classifier(seed=1), linear_classifier_manifest())
    client.deploy(name, f"{name}:1", scaling=SMALL)
    platform.wait_endpoint(name, {1})
    yield name, client
    for rollout in client.list_rollouts(endpoint=name, active=True):
        client.rollout_action(rollout.id, "abort", "test finished")
    client.undeploy(name)
    client.close()


def start(client: Client, name: str, **spec: Any) -> Any:
    spec.setdefault("analysis", ANALYSIS)
    spec.setdefault("step_duration_s", 2)
    spec.setdefault("drain_s", 1)
    return client.start_rollout({"endpoint": name, "model_ref": f"{name}:2", **spec})


def test_good_candidate_is_promoted_through_every_step_without_a_failed_request(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    with BackgroundLoad(platform.url, name) as load:
        rollout = start(client, name, steps=[25, 50, 100],
                        analysis={**ANALYSIS, "max_p95_ms": 2000})
        done = rollout_ends(client, rollout.id)
        wait_for(lambda: platform.served_weights(name) == {2: 100.0}, 30, "v1 to be removed")
        time.sleep(1)
    assert done.state == "succeeded", done.reason
    steps = [e for e in client.rollout_events(rollout.id) if e.kind == "step"]
    assert [e.data["weights"][str(2)] for e in steps] == [25, 50, 100]
    version = client.get_version(name, 2)
    assert "champion" in version.aliases and version.stage == "production"
    assert wait_for(lambda: client.get_version(name, 1).stage == "archived", 20, "v1 archived")
    assert load.failures() == [], load.failures()[:3]
    assert set(load.versions()) == {1, 2} and len(load.answers) > 100


def test_candidate_failing_a_fifth_of_requests_is_rolled_back(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    threshold = 0.8416  # P(N(0,1) > 0.8416) = 0.2
    client.register_version(name, flaky_classifier(threshold, seed=1), linear_classifier_manifest())
    with BackgroundLoad(platform.url, name) as load:
        rollout = start(client, name, steps=[50, 100], step_duration_s=30)
        done = rollout_ends(client, rollout.id)
        after_rollback = len(load.answers)
        wait_for(lambda: (platform.served_weights(name) or {}).get(1) == 100.0, 30, "v1 at 100%")
        time.sleep(2)
        settled = len(load.answers)
        time.sleep(2)
    assert done.state == "rolled_back"
    assert "automatic rollback" in done.reason and "error_rate" in done.reason
    # The rejection and the alert follow the rollback's commit, on the controller's thread.
    rejected = wait_for(lambda: (v := client.get_version(name, 2)).status == "rejected" and v,
                        30, "v2 rejected")
    assert "error_rate" in rejected.status_reason
    assert stored_weights(client, name) == {1: 100.0}
    # Every failure is the candidate's own, on the inputs that break it.
    failures = load.failures()
    assert failures and all(f.version == 2 and f.row[0, 0] > threshold for f in failures)
    assert not load.failures(settled) and load.versions(settled) == {1: len(load.answers) - settled}
    assert after_rollback <= settled
    final = next(e for e in client.rollout_events(rollout.id) if e.to_state == "rolled_back")
    assert final.data["analysis"]["candidate"]["error_rate"] > 0.01
    alerts = wait_for(lambda: client.alert_history(name="RolloutRolledBack", endpoint=name).items,
                      30, "the rollback's alert")
    assert len(alerts) == 1 and alerts[0].severity == "critical"
    assert alerts[0].labels["version"] == "2" and "error_rate" in alerts[0].summary


def test_candidate_adding_latency_is_rolled_back_on_p95(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    client.register_version(name, slow_classifier(calibrate_slow(80), seed=1),
                            linear_classifier_manifest())
    with BackgroundLoad(platform.url, name) as load:
        rollout = start(client, name, steps=[50, 100], step_duration_s=30,
                        analysis={**ANALYSIS, "max_p95_ms": 40, "min_samples": 10})
        done = rollout_ends(client, rollout.id)
    assert done.state == "rolled_back" and "p95_ms" in done.reason, done.reason
    assert done.last_analysis["candidate"]["p95_ms"] > 40
    assert load.failures() == []
    # The rejection is a follow-up, done after traffic has moved back (and the reconciler
    # applied it), so it may land a moment after the rollout reads rolled_back.
    wait_for(lambda: client.get_version(name, 2).status == "rejected", 20, "v2 rejected")


def test_shadow_measures_agreement_on_a_known_fraction(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    candidate = linear_classifier(seed=7)
    client.register_version(name, candidate, linear_classifier_manifest())
    # The agreement the candidate should show on the load's input distribution.
    rows = np.random.default_rng(99).normal(size=(20000, 4)).astype(np.float32)
    stable_top = ort.InferenceSession(linear_classifier(seed=1)).run(None, {"input": rows})[0]
    candidate_top = ort.InferenceSession(candidate).run(None, {"input": rows})[0]
    expected = float(np.mean(stable_top.argmax(1) == candidate_top.argmax(1)))
    assert 0.05 < expected < 0.95  # the candidate differs on a real fraction of inputs
    with BackgroundLoad(platform.url, name) as load:
        rollout = start(client, name, strategy="shadow", step_duration_s=600,
                        analysis={**ANALYSIS, "window_s": 60, "min_samples": 200})
        wait_for(lambda: client.get_rollout(rollout.id).last_analysis.get("verdict") == "pass",
                 90, "enough mirrored requests")
        analysis = client.get_rollout(rollout.id).last_analysis
        client.rollout_action(rollout.id, "abort", "measured")
    shadow = analysis["candidate"]["shadow"]
    n = shadow["compared"]
    tolerance = 4 * np.sqrt(expected * (1 - expected) / n)
    assert abs(shadow["agreement"] - expected) < tolerance, (shadow, expected)
    # Mirrored requests never reached clients: every answer came from the stable version.
    assert load.versions() and set(load.versions()) == {1} and load.failures() == []


def test_blue_green_switches_then_switches_back_instantly(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    with BackgroundLoad(platform.url, name) as load:
        rollout = start(client, name, strategy="blue_green", keep_warm_s=300)
        wait_for(lambda: platform.served_weights(name) == {2: 100.0, 1: 0.0}, 60, "the switch")
        switched = len(load.answers)
        time.sleep(1)
        replicas_before = _replica_actors(name)
        client.rollout_action(rollout.id, "rollback", "switching back")
        wait_for(lambda: platform.served_weights(name) == {1: 100.0, 2: 0.0}, 30, "switch back")
        back = time.monotonic()
        time.sleep(1)
    assert client.get_rollout(rollout.id).state == "rolled_back"
    assert load.versions(switched)[2] > 0
    assert set(load.versions_sent_after(back)) == {1}
    # Instant: the same replicas answered; nothing was reloaded or restarted.
    assert _replica_actors(name) == replicas_before
    assert load.failures() == []


def test_an_unapproved_candidate_never_takes_more_than_the_limit(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    """Approval gating on real Serve: the candidate is held at the policy's limit (served
    weights and answers counted by version), a second token of the registrant's subject
    cannot approve, and another subject's approval lets the rollout finish."""
    name, client = endpoint
    client.update_model(name, ModelUpdate(policy=ModelPolicy(
        require_approval_for_production=True, max_unapproved_weight=20)))
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    registrant = client.get_version(name, 2).created_by_subject
    with pytest.raises(ConflictError, match="require_approval_for_production"):
        client.set_traffic(name, {1: 50, 2: 50})
    served: list[dict[int, float]] = []
    with BackgroundLoad(platform.url, name) as load:
        started = len(load.answers)
        rollout = start(client, name, steps=[20, 60, 100], analysis={**ANALYSIS, "min_samples": 5})
        wait_for(lambda: served.append(platform.served_weights(name)) is None
                 and client.get_rollout(rollout.id).state == "awaiting_approval", 60,
                 "the approval gate")
        second = client.create_token(f"{name}-again", "approver", subject=registrant)
        with Client(platform.url, second.token, settings=platform.settings) as same_person, \
                pytest.raises(PermissionDeniedError, match="cannot approve"):
            same_person.approve(name, 2)
        held_until = time.monotonic() + 5
        while time.monotonic() < held_until:
            served.append(platform.served_weights(name))
            time.sleep(0.25)
        assert client.get_rollout(rollout.id).state == "awaiting_approval"
        unapproved = load.versions(started)
        reviewer = client.create_token(f"{name}-reviewer", "approver", subject=f"{name}-reviewer")
        with Client(platform.url, reviewer.token, settings=platform.settings) as other:
            other.approve(name, 2)
        done = rollout_ends(client, rollout.id)
    assert done.state == "succeeded", done.reason
    assert max(w.get(2, 0.0) for w in served) == 20.0, served
    total = unapproved[1] + unapproved[2]
    assert total >= 50 and unapproved[2] > 0, unapproved
    # Answers by version follow the weights: v2's share stays within chance of 20%.
    assert unapproved[2] / total <= 0.2 + 4 * (0.2 * 0.8 / total) ** 0.5, unapproved
    events = client.rollout_events(rollout.id)
    assert [e.data["weights"]["2"] for e in events if e.kind == "step"] == [20, 60, 100]
    approval = next(i for i, e in enumerate(events) if e.reason == "approved")
    assert all(e.data["weights"]["2"] <= 20 for e in events[:approval] if e.kind == "step")
    assert client.get_version(name, 2).stage == "production"
    assert load.failures() == []


def test_control_plane_killed_mid_rollout_resumes_and_traffic_matches_the_store(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    # With one control plane (SQLite) Serve starts another; with two (the PostgreSQL pass)
    # the other serves meanwhile. Either way the next term's holder finishes the rollout.
    name, client = endpoint
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    replicas = _control_plane_replicas()
    assert len(replicas) == platform.settings.control_plane_replicas
    with BackgroundLoad(platform.url, name) as load:
        rollout = start(client, name, steps=[20, 60, 100], step_duration_s=4)
        wait_for(lambda: client.get_rollout(rollout.id).step_index >= 1, 60, "step 2")
        leader = client.leadership()
        assert leader.holder is not None and leader.term is not None
        killed = _leader_replica(leader.holder)
        ray.kill(killed, no_restart=False)
        wait_for(lambda: (now := _control_plane_replicas()).keys().isdisjoint({killed._actor_id})
                 and len(now) == len(replicas) and platform.healthy(), 120,
                 "the killed control plane replaced")
        # The killed one could not give its lease up: another takes the next term (at once,
        # since its process is gone from this machine).
        wait_for(lambda: client.leadership().term == leader.term + 1, 60, "a takeover")
        assert client.leadership().holder not in (None, leader.holder)
        done = rollout_ends(client, rollout.id, timeout=120)
        wait_for(lambda: platform.served_weights(name) == stored_weights(client, name), 30,
                 "the route table to match the store")
    assert done.state == "succeeded", done.reason
    wait_for(lambda: stored_weights(client, name) == {2: 100.0}, 30, "v1 drained and removed")
    steps = [e.data["weights"]["2"] for e in client.rollout_events(rollout.id) if e.kind == "step"]
    assert steps == [20, 60, 100]  # resumed at its step, none repeated or skipped
    assert load.versions()[2] > 0
    # Requests in flight at the kill go to the data plane, which the kill does not touch.
    assert load.failures() == []


def test_route_table_is_guarded_and_bad_specs_are_clear(
        platform: Platform, endpoint: tuple[str, Client]) -> None:
    name, client = endpoint
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    response = httpx.post(f"{platform.url}/api/rollouts", json={
        "endpoint": name, "model_ref": f"{name}:2", "steps": [50, 10]},
        headers={"authorization": f"Bearer {platform.token}"}, timeout=30)
    assert response.status_code == 400 and "increase" in response.json()["error"]
    response = httpx.post(f"{platform.url}/api/rollouts", json={
        "endpoint": name, "model_ref": f"{name}:2", "step_duration_s": "soon"},
        headers={"authorization": f"Bearer {platform.token}"}, timeout=30)
    assert response.status_code == 422 and "step_duration_s" in response.text
    rollout = start(client, name, step_duration_s=600)
    with pytest.raises(ConflictError, match="active rollout"):
        client.set_traffic(name, {1: 100})
    wait_for(lambda: client.get_rollout(rollout.id).state == "progressing", 30, "the first step")
    client.rollout_action(rollout.id, "pause")
    assert client.get_rollout(rollout.id).state == "paused"
    client.rollout_action(rollout.id, "abort", "done")
    assert client.get_rollout(rollout.id).state == "failed"


def _replica_actors(app_suffix: str) -> set[str]:
    from ray.util import list_named_actors

    return {a["name"] for a in list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::endpoint-{app_suffix}#")}


def _control_plane_replicas() -> dict[Any, Any]:
    """The live control-plane replicas' actor handles, by actor id."""
    from ray.util import list_named_actors

    found = {}
    for actor in list_named_actors(all_namespaces=True):
        if actor["name"].startswith("SERVE_REPLICA::control-plane#"):
            with contextlib.suppress(ValueError):  # gone between the listing and the lookup
                handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
                found[handle._actor_id] = handle
    return found


def _leader_replica(holder: str) -> Any:
    """The control-plane replica whose process holds the lease (``host:pid:id``)."""
    pid = int(holder.split(":")[-2])
    for handle in _control_plane_replicas().values():
        if ray.get(handle.__ray_call__.remote(lambda _: os.getpid()), timeout=30) == pid:
            return handle
    raise AssertionError(f"no live control-plane replica has pid {pid}")


def test_cli_runs_a_rollout_from_a_file_and_shows_its_history(
        platform: Platform, endpoint: tuple[str, Client], tmp_path: Path) -> None:
    import yaml

    name, client = endpoint
    client.register_version(name, linear_classifier(seed=2), linear_classifier_manifest())
    spec = tmp_path / "rollout.yaml"
    spec.write_text(yaml.safe_dump({"strategy": "canary", "steps": [50, 100],
                                    "step_duration_s": "2s", "drain_s": "1s",
                                    "analysis": {**ANALYSIS, "interval_s": "1s"}}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
        env.update(MODELPLANE_URL=platform.url, MODELPLANE_TOKEN=platform.token,
                   MODELPLANE_HOME=str(tmp_path / "home"))
        return subprocess.run([sys.executable, "-m", "modelplane.cli", "rollout", *args],
                              env=env, capture_output=True, text=True, timeout=180)

    bad = cli("start", name, f"{name}:2", "--steps", "50,10")
    assert bad.returncode == 1 and "canary steps must increase" in bad.stderr
    with BackgroundLoad(platform.url, name):
        started = cli("start", name, f"{name}:2", "-f", str(spec), "--watch")
    assert started.returncode == 0, started.stderr + started.stdout
    assert "succeeded" in started.stdout and "step 2/2" in started.stdout
    status = cli("status", name)
    assert "succeeded" in status.stdout and f"{name}:2" in status.stdout
    events = json.loads(cli("history", name, "--json").stdout)
    assert [e["kind"] for e in events][:3] == ["created", "transition", "step"]
    assert any(e["to_state"] == "succeeded" for e in events)
    listed = cli("list", "--endpoint", name)
    assert "succeeded" in listed.stdout
    missing = cli("status", "no-such-endpoint")
    assert missing.returncode == 1 and "has had no rollout" in missing.stderr
