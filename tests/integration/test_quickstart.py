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

# In the Ray tier's session stream (tests/conftest.py), before its Ray starts: that evens
# the two streams out (about 26 minutes each when they run at once on 2 cores).
RAY_STREAM = "session"


def _client_env(root: Path, port: int) -> dict[str, str]:
    return {"MODELPLANE_HOME": str(root / ".modelplane"),
            "MODELPLANE_URL": f"http://127.0.0.1:{port}"}


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
                         "registered breast-cancer:3", "registered breast-cancer:4", "promoted",
                         "it never took traffic", "alert firing", "started run #3 by itself",
                         "modelplane down"):
            assert promised in out, promised
        # The pipeline's stages print as they pass, and the shuffled labels stop at evaluate.
        for stage in ("validate_data", "train", "evaluate", "benchmark", "approve", "deploy"):
            assert re.search(rf"^\s+{stage}\s+(passed|skipped)", out, flags=re.MULTILINE), stage
        assert re.search(r"^\s+evaluate\s+failed", out, flags=re.MULTILINE)
        # Every step numbered once, in order; Ray's own notes stay out of the story.
        assert re.findall(r"^(\d+)\. ", out, flags=re.MULTILINE) == [str(n) for n in range(1, 8)]
        assert "(raylet)" not in out + result.stderr
        metrics = httpx.get(f"http://127.0.0.1:{port}/api/metrics", timeout=30).text
        served = set(re.findall(r'endpoint="breast-cancer",version="(\d+)"', metrics))
        # The champion's figures; the Monitor forgets versions once the endpoint stops
        # serving them (1 and 2 drained after their successors' promotions).
        assert "4" in served, served
        shown = subprocess.run([sys.executable, "-m", "modelplane.cli", "models", "show",
                                "breast-cancer"], cwd=root, env={**env, **_client_env(root, port)},
                               capture_output=True, text=True, timeout=60)
        cells = re.findall(r"\d+\.\d+ / \d+\.\d+, \d+\.\d+", shown.stdout)
        assert len(cells) >= 3, shown.stdout  # the figures of 1, 2 and 4 (3 was never served)
    finally:
        subprocess.run([sys.executable, "-m", "modelplane.cli", "down"], cwd=root, env=env,
                       capture_output=True, timeout=180)
    home = root / ".modelplane"
    db = Database(f"sqlite:///{home / 'modelplane.db'}", migrate=False)
    try:
        registry = Registry(db, ArtifactStore(str(home / "artifacts"), max_bytes=1 << 30))
        champion = registry.resolve("breast-cancer@champion")
        assert champion.version == 4 and champion.stage.value == "production"
        assert champion.manifest.lineage.run_id
        assert champion.manifest.lineage.dataset_uri.endswith("breast-cancer-latest.csv")
        assert registry.get_version("breast-cancer", 2).stage.value == "archived"
        bad = registry.get_version("breast-cancer", 3)
        assert bad.status == "rejected" and "evaluate" in bad.status_reason
        rollouts = RolloutController(db, registry, deployments=None,  # type: ignore[arg-type]
                                     stats=lambda e, w, s: {}).list(endpoint="breast-cancer")
        outcome = {r.candidate_version: r.state.value for r in rollouts}
        assert outcome == {2: "succeeded", 4: "succeeded"}  # version 3 never reached traffic
        from sqlalchemy import select

        from control_plane.store.models import ModelVersionRow, VersionBenchmarkRow

        with db.session(readonly=True) as session:
            measured = set(session.scalars(select(ModelVersionRow.version).join(
                VersionBenchmarkRow, VersionBenchmarkRow.version_id == ModelVersionRow.id).where(
                VersionBenchmarkRow.status == "succeeded")).all())
        assert measured == {1, 2, 4}, measured
        from control_plane.store.models import AlertEventRow

        with db.session(readonly=True) as session:
            fired = session.scalars(select(AlertEventRow.name).where(
                AlertEventRow.state == "firing")).all()
        assert "breast-cancer-input-drift" in fired
    finally:
        db.dispose()
