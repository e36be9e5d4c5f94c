"""Pipelines over real HTTP: the real client and CLI against a control plane process
(no Serve, so no loop moves the runs: this is the API's contract alone)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from control_plane.client import Client
from control_plane.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from tests.servers import ControlPlaneProcess

pytestmark = pytest.mark.no_ray

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("pl") / "home").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def admin(server: ControlPlaneProcess) -> Iterator[Client]:
    with Client(server.url, server.admin_token) as client:
        yield client


def spec(name: str = "bc", **changes: object) -> dict[str, object]:
    job = yaml.safe_load((EXAMPLES / "breast_cancer.yaml").read_text())
    return {"name": name, "training": {"job": job}, "deploy": {"endpoint": name}, **changes}


def test_define_start_read_and_cancel_a_run(admin: Client) -> None:
    created = admin.apply_pipeline(spec(triggers={"schedule": "0 3 * * *"}))
    assert created.name == "bc" and created.last_run is None
    run = admin.start_pipeline_run("bc", reason="first try")
    assert run.number == 1 and run.state.value == "pending" and run.trigger.value == "manual"
    assert [s.name for s in run.stages] == ["validate_data", "train", "evaluate", "benchmark",
                                            "approve", "deploy"]
    with pytest.raises(ConflictError, match="already running"):
        admin.start_pipeline_run("bc")
    assert admin.pipeline_run("bc").number == admin.pipeline_run("bc", 1).number == 1
    assert admin.list_pipelines()[0].last_run == 1
    cancelled = admin.cancel_pipeline_run("bc", "not today")
    assert cancelled.state.value == "cancelled" and cancelled.reason == "not today"
    assert "run #1: cancelled (not today)" in admin.pipeline_logs("bc", 1)
    assert [r.number for r in admin.pipeline_runs("bc")] == [1]
    second = admin.start_pipeline_run("bc")
    assert second.number == 2


def test_bad_specs_and_unknown_names_get_4xx_naming_the_field(admin: Client, server: ControlPlaneProcess) -> None:
    with pytest.raises(InvalidInputError, match="schedule"):
        admin.apply_pipeline(spec("bad", triggers={"schedule": "61 * * * *"}))
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    response = httpx.put(f"{server.url}/api/pipelines/other", json=spec("bad"), headers=headers)
    assert response.status_code == 400 and "path says 'other'" in response.text
    broken = spec("bad")
    broken["training"]["job"]["hyperparameters"]["epochs"] = 0  # type: ignore[index]
    response = httpx.put(f"{server.url}/api/pipelines/bad", json=broken, headers=headers)
    assert response.status_code in (400, 422) and "epochs" in response.text
    with pytest.raises(NotFoundError, match="no pipeline named 'ghost'"):
        admin.start_pipeline_run("ghost")
    with pytest.raises(NotFoundError, match="no run #99"):
        admin.apply_pipeline(spec("empty"))
        admin.pipeline_run("empty", 99)
    assert httpx.get(f"{server.url}/api/health").status_code == 200  # still serving


def test_only_deployers_start_or_cancel_runs(admin: Client, server: ControlPlaneProcess) -> None:
    admin.apply_pipeline(spec("guarded"))
    reader = admin.create_token("pipeline-reader", "reader")
    with Client(server.url, reader.token) as client:
        assert client.get_pipeline("guarded").name == "guarded"
        with pytest.raises(PermissionDeniedError):
            client.start_pipeline_run("guarded")
        with pytest.raises(PermissionDeniedError):
            client.apply_pipeline(spec("guarded"))
    with Client(server.url, "not-a-token") as client, pytest.raises(AuthenticationError):
        client.start_pipeline_run("guarded")


def test_the_cli_runs_a_spec_file_and_shows_the_run(admin: Client, server: ControlPlaneProcess,
                                                    tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text((EXAMPLES / "breast_cancer.yaml").read_text())
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(
        {"name": "cli-bc", "training": {"job": "job.yaml"}, "deploy": {"endpoint": "cli-bc"}}))
    env = {**os.environ, "MODELPLANE_URL": server.url, "MODELPLANE_TOKEN": server.admin_token}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelplane.cli", "pipeline", *args],
                              capture_output=True, text=True, env=env, timeout=120)

    started = cli("run", str(tmp_path / "pipeline.yaml"))
    assert started.returncode == 0 and "run #1 started" in started.stdout, started.stderr
    shown = cli("status", "cli-bc")
    assert "validate_data" in shown.stdout and "pending" in shown.stdout, shown.stderr
    assert "cli-bc" in cli("list").stdout
    refused = cli("delete", "cli-bc")
    assert refused.returncode != 0 and "modelplane pipeline cancel cli-bc" in refused.stderr
    assert cli("cancel", "cli-bc").returncode == 0
    assert "cancelled" in cli("history", "cli-bc").stdout
    deleted = cli("delete", "cli-bc")
    assert deleted.returncode == 0 and "pipeline cli-bc: deleted" in deleted.stdout, deleted.stderr
    assert "cli-bc" not in cli("list").stdout
    (tmp_path / "pipeline.yaml").write_text("name: cli-bc\ntraining: {job: missing.yaml}\n")
    failed = cli("run", str(tmp_path / "pipeline.yaml"))
    assert failed.returncode != 0 and "missing.yaml" in failed.stderr
