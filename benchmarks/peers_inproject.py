"""The in-project scenarios of benchmarks/peers.py: Ray Serve without modelplane, and modelplane.

One local platform, started by the first of these scenarios with
``control_plane.platform.start_platform`` as benchmarks/serving.py's ``run_cluster`` does,
with the fast ingress ``modelplane up`` picks (HAProxy + throughput-optimized Serve), and
stopped by ``shutdown``. The Ray head inherits the benchmark's core-0 affinity, so all it
runs shares core 0 as the peers do. Scaling as in serving.py: half a CPU and 64 ongoing
requests per replica, one replica.

- ``ray-serve``: benchmarks/serving.py's PlainOnnx (what a Ray user writes by hand: parse
  JSON, run the session, answer JSON) as a Serve application on the same ingress (HAProxy
  turns on Serve's direct ingress), routed at ``/v2/models/<name>`` so its infer URL has
  the peers' shape.
- ``modelplane``: one version, deployed through the control plane as a user would, with
  the reference profile a training job registers (``training.registration``'s sample
  size), so monitoring runs whole: latency and status, drift, data quality and the
  feedback store.
- ``modelplane-canary``: versions 1 and 2 (seeds 1 and 2) at 90/10.
- ``modelplane-batched``: one version with dynamic batching, max batch 32, 2 ms wait.
- ``modelplane-lean`` and ``modelplane-serve-ingress``: one version with
  ``MODELPLANE_LEAN_INGRESS`` on and off. The platform is started again whenever that
  setting changes, so ``--only modelplane-serve-ingress,modelplane-lean,modelplane-serve-ingress,modelplane-lean``
  alternates the two in one run.

The whole server side, for CPU per request, is every process of the Ray session and their
children (HAProxy among them): controller, proxies, control plane and Monitor included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

SCALING = {"num_cpus": 0.5, "max_ongoing_requests": 64}
MODEL_NAMES = {"small": "bench-small", "large": "bench-large"}


class Platform:
    """The one platform these scenarios share, started on first use."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.settings: Any = None
        self.client: Any = None
        self.versions: dict[str, int] = {}  # "<model><seed>" -> registered version
        self.failed = ""
        self.lean: bool | None = None  # MODELPLANE_LEAN_INGRESS as started; None: the default

    def ensure(self, lean: bool | None = None) -> None:
        """Start the platform unless it runs (again, where ``lean`` asks for the other
        ingress); one that failed to start is not tried again (a half-started head is
        stopped, and the later scenarios fail with its reason)."""
        if self.client is not None and lean is not None and lean != self.lean:
            print(f"    restarting the platform with MODELPLANE_LEAN_INGRESS={lean}", flush=True)
            self.shutdown()
        if self.client is not None:
            return
        if self.failed:
            raise RuntimeError(f"the platform did not start: {self.failed}")
        from benchmarks.peers import free_port
        from control_plane.client import Client
        from control_plane.platform import start_platform
        from modelplane.settings import Settings

        self.root = Path(tempfile.mkdtemp(prefix="mpp"))
        os.environ["RAY_TMPDIR"] = str(self.root / "ray")
        env = {"MODELPLANE_HOME": str(self.root / "home"), "MODELPLANE_HTTP_PORT": str(free_port())}
        if lean is not None:
            env["MODELPLANE_LEAN_INGRESS"] = "true" if lean else "false"
        self.lean = lean
        self.settings = Settings.from_env(env)
        try:
            start_platform(self.settings, num_cpus=4, fast_ingress=True,
                           progress=lambda m: print("   ", m, flush=True))
            self.client = Client(self.settings.url,
                                 self.settings.admin_token_path.read_text().strip(),
                                 settings=self.settings)
        except Exception as exc:
            self.failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            with contextlib.suppress(Exception):  # the start's error is the one to report
                self.shutdown()
            raise

    @property
    def base(self) -> str:
        return self.settings.url

    def version(self, model: str, seed: int, models: dict[str, bytes]) -> int:
        """Register ``<model><seed>`` once; its version number."""
        from benchmarks.peers import SIZES
        from benchmarks.serving import profiled_manifest
        from training.registration import PROFILE_SAMPLE_SIZE

        key = f"{model}{seed}"
        if key not in self.versions:
            # With the reference profile a training job gives its version: monitoring runs
            # whole (drift, data quality, the feedback store), as it does for a user.
            described = profiled_manifest(SIZES[model], models[key], sample_size=PROFILE_SAMPLE_SIZE)
            record = self.client.register_version(MODEL_NAMES[model], models[key], described)
            self.versions[key] = int(record.version)
        return self.versions[key]

    def processes(self) -> list[Any]:
        """Every process of this Ray session (its command line names the session's
        folder) and their children, HAProxy among them. Unlike monitoring_served's
        server_processes, not every HAProxy on the machine: another cluster's is not ours."""
        import psutil

        roots = [p for p in psutil.process_iter(["cmdline"])
                 if str(self.root) in " ".join(p.info["cmdline"] or ())]
        found = {p.pid: p for p in roots}
        for process in roots:
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in process.children(recursive=True)})
        return list(found.values())

    def shutdown(self) -> None:
        if self.settings is None:
            return
        from control_plane.platform import stop_platform

        if self.client is not None:
            self.client.close()
        stop_platform(self.settings, progress=lambda m: print("   ", m, flush=True))
        self.client = self.settings = None
        self.versions = {}  # a later start registers them again, in its own store
        if not self.failed and self.root is not None:  # a failed start keeps its Ray logs
            shutil.rmtree(self.root, ignore_errors=True)


PLATFORM = Platform()


def wait_gone(url: str, timeout: float = 120) -> None:
    """Until ``url`` stops answering 200: the last scenario's replicas are being removed and
    must not spend core 0 during the next one."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=5).status_code != 200:
                return
        time.sleep(0.5)


def wait_answering(url: str, payload: bytes, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.post(url, content=payload, headers={"content-type": "application/json"},
                          timeout=10).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} never answered 200")


def ray_serve(model: str, models: dict[str, bytes], workdir: Path) -> Any:
    """PlainOnnx on Serve, no control plane."""
    from ray import serve

    from benchmarks.peers import SIZES, Running
    from benchmarks.serving import PlainOnnx, body

    PLATFORM.ensure()
    name = f"rs-{model}"
    app, url = f"bench-{name}", f"{PLATFORM.base}/v2/models/{name}/infer"
    deployment = serve.deployment(PlainOnnx).options(
        max_ongoing_requests=SCALING["max_ongoing_requests"],
        ray_actor_options={"num_cpus": SCALING["num_cpus"]})

    def stop() -> None:
        serve.delete(app)
        wait_gone(url.removesuffix("/infer"))

    try:
        serve.run(deployment.bind(models[f"{model}1"]), name=app, route_prefix=f"/v2/models/{name}")
        wait_answering(url, body(SIZES[model][0]))
    except BaseException:
        stop()
        raise
    return Running(url, name, PLATFORM.processes, stop, (models[f"{model}1"],),
                   notes={"settings": "PlainOnnx on Serve, fast ingress (HAProxy)"})


def answering_server(url: str, lean: bool | None, timeout: float = 30) -> str:
    """Who answers ``url``: Serve's uvicorn names itself, the lean ingress sends no server
    header. For a lean endpoint, waits until HAProxy sends to the replica's own port (it uses
    Serve's proxy, a backup server, for a moment after a replica starts)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        server = httpx.get(url, timeout=10).headers.get("server", "lean ingress")
        if not lean or server == "lean ingress" or time.monotonic() > deadline:
            return server
        time.sleep(0.5)


def endpoint(label: str, weights: dict[int, float], batch: int = 1, lean: bool | None = None):
    """A launcher for one modelplane endpoint: seeds ``weights`` (seed -> traffic %);
    ``lean``: the lean ingress on or off (None: the platform's default)."""

    def launch(model: str, models: dict[str, bytes], workdir: Path) -> Any:
        from benchmarks.peers import Running
        from benchmarks.serving import wait_serving
        from serving.names import endpoint_url

        PLATFORM.ensure(lean)
        client, name = PLATFORM.client, f"{label}-{model}"
        versions = {PLATFORM.version(model, seed, models): share for seed, share in weights.items()}
        batching = {"max_batch_size": batch, "batch_wait_timeout_ms": 2.0}

        def stop() -> None:
            client.undeploy(name)
            wait_gone(endpoint_url(PLATFORM.base, name))

        try:
            for version in versions:
                client.deploy(name, f"{MODEL_NAMES[model]}:{version}", scaling=SCALING,
                              batching=batching)
            client.set_traffic(name, versions)
            wait_serving(endpoint_url(PLATFORM.base, name), set(versions), versions)
            answered_by = answering_server(endpoint_url(PLATFORM.base, name), lean)
        except BaseException:
            with contextlib.suppress(Exception):
                stop()
            raise
        return Running(endpoint_url(PLATFORM.base, name, "infer"), name, PLATFORM.processes, stop,
                       tuple(models[f"{model}{seed}"] for seed in weights),
                       notes={"settings": f"fast ingress (HAProxy), traffic {versions}, "
                                          f"max batch {batch}" + (", 2 ms wait" if batch > 1 else "")
                                          + ("" if lean is None else f", lean ingress {'on' if lean else 'off'}"),
                              "answered_by": answered_by})

    return launch


LAUNCHERS = {
    "ray-serve": ray_serve,
    "modelplane": endpoint("mp", {1: 100.0}),
    "modelplane-canary": endpoint("mpc", {1: 90.0, 2: 10.0}),
    "modelplane-batched": endpoint("mpb", {1: 100.0}, batch=32),
    "modelplane-lean": endpoint("mpl", {1: 100.0}, lean=True),
    "modelplane-serve-ingress": endpoint("mps", {1: 100.0}, lean=False),
}


def shutdown() -> None:
    """Stop the platform if a scenario started it (a failure to stop is printed, so the
    results are still written)."""
    try:
        PLATFORM.shutdown()
    except Exception as exc:
        print(f"  stopping the platform failed: {exc!r}", flush=True)
