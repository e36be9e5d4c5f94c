"""The machine's processes as /proc shows them: for tests and benchmarks that kill parts.

Ray names its worker processes by what they run (``ray::ServeReplica:{app}:{deployment}``,
``ray::MonitorActor``), so a fault test finds its victim by title, as an operator would.
"""

from __future__ import annotations

import re
from pathlib import Path


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def title(pid: int) -> str | None:
    """The process's title (its first command-line word, which Ray sets); None when gone."""
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                .decode(errors="replace"))
    except OSError:
        return None


def descendants(root: int) -> list[int]:
    """Every process started by ``root``, directly or not."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        try:
            # The parent pid is the 2nd field after the ")" that ends the command name.
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pids_titled(pattern: str, *, among: list[int] | None = None) -> list[int]:
    """PIDs whose title matches the regular expression ``pattern`` (at its start)."""
    matcher = re.compile(pattern)
    return sorted(pid for pid in (among if among is not None else _pids())
                  if (name := title(pid)) is not None and matcher.match(name))


def replica_pids(app: str) -> list[int]:
    """PIDs of the Serve replica processes of application ``app``."""
    return pids_titled(rf"ray::ServeReplica:{re.escape(app)}:")
