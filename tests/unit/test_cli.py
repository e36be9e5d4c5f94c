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
    current = _leadership_text(lease(8.4), now)
    assert "head:41:ab12 (term 3" in current and "8 s left" in current
    expired = _leadership_text(lease(-30), now)
    assert "LEASE EXPIRED 30 s ago" in expired and "no control plane runs the loops" in expired


def test_deploy_options_become_the_scaling_the_api_takes() -> None:
    import typer

    from control_plane.cli.serving import _scaling_options

    def scaling(**given: object) -> dict[str, object] | None:
        options: dict[str, object] = dict(
            replicas=None, autoscale=None, num_cpus=None, num_gpus=None, target_ongoing=None,
            downscale_delay=None, max_queued=None, spread=False, max_per_node=None, resource=[],
            accelerator_type=None)
        return _scaling_options(**{**options, **given})  # type: ignore[arg-type]

    assert scaling() is None  # nothing given: the endpoint keeps its own
    assert scaling(autoscale="0:3", target_ongoing=2.0, downscale_delay=5.0, max_queued=8,
                   spread=True, resource=["node:w1=0.01", "zone-b=1"]) == {
        "autoscaling": {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 2.0,
                        "downscale_delay_s": 5.0},
        "max_queued_requests": 8, "max_replicas_per_node": 1,
        "resources": {"node:w1": 0.01, "zone-b": 1.0}}
    assert scaling(replicas=2, max_per_node=3) == {"replicas": 2, "max_replicas_per_node": 3}
    for bad, says in [({"replicas": 2, "autoscale": "1:2"}, "not both"),
                      ({"target_ongoing": 2.0}, "need --autoscale"),
                      ({"spread": True, "max_per_node": 2}, "--spread is"),
                      ({"resource": ["gpu"]}, "NAME=AMOUNT"),
                      ({"resource": ["=1"]}, "NAME=AMOUNT"),
                      ({"resource": ["a=lots"]}, "NAME=AMOUNT"),
                      ({"autoscale": "3:1"}, "MIN:MAX")]:
        with pytest.raises(typer.BadParameter, match=says):
            scaling(**bad)


def test_status_lists_lost_nodes_and_the_replicas_on_each() -> None:
    from control_plane.cli.serving import _nodes_title, _replicas_text
    from control_plane.schemas import ClusterOut, NodeOut, ReplicaOut

    def node(node_id: str, alive: bool = True) -> NodeOut:
        return NodeOut(node_id=node_id, address="10.0.0.1", alive=alive, head=False, cpus=2,
                       gpus=0, resources={}, endpoint_replicas=0)

    def replica(node_id: str, endpoint: str, state: str = "RUNNING",
                version: int | None = None) -> ReplicaOut:
        return ReplicaOut(endpoint=endpoint, version=version, deployment="endpoint",
                          replica_id=f"{endpoint}-{node_id}-{state}", state=state,
                          node_id=node_id)

    cluster = ClusterOut(nodes=[node("a"), node("b"), node("c", alive=False)],
                         replicas=[replica("a", "fraud"), replica("a", "fraud", "STARTING"),
                                   replica("a", "iris", version=3), replica("b", "fraud")])
    assert _nodes_title(cluster) == "2 node(s) alive, 1 lost"
    assert _replicas_text(cluster, "a") == "fraud x2 (1 not running), iris-v3 x1"
    assert _replicas_text(cluster, "b") == "fraud x1"
    assert _replicas_text(cluster, "c") == "-"
