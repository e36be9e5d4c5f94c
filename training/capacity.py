"""Can the cluster hold a job's workers — never, not now, or now — and the words that say so.

A job asks for ``num_workers`` bundles of ``worker_bundle`` (CPU, GPU, memory), one per
Ray Train worker, placed on nodes by Ray's placement group (a bundle never spans nodes).
Ray Train's controller and its synchronization actor reserve nothing (``num_cpus=0`` in
Ray 2.60), so the workers are the whole ask. What Serve's actors hold (the platform's
replicas and control plane) does not come back by itself, so it counts against what the
cluster can *ever* offer a job; everything else (another job's workers) is only *busy*:

* never fits → :class:`InvalidJobSpecError` naming the fields and the figures, before
  anything runs;
* fits but not now → the job waits (:func:`wait_for_placement`), saying what it needs and
  what is free, for at most ``resources.placement_timeout_s``;
* fits now → go.

This module is pure (no Ray): :mod:`training.cluster` reads a :class:`ClusterCapacity`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from training.errors import InvalidJobSpecError, ResourcesUnavailableError
from training.schemas import DEFAULT_MAX_WORKERS, ResourcesSpec

# The lines a waiting job prints; `train status`/`train list` read the last one back.
WAITING = "waiting for resources"
READY = "resources free"
# Ray keeps resource amounts to 1e-4; a quotient like 1.7 / 0.85 must not round to 1.999….
_EPSILON = 1e-6
_UNITS = {"CPU": "CPU", "GPU": "GPU", "memory": "GB"}
_FIELDS = {"CPU": "resources.cpus_per_worker", "GPU": "resources.gpus_per_worker",
           "memory": "resources.memory_per_worker_gb"}


@dataclass(frozen=True)
class NodeCapacity:
    """One alive node: its resources, what is unreserved now, and what Serve holds on it."""

    name: str
    total: Mapping[str, float]
    free: Mapping[str, float]
    serving: Mapping[str, float] = field(default_factory=dict)

    def lasting(self, resource: str) -> float:
        """What this node could ever give a job: all of it but what Serve's actors hold."""
        return max(0.0, self.total.get(resource, 0.0) - self.serving.get(resource, 0.0))


@dataclass(frozen=True)
class ClusterCapacity:
    """The alive nodes of the cluster at ``where``."""

    where: str
    nodes: tuple[NodeCapacity, ...]

    def sum(self, resource: str, part: str) -> float:
        return sum(getattr(node, part).get(resource, 0.0) for node in self.nodes)


@dataclass(frozen=True)
class Placement:
    """A job's workers against the cluster: how many, each reserving what, and whether now."""

    num_workers: int
    bundle: Mapping[str, float]
    fits_now: bool
    cluster: ClusterCapacity

    @property
    def needs(self) -> str:
        """``2 workers x 1 CPU``."""
        each = ", ".join(_amount(r, v) for r, v in self.bundle.items())
        return f"{self.num_workers} worker{'s' if self.num_workers > 1 else ''} x {each}"

    @property
    def free(self) -> str:
        """``0.7 CPU`` (of what the job asks for, free on the cluster now)."""
        return ", ".join(_amount(r, self.cluster.sum(r, "free")) for r in self.bundle)

    def waiting_line(self, timeout_s: float) -> str:
        return (f"{WAITING} (needs {self.needs}, free {self.free}); the job fails if they "
                f"are not free within {_n(timeout_s)} s (resources.placement_timeout_s)")

    def timeout_error(self, timeout_s: float) -> ResourcesUnavailableError:
        held = ", ".join(_held(r, self.cluster) for r in self.bundle)
        return ResourcesUnavailableError(
            f"resources.placement_timeout_s: the workers ({self.needs}) could not be placed "
            f"within {_n(timeout_s)} s; the cluster at {self.cluster.where} has {held}. Wait "
            "for the jobs holding them to end (`modelplane train list`), raise "
            "resources.placement_timeout_s, or lower resources.num_workers or "
            "resources.cpus_per_worker",
            detail={"field": "resources.placement_timeout_s", "needs": self.needs,
                    "free": self.free},
        )


def plan_placement(resources: ResourcesSpec, cluster: ClusterCapacity) -> Placement:
    """How many workers the job runs and whether they fit now; raise naming the field when
    the cluster can never hold them."""
    bundle, strategy = resources.worker_bundle, resources.placement_strategy
    lasting = [{r: node.lasting(r) for r in bundle} for node in cluster.nodes]
    ever = _workers_fitting(bundle, lasting, strategy)
    if resources.num_workers == "auto":
        wanted = min(resources.max_workers or DEFAULT_MAX_WORKERS, ever) or 1
    else:
        wanted = resources.num_workers
    if ever < wanted:
        raise _never_fits(resources, wanted, cluster)
    free = [{r: node.free.get(r, 0.0) for r in bundle} for node in cluster.nodes]
    return Placement(wanted, bundle, _workers_fitting(bundle, free, strategy) >= wanted, cluster)


def wait_for_placement(plan: Callable[[], Placement], timeout_s: float,
                       echo: Callable[[str], None], *, poll_s: float = 2.0,
                       repeat_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> tuple[Placement, float]:
    """Wait until ``plan()`` fits now; returns it and the seconds left of ``timeout_s``.

    Says once that it waits (and again when the figures change, or every ``repeat_s``),
    and once when the resources are free; raises :class:`ResourcesUnavailableError` when
    the time is up. ``plan`` may raise too: a cluster that shrank can make the job impossible.
    """
    start = clock()
    placement = plan()
    if placement.fits_now:
        return placement, timeout_s
    line, said_at = placement.waiting_line(timeout_s), start
    echo(line)
    while True:
        elapsed = clock() - start
        if elapsed >= timeout_s:
            raise placement.timeout_error(timeout_s)
        sleep(min(poll_s, timeout_s - elapsed))
        placement = plan()
        elapsed = clock() - start
        if placement.fits_now:
            echo(f"{READY} after {elapsed:.0f} s: starting {placement.needs}")
            return placement, max(0.0, timeout_s - elapsed)
        current = placement.waiting_line(timeout_s)
        if current != line or clock() - said_at >= repeat_s:
            line, said_at = current, clock()
            echo(line)


def waiting_note(log: str) -> str | None:
    """``waiting for resources (needs …, free …)`` when the job's last word on placement in
    its log is that it waits; None otherwise."""
    for line in reversed(log.splitlines()):
        if line.startswith(READY):
            return None
        if line.startswith(WAITING):
            head, _, _ = line.partition(");")
            return head + ")"
    return None


def _workers_fitting(bundle: Mapping[str, float], nodes: list[dict[str, float]],
                     strategy: str = "PACK") -> int:
    """How many bundles fit on these nodes (each bundle on one node) under ``strategy``:
    STRICT_SPREAD takes one a node, STRICT_PACK all on one node, PACK and SPREAD any."""
    per_node = [min(math.floor(node[r] / need + _EPSILON) for r, need in bundle.items() if need > 0)
                for node in nodes]
    if strategy == "STRICT_SPREAD":
        return sum(1 for count in per_node if count >= 1)
    if strategy == "STRICT_PACK":
        return max(per_node, default=0)
    return sum(per_node)


def _never_fits(resources: ResourcesSpec, wanted: int, cluster: ClusterCapacity) -> InvalidJobSpecError:
    bundle = resources.worker_bundle
    for resource, need in resources.custom_per_worker.items():
        if any(node.lasting(resource) + _EPSILON >= need for node in cluster.nodes):
            continue
        offered = sorted({r for node in cluster.nodes for r in node.total
                          if r not in _UNITS and not r.startswith("node:")})
        return _error("resources.custom_per_worker", (
            f"each worker asks {_amount(resource, need)} but no node of the cluster at "
            f"{cluster.where} offers that much {resource!r} (custom resources there: "
            f"{', '.join(offered) or 'none'}); start nodes with `ray start --resources`, or "
            f"drop {resource} from resources.custom_per_worker"))
    for resource in ("GPU", "CPU", "memory"):
        need = bundle.get(resource)
        if not need:
            continue
        lasting = [node.lasting(resource) for node in cluster.nodes]
        if sum(math.floor(value / need + _EPSILON) for value in lasting) >= wanted:
            continue
        return _shortage(resources, resource, wanted, lasting, cluster)
    strategy = resources.placement_strategy
    if strategy.startswith("STRICT_"):
        lasting_nodes = [{r: node.lasting(r) for r in bundle} for node in cluster.nodes]
        most = _workers_fitting(bundle, lasting_nodes, strategy)
        where = "on its own node" if strategy == "STRICT_SPREAD" else "on one node"
        return _error("resources.placement_strategy", (
            f"{strategy} puts every worker {where}, and the cluster at {cluster.where} can "
            f"hold {most} of the {wanted} that way beside its Serve replicas; lower "
            f"resources.num_workers to {most}, use {strategy.removeprefix('STRICT_')}, or add "
            "a node"))
    # Each resource alone fits, but not together on the same nodes.
    return _error("resources.num_workers", f"no node of the cluster at {cluster.where} holds "
                  f"one worker's {', '.join(_amount(r, v) for r, v in bundle.items())} at once "
                  f"beside its Serve replicas; lower what each worker asks, or add a node")


def _shortage(resources: ResourcesSpec, resource: str, wanted: int, lasting: list[float],
              cluster: ClusterCapacity) -> InvalidJobSpecError:
    need = resources.worker_bundle[resource]
    per_worker = _FIELDS[resource]
    held = _held(resource, cluster)
    if cluster.sum(resource, "total") <= 0 and resource == "GPU":
        return _error("resources.use_gpu", f"the job asks {_amount('GPU', need * wanted)} but "
                      f"the cluster at {cluster.where} has 0 GPU; set use_gpu: false, or submit "
                      "to a cluster with GPUs")
    if max(lasting, default=0.0) + _EPSILON < need:
        return _error(per_worker, f"each worker asks {_amount(resource, need)} but no node of "
                      f"the cluster at {cluster.where} can ever give one that much (it has "
                      f"{held}); lower {per_worker} to at most "
                      f"{_n(_nice(max(lasting, default=0.0), resource))}, or add a larger node")
    fewer = sum(math.floor(value / need + _EPSILON) for value in lasting)
    smaller = _nice(_largest_share(lasting, wanted), resource)
    options = [f"{per_worker} to {_n(smaller)}"] if smaller > 0 else []
    options.append(f"resources.num_workers to {fewer}")
    auto = "" if resources.num_workers == "auto" else ", set num_workers: auto"
    return _error("resources.num_workers", (
        f"the job asks {_amount(resource, need * wanted)} for its workers (num_workers "
        f"{wanted} x {per_worker.removeprefix('resources.')} {_n(_shown(resource, need))}); the "
        f"cluster at {cluster.where} has {held}; lower {' or '.join(options)}{auto}, or add a node"))


def _largest_share(lasting: list[float], wanted: int) -> float:
    """The most one worker may ask so that ``wanted`` of them fit on these nodes."""
    candidates = sorted({value / k for value in lasting if value > 0
                         for k in range(1, wanted + 1)}, reverse=True)
    for share in candidates:
        if sum(math.floor(value / share + _EPSILON) for value in lasting) >= wanted:
            return share
    return 0.0


def _nice(value: float, resource: str) -> float:
    """Round down to a figure a person would write: tenths, else hundredths."""
    value = _shown(resource, value)
    for step in (0.1, 0.01):
        rounded = math.floor(value / step + _EPSILON) * step
        if rounded > 0:
            return round(rounded, 2)
    return 0.0


def _held(resource: str, cluster: ClusterCapacity) -> str:
    """``2 CPU, of which 0.3 are held by Serve replicas and 1 by other work`` (now)."""
    total = cluster.sum(resource, "total")
    serving = cluster.sum(resource, "serving")
    other = max(0.0, total - cluster.sum(resource, "free") - serving)
    parts = [f"{_n(_shown(resource, serving))} are held by Serve replicas"] if serving > _EPSILON else []
    if other > _EPSILON:
        parts.append(f"{_n(_shown(resource, other))} by other work")
    text = _amount(resource, total)
    return f"{text}, of which {' and '.join(parts)}" if parts else text


def _amount(resource: str, value: float) -> str:
    return f"{_n(_shown(resource, value))} {_UNITS.get(resource, resource)}"


def _shown(resource: str, value: float) -> float:
    return value / 1e9 if resource == "memory" else value


def _n(value: float) -> str:
    return f"{round(value, 4):g}"


def _error(field_name: str, message: str) -> InvalidJobSpecError:
    return InvalidJobSpecError(f"{field_name}: {message}", detail={"field": field_name})
