"""Faults from mistakes on a real local Ray + Serve: a second `up` from another home, an
endpoint that can never start, a Monitor that dies, and the admin token kept out of logs.

The tests share the session's platform; the Monitor test kills the Monitor, so it runs
last and leaves a new one running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import ray

from control_plane.client import Client
from control_plane.leadership import LEASE_S, LeaseState, read_lease
from control_plane.ownership import AppOwner, application_owners, serve_details, store_identity
from control_plane.store import Database
from serving.names import ENDPOINT_APP_PREFIX, is_endpoint_app
from tests.load import BackgroundLoad
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.waiting import wait_for

SMALL = {"num_cpus": 0.05}
ANALYSIS = {"interval_s": 1, "window_s": 3, "min_samples": 100000, "failures_to_rollback": 2,
            "max_p95_ratio": None}


def session_logs() -> list[Path]:
    """Every log file of the Ray session (Ray's dashboard serves them all): the Serve
    replicas' logs under ``logs/serve`` and the workers' stdout and stderr beside them."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return sorted(p for p in logs.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err"))


def predict(platform: Platform, endpoint: str, rows: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}
    response = httpx.post(f"{platform.url}/v2/models/{endpoint}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.asarray(output["data"]).reshape(output["shape"])


def serve_endpoint(platform: Platform, client: Client, name: str, versions: int = 1) -> None:
    for seed in range(1, versions + 1):
        client.register_version(name, linear_classifier(seed=seed), linear_classifier_manifest())
    client.deploy(name, f"{name}:1", scaling=SMALL)
    for version in range(2, versions + 1):
        client.deploy(name, f"{name}:{version}", scaling=SMALL)
    platform.wait_endpoint(name, set(range(1, versions + 1)))


def settled_owners(client: Client) -> dict[str, AppOwner]:
    """Each application's owner once Serve deletes none and runs no endpoint the store has
    not: a module before this one may have just undeployed its endpoint, whose application
    the control plane deletes at its next pass and Serve a moment after that."""
    def settled() -> dict[str, AppOwner] | None:
        details = serve_details()
        applications = details.get("applications") or {}
        stored = [endpoint.name for endpoint in client.list_endpoints()]
        leaving = [name for name, app in applications.items()
                   if app.get("status") == "DELETING"
                   or (name.startswith(ENDPOINT_APP_PREFIX)
                       and not any(is_endpoint_app(name, endpoint) for endpoint in stored))]
        return None if leaving else application_owners(details)

    return wait_for(settled, 60, "Serve to finish deleting applications", interval=0.5)


def our_store(platform: Platform) -> str:
    db = Database(platform.settings.db_url, migrate=False)
    try:
        return store_identity(db)
    finally:
        db.dispose()


def test_the_admin_token_is_not_written_to_the_serve_logs(platform: Platform) -> None:
    token, path = platform.token, str(platform.settings.admin_token_path)

    def bootstrap_lines() -> list[str]:
        return [line for p in session_logs() for line in p.read_text(errors="replace").splitlines()
                if "created the admin token" in line]

    # The bootstrap's log line is there (so these are the right files), with the path only.
    lines = wait_for(bootstrap_lines, 30, "the bootstrap's log line")
    assert any(path in line for line in lines), lines
    leaked = [p.name for p in session_logs() if token in p.read_text(errors="replace")]
    assert leaked == []
    assert any(p.parent.name == "serve" and p.name.startswith("replica_control-plane")
               for p in session_logs())  # the Serve replica logs were among those read


def test_a_second_up_from_another_home_changes_nothing_and_says_why(
        platform: Platform, tmp_path: Path) -> None:
    client = platform.client()
    name = "owned"
    serve_endpoint(platform, client, name)
    store = our_store(platform)
    owners = settled_owners(client)
    assert owners[f"endpoint-{name}"].store_id == store
    assert owners["control-plane"] == AppOwner(store, str(platform.settings.home))
    rows = np.random.default_rng(5).normal(size=(16, 4)).astype(np.float32)
    before = predict(platform, name, rows)
    other = tmp_path / "other-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    env.update(MODELPLANE_HOME=str(other), MODELPLANE_HTTP_PORT=str(platform.port),
               RAY_ADDRESS=ray.get_runtime_context().gcs_address, COLUMNS="300")
    with BackgroundLoad(platform.url, name) as load:
        time.sleep(1)
        result = subprocess.run([sys.executable, "-m", "modelplane.cli", "up"], env=env,
                                capture_output=True, text=True, timeout=300)
        # A control plane sweeps in its first pass, before `up` finds it healthy: a
        # replaced one would have swept the endpoint by now; one more second for the load.
        time.sleep(2)
        assert application_owners(serve_details()) == owners
        # The same careless operator, now trying to clean up from the wrong folder.
        down = subprocess.run([sys.executable, "-m", "modelplane.cli", "down"], env=env,
                              capture_output=True, text=True, timeout=300)
        time.sleep(2)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert str(platform.settings.home) in output and str(other) in output, output
    assert "--take-over" in output and "Nothing was changed" in output
    assert down.returncode == 1, down.stdout + down.stderr
    assert "Nothing was stopped" in down.stderr and str(platform.settings.home) in down.stderr
    assert load.failures() == [], load.failures()[:3]
    assert len(load.answers) > 20
    np.testing.assert_array_equal(predict(platform, name, rows), before)
    assert application_owners(serve_details())["control-plane"].store_id == store
    assert name in {e.name for e in client.list_endpoints()}
    client.undeploy(name)
    client.close()


def test_an_endpoint_that_cannot_start_delays_no_traffic_change_and_no_rollback(
        platform: Platform) -> None:
    client = platform.client()
    serve_endpoint(platform, client, "steady", versions=2)
    serve_endpoint(platform, client, "undo", versions=1)
    client.register_version("undo", linear_classifier(seed=2), linear_classifier_manifest())
    client.register_version("stuck", linear_classifier(seed=1), linear_classifier_manifest())

    def traffic_change(weights: dict[int, float]) -> float:
        started = time.monotonic()
        client.set_traffic("steady", weights)
        platform.wait_weights("steady", weights)
        return time.monotonic() - started

    baseline = traffic_change({1: 90, 2: 10})
    # A stuck endpoint that held the others up would cost them Serve's deploy wait (tens of
    # seconds); a busy host may make one change several seconds slower than the baseline.
    allowed_s = max(3 * baseline, 20.0)
    started = time.monotonic()
    stuck = client.deploy("stuck", "stuck:1", placement="isolated",
                          scaling={"num_cpus": 0.05, "num_gpus": 8})  # never schedulable here
    deploy_s = time.monotonic() - started
    assert stuck.serving is not None and stuck.serving.state == "pending"
    with_stuck = traffic_change({1: 50, 2: 50})
    assert with_stuck <= allowed_s, (baseline, with_stuck, deploy_s)
    # A rollout on a third endpoint, rolled back by hand while "stuck" is still pending.
    rollout = client.start_rollout({"endpoint": "undo", "model_ref": "undo:2", "steps": [50, 100],
                                    "step_duration_s": 600, "drain_s": 1, "analysis": ANALYSIS})
    wait_for(lambda: platform.served_weights("undo") == {1: 50.0, 2: 50.0}, 60, "the first step")
    started = time.monotonic()
    client.rollout_action(rollout.id, "rollback", "operator saw a problem")
    wait_for(lambda: (platform.served_weights("undo") or {}).get(1) == 100.0, 30, "the rollback served")
    rollback_s = time.monotonic() - started
    assert client.get_rollout(rollout.id).state == "rolled_back"
    assert rollback_s <= allowed_s, (baseline, rollback_s)
    print(f"traffic change served after {baseline:.2f}s alone, {with_stuck:.2f}s beside a "
          f"stuck endpoint (its deploy call {deploy_s:.2f}s); rollback served after {rollback_s:.2f}s")
    # The stuck endpoint says why it is not serving, in REST and in `modelplane status`.
    state = wait_for(lambda: (s := client.get_endpoint("stuck").serving) and "DEPLOYING" in (s.error or "")
                     and s, 30, "Serve's status in the endpoint's state")
    assert state.state in ("pending", "failed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    env.update(MODELPLANE_URL=platform.url, MODELPLANE_TOKEN=platform.token, COLUMNS="400")
    status = subprocess.run([sys.executable, "-m", "modelplane.cli", "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if "stuck" in line)
    assert "pending" in line or "failed" in line, status.stdout
    for endpoint in ("stuck", "steady", "undo"):
        client.undeploy(endpoint)
    client.close()


def test_a_killed_monitor_neither_resolves_alerts_nor_breaks_metrics(platform: Platform) -> None:
    from serving.monitoring.monitor import ensure_monitor, get_monitor

    client = platform.client()
    name = "watched-owner"
    serve_endpoint(platform, client, name)
    client.put_alert_rule({"name": "busy", "metric": "requests", "comparison": ">", "threshold": 0,
                           "window_s": 5, "every_s": 1, "endpoint": name})

    def busy() -> list:
        return [a for a in client.alerts() if a.name == "busy"]

    def resolved() -> list:
        return [e for e in client.alert_history(name="busy").items if e.state == "resolved"]

    try:
        with BackgroundLoad(platform.url, name) as load:
            wait_for(lambda: busy() and busy()[0].state == "firing", 60, "the alert to fire")
            ray.kill(get_monitor(), no_restart=True)
            wait_for(lambda: get_monitor() is None, 30, "the Monitor to be gone")
            metrics = httpx.get(f"{platform.url}/api/metrics", timeout=30)
            assert metrics.status_code == 200
            assert "modelplane_monitor_up 0.0" in metrics.text
            assert f'modelplane_traffic_weight{{endpoint="{name}"' in metrics.text
            stats = httpx.get(f"{platform.url}/api/endpoints/{name}/stats", timeout=30)
            assert stats.status_code == 503 and stats.json()["code"] == "monitor_unavailable"
            stale = wait_for(lambda: [a for a in busy() if a.stale], 30, "the alert to go stale")
            assert stale[0].state == "firing" and "Monitor" in stale[0].stale
            env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
            env.update(MODELPLANE_URL=platform.url, MODELPLANE_TOKEN=platform.token, COLUMNS="400")
            listed = subprocess.run([sys.executable, "-m", "modelplane.cli", "alerts", "list"],
                                    env=env, capture_output=True, text=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
            assert "firing (stale)" in listed.stdout, listed.stdout
            time.sleep(5)  # several evaluations without a Monitor
            assert resolved() == [] and busy()[0].state == "firing"
            ensure_monitor()

            def fresh_requests() -> int:
                response = httpx.get(f"{platform.url}/api/endpoints/{name}/stats",
                                     params={"window": 5}, timeout=30)
                if response.status_code == 503:  # the control plane asks again within 5 s
                    return 0
                return (response.json()["versions"].get("1") or {}).get("requests", 0)

            wait_for(fresh_requests, 60, "statistics from the new Monitor")
            wait_for(lambda: busy() and busy()[0].stale is None, 30, "fresh alert data")
            metrics = httpx.get(f"{platform.url}/api/metrics", timeout=30)
            assert "modelplane_monitor_up 1.0" in metrics.text
            # Asked while the load runs: once it stops, the rule rightly resolves.
            assert resolved() == []
        assert load.failures() == [], load.failures()[:3]
    finally:
        ensure_monitor()
        client.delete_alert_rule("busy")
        client.undeploy(name)
        client.close()


def read_lease_of(platform: Platform) -> LeaseState | None:
    db = Database(platform.settings.db_url, migrate=False)
    try:
        return read_lease(db)
    finally:
        db.dispose()


def test_take_over_replaces_only_the_control_plane_and_can_be_undone(
        platform: Platform, tmp_path: Path) -> None:
    client = platform.client()
    name = "kept"
    serve_endpoint(platform, client, name)
    client.close()
    ours = our_store(platform)
    rows = np.random.default_rng(6).normal(size=(8, 4)).astype(np.float32)
    before = predict(platform, name, rows)

    def up(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
        env.update(MODELPLANE_HOME=str(home), MODELPLANE_HTTP_PORT=str(platform.port),
                   RAY_ADDRESS=ray.get_runtime_context().gcs_address, COLUMNS="300")
        return subprocess.run([sys.executable, "-m", "modelplane.cli", "up", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    other = tmp_path / "new-owner"
    with BackgroundLoad(platform.url, name) as load:
        taken = up(other, "--take-over")
        # Our control plane, stopped gracefully by Serve, gives the loops' lease up rather
        # than leaving it to run out (a lease that ran out ends a whole length after its
        # renewal); the new one made its first pass (its sweep) before `up` returned.
        given_up = wait_for(lambda: (lease := read_lease_of(platform)) is not None
                            and lease.expires_at < lease.renewed_at + LEASE_S and lease, 30,
                            "our control plane to give its lease up")
        owners = application_owners(serve_details())
        back = up(platform.settings.home, "--take-over")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert owners["control-plane"].home == str(other) and owners["control-plane"].store_id != ours
    assert owners[f"endpoint-{name}"].store_id == ours  # the old store's endpoint, untouched
    assert given_up.expires_at < given_up.renewed_at + LEASE_S
    # Its holder names this Ray cluster: `up` on another one with this store is refused.
    assert given_up.cluster == ray.get_runtime_context().get_session_name()
    assert back.returncode == 0, back.stdout + back.stderr
    assert load.failures() == [], load.failures()[:3]
    np.testing.assert_array_equal(predict(platform, name, rows), before)
    assert application_owners(serve_details())["control-plane"].store_id == ours
    with platform.client() as client:  # the original store manages it again
        client.undeploy(name)
