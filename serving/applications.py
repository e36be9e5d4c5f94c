"""Build the Serve applications for an endpoint from its :class:`EndpointConfig`.

Colocated: one application, ``endpoint-{name}`` at ``/v2/models/{name}``, one deployment
whose replicas hold every version. Isolated: the same application name and prefix for the
router, plus one application per version (``endpoint-{name}-v{n}``, no HTTP route) with
its own replicas, resources and autoscaling. Keeping each version in its own application
means adding or removing a version never changes the router's constructor arguments, so
the router is reconfigured, not restarted. The names come from :mod:`serving.names`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from serving.names import ENDPOINT_DEPLOYMENT, ROUTER_DEPLOYMENT, model_server_name
from serving.schemas import RETRY_AFTER_S, EndpointConfig, ScalingConfig, VersionConfig

# Behind HAProxy, Serve keeps a replica it stops reachable for this setting's seconds (30 by
# default) so that HAProxy takes it out, then waits for its requests in flight, and
# force-kills it at the larger of that period and ``graceful_shutdown_timeout_s``. With 10
# the kill came as the period ended: requests still in flight were cut, and so was the
# replica's goodbye to the Monitor, which then counted every scale-down as a lost replica.
DRAINING_SETTING = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
DRAINING_DEFAULT_S = 30.0
STOP_AFTER_DRAINING_S = 10.0


def graceful_stop_s() -> float:
    """Seconds Serve gives a stopping replica: its draining period, then time to finish."""
    try:
        draining = float(os.environ.get(DRAINING_SETTING) or DRAINING_DEFAULT_S)
    except ValueError:  # Serve itself would not start with it
        draining = DRAINING_DEFAULT_S
    return max(draining, 0.0) + STOP_AFTER_DRAINING_S


def _deployment_options(scaling: ScalingConfig, *, env: dict[str, str], min_ongoing: int = 1,
                        access_log: bool = False) -> dict[str, Any]:
    actor: dict[str, Any] = {"num_cpus": scaling.num_cpus, "runtime_env": {"env_vars": env}}
    if scaling.num_gpus:
        actor["num_gpus"] = scaling.num_gpus
    if scaling.memory_mb:
        actor["memory"] = scaling.memory_mb * 1024 * 1024
    if scaling.resources:
        actor["resources"] = dict(scaling.resources)
    if scaling.accelerator_type:
        actor["accelerator_type"] = scaling.accelerator_type
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        # Serve caps a batch at max_ongoing_requests without saying so: keep it above.
        "max_ongoing_requests": max(scaling.max_ongoing_requests, min_ongoing),
        "graceful_shutdown_timeout_s": graceful_stop_s(),
        "health_check_period_s": 5,
        # Serve's access log writes a line per request (a gigabyte a day at a few hundred
        # requests a second); the Monitor already counts every request by version, code
        # and latency.
        "logging_config": {"enable_access_log": access_log},
    }
    if scaling.max_queued_requests is not None:
        options["max_queued_requests"] = scaling.max_queued_requests
        options["backpressure_config"] = {"status_code": 503, "retry_after_s": RETRY_AFTER_S}
    if scaling.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = scaling.max_replicas_per_node
    if scaling.autoscaling is not None:
        auto = scaling.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "initial_replicas": max(auto.min_replicas, 1),
            "target_ongoing_requests": auto.target_ongoing_requests,
            "upscale_delay_s": auto.upscale_delay_s,
            "downscale_delay_s": auto.downscale_delay_s,
            "look_back_period_s": auto.look_back_period_s,
        }
    else:
        options["num_replicas"] = scaling.replicas
    return options


def deployment_version(cls: type | str, options: dict[str, Any], *init_args: Any) -> str:
    """A deployment version that changes only when its replicas must be replaced.

    Serve gives every ``serve.run`` a random version unless one is set, so each route
    change would roll every replica. With a version derived from what a replica is built
    from (class, constructor arguments, actor options, modelplane's own version), a
    change of ``user_config`` or replica count is applied in place (``reconfigure``).
    """
    import hashlib
    import json

    from modelplane import __version__

    name = cls if isinstance(cls, str) else cls.__qualname__
    document = json.dumps([name, __version__, source_digest(), options.get("ray_actor_options"),
                           init_args], sort_keys=True, default=str)
    return hashlib.sha256(document.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """A digest of modelplane's own Python source, so replicas are replaced when the code
    they run changed (an upgrade, or an edited checkout), and only then."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    hasher = hashlib.sha256()
    for package in ("modelplane", "control_plane", "serving", "kernels", "training"):
        for path in sorted((root / package).rglob("*.py")):
            hasher.update(str(path.relative_to(root)).encode())
            hasher.update(path.read_bytes())
    return hasher.hexdigest()[:16]


def _batch_floor(versions: list[VersionConfig]) -> int:
    return 2 * max((v.batching.max_batch_size for v in versions), default=1)


def build_endpoint_app(config: EndpointConfig, *, env: dict[str, str], access_log: bool = False,
                       lean_ingress: bool = False) -> Any:
    """The application serving ``config.endpoint``'s HTTP route (endpoint or router);
    ``lean_ingress``: its replicas answer on their own server (``serving.lean_ingress``)."""
    from ray import serve

    from serving.endpoint import EndpointRouter, EndpointServer
    from serving.lean_ingress import SETTING as LEAN_INGRESS

    if lean_ingress and not access_log:  # Serve's access log is written by Serve's server only
        env = {**env, LEAN_INGRESS: "true"}

    user_config = config.model_dump(mode="json")
    if config.placement == "colocated":
        options = _deployment_options(config.scaling, env=env, access_log=access_log,
                                      min_ongoing=_batch_floor(config.versions))
        deployment = serve.deployment(EndpointServer).options(
            name=ENDPOINT_DEPLOYMENT, user_config=user_config,
            version=deployment_version(EndpointServer, options), _internal=True, **options
        )
        return deployment.bind()
    options = _deployment_options(config.scaling, env=env, access_log=access_log)
    deployment = serve.deployment(EndpointRouter).options(
        name=ROUTER_DEPLOYMENT, user_config=user_config,
        version=deployment_version(EndpointRouter, options), _internal=True, **options
    )
    return deployment.bind()


def build_version_app(config: EndpointConfig, version: VersionConfig, *, env: dict[str, str],
                      access_log: bool = False) -> Any:
    """Isolated placement: the application running one version's ModelServer replicas;
    with ``config.link_address`` set, they answer the router on their own listeners
    (``serving.version_link``; the application is deployed at ``names.link_route``)."""
    from ray import serve

    from serving.endpoint import ModelServer

    options = _deployment_options(version.scaling, env=env, access_log=access_log,
                                  min_ongoing=_batch_floor([version]))
    if version.code is not None and version.code.requirements:
        # The version's own packages, in a runtime environment of its own that keeps the
        # platform's (Ray builds it once per node and set of requirements).
        from serving.runners.requirements import PIP_OPTIONS

        options["ray_actor_options"]["runtime_env"]["pip"] = {
            "packages": list(version.code.requirements), "pip_check": False,
            "pip_install_options": list(PIP_OPTIONS)}
    init = version.model_dump(mode="json")
    if config.link_address is not None:
        options["user_config"] = {"link": True}
    deployment = serve.deployment(ModelServer).options(
        name=model_server_name(version.version),
        version=deployment_version(ModelServer, options, init), _internal=True, **options,
    )
    return deployment.bind(init)


def submit_application(app: Any, name: str, route_prefix: str | None, *, wait: bool = True) -> None:
    """Deploy ``app`` as Serve application ``name``; with ``wait``, until it runs (as
    ``serve.run`` does), else return at once and let ``wait_running`` wait for several
    together: their replicas' processes then start side by side instead of one by one."""
    from ray.serve.api import RunTarget, _run_many

    _run_many([RunTarget(target=app, name=name, route_prefix=route_prefix)],
              wait_for_ingress_deployment_creation=wait, wait_for_applications_running=wait)


# Serve's controller answers its details in milliseconds; a loaded 2-core host in seconds.
SERVE_DETAILS_TIMEOUT_S = 30.0


class ServeControllerUnanswered(TimeoutError):
    """Serve's controller did not answer a read within its bound."""


def serve_instance_details(timeout_s: float = SERVE_DETAILS_TIMEOUT_S) -> dict[str, Any]:
    """Serve's instance details (applications, their deployments and replicas, their
    options) as its controller answers them, a plain dict; ServeControllerUnanswered
    where it does not answer in ``timeout_s``.

    Serve's own reads wait without a bound: a controller wedged, or restarting without
    end, held every caller for ever (the reconciler's passes, `up`, `down`, the gRPC
    ingress's lookups). ``serve.status()`` also builds its typed models from the answer,
    pickling each deployment's request router again: a tenth of a second of CPU per read,
    and `up` polling it took seconds from the replicas it waited for. The controller's
    handle is looked up by name, not through Serve's cached client: that one is dropped
    by a write that found the controller slow, and making it again asks the controller,
    without a bound."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.serve.context import _get_global_client

    if ray.is_initialized():
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
        from ray.serve.exceptions import RayServeException

        try:
            controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            raise RayServeException("There is no Serve instance running on this Ray "
                                    "cluster.") from None
    else:  # not yet connected: Serve's client joins Ray as it does everywhere else
        controller = _get_global_client()._controller
    try:
        return dict(ray.get(controller.get_serve_instance_details.remote(), timeout=timeout_s))
    except GetTimeoutError:
        raise ServeControllerUnanswered(
            f"Serve's controller did not answer within {timeout_s:g} s; it may be restarting "
            "or overloaded (`ray status`, and its log serve/controller_*.log, show which)"
            ) from None


def serve_state(part: dict[str, Any] | None) -> str:
    """The status of an application, or the state of a replica, in
    :func:`serve_instance_details` ("" where not listed): Serve's enum or its value."""
    found = (part or {}).get("status", (part or {}).get("state"))
    return str(getattr(found, "value", found) or "").rpartition(".")[2]


def wait_running(names: list[str], timeout_s: float, poll_s: float = 0.1) -> None:
    """Until every application in ``names`` is RUNNING; RuntimeError naming the first that
    failed to deploy (with Serve's message), TimeoutError naming those still not running
    (ServeControllerUnanswered where Serve's controller does not answer in time)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            apps = serve_instance_details(
                min(SERVE_DETAILS_TIMEOUT_S, max(0.5, deadline - time.monotonic()))
            ).get("applications") or {}
        except ServeControllerUnanswered:
            if time.monotonic() >= deadline:
                raise
            continue  # one slow answer (a controller busy starting replicas) is no failure
        waiting = []
        for name in names:
            state = serve_state(apps.get(name))
            if state == "DEPLOY_FAILED":
                raise RuntimeError(f"Deploying application {name} failed: "
                                   f"{apps[name].get('message') or ''}")
            if state != "RUNNING":
                waiting.append(f"{name} ({state or 'not submitted'})")
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not running after {timeout_s:.0f} s: {', '.join(waiting)}")
        time.sleep(poll_s)


def build_server_app() -> Any:
    """``/v2``: server health and metadata."""
    from ray import serve

    from serving.endpoint import InferenceServer

    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0.05}}
    # A stable version: a second `up` leaves the running replica alone.
    return serve.deployment(InferenceServer).options(
        name="server", num_replicas=1, max_ongoing_requests=256,
        version=deployment_version(InferenceServer, options), _internal=True, **options,
    ).bind()


def build_grpc_app(host: str, port: int, max_message_bytes: int, http_port: int | None = None) -> Any:
    """The gRPC inference service (``serving.grpc_ingress``) on ``host:port``; with
    ``http_port``, it reaches the endpoints through the HTTP ingress where that is HAProxy.

    One replica, on the head node: clients need one fixed address, as for ``/v2``.
    """
    from ray import serve

    from serving.grpc_ingress import GrpcIngress

    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": 0.05, "resources": {"node:__internal_head__": 0.001}},
    }
    # Calls reach it through its own gRPC server, never through Serve, so Serve's limit on
    # ongoing requests does not apply to them. The version keeps a second `up` from
    # restarting it (and dropping the port for a moment).
    return serve.deployment(GrpcIngress).options(
        name="grpc", num_replicas=1, max_ongoing_requests=8, graceful_shutdown_timeout_s=10,
        logging_config={"enable_access_log": False},
        version=deployment_version(GrpcIngress, options, host, port, max_message_bytes, http_port),
        _internal=True, **options,
    ).bind(host, port, max_message_bytes, http_port)
