"""A Ray head that never becomes reachable is stopped whole: `ray start` exits without
stopping the GCS server and raylet it started, and `up` must not leave them running."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psutil
import pytest

from control_plane import platform
from control_plane.errors import ControlPlaneUnavailableError
from modelplane.settings import Settings
from tests.waiting import wait_for


def processes_under(root: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if str(root) in " ".join(process.info["cmdline"] or ()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_a_head_that_never_answers_leaves_no_process_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(tempfile.mkdtemp(prefix="mphf"))
    monkeypatch.setenv("RAY_TMPDIR", str(root / "ray"))
    settings = Settings.from_env({"MODELPLANE_HOME": str(root / "home")})
    settings.home.mkdir(parents=True)
    # The head comes up, but this side never reaches it (an overloaded machine, a firewall).
    monkeypatch.setattr(platform, "_connect", lambda address: False)
    deadline = time.monotonic() + 60
    with pytest.raises(ControlPlaneUnavailableError, match="did not come up"):
        # Long enough for the GCS server and raylet to be running when it gives up.
        platform._await_head(settings, platform._launch_head(settings, num_cpus=1, fast=False),
                             timeout_s=12)
    assert time.monotonic() < deadline

    def survivors() -> list[str]:
        found = []
        for process in processes_under(root):
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(" ".join(process.cmdline())[:120])
            except psutil.Error:  # gone between the listing and the look
                continue
        return found

    # A worker a dying raylet had just spawned exits on its own a moment later.
    wait_for(lambda: not survivors(), 60, "no process of the head left", seen=survivors)
    assert not (settings.home / platform.HEAD_RECORD).exists()
