"""Read a Ray cluster's capacity for :mod:`training.capacity`: per node, what it has, what
is unreserved now, and what Serve's actors hold.

Two readers, for the two places a job is checked:

* :func:`cluster_here` in a process connected to Ray (the job's driver): totals and free
  amounts straight from the GCS, exact, plus what an autoscaler may still add;
* :func:`cluster_from_dashboard` from a machine that only reaches the job API
  (``modelplane train submit``): the state API's nodes, and what alive actors and created
  placement groups reserve, subtracted from the totals. Tasks outside either are missed,
  so "free now" there is an estimate; the job checks again, exactly, when it starts.

Serve's share comes from the state API in both (actors in Ray's ``serve`` namespace); when
that API does not answer, nothing is attributed to Serve and all use counts as busy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from training.capacity import ClusterCapacity, NodeCapacity
from training.errors import JobSubmissionError

SERVE_NAMESPACE = "serve"  # ray.serve._private.constants.SERVE_NAMESPACE
# The object store is no scheduling resource a job asks for.
_IGNORED = frozenset({"object_store_memory"})
_LIMIT = 10_000


def cluster_here(where: str) -> ClusterCapacity:
    """The cluster this process's Ray is connected to, whose GCS is at ``where``."""
    from ray._private import state

    totals = state.total_resources_per_node()
    free = state.available_resources_per_node()
    # The GCS address, not RAY_ADDRESS: `train run` starts a private Ray beside whatever that names.
    serving = _serve_holdings(address=where)
    nodes = tuple(
        NodeCapacity(node_id[:8], _pick(total), _pick(free.get(node_id, {})),
                     serving.get(node_id, {}))
        for node_id, total in sorted(totals.items())
    )
    limits = _pick(state.state.get_max_resources_from_cluster_config() or {})
    headroom = {r: limit - sum(n.total.get(r, 0.0) for n in nodes) for r, limit in limits.items()}
    if any(amount > 0 for amount in headroom.values()):
        # An autoscaling cluster grows when Ray Train asks for the workers' placement group:
        # count what it may still add as free now, so the job asks instead of waiting on it.
        room = {r: max(0.0, amount) for r, amount in headroom.items()}
        nodes += (NodeCapacity("nodes the autoscaler may add", room, room),)
    return ClusterCapacity(where, nodes)


def cluster_from_dashboard(address: str,
                           headers: Mapping[str, str] | None = None) -> ClusterCapacity:
    """The cluster whose dashboard (job API) is at ``address``, asked with ``headers`` (the
    job client's, which carry the cluster's token where it requires one)."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import DEFAULT_RPC_TIMEOUT, ListApiOptions, StateResource

    def listed(resource: StateResource, state: str, *, detail: bool, complete: bool) -> list[Any]:
        options = ListApiOptions(limit=_LIMIT, timeout=DEFAULT_RPC_TIMEOUT, detail=detail,
                                 filters=[("state", "=", state)])
        return client.list(resource, options, raise_on_missing_output=complete)

    try:
        client = StateApiClient(address, headers={"Content-Type": "application/json",
                                                  **(headers or {})})
        nodes = listed(StateResource.NODES, "ALIVE", detail=False, complete=True)
        actors = listed(StateResource.ACTORS, "ALIVE", detail=True, complete=False)
        groups = listed(StateResource.PLACEMENT_GROUPS, "CREATED", detail=True, complete=False)
    except Exception as error:  # the state API raises its own and requests' errors
        text = str(error).strip().splitlines()
        raise JobSubmissionError(
            f"cannot read the resources of the cluster at {address}: "
            f"{text[0][:300] if text else type(error).__name__}; pass --no-resource-check to "
            "submit without checking them (the job still checks when it starts)",
            detail={"address": address},
        ) from None
    held: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    # An actor inside a placement group uses the group's reservation: count the group only.
    _add(held, ((a.node_id, a.required_resources) for a in actors if not a.placement_group_id))
    _add(held, ((b.get("node_id"), b.get("unit_resources")) for g in groups
                for b in (g.bundles or [])))
    serving = _serving(actors)
    capacities = []
    for node in sorted(nodes, key=lambda n: n.node_id):
        total = _pick(node.resources_total or {})
        used = held.get(node.node_id, {})
        free = {r: max(0.0, total.get(r, 0.0) - used.get(r, 0.0)) for r in total}
        capacities.append(NodeCapacity(node.node_ip or node.node_id[:8], total, free,
                                       serving.get(node.node_id, {})))
    return ClusterCapacity(address, tuple(capacities))


def _serve_holdings(address: str) -> dict[str, dict[str, float]]:
    from ray.util.state import list_actors

    try:
        actors = list_actors(address=address, detail=True, limit=_LIMIT,
                             filters=[("state", "=", "ALIVE"), ("ray_namespace", "=", SERVE_NAMESPACE)],
                             raise_on_missing_output=False)
    except Exception:  # no dashboard (a minimal install): Serve's share reads as busy
        return {}
    return _serving(actors)


def _serving(actors: Iterable[Any]) -> dict[str, dict[str, float]]:
    held: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    _add(held, ((a.node_id, a.required_resources) for a in actors
                if a.ray_namespace == SERVE_NAMESPACE and not a.placement_group_id))
    return {node: dict(amounts) for node, amounts in held.items()}


def _add(held: dict[str, dict[str, float]],
         reservations: Iterable[tuple[str | None, Mapping[str, float] | None]]) -> None:
    for node_id, resources in reservations:
        if node_id:
            for name, amount in _pick(resources or {}).items():
                held[node_id][name] += amount


def _pick(resources: Mapping[str, Any]) -> dict[str, float]:
    # Custom resources too: a job may ask for a node label (resources.custom_per_worker).
    return {name: float(amount) for name, amount in resources.items()
            if name not in _IGNORED and isinstance(amount, int | float)}
