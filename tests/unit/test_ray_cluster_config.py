"""ray_cluster.yaml passes Ray's own cluster-config validation and keeps secure defaults."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def _validated(config: dict[str, Any]) -> dict[str, Any]:
    # What `ray up` does before it touches a machine: fill in defaults, then validate
    # against ray-schema.json and Ray's own consistency rules. Both run offline.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_ray_accepts_the_cluster_config(config: dict[str, Any]) -> None:
    prepared = _validated(config)
    assert prepared["cluster_name"] == "modelplane"


def test_ray_rejects_a_broken_copy(config: dict[str, Any]) -> None:
    """The validator really looks at the file: an unknown field is refused."""
    import jsonschema

    broken = {**config, "head_start_ray_command": ["ray start --head"]}
    with pytest.raises(jsonschema.ValidationError):
        _validated(broken)


def test_every_ray_command_is_the_checkouts_own(config: dict[str, Any]) -> None:
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    for command in commands:
        for use in re.findall(r"(\S*)\bray (?:stop|start)\b", command):
            assert use.endswith("modelplane/.venv/bin/"), command


def test_ray_runs_with_token_authentication(config: dict[str, Any]) -> None:
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command, command
    # The token every node authenticates with is shipped to it.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_the_job_api_is_not_bound_to_every_interface(config: dict[str, Any]) -> None:
    head = " ".join(config["head_start_ray_commands"])
    assert "0.0.0.0" not in head
    assert re.search(r"--dashboard-host=\S+", head), head


def test_the_code_ships_from_the_checkout_not_a_placeholder(config: dict[str, Any]) -> None:
    assert "example.invalid" not in CONFIG.read_text()
    shipped = config["file_mounts"]["~/modelplane"]
    assert shipped == "build/cluster-code"
    # The export is made from the committed tree, in a folder git ignores.
    assert f"git archive HEAD | tar -x -C {shipped}" in CONFIG.read_text()
    ignored = (CONFIG.parent / ".gitignore").read_text().split()
    assert shipped.split("/")[0] + "/" in ignored


def test_every_node_starts_haproxy_as_modelplane_up_does(config: dict[str, Any]) -> None:
    """No per-request metrics and a sampled access log: what ``ingress_env`` gives a local
    head, so a cluster's ingress costs no more per request than a laptop's."""
    import shlex

    from control_plane.platform import (
        HAPROXY_LOG_TARGET,
        HAPROXY_REQUEST_METRICS,
        SAMPLED_ACCESS_LOG,
    )

    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in c]
    for command in starts:
        exported = dict(word.split("=", 1) for word in shlex.split(command.split("&&")[0])
                        if "=" in word)
        assert exported[HAPROXY_LOG_TARGET] == SAMPLED_ACCESS_LOG, command
        assert exported[HAPROXY_REQUEST_METRICS] == "0", command
