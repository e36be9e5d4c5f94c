"""Checks a spec must pass before anything is submitted: its data and the cluster's resources.

The job runs them again when it starts (a spec may reach the cluster through plain
``ray job submit``), so a bad spec fails in seconds with a message naming the field
instead of waiting forever for GPUs that do not exist.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from training.data import check_columns, table_columns
from training.errors import InvalidJobSpecError
from training.schemas import JobSpec, ResourcesSpec

NodeResources = Mapping[str, float]


def check_data(spec: JobSpec) -> None:
    """The target and feature columns exist, and a CNN's image shape fits the row."""
    check_columns(spec.data)
    shape = spec.model.image_shape
    if spec.model.architecture != "cnn_classifier" or shape is None:
        return
    if spec.data.features:
        width = len(spec.data.features)
    else:
        columns = table_columns(spec.data)
        width = len(columns) - (1 if spec.data.target in columns else 0)
    if math.prod(shape) != width:
        raise _error("model.image_shape", f"{list(shape)} holds {math.prod(shape)} values but "
                     f"each row of {spec.data.uri} has {width} features")


def check_resources(resources: ResourcesSpec, nodes: Sequence[NodeResources], where: str) -> None:
    """Raise naming the field when the workers cannot all be placed on ``nodes``."""
    workers = resources.num_workers
    gpus, cpus = resources.gpus, resources.cpus_per_worker
    total_gpus = sum(float(node.get("GPU", 0)) for node in nodes)
    total_cpus = sum(float(node.get("CPU", 0)) for node in nodes)
    if gpus:
        field = "resources.use_gpu" if total_gpus == 0 else "resources.num_workers"
        if workers * gpus > total_gpus:
            raise _error(field, f"the job asks for {_n(workers * gpus)} GPUs (num_workers "
                         f"{workers} x gpus_per_worker {_n(gpus)}) but the cluster at {where} "
                         f"has {_n(total_gpus)}")
        if not any(float(node.get("GPU", 0)) >= gpus for node in nodes):
            raise _error("resources.gpus_per_worker", f"no node of the cluster at {where} has "
                         f"{_n(gpus)} GPUs for one worker")
    if workers * cpus > total_cpus:
        raise _error("resources.num_workers", f"the job asks for {_n(workers * cpus)} CPUs "
                     f"(num_workers {workers} x cpus_per_worker {_n(cpus)}) but the cluster "
                     f"at {where} has {_n(total_cpus)}")
    if not any(float(node.get("CPU", 0)) >= cpus and float(node.get("GPU", 0)) >= gpus
               for node in nodes):
        raise _error("resources.cpus_per_worker", f"no node of the cluster at {where} has "
                     f"{_n(cpus)} CPUs" + (f" and {_n(gpus)} GPUs" if gpus else "")
                     + " for one worker")


def _n(value: float) -> str:
    return f"{value:g}"


def _error(field: str, message: str) -> InvalidJobSpecError:
    return InvalidJobSpecError(f"{field}: {message}", detail={"field": field})
