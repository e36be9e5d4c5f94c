"""scripts/gpu-check.sh on a machine without a GPU stops at once with status 2, and the
check reads nvidia-smi's CSV as a GPU machine's nvidia-smi writes it (a stand-in on PATH)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[2]


def test_without_a_gpu_the_script_says_so_and_installs_nothing(tmp_path: Path) -> None:
    path = f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin"  # no nvidia-smi on it
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh")],
                          env={"PATH": path, "HOME": str(tmp_path)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == gpu_check.NO_GPU, done.stdout + done.stderr
    assert "no NVIDIA GPU here" in done.stderr and "installing" not in done.stdout


def test_gpus_and_their_processes_are_read_from_nvidia_smi(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n"
                    "case \"$1\" in\n"
                    "  --query-gpu=*) echo 'NVIDIA H200, 565.57.01, 143771, 812' ;;\n"
                    "  --query-compute-apps=*) printf '4242, 800\\n4242, 12\\n77, 300\\n' ;;\n"
                    "esac\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu_check.gpus() == [{"name": "NVIDIA H200", "driver_version": "565.57.01",
                                 "memory.total": "143771", "memory.used": "812"}]
    assert gpu_check.gpu_memory_by_pid() == {4242: 812, 77: 300}
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    with pytest.raises(gpu_check.NoGpu, match="NVIDIA-SMI has failed"):
        gpu_check.gpus()
