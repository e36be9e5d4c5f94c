"""Making what was written survive a power loss, and clearing what a writer that died left."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder: its entries, so a rename into it is durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, as another user's process
        return True
    return True


def remove_left_by_the_dead(folder: Path, name: str, kinds: tuple[str, ...]) -> int:
    """Remove the ``.NAME.PID.KIND`` files and folders in ``folder`` whose process is gone
    (a download, an unpacking or a set-aside cut short by a kill); how many went. Each
    writer names its own by its pid, so a live one's are left alone."""
    removed = 0
    for entry in folder.glob(f".{name}.*"):
        pid, _, kind = entry.name[len(name) + 2:].partition(".")
        if kind not in kinds or not pid.isdigit() or process_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed
