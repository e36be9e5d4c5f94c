"""Ports for listeners that start some time after they are chosen (a head's Ray ports,
HAProxy's stats and metrics listeners, a test's server).

A port the kernel hands out for ``bind(("", 0))`` comes from its ephemeral range, which
every outbound connection and every other port-0 bind on the machine draws from too: one
of them may take it before the listener binds it (HAProxy then exits at start, "Address
already in use"). Ports are therefore drawn at random from outside that range and outside
Ray's worker ports, where only a listener that chose its port would bind, and each is
probed free before it is handed out.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Ray's default --min-worker-port/--max-worker-port: its workers bind these themselves.
RAY_WORKER_PORTS = range(10002, 20000)
LOWEST = 20000
HIGHEST = 65535
# Draws a crowded machine may spend before the kernel's choice is taken instead.
MAX_DRAWS = 200


def free_ports(count: int, host: str = "0.0.0.0") -> list[int]:
    """``count`` distinct TCP ports that nothing on ``host`` holds now, outside the kernel's
    ephemeral range where that range is known (Linux); the kernel's choice elsewhere."""
    candidates = _listener_ports()
    draw = random.SystemRandom()
    chosen: list[int] = []
    probes: list[socket.socket] = []
    try:
        for _ in range(MAX_DRAWS if candidates else 0):
            if len(chosen) == count:
                break
            port = draw.choice(candidates)
            if port in chosen:
                continue
            probe = _bound(host, port)
            if probe is not None:
                probes.append(probe)  # held until all are chosen, so none repeats
                chosen.append(port)
        while len(chosen) < count:
            probe = _bound(host, 0)
            assert probe is not None  # the kernel finds a port or raises
            probes.append(probe)
            chosen.append(probe.getsockname()[1])
        return chosen
    finally:
        for probe in probes:
            probe.close()


def _listener_ports() -> list[int]:
    """Ports outside the ephemeral range and Ray's worker ports; empty where the range is
    unknown."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return []
    return [port for port in range(LOWEST, HIGHEST + 1)
            if not low <= port <= high and port not in RAY_WORKER_PORTS]


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``port`` of ``host`` (sockets of a listener just stopped,
    in TIME_WAIT, do not count: servers bind past them)."""
    probe = _bound(host, port, past_time_wait=True)
    if probe is None:
        return False
    probe.close()
    return True


def _bound(host: str, port: int, *, past_time_wait: bool = False) -> socket.socket | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if past_time_wait:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError:
        probe.close()
        if port == 0:
            raise
        return None
    return probe


def listeners(ports: list[int]) -> list[tuple[int, str]]:
    """Who listens on any of TCP ``ports``: (pid, address) for each listener whose
    process is visible ([] on a system without the listing)."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    return [(c.pid, c.laddr.ip) for c in connections
            if c.pid and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports]


def port_holder(port: int) -> str | None:
    """What listens on TCP ``port`` (its program and pid, as ``haproxy (pid 123)``), so a
    refusal can say whom to stop; None where nothing does, or the listener is hidden
    (another user's process, a system without the listing)."""
    import psutil

    for pid, _ in listeners([port]):
        try:
            return f"{psutil.Process(pid).name()} (pid {pid})"
        except psutil.Error:
            continue
    return None
