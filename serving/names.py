"""Every name the data plane is known by: Serve applications, HTTP routes, the Monitor.

The control plane deploys, sweeps, counts and calls what the data plane serves, so both
derive these names here and cannot drift apart. Plain strings, no imports: anything may
import this module, however light it must stay.

- ``inference-server`` at ``/v2``: server metadata and health.
- ``endpoint-{e}`` at ``/v2/models/{e}``: an endpoint (colocated), or its router (isolated).
- ``endpoint-{e}-v{n}``, no route: version ``n`` of an isolated endpoint, one deployment
  ``model-v{n}`` the router calls through a handle. No new endpoint is named ``…-v{n}``
  (:func:`version_app_parts`), so no endpoint's application is another's version.
- ``grpc-ingress``, no HTTP route: the gRPC inference service, which finds an endpoint's
  ingress deployment (``endpoint`` colocated, ``router`` isolated) by its model name.
- ``endpoint-_bench-{store}-{id}`` (and ``…-v{n}`` when isolated): the scratch replica of
  version benchmark ``id`` of the store whose id starts with ``store``, at
  ``/v2/models/_bench-{store}-{id}``. A stored endpoint's name starts with a
  letter or digit, so none collides, and :func:`is_endpoint_app` leaves them out: the
  reconciler's sweep never touches a benchmark (the benchmark deletes its own).
- ``modelplane-monitor`` in Ray namespace ``modelplane``: the Monitor actor.
- ``modelplane-route-board`` in the same namespace: route tables posted to live replicas.
"""

from __future__ import annotations

SERVER_APP = "inference-server"
SERVER_ROUTE = "/v2"
ENDPOINT_APP_PREFIX = "endpoint-"
ENDPOINT_DEPLOYMENT = "endpoint"  # a colocated endpoint's one deployment
ROUTER_DEPLOYMENT = "router"  # an isolated endpoint's router
ENDPOINT_DEPLOYMENTS = (ENDPOINT_DEPLOYMENT, ROUTER_DEPLOYMENT)
GRPC_APP = "grpc-ingress"
MONITOR_NAME = "modelplane-monitor"
MONITOR_NAMESPACE = "modelplane"
ROUTE_BOARD_NAME = "modelplane-route-board"
ROUTE_BOARD_NAMESPACE = MONITOR_NAMESPACE
BENCHMARK_ENDPOINT_PREFIX = "_bench-"  # not a valid endpoint name: never a stored one's
# What a benchmark sends its scratch endpoint, which answers nobody else (EndpointConfig).
CALLER_KEY_HEADER = "x-modelplane-caller-key"


def endpoint_app_name(endpoint: str) -> str:
    """The Serve application that answers ``endpoint``'s route."""
    return f"{ENDPOINT_APP_PREFIX}{endpoint}"


def version_app_name(endpoint: str, version: int) -> str:
    """The Serve application running one version of an isolated endpoint."""
    return f"{endpoint_app_name(endpoint)}-v{version}"


def serving_app_name(endpoint: str, version: int, placement: str) -> str:
    """The application whose replicas run ``version``: the endpoint's own when colocated."""
    if placement == "colocated":
        return endpoint_app_name(endpoint)
    return version_app_name(endpoint, version)


def is_endpoint_app(app: str, endpoint: str | None = None) -> bool:
    """Whether Serve application ``app`` is an endpoint's (its own or one of its versions');
    only ``endpoint``'s when it is given."""
    if endpoint is None:
        return app.startswith(ENDPOINT_APP_PREFIX) and not is_benchmark_app(app)
    own = endpoint_app_name(endpoint)
    return app == own or (app.startswith(f"{own}-v") and app[len(own) + 2:].isdigit())


def version_app_parts(endpoint: str) -> tuple[str, str] | None:
    """(endpoint, version) whose version application ``endpoint``'s own application would
    be named as (``fraud-v2``'s is ``endpoint-fraud-v2``, version 2 of ``fraud``), or None."""
    stem, _, number = endpoint.rpartition("-v")
    return (stem, number) if stem and number.isdigit() else None


def benchmark_endpoint_name(benchmark_id: int, store_id: str | None = None) -> str:
    """The scratch endpoint that version benchmark ``benchmark_id`` serves under (two
    stores sharing a cluster number their benchmarks apart: the store id tells them apart)."""
    store = f"{store_id[:8]}-" if store_id else ""
    return f"{BENCHMARK_ENDPOINT_PREFIX}{store}{benchmark_id}"


def is_benchmark_app(app: str) -> bool:
    """Whether Serve application ``app`` is a version benchmark's scratch application."""
    return app.startswith(endpoint_app_name(BENCHMARK_ENDPOINT_PREFIX))


def model_server_name(version: int) -> str:
    """The deployment inside a version's application (isolated placement)."""
    return f"model-v{version}"


def link_route(endpoint: str, version: int) -> str:
    """The HTTP route of an isolated version's link (``serving.version_link``): outside
    ``/v2``, so it never shadows or is shadowed by an endpoint's own routes."""
    return f"/modelplane-link/{endpoint}/v{version}"


def endpoint_route_prefix(endpoint: str) -> str:
    """``/v2/models/{endpoint}``: the route prefix of the endpoint's application."""
    return f"{SERVER_ROUTE}/models/{endpoint}"


def endpoint_url(base_url: str, endpoint: str, *path: str) -> str:
    """``{base_url}/v2/models/{endpoint}[/{path}…]``, e.g. ``endpoint_url(url, "iris", "infer")``."""
    return "/".join([f"{base_url}{endpoint_route_prefix(endpoint)}", *path])
