"""The cluster as the control plane sees it: Ray's nodes, and where each endpoint's replicas run.

Read on demand (``GET /api/cluster``, ``modelplane status``) from Ray's GCS (``ray.nodes``)
and the Serve controller (its instance details, what Serve's REST API and dashboard show),
so a lost node and the replicas Serve moves off it show up as soon as Ray knows.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from control_plane.errors import ControlPlaneUnavailableError
from control_plane.schemas import ClusterOut, NodeOut, ReplicaOut
from serving.names import ENDPOINT_APP_PREFIX, is_endpoint_app

SERVE_DETAILS_TIMEOUT_S = 5.0
# Resources every node has, or that name the node itself: not labels an operator chose.
_BUILT_IN = {"CPU", "GPU", "memory", "object_store_memory"}


def read_cluster() -> ClusterOut:
    """Every node Ray knows (alive or lost) and every endpoint replica Serve runs; none of
    either for a control plane that runs outside Ray (embedded in a test or a script)."""
    import ray

    from control_plane.ownership import serve_details

    if not ray.is_initialized():
        return ClusterOut(nodes=[], replicas=[])
    try:
        details = serve_details(timeout_s=SERVE_DETAILS_TIMEOUT_S)
        raw_nodes = ray.nodes()
    except Exception as error:  # a controller restarting, or Ray going away
        raise ControlPlaneUnavailableError(
            f"Ray or Serve's controller did not answer ({type(error).__name__}); retry "
            "shortly") from None
    replicas = _endpoint_replicas(details)
    per_node: dict[str, int] = defaultdict(int)
    for replica in replicas:
        per_node[replica.node_id or ""] += 1
    nodes = [_node(raw, per_node) for raw in raw_nodes]
    nodes.sort(key=lambda n: (not n.head, not n.alive, n.address))
    return ClusterOut(nodes=nodes, replicas=replicas)


def _node(raw: dict[str, Any], per_node: dict[str, int]) -> NodeOut:
    resources = raw.get("Resources") or {}
    labels = {name: float(amount) for name, amount in resources.items()
              if name not in _BUILT_IN and not name.startswith("node:")}
    return NodeOut(
        node_id=raw["NodeID"], address=raw.get("NodeManagerAddress", ""),
        alive=bool(raw.get("Alive")), head="node:__internal_head__" in resources,
        cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)),
        resources=labels, endpoint_replicas=per_node.get(raw["NodeID"], 0))


def _endpoint_replicas(details: dict[str, Any]) -> list[ReplicaOut]:
    found = []
    for app_name, app in (details.get("applications") or {}).items():
        if not is_endpoint_app(app_name):
            continue
        for deployment_name, deployment in (app.get("deployments") or {}).items():
            # An isolated version's application runs deployment model-v{n}; an endpoint's
            # own runs `endpoint` or `router` (its name may end in -v2 itself).
            endpoint, version = app_name[len(ENDPOINT_APP_PREFIX):], ""
            if deployment_name.startswith("model-v"):
                version = deployment_name[len("model-v"):]
                endpoint = endpoint.removesuffix(f"-v{version}")
            for replica in deployment.get("replicas") or []:
                state = replica.get("state", "")
                found.append(ReplicaOut(
                    endpoint=endpoint, version=int(version) if version.isdigit() else None,
                    deployment=deployment_name, replica_id=str(replica.get("replica_id", "")),
                    state=str(getattr(state, "value", state)), node_id=replica.get("node_id"),
                    node_address=replica.get("node_ip"), pid=replica.get("pid")))
    found.sort(key=lambda r: (r.endpoint, r.version or 0, r.deployment, r.replica_id))
    return found
