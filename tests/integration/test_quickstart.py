"""The README's main job, run the way a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from control_plane.artifacts import ArtifactStore
from control_plane.registry import Registry
from control_plane.store import Database


def test_quickstart_runs_and_leaves_a_promoted_champion(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    result = subprocess.run(
        [sys.executable, "-m", "modelplane.cli", "quickstart"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "registered breast-cancer:2" in result.stdout
    home = tmp_path / ".modelplane"
    db = Database(f"sqlite:///{home / 'modelplane.db'}", migrate=False)
    try:
        registry = Registry(db, ArtifactStore(str(home / "artifacts"), max_bytes=1 << 30))
        champion = registry.resolve("breast-cancer@champion")
        assert champion.stage.value == "production"
        assert champion.manifest.metrics["val_accuracy"] > 0.9
        assert champion.manifest.lineage.run_id
    finally:
        db.dispose()
