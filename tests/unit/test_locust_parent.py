"""Background Locust (the quickstart's traffic) stops when the program that started it
dies, even by SIGKILL, which skips every cleanup of that program's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from tests.conftest import free_port

LOCUSTFILE = Path(__file__).resolve().parents[2] / "benchmarks" / "locustfile.py"


def test_locust_quits_once_its_parent_is_killed(tmp_path: Path) -> None:
    # The parent: starts Locust as the quickstart does (its pid in the environment), says
    # the child's pid, then waits to be killed.
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, "MODELPLANE_PARENT_PID": str(os.getpid()), "MODELPLANE_WAIT": "0.2"}}
        child = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", {str(LOCUSTFILE)!r}, "--headless", "-u", "1",
             "-r", "1", "--host", "http://127.0.0.1:{free_port()}", "--only-summary"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(child.pid, flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    locust = psutil.Process(int(parent.stdout.readline()))
    try:
        time.sleep(3)  # Locust running, its users failing to connect
        assert locust.is_running() and locust.status() != psutil.STATUS_ZOMBIE
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        locust.wait(30)  # psutil.TimeoutExpired fails the test: the load kept running
    finally:
        for process in (parent,):
            if process.poll() is None:
                process.kill()
        if locust.is_running():
            locust.kill()


def test_locust_without_a_parent_pid_runs_as_before(tmp_path: Path) -> None:
    """Run by hand (no MODELPLANE_PARENT_PID), it keeps its own time limit."""
    env = {k: v for k, v in os.environ.items() if k != "MODELPLANE_PARENT_PID"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-r", "1",
         "-t", "2s", "--host", f"http://127.0.0.1:{free_port()}", "--only-summary"],
        env={**env, "MODELPLANE_WAIT": "0.2"}, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started >= 2
    assert "Aggregated" in result.stdout + result.stderr, result.stderr[-2000:]
