"""Finding the checkpoint to resume from; the `modelplane train` commands' surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modelplane.cli import app, main
from training.checkpoints import RAY_SNAPSHOT_FILE, STATE_FILE, is_run_id, latest_checkpoint


def ray_run_dir(root: Path, names: list[str], *, complete: set[str], latest: str | None) -> Path:
    """A directory laid out the way Ray Train's storage leaves a run."""
    for name in names:
        (root / name).mkdir(parents=True)
        if name in complete:
            (root / name / STATE_FILE).write_bytes(b"state")
    if latest:
        snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": latest}}
        (root / RAY_SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    return root


def test_the_snapshot_names_the_latest_checkpoint(tmp_path: Path) -> None:
    names = ["checkpoint_2026-01-01_10-00-01.000001", "checkpoint_2026-01-01_10-00-02.000001"]
    run = ray_run_dir(tmp_path / "run", names, complete=set(names), latest=names[0])
    assert latest_checkpoint(str(run)) == f"{run}/{names[0]}"


def test_without_a_snapshot_the_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    names = ["checkpoint_2026-01-01_10-00-01.000001", "checkpoint_2026-01-01_10-00-02.000001",
             "checkpoint_2026-01-01_10-00-03.000001"]
    # The newest lost its state file mid-upload (the job was killed): skip it.
    run = ray_run_dir(tmp_path / "run", names, complete=set(names[:2]), latest=None)
    assert latest_checkpoint(str(run)) == f"{run}/{names[1]}"
    assert latest_checkpoint(f"{run}/{names[0]}") == f"{run}/{names[0]}"
    assert latest_checkpoint(str(tmp_path / "missing")) is None
    assert latest_checkpoint(str(ray_run_dir(tmp_path / "empty", [], complete=set(), latest=None))) is None


def test_run_ids_are_told_apart_from_paths() -> None:
    assert is_run_id("0123456789abcdef0123456789abcdef")
    assert not is_run_id("runs/0123456789abcdef0123456789abcdef")
    assert not is_run_id("checkpoint_1")


def test_train_commands_are_registered() -> None:
    import typer

    group = typer.main.get_command(app).commands["train"]
    assert set(group.commands) == {"submit", "status", "logs", "stop", "list", "run"}


def test_submit_refuses_a_bad_spec_before_contacting_ray(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"experiment": {"name": "x"},
                                    "model": {"architecture": "mlp_classifier"},
                                    "data": {"dataset": "digits"},
                                    "hyperparameters": {"learning_rate": -1}}))
    # An address where nothing listens: the spec must fail first, without trying it.
    with pytest.raises(SystemExit) as exited:
        main(["train", "submit", str(path), "--address", "http://127.0.0.1:9"])
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert "hyperparameters.learning_rate" in error and "greater than 0" in error


def test_the_job_api_address_comes_from_flag_ray_variables_or_the_platforms_head(
        modelplane_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelplane.errors import ConfigurationError
    from training.submission import dashboard_address

    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    # Not Ray's default port on a guess: whoever listens there would be sent the job.
    with pytest.raises(ConfigurationError, match="no Ray cluster to submit to.*--address"):
        dashboard_address()
    modelplane_home.mkdir(parents=True)
    (modelplane_home / "ray-head.json").write_text(json.dumps(
        {"pid": 1, "address": "127.0.0.1:6379", "dashboard_url": "http://127.0.0.1:40123"}))
    assert dashboard_address() == "http://127.0.0.1:40123"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address: not the job API
    assert dashboard_address() == "http://127.0.0.1:40123"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    assert dashboard_address() == "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://10.0.0.6:8265")
    assert dashboard_address() == "http://10.0.0.6:8265"
    assert dashboard_address("http://flag:8265") == "http://flag:8265"


def test_train_run_exits_with_the_jobs_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid spec is exit status 2 (the job's own), not 0: scripts and CI rely on it."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"experiment": {"name": "x"},
                                    "model": {"architecture": "mlp_classifier"},
                                    "data": {"dataset": "digits"},
                                    "resources": {"num_workers": 2, "max_workers": 2}}))
    with pytest.raises(SystemExit) as exited:
        main(["train", "run", str(path)])
    assert exited.value.code == 2
    assert "resources.max_workers: only applies with num_workers: auto" in capsys.readouterr().err
