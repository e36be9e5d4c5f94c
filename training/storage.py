"""Where a job's checkpoints live, and whether the job can use it, before the run starts.

Ray Train writes each checkpoint through ``checkpoint.storage_path`` from the worker that
saves it, and the driver reads the last one back to export the model. On a cluster of
several nodes that path must be one every node reaches: a URI (``s3://…``) or a folder
every node mounts. The nodes' own credentials are used (an instance profile, or the
``AWS_*`` variables in the environment ``ray start`` runs in), never the submitter's.
"""

from __future__ import annotations

from collections.abc import Callable

from training.errors import InvalidJobSpecError
from training.schemas import JobSpec


def checkpoint_storage(spec: JobSpec) -> str:
    """The job's ``checkpoint.storage_path``, or Ray Train's default folder."""
    if spec.checkpoint.storage_path:
        return spec.checkpoint.storage_path
    from ray.train.constants import DEFAULT_STORAGE_PATH

    return str(DEFAULT_STORAGE_PATH)


def is_remote(storage: str) -> bool:
    return "://" in storage and not storage.startswith("file://")


def check_storage(storage: str, nodes: int, echo: Callable[[str], None]) -> None:
    """Raise naming the field when a remote store cannot be reached from here; say so when
    a local folder is unlikely to be seen by the workers on other nodes."""
    if not is_remote(storage):
        if nodes > 1:
            echo(f"checkpoints go to the local folder {storage}: the cluster has {nodes} "
                 "nodes, so it must be a folder every node mounts, or workers on other nodes "
                 "write where this driver cannot read; set checkpoint.storage_path to a "
                 "store they share (s3://bucket/prefix)")
        return
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(storage)
        filesystem.get_file_info(path)
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise InvalidJobSpecError(
            f"checkpoint.storage_path: {storage} cannot be reached from the job: {first}; "
            "every node needs credentials for it (an instance profile, or AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, with AWS_ENDPOINT_URL for an S3-protocol server, in "
            "the environment `ray start` runs in)",
            detail={"field": "checkpoint.storage_path"}) from None
