"""Checkpoint contents, and finding the latest checkpoint to resume from.

A checkpoint is a Ray Train checkpoint directory holding one ``state.pt``: the epoch it
was taken after, the network (as a model bundle), optimizer, scheduler and early-stopping
state, and the best epoch's weights so far. ``checkpoint.resume_from`` names either a
tracked run (its id; the run's ``checkpoint_dir`` tag says where its checkpoints are) or
a location: a checkpoint directory, or a Ray Train run directory whose latest checkpoint
is used. Locations may be local paths or URIs Ray's storage understands (``s3://…``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from training.errors import CheckpointNotFoundError

STATE_FILE = "state.pt"
# Ray Train records its checkpoints here (ray.train.v2 checkpoint manager).
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_DIR_TAG = "checkpoint_dir"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def is_run_id(value: str) -> bool:
    """Whether ``resume_from`` names a tracked run rather than a location."""
    return bool(_RUN_ID.fullmatch(value))


def resolve_resume(resume_from: str, client: Any) -> str:
    """The location of the checkpoint to resume from; raise naming the field if none."""
    location = resume_from
    if is_run_id(resume_from):
        from control_plane.errors import NotFoundError

        try:
            run = client.get_run(resume_from)
        except NotFoundError:
            raise _not_found(f"there is no tracked run {resume_from}") from None
        location = run.tags.get(CHECKPOINT_DIR_TAG, "")
        if not location:
            raise _not_found(f"run {resume_from} recorded no checkpoint directory "
                             f"(tag {CHECKPOINT_DIR_TAG!r})")
    found = latest_checkpoint(location)
    if found is None:
        raise _not_found(f"no checkpoint with a {STATE_FILE} under {location}; did the run "
                         "save one before it stopped?")
    return found


def latest_checkpoint(location: str) -> str | None:
    """The newest complete checkpoint at ``location`` (itself, or inside a run directory)."""
    filesystem, path = _filesystem(location)
    if filesystem is None:
        return None
    if _is_file(filesystem, f"{path}/{STATE_FILE}"):
        return location
    candidates: list[str] = []
    snapshot = _read_json(filesystem, f"{path}/{RAY_SNAPSHOT_FILE}")
    latest = (snapshot or {}).get("latest_checkpoint_result") or {}
    if latest.get("checkpoint_dir_name"):
        candidates.append(str(latest["checkpoint_dir_name"]))
    # Ray names checkpoint directories by time, so the newest sorts last; a directory
    # without a state file was cut off mid-upload and is skipped.
    candidates += sorted(_checkpoint_dirs(filesystem, path), reverse=True)
    for name in candidates:
        if _is_file(filesystem, f"{path}/{name}/{STATE_FILE}"):
            return _join(location, name)
    return None


def save_state(directory: str, state: dict[str, Any]) -> None:
    import torch

    torch.save(state, f"{directory}/{STATE_FILE}")


def load_state(checkpoint: Any) -> dict[str, Any]:
    """The state dict inside a ``ray.train.Checkpoint``, read from where it is kept.

    Not through Ray's ``as_directory``: that downloads a remote checkpoint into one
    folder per checkpoint and host, under a file lock, and workers of one host resuming
    together failed (one found the folder removed by the other once it had read it), so a
    job failed the very restart its checkpoint was for. Only the state file is read."""
    import io

    import torch

    with checkpoint.filesystem.open_input_file(f"{checkpoint.path}/{STATE_FILE}") as handle:
        kept = io.BytesIO(handle.read())
    # Tensors and plain values only: a checkpoint from elsewhere cannot run code here.
    return torch.load(kept, map_location="cpu", weights_only=True)


def _filesystem(location: str) -> tuple[Any, str]:
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    except (pyarrow.ArrowInvalid, ValueError):
        import os

        filesystem, path = pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    except OSError:
        return None, location
    return filesystem, path.rstrip("/")


def _is_file(filesystem: Any, path: str) -> bool:
    import pyarrow.fs

    try:
        return filesystem.get_file_info(path).type == pyarrow.fs.FileType.File
    except OSError:
        return False


def _read_json(filesystem: Any, path: str) -> dict[str, Any] | None:
    if not _is_file(filesystem, path):
        return None
    try:
        with filesystem.open_input_stream(path) as handle:
            return json.loads(handle.read())
    except (OSError, ValueError):
        return None


def _checkpoint_dirs(filesystem: Any, path: str) -> list[str]:
    import pyarrow.fs

    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return [info.base_name for info in infos
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")]


def _join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}"


def _not_found(message: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(f"checkpoint.resume_from: {message}",
                                   detail={"field": "checkpoint.resume_from"})
