"""Which Ray cluster a run ran on: where it is and which start of it. Light (Ray and the
standard library only): a training job's driver records it, the control plane compares."""

from __future__ import annotations

from typing import Any, NamedTuple


class RayCluster(NamedTuple):
    """A Ray cluster as a run records it: where it is, and which start of it."""

    address: str  # the GCS address
    head: str  # the head node's host name: loopback and private addresses repeat elsewhere
    session: str  # a cluster's session is new at every start

    def restarted_as(self, now: RayCluster) -> bool:
        """Whether ``now`` is this cluster, at the same place, started again since."""
        return (self.address, self.head) == (now.address, now.head) and \
            self.session != now.session


def this_ray_cluster(nodes: list[dict[str, Any]] | None = None) -> RayCluster | None:
    """The Ray cluster this process is connected to (``nodes``: ``ray.nodes()`` where the
    caller has it already)."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return RayCluster(str(context.gcs_address), head_host(ray.nodes() if nodes is None else nodes),
                      str(context.get_session_name()))


def head_host(nodes: list[dict[str, Any]]) -> str:
    """The head node's host name among ``nodes`` (``ray.nodes()``), "" when none says."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    return next((str(node.get("NodeManagerHostname") or "") for node in nodes
                 if HEAD_NODE_RESOURCE_NAME in node.get("Resources", {})), "")
