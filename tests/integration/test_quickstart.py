"""The README's main job, run the way a user runs it (on its own private Ray head)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from control_plane.artifacts import ArtifactStore
from control_plane.registry import Registry
from control_plane.store import Database
from tests.conftest import free_port


def test_quickstart_serves_a_canary_and_promotes_the_champion() -> None:
    root = Path(tempfile.mkdtemp(prefix="mpq"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPLANE_", "RAY_"))}
    env.update(MODELPLANE_HTTP_PORT=str(free_port()), RAY_TMPDIR=str(root / "ray"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "modelplane.cli", "quickstart"], cwd=root, env=env,
            capture_output=True, text=True, timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        out = result.stdout
        assert "registered breast-cancer:2" in out
        assert "200 requests answered: {'1': 200}" in out
        assert "500 requests answered: {'1':" in out and "'2':" in out
        assert "last 60 s per version" in out and "modelplane down" in out
    finally:
        subprocess.run([sys.executable, "-m", "modelplane.cli", "down"], cwd=root, env=env,
                       capture_output=True, timeout=180)
    home = root / ".modelplane"
    db = Database(f"sqlite:///{home / 'modelplane.db'}", migrate=False)
    try:
        registry = Registry(db, ArtifactStore(str(home / "artifacts"), max_bytes=1 << 30))
        champion = registry.resolve("breast-cancer@champion")
        assert champion.stage.value == "production"
        assert champion.manifest.metrics["val_accuracy"] > 0.9
        assert champion.manifest.lineage.run_id
    finally:
        db.dispose()
