"""Virtual environments for the peer servers of benchmarks/peers.py, one per peer and version.

Each peer installs into its own venv under ``~/.cache/modelplane-bench/venvs/<peer>-<version>``
(``MODELPLANE_BENCH_CACHE`` moves the root), never into the project's: the peers pin numpy,
FastAPI, Starlette and protobuf versions that differ from the project's and from each other's.
A venv is reused when the requirements it was built from, recorded in ``requirements.txt``
inside it once the install succeeded, equal the pinned ones; otherwise it is built anew.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("MODELPLANE_BENCH_CACHE", Path.home() / ".cache" / "modelplane-bench"))
ORT = "onnxruntime==1.32.0"  # the project's own version: every server runs the same kernels


@dataclass(frozen=True)
class PeerEnv:
    """A peer's pinned requirements and where its venv lives."""

    peer: str
    version: str
    requirements: tuple[str, ...]

    @property
    def path(self) -> Path:
        return CACHE / "venvs" / f"{self.peer}-{self.version}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def pinned(self) -> str:
        return "\n".join(self.requirements) + "\n"


class EnvError(RuntimeError):
    """A peer's venv could not be built; the message says which step failed and why."""


def base_python() -> str:
    """The interpreter the project's venv was made from (a venv of a venv would chain them)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure(env: PeerEnv, log=print) -> dict[str, float | bool]:
    """Build ``env`` unless an equal one exists; its install time and size on disk.

    pip's own progress goes to this process's terminal; a failed step raises EnvError with
    the tail of what pip said.
    """
    marker = env.path / "requirements.txt"
    if marker.exists() and marker.read_text() == env.pinned and env.python.exists():
        log(f"  {env.peer}: reusing {env.path}")
        return {"reused": True, "install_s": 0.0, "size_mb": size_mb(env.path)}
    if env.path.exists():
        log(f"  {env.peer}: requirements changed, rebuilding {env.path}")
        shutil.rmtree(env.path)
    env.path.parent.mkdir(parents=True, exist_ok=True)
    log(f"  {env.peer}: creating {env.path} ({', '.join(env.requirements)})")
    started = time.monotonic()
    run([base_python(), "-m", "venv", str(env.path)], "venv")
    run([str(env.python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], "pip upgrade")
    run([str(env.python), "-m", "pip", "install", "--progress-bar", "off", *env.requirements],
        "pip install")
    # Written last: a venv whose install was interrupted has no marker and is rebuilt.
    marker.write_text(env.pinned)
    elapsed = time.monotonic() - started
    log(f"  {env.peer}: installed in {elapsed:.0f} s, {size_mb(env.path):.0f} MB")
    return {"reused": False, "install_s": elapsed, "size_mb": size_mb(env.path)}


def run(command: list[str], step: str) -> None:
    """Run one install step, its output streamed to the terminal and kept for the error."""
    # Away from the repository and its PYTHONPATH: ``-m pip`` run from the repository root
    # would see the project's egg-info and judge the venv against the project's requirements.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=CACHE, env=env)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        # pip's "Location ... is ignored" warnings about local mirrors are noise here.
        if "is ignored: it is neither a file nor a directory" not in line:
            sys.stdout.write(f"    {line}")
            sys.stdout.flush()
            tail = [*tail[-29:], line]
    if process.wait() != 0:
        errors = [line for line in tail if line.startswith("ERROR")] or tail
        raise EnvError(f"{step} failed (exit {process.returncode}): {''.join(errors)[-1500:]}")


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20
