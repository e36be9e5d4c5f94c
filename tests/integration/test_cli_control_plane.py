"""The `modelplane` CLI against a real control plane server, as a user drives it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.servers import ControlPlaneProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.no_ray


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("cli") / "home").start()
    yield process
    process.stop()


def cli(server: ControlPlaneProcess, *args: str, token: str | None = None, ok: bool = True,
        columns: int | None = None):
    env = dict(server.env)
    if columns:
        env["COLUMNS"] = str(columns)  # tables wrap to the terminal's width
    if token:
        env["MODELPLANE_TOKEN"] = token
    result = subprocess.run(
        [sys.executable, "-m", "modelplane.cli", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )
    if ok:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_register_alias_stage_show_and_lineage(server: ControlPlaneProcess, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(linear_classifier(seed=21))
    manifest = tmp_path / "manifest.yaml"
    import yaml

    manifest.write_text(yaml.safe_dump(linear_classifier_manifest(
        lineage={"dataset_uri": "sklearn://iris", "code_commit": "deadbeef"})))
    registered = json.loads(cli(server, "models", "register", "cli-iris", str(model),
                                "-m", str(manifest), "--json").stdout)
    assert registered["version"] == 1
    assert "cli-iris@champion → cli-iris:1" in cli(server, "models", "alias", "cli-iris",
                                                     "champion", "1").stdout
    assert "now staging" in cli(server, "models", "stage", "cli-iris:1", "staging").stdout
    shown = json.loads(cli(server, "models", "show", "cli-iris@champion", "--json").stdout)
    assert shown["stage"] == "staging" and shown["aliases"] == ["champion"]
    listed = json.loads(cli(server, "models", "list", "--json").stdout)
    assert any(m["name"] == "cli-iris" and m["latest_version"] == 1 for m in listed["items"])
    lineage = json.loads(cli(server, "models", "lineage", "cli-iris:1", "--json").stdout)
    assert lineage["lineage"]["code_commit"] == "deadbeef"
    table = cli(server, "models", "show", "cli-iris").stdout
    assert "versions" in table and "staging" in table


def test_cli_errors_say_what_to_do(server: ControlPlaneProcess) -> None:
    missing = cli(server, "models", "show", "ghost:1", ok=False)
    assert missing.returncode == 1
    assert "no model named 'ghost'" in missing.stderr and "Traceback" not in missing.stderr
    bad_stage = cli(server, "models", "stage", "cli-iris:1", "live", ok=False)
    assert bad_stage.returncode == 2 and "not one of none, staging" in bad_stage.stderr
    bad_ref = cli(server, "models", "approve", "cli-iris", ok=False)
    assert bad_ref.returncode == 2 and "NAME:VERSION" in bad_ref.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "modelplane.cli", "models", "list", "--url", "http://127.0.0.1:9"],
        env=server.env, capture_output=True, text=True, timeout=60,
    )
    assert unreachable.returncode == 1 and "modelplane up" in unreachable.stderr


def test_tokens_and_approvals(server: ControlPlaneProcess, tmp_path: Path) -> None:
    approver = cli(server, "token", "create", "carol", "--role", "approver", "--json").stdout
    secret = json.loads(approver)["token"]
    listed = json.loads(cli(server, "token", "list", "--json").stdout)
    assert {"admin", "carol"} <= {t["name"] for t in listed}
    assert all("token_hash" not in t and secret not in json.dumps(t) for t in listed)
    out = cli(server, "models", "approve", "cli-iris:1", "--comment", "ok", token=secret).stdout
    assert "approved cli-iris:1 by carol" in out
    cli(server, "token", "revoke", "carol")
    denied = cli(server, "models", "approve", "cli-iris:1", token=secret, ok=False)
    assert denied.returncode == 1 and "revoked" in denied.stderr


def test_subjects_and_the_approval_policy(server: ControlPlaneProcess) -> None:
    """cli-iris:1 was registered with the admin token: a second token issued to the same
    subject cannot approve it; the policy is shown and changed from the CLI."""
    twin = json.loads(cli(server, "token", "create", "admin-review", "--role", "approver",
                          "--subject", "admin", "--json").stdout)
    listed = {t["name"]: t["subject"] for t in json.loads(cli(server, "token", "list", "--json").stdout)}
    assert listed["admin-review"] == "admin" and listed["admin"] == "admin"
    refused = cli(server, "models", "approve", "cli-iris:1", token=twin["token"], ok=False)
    assert refused.returncode == 1 and "'admin' registered cli-iris:1" in refused.stderr
    assert "registrant" in cli(server, "models", "show", "cli-iris:1").stdout
    bad = cli(server, "token", "create", "someone", "--subject", "alice smith", ok=False)
    assert bad.returncode == 2 and "--subject" in bad.stderr and "Traceback" not in bad.stderr
    for args in (["--role", "trainer", "--model", "a b"], ["--role", "reader", "--model", "m"]):
        refused = cli(server, "token", "create", "a-job", "--expires-in-days", "1", *args, ok=False)
        assert refused.returncode == 2 and "--model" in refused.stderr, refused.stderr
    job = cli(server, "token", "create", "a-job", "--role", "trainer", "--model", "cli-iris",
              "--expires-in-days", "1").stdout
    assert "model 'cli-iris' only" in job
    for args in (["--role", "labeler", "--endpoint", "a/b"], ["--role", "deployer", "--endpoint", "e"]):
        refused = cli(server, "token", "create", "labels", *args, ok=False)
        assert refused.returncode == 2 and "--endpoint" in refused.stderr, refused.stderr
    labels = cli(server, "token", "create", "labels", "--role", "labeler", "--endpoint", "cli-iris").stdout
    assert "endpoint 'cli-iris' only" in labels
    listed = {t["name"]: t for t in json.loads(cli(server, "token", "list", "--json").stdout)}
    assert listed["a-job"]["model"] == "cli-iris" and listed["admin"]["model"] is None
    assert listed["labels"]["endpoint"] == "cli-iris" and listed["admin"]["endpoint"] is None
    table = cli(server, "token", "list", columns=300).stdout
    assert "model cli-iris" in table and "endpoint cli-iris" in table
    changed = cli(server, "models", "policy", "cli-iris", "--require-approval",
                  "--max-unapproved-weight", "10", "--json").stdout
    assert json.loads(changed) == {"require_approval_for_production": True,
                                   "max_unapproved_weight": 10.0}
    shown = cli(server, "models", "policy", "cli-iris").stdout
    assert "max_unapproved_weight" in shown and "10" in shown
    cli(server, "models", "policy", "cli-iris", "--no-require-approval")
    assert "False" in cli(server, "models", "policy", "cli-iris").stdout


def test_who_changed_alerting_is_kept_and_read_with_the_cli(server: ControlPlaneProcess,
                                                            tmp_path: Path) -> None:
    import yaml

    rules = tmp_path / "alerts.yaml"
    rules.write_text(yaml.safe_dump({
        "rules": [{"name": "slow", "metric": "p99_ms", "comparison": ">", "threshold": 250}],
        "receivers": [{"name": "pager", "url": "https://hooks.example.com/T1/SECRET-KEY"}]}))
    cli(server, "alerts", "apply", str(rules))
    deployer = json.loads(cli(server, "token", "create", "mallory-laptop", "--role", "deployer",
                              "--subject", "mallory", "--json").stdout)["token"]
    reader = json.loads(cli(server, "token", "create", "audit-reader", "--role", "reader",
                            "--json").stdout)["token"]
    rules.write_text(yaml.safe_dump({"rules": [{"name": "slow", "metric": "p99_ms",
                                                "comparison": ">", "threshold": 100000,
                                                "enabled": False}]}))
    cli(server, "alerts", "apply", str(rules), token=deployer)
    cli(server, "alerts", "silence", "slow", "--for", "2h", "--reason", "quiet", token=deployer)
    listed = json.loads(cli(server, "alerts", "rules", "--json").stdout)
    assert [(r["created_by"], r["updated_by"]) for r in listed] == [("admin", "mallory-laptop")]
    changes = json.loads(cli(server, "alerts", "changes", "slow", "--json", token=reader).stdout)
    assert [(c["action"], c["actor"], c["subject"]) for c in changes["items"]] == [
        ("silenced", "mallory-laptop", "mallory"), ("replaced", "mallory-laptop", "mallory"),
        ("created", "admin", "admin")]
    assert changes["items"][1]["spec"]["threshold"] == 100000
    table = cli(server, "alerts", "changes", token=reader).stdout
    assert "replaced" in table and "3 of 3" in table, table
    refused = cli(server, "alerts", "changes", "--receivers", token=reader, ok=False)
    assert refused.returncode == 1 and "admin" in refused.stderr
    receivers = json.loads(cli(server, "alerts", "changes", "--receivers", "--json").stdout)
    assert receivers["items"][0]["spec"]["url"] == "https://hooks.example.com/…"
    assert "SECRET" not in json.dumps(receivers)


def test_experiments_commands(server: ControlPlaneProcess) -> None:
    from control_plane.client import Client

    with Client(server.url, server.admin_token) as client:
        runs = []
        for lr in (0.1, 0.01):
            run = client.start_run("cli-exp", params={"lr": lr}, capture_environment=False)
            client.log_metrics(run.id, {"val_loss": lr * 3}, step=0)
            runs.append(run.id)
    experiments = json.loads(cli(server, "experiments", "list", "--json").stdout)
    assert any(e["name"] == "cli-exp" and e["run_count"] == 2 for e in experiments["items"])
    listed = json.loads(cli(server, "experiments", "runs", "cli-exp", "--json").stdout)
    assert {r["id"] for r in listed["items"]} == set(runs)
    compared = json.loads(cli(server, "experiments", "compare", *runs, "--json").stdout)
    assert compared["params"]["lr"] == {runs[0]: 0.1, runs[1]: 0.01}
    assert "val_loss" in cli(server, "experiments", "compare", *runs).stdout


def test_reads_can_require_a_token(tmp_path: Path) -> None:
    locked = ControlPlaneProcess(
        tmp_path / "home", extra_env={"MODELPLANE_READS_REQUIRE_TOKEN": "true"}
    ).start()
    try:
        env = {k: v for k, v in locked.env.items()}
        anonymous = subprocess.run(
            [sys.executable, "-c",
             "import httpx,sys; r=httpx.get(sys.argv[1]); print(r.status_code, r.json()['code'])",
             f"{locked.url}/api/models"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert anonymous.stdout.split() == ["401", "unauthenticated"]
        assert json.loads(cli(locked, "models", "list", "--json").stdout)["total"] == 0
    finally:
        locked.stop()


def test_rollout_watch_outlives_a_control_plane_restart(tmp_path: Path) -> None:
    """A control plane killed and started again while an operator watches a rollout (Serve
    restarting its replica, an upgrade), or before the watch's first look: the watch waits
    for it and shows how the rollout ends, rather than ending with the first connection
    refused."""
    import subprocess
    import time

    import yaml

    server = ControlPlaneProcess(tmp_path / "home").start()
    watch = None
    try:
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text(yaml.safe_dump(linear_classifier_manifest()))
        for seed in (1, 2):
            model = tmp_path / f"m{seed}.onnx"
            model.write_bytes(linear_classifier(seed=seed))
            cli(server, "models", "register", "watched", str(model), "-m", str(manifest))
        cli(server, "deploy", "watched", "watched:1", "--no-wait")
        rollout = json.loads(cli(server, "rollout", "start", "watched", "watched:2",
                                 "--json").stdout)
        env = {**server.env, "MODELPLANE_TOKEN": server.admin_token}
        server.kill()  # a watch begun while the control plane restarts waits for it too
        watch = subprocess.Popen(
            [sys.executable, "-m", "modelplane.cli", "rollout", "watch", str(rollout["id"]),
             "--refresh", "0.2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        time.sleep(3)
        assert watch.poll() is None, watch.communicate()[0]
        server.start()

        def following() -> bool:  # it holds a connection to the control plane between looks
            return any(c.raddr and c.raddr.port == server.port
                       for c in psutil.Process(watch.pid).net_connections())

        wait_for(following, 30, "the watch to reach the control plane")
        server.kill()
        time.sleep(4)  # the watch meets connection refused, again and again
        assert watch.poll() is None, watch.communicate()[0]
        server.start()
        cli(server, "rollout", "abort", str(rollout["id"]), "-r", "the watch is proven")
        shown, _ = watch.communicate(timeout=60)
        assert watch.returncode == 1, shown  # the rollout did not succeed: it was aborted
        assert "the watch is proven" in shown and "Traceback" not in shown
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
        server.stop()
