"""The README's main job, run the way a user runs it (on its own private Ray head).

The story runs with shortened durations (`--short`); every outcome it promises is checked
in the store and on the live platform before it is stopped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from control_plane.artifacts import ArtifactStore
from control_plane.registry import Registry
from control_plane.rollouts.controller import RolloutController
from control_plane.store import Database
from tests.conftest import free_port


def test_quickstart_tells_the_whole_story() -> None:
    root = Path(tempfile.mkdtemp(prefix="mpq"))  # short: Ray's socket paths live under it
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPLANE_", "RAY_"))}
    env.update(MODELPLANE_HTTP_PORT=str(port), RAY_TMPDIR=str(root / "ray"), COLUMNS="160")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "modelplane.cli", "quickstart", "--short"], cwd=root, env=env,
            capture_output=True, text=True, timeout=1200,
        )
        out = result.stdout
        assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
        for promised in ("registered breast-cancer:1", "registered breast-cancer:2",
                         "registered breast-cancer:3", "promoted", "rolled back automatically",
                         "alert firing", "modelplane down"):
            assert promised in out, promised
        # Every step numbered once, in order; Ray's own notes stay out of the story.
        assert re.findall(r"^(\d+)\. ", out, flags=re.MULTILINE) == [str(n) for n in range(1, 8)]
        assert "(raylet)" not in out + result.stderr
        metrics = httpx.get(f"http://127.0.0.1:{port}/api/metrics", timeout=30).text
        served = set(re.findall(r'endpoint="breast-cancer",version="(\d+)"', metrics))
        # The champion's figures; the Monitor forgets versions once the endpoint stops
        # serving them (1 drained after the promotion, 3 after its rollback).
        assert "2" in served, served
    finally:
        subprocess.run([sys.executable, "-m", "modelplane.cli", "down"], cwd=root, env=env,
                       capture_output=True, timeout=180)
    home = root / ".modelplane"
    db = Database(f"sqlite:///{home / 'modelplane.db'}", migrate=False)
    try:
        registry = Registry(db, ArtifactStore(str(home / "artifacts"), max_bytes=1 << 30))
        champion = registry.resolve("breast-cancer@champion")
        assert champion.version == 2 and champion.stage.value == "production"
        assert champion.manifest.lineage.run_id
        assert registry.get_version("breast-cancer", 1).stage.value == "archived"
        bad = registry.get_version("breast-cancer", 3)
        assert bad.status == "rejected" and "accuracy" in bad.status_reason
        rollouts = RolloutController(db, registry, deployments=None,  # type: ignore[arg-type]
                                     stats=lambda e, w: {}).list(endpoint="breast-cancer")
        outcome = {r.candidate_version: (r.state.value, r.reason) for r in rollouts}
        assert outcome[2][0] == "succeeded"
        assert outcome[3][0] == "rolled_back" and "accuracy" in outcome[3][1]
        from sqlalchemy import select

        from control_plane.store.models import AlertEventRow

        with db.session(readonly=True) as session:
            fired = session.scalars(select(AlertEventRow.name).where(
                AlertEventRow.state == "firing")).all()
        assert "breast-cancer-input-drift" in fired and "RolloutRolledBack" in fired
    finally:
        db.dispose()
