"""Capture where a run happened: Python, packages, hardware, git commit and branch."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def capture_environment(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A JSON-ready description of this process's environment."""
    return {
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": installed_packages(),
        "hardware": hardware(),
        "git": git_info(cwd),
    }


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version, sorted by name."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            found[name.lower()] = dist.version
    return dict(sorted(found.items()))


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * page_size / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if "torch" in sys.modules:
        # Only ask torch when the caller already imported it: importing it costs seconds.
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def git_info(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Commit, branch and dirtiness of the git repository around ``cwd``, if any."""
    where = Path(cwd or os.getcwd())

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=where, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain")
    return {
        "commit": commit,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(status),
    }
