"""Names for processes that say where they run, so that another process can tell one gone.

``host:pid-space:pid:random``: the host and its PID namespace and boot say where the pid
means something, and the random part makes a restarted process with the same pid another
one. Lease holders, training jobs' runs and artifact writes carry one.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from modelplane.durable import process_alive


def new_process_name() -> str:
    """A name for this process, ``host:pid-space:pid:random``, new at every call."""
    return f"{socket.gethostname()}:{_pid_space()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_space() -> str:
    """The PID namespace and the kernel's boot: two containers may share a host name and
    not their pids (the namespace tells them apart), and two machines may share a host
    name and a namespace number (every kernel's first is the same), not a boot id. Empty
    where either is unknown: then no process is taken for gone."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return ""
    return f"{namespace}.{boot[:16]}" if namespace and boot else ""


def process_is_here(name: str) -> bool:
    """Whether ``name`` names a process of this host, boot and PID namespace (alive or
    not): one whose fate this process can tell."""
    parts = name.split(":")
    return (len(parts) == 4 and bool(parts[1]) and parts[2].isdigit()
            and parts[0] == socket.gethostname() and parts[1] == _pid_space())


def process_is_gone(name: str) -> bool:
    """Whether ``name`` names a process of this host, boot and PID namespace that no
    longer exists. Anything else (another machine, even of the same name; an unknown
    namespace; a pid in use; a name of another shape) counts as alive."""
    return process_is_here(name) and not process_alive(int(name.split(":")[2]))
