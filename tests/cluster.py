"""A multi-node Ray cluster on loopback: one head and worker nodes as separate `ray start`s.

Each node is its own raylet with its own object store, resources and address on
127.0.0.0/8 (the head on 127.0.0.1, worker ``i`` on 127.0.0.{i+2}), so Ray schedules,
fetches objects and loses nodes exactly as across machines; every node shares this
machine's cores, so rates measured here are not a cluster's. Worker ``w1`` carries the
custom resources ``node:w1`` (to pin a replica to it) and ``worker`` (any worker, never
the head). The head is started with the
environment `modelplane up` gives a head it starts (HAProxy ingress where present), and
every node with the same, as ``ray_cluster.yaml`` does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from control_plane.platform import fast_ingress_available, ingress_env
from modelplane.ports import free_ports
from tests.ray_head import BIN, RayHead

REPO = Path(__file__).resolve().parents[1]
WORKER_RESOURCE = "worker"
WORKER_PORT_OPTIONS = ("node-manager-port", "object-manager-port", "metrics-export-port",
                       "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                       "runtime-env-agent-port")


@dataclass
class WorkerNode:
    name: str
    address: str  # the node's IP on loopback
    process: subprocess.Popen[bytes]
    lost: bool = False  # killed by kill_node

    @property
    def resource(self) -> str:
        return f"node:{self.name}"

    def raylet(self) -> psutil.Process:
        """This node's raylet process (killing it is how a node is lost)."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with _suppress_gone():
                if child.name() == "raylet" or "raylet" in " ".join(child.cmdline()[:1]):
                    return child
        raise LookupError(f"no raylet under `ray start` of {self.name}")


@dataclass
class LoopbackCluster(RayHead):
    """A :class:`RayHead` plus ``workers`` worker nodes of ``worker_cpus`` CPUs each."""

    workers: int = 2
    worker_cpus: float = 2
    nodes: list[WorkerNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.extra_env = {**ingress_env(fast_ingress_available()), **self.extra_env}

    def start(self, timeout: float = 120.0) -> LoopbackCluster:
        super().start(timeout)
        try:
            for _ in range(self.workers):
                self.add_worker(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def alive(self) -> list[WorkerNode]:
        """The worker nodes not lost."""
        return [node for node in self.nodes if not node.lost]

    def add_worker(self, timeout: float = 120.0) -> WorkerNode:
        """Start one more worker node (``w{n}`` on 127.0.0.{n+1}), as an autoscaler adds a
        machine; returns once Ray counts it alive."""
        index = len(self.nodes) + 1
        ports = dict(zip(WORKER_PORT_OPTIONS, free_ports(len(WORKER_PORT_OPTIONS)), strict=True))
        node = self._start_worker(f"w{index}", f"127.0.0.{index + 1}", ports)
        self.nodes.append(node)
        # Alive before the next starts: the ports probed free for it are then bound by this one.
        self.wait_nodes(1 + len(self.alive), timeout)
        return node

    def _start_worker(self, name: str, address: str, ports: dict[str, int]) -> WorkerNode:
        # Its own temporary folder, as on its own machine: nodes sharing one would share the
        # runtime environments' folder, where each node unpacks a job's working_dir afresh
        # (over the one the job's driver runs in), and the raylet socket names.
        temp_dir = self.root / name
        command = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                   f"--address={self.gcs_address}", f"--node-ip-address={address}",
                   f"--temp-dir={temp_dir}",
                   f"--num-cpus={self.worker_cpus}", "--object-store-memory=200000000",
                   f"--resources={json.dumps({f'node:{name}': 1, WORKER_RESOURCE: 1000})}",
                   *(f"--{option}={port}" for option, port in ports.items())]
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env={**self.env, "RAY_TMPDIR": str(temp_dir)},
                                       stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        return WorkerNode(name, address, process)

    def python(self, script: str, timeout: float = 120) -> Any:
        """Run ``script`` in a Python process connected to this cluster (this test process
        may be connected to another Ray); returns what it printed last, read as JSON."""
        header = ("import json, sys, ray\n"
                  f"sys.path.insert(0, {str(REPO)!r})\n"
                  "ray.init(address='auto', namespace='modelplane', logging_level='ERROR')\n")
        probe = subprocess.run([str(BIN / "python"), "-c", header + textwrap.dedent(script)],
                               env={**self.env, "RAY_ADDRESS": self.gcs_address},
                               capture_output=True, text=True, timeout=timeout)
        if probe.returncode != 0:
            raise RuntimeError(f"script on the cluster failed:\n{probe.stderr[-3000:]}")
        return json.loads(probe.stdout.strip().splitlines()[-1])

    def node_addresses(self) -> dict[str, str]:
        """Each node's address, by Ray node id (live or lost)."""
        return {node["node_id"]: node["node_ip"] for node in self.state("nodes")}

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Ray's view of its live nodes."""
        return [{"ip": node["node_ip"], "resources": node["resources_total"]}
                for node in self.state("nodes", state="ALIVE")]

    def wait_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.alive:
                if node.process.poll() is not None:
                    log = (self.root / f"{node.name}.log").read_text(errors="replace")
                    raise RuntimeError(f"`ray start` of worker {node.name} exited with "
                                       f"{node.process.returncode}:\n{log[-1500:]}\n"
                                       f"{self._raylet_errors()}")
            if len(self.alive_nodes()) == count:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {count} live nodes in {timeout:.0f}s; "
                           f"logs under {self.root}")

    def _raylet_errors(self) -> str:
        lines = []
        for path in sorted(self.root.glob("*/ray/session_2*/logs/raylet*")
                           + self.root.glob("*/session_2*/logs/raylet*")):
            for line in path.read_text(errors="replace").splitlines():
                if " E " in line[:40] or "Address already in use" in line:
                    lines.append(f"{path.name}: {line[:400]}")
        return "\n".join(lines[-10:])

    def kill_node(self, node: WorkerNode) -> None:
        """Lose ``node`` as a machine is lost: SIGKILL its raylet and every process on it."""
        members = [node.process, *psutil.Process(node.process.pid).children(recursive=True)]
        node.lost = True
        for member in members:
            with _suppress_gone():
                os.kill(member.pid, signal.SIGKILL)
        node.process.wait(timeout=10)

    def stop(self) -> None:
        for node in self.alive:
            if node.process.poll() is None:
                self.kill_node(node)
        super().stop()


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, (psutil.NoSuchProcess, ProcessLookupError,
                                                      psutil.AccessDenied))
