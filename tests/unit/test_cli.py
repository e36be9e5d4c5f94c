"""The installed console script answers --help, version and config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelplane import __version__


def _modelplane() -> str:
    script = Path(sys.executable).parent / "modelplane"
    found = str(script) if script.exists() else shutil.which("modelplane")
    if found is None:
        pytest.fail("the `modelplane` console script is not installed; run scripts/setup.sh")
    return found


def test_help_from_the_console_script() -> None:
    result = subprocess.run([_modelplane(), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Usage: modelplane" in result.stdout
    for command in ("version", "config", "quickstart"):
        assert command in result.stdout


def test_version() -> None:
    result = subprocess.run([_modelplane(), "version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"modelplane {__version__}"


def test_config_json_reflects_the_environment(modelplane_home: Path) -> None:
    result = subprocess.run(
        [_modelplane(), "config", "--json"], capture_output=True, text=True, check=True
    )
    values = json.loads(result.stdout)
    assert values["home"] == str(modelplane_home)
    assert values["token"] == "unset" and values["replica_token"] == "unset"
    assert "cache_dir" in values


def test_a_bad_setting_is_a_one_line_error(
    modelplane_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_HTTP_PORT", "nope")
    result = subprocess.run([_modelplane(), "config"], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "MODELPLANE_HTTP_PORT='nope' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_importing_the_packages_is_cheap() -> None:
    code = (
        "import sys, modelplane, kernels, serving, control_plane, training, modelplane.cli\n"
        "heavy = [m for m in ('ray', 'numba', 'sqlalchemy', 'onnxruntime', 'torch') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_status_says_who_runs_the_control_loops_and_whether_its_lease_is_current() -> None:
    from datetime import UTC, datetime, timedelta

    from control_plane.cli.serving import _leadership_text
    from control_plane.schemas import LeadershipOut

    now = datetime.now(UTC)

    def lease(expires_in_s: float) -> LeadershipOut:
        return LeadershipOut(holder="head:41:ab12", term=3, acquired_at=now, renewed_at=now,
                             expires_at=now + timedelta(seconds=expires_in_s),
                             this_process="head:41:ab12", leading=True)

    assert "no control plane" in _leadership_text(LeadershipOut(
        holder=None, term=None, this_process=None, leading=False))
    current = _leadership_text(lease(8.4))
    assert "head:41:ab12 (term 3" in current and "8 s left" in current
    expired = _leadership_text(lease(-30))
    assert "LEASE EXPIRED 30 s ago" in expired and "no control plane runs the loops" in expired
