"""``modelplane up|down|status|deploy|traffic|undeploy``: run the platform and its endpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from control_plane.cli.output import JsonOption, UrlOption, client, emit, print_table
from serving.names import endpoint_url

if TYPE_CHECKING:
    from control_plane.schemas import ClusterOut, EndpointServing, LeadershipOut


def up(
    num_cpus: int | None = typer.Option(None, min=1, help="CPUs for a new local Ray head (default: all)."),
    fast_ingress: bool | None = typer.Option(
        None, "--fast-ingress/--default-ingress",
        help="HAProxy + throughput-optimized Serve (default: when HAProxy is available).",
    ),
    take_over: bool = typer.Option(
        False, "--take-over",
        help="Replace a control plane of another store (another home) running on this Ray "
             "cluster; its endpoints keep serving, untouched. Without it, `up` stops and "
             "names both homes. Also starts where this store is led from another Ray "
             "cluster (this one leads once that one stops).",
    ),
) -> None:
    """Start Ray (if none is reachable), Serve, the Monitor and the control plane at /api."""
    from rich.console import Console

    from control_plane.platform import start_platform, status_progress
    from modelplane.settings import get_settings

    console = Console()
    settings = get_settings()
    with console.status("starting modelplane …", refresh_per_second=4) as status:
        info = start_platform(settings, num_cpus=num_cpus, fast_ingress=fast_ingress,
                              progress=status_progress(console, status), take_over=take_over)
    console.print(f"[green]modelplane is up[/green] (Ray at {info.ray_address}"
                  + (", HAProxy ingress" if info.fast_ingress else "") + ")")
    console.print(f"  control plane  {info.api_url}   (docs: {info.api_url}/docs)")
    console.print(f"  console        {info.api_url}/ui   (sign in with a token)")
    console.print(f"  inference      {info.inference_url}/models/<endpoint>/infer")
    if info.grpc_address:
        console.print(f"  gRPC           {info.grpc_address}   (tritonclient.grpc; "
                      "MODELPLANE_GRPC_PORT)")
    console.print(f"  metrics        {info.api_url}/metrics")
    if info.dashboard_url:
        console.print(f"  Ray dashboard  {info.dashboard_url}   (job API for `modelplane train submit`)")
    console.print(f"  admin token    {settings.admin_token_path}")
    if info.endpoints:
        console.print(("  restored from the store:" if info.started_ray else "  endpoints:"),
                      highlight=False)
        for endpoint in info.endpoints:
            console.print(f"    {endpoint.describe()}", highlight=False)
    console.print("  stop with      modelplane down")


def down(
    force: bool = typer.Option(
        False, "--force",
        help="Shut Serve down even when the control plane there belongs to another store "
             "(another home); without it, `down` stops and names both homes.",
    ),
) -> None:
    """Shut down Serve, and the local Ray head if `modelplane up` started it."""
    from control_plane.platform import stop_platform
    from modelplane.settings import get_settings

    stopped_ray = stop_platform(get_settings(), progress=typer.echo, force=force)
    typer.echo("modelplane is down" + (" (Ray head stopped)" if stopped_ray else ""))


def status(as_json: bool = JsonOption, url: str | None = UrlOption) -> None:
    """Endpoints, their versions and weights, whether each is ready, which control plane
    runs the control loops, and the cluster's nodes (a lost one marked) with the endpoint
    replicas on each."""
    from control_plane.errors import (
        AuthenticationError,
        ControlPlaneUnavailableError,
        NotFoundError,
    )

    api = client(url)
    health = api.health()
    endpoints = api.list_endpoints()
    ready = {e.name: _is_ready(api.url, e.name) for e in endpoints}
    # A version a replica could not load answers 503 with the cause while the others serve.
    unloaded = {e.name: _unloaded_versions(api.url, e.name, [r.version for r in e.routes])
                for e in endpoints}
    try:
        leadership: LeadershipOut | None = api.leadership()
    except AuthenticationError:  # host names and process ids: a token's to read
        leadership = None
    try:
        cluster: ClusterOut | None = api.cluster()
    except (ControlPlaneUnavailableError, NotFoundError, AuthenticationError):
        # Serve's controller restarting, a control plane from before /cluster, or no token
        # (the nodes need one; the endpoints do not): the rest is still worth showing.
        cluster = None
    payload = {"control_plane": health, "leadership": leadership, "endpoints": endpoints,
               "ready": ready, "cluster": cluster,
               "versions_not_loaded": {name: found for name, found in unloaded.items() if found}}

    def show() -> None:
        print_table(
            f"modelplane {health.get('version', '')} at {api.url}; {_leadership_text(leadership)}",
            ["endpoint", "model", "placement", "routes", "ready", "serving", "url"],
            [[e.name, e.model, e.placement,
              _routes_text(e.routes),
              ("yes" if ready[e.name] else "no") + "".join(
                  f"; v{v} not loaded: {why[:200]}" for v, why in sorted(unloaded[e.name].items())),
              _serving_text(e.serving), e.url] for e in endpoints],
        )
        if cluster is None:
            typer.echo("nodes: not shown (they need a token: MODELPLANE_TOKEN; or Serve's "
                       "controller did not answer, or the control plane is older than this CLI)")
            return
        print_table(_nodes_title(cluster), ["node", "address", "state", "CPUs", "GPUs",
                                            "labels", "endpoint replicas"],
                    [[n.node_id[:12] + (" (head)" if n.head else ""), n.address,
                      "alive" if n.alive else "LOST", f"{n.cpus:g}", f"{n.gpus:g}",
                      ", ".join(sorted(n.resources)) or "-", _replicas_text(cluster, n.node_id)]
                     for n in cluster.nodes])

    emit(as_json, payload, show)


def _nodes_title(cluster: ClusterOut) -> str:
    lost = sum(not n.alive for n in cluster.nodes)
    alive = len(cluster.nodes) - lost
    return f"{alive} node(s) alive" + (f", {lost} lost" if lost else "")


def _replicas_text(cluster: ClusterOut, node_id: str) -> str:
    """``fraud x2 (1 starting), iris-v3 x1`` for the replicas on one node."""
    counts: dict[str, list[int]] = {}
    for replica in cluster.replicas:
        if replica.node_id != node_id:
            continue
        name = replica.endpoint + (f"-v{replica.version}" if replica.version else "")
        if replica.deployment == "router":
            name += " router"
        running, other = counts.setdefault(name, [0, 0])
        counts[name] = [running + (replica.state == "RUNNING"),
                        other + (replica.state != "RUNNING")]
    return ", ".join(f"{name} x{running + other}" + (f" ({other} not running)" if other else "")
                     for name, (running, other) in sorted(counts.items())) or "-"


def _leadership_text(lease: LeadershipOut | None, now: datetime | None = None) -> str:
    """Who runs the control loops, and whether its lease is current (at ``now``)."""
    if lease is None:
        return "which control plane runs the control loops needs a token to read"
    if lease.holder is None or lease.expires_at is None:
        return "no control plane has run the control loops yet"
    left = (lease.expires_at - (now or datetime.now(UTC))).total_seconds()
    state = (f"lease renewed, {left:.0f} s left" if left > 0 else
             f"LEASE EXPIRED {-left:.0f} s ago: no control plane runs the loops")
    return f"control loops run by {lease.holder} (term {lease.term}; {state})"


def _serving_text(serving: EndpointServing | None) -> str:
    """``applied``, ``pending: why`` or ``failed: why (retry at 12:00:05 UTC)``."""
    if serving is None:
        return "-"
    text = serving.state
    if serving.error:
        error = serving.error
        text += f": {error if len(error) <= 160 else error[:157] + '...'}"
    if serving.retry_at is not None:
        text += f" (retry at {serving.retry_at:%H:%M:%S} UTC)"
    return text


def _routes_text(routes: list) -> str:
    """``v1=90%, v2=10%, v3=shadow``."""
    return ", ".join(f"v{r.version}={'shadow' if r.shadow else f'{r.weight:g}%'}" for r in routes)


def _is_ready(base_url: str, endpoint: str) -> bool:
    import httpx

    try:
        return httpx.get(endpoint_url(base_url, endpoint, "ready"), timeout=3).status_code == 200
    except httpx.TransportError:
        return False


def _unloaded_versions(base_url: str, endpoint: str, versions: list[int]) -> dict[int, str]:
    """The versions a replica answered it could not load, with the cause it gave."""
    import httpx

    found: dict[int, str] = {}
    for version in versions:
        try:
            response = httpx.get(f"{endpoint_url(base_url, endpoint)}/versions/{version}/ready",
                                 timeout=3)
        except httpx.TransportError:
            continue
        if response.status_code == 503:
            try:
                body = response.json()
            except ValueError:
                continue
            if body.get("ready") is False and body.get("error") and not body.get("warming"):
                found[version] = str(body["error"])
    return found


def _parse_autoscale(raw: str) -> dict[str, int]:
    low, sep, high = raw.partition(":")
    if not sep or not low.isdigit() or not high.isdigit() or int(high) < max(int(low), 1):
        raise typer.BadParameter(f"--autoscale {raw!r} must be MIN:MAX with MAX >= MIN, MAX >= 1")
    return {"min_replicas": int(low), "max_replicas": int(high)}


def _parse_resources(pairs: list[str]) -> dict[str, float]:
    resources: dict[str, float] = {}
    for pair in pairs:
        name, sep, amount = pair.rpartition("=")
        try:
            resources[name] = float(amount)
        except ValueError:
            name = ""
        if not sep or not name:
            raise typer.BadParameter(f"--resource {pair!r} is not NAME=AMOUNT (for example "
                                     "node:gpu-a=0.01)")
    return resources


def _scaling_options(*, replicas: int | None, autoscale: str | None, num_cpus: float | None,
                     num_gpus: float | None, target_ongoing: float | None,
                     downscale_delay: float | None, max_queued: int | None, spread: bool,
                     max_per_node: int | None, resource: list[str],
                     accelerator_type: str | None) -> dict[str, object] | None:
    """The deploy request's ``scaling`` from the CLI's options (None: the endpoint's own)."""
    if replicas is not None and autoscale is not None:
        raise typer.BadParameter("give --replicas or --autoscale, not both")
    if autoscale is None and (target_ongoing is not None or downscale_delay is not None):
        raise typer.BadParameter("--target-ongoing and --downscale-delay need --autoscale MIN:MAX")
    if spread and max_per_node is not None:
        raise typer.BadParameter("give --spread or --max-per-node, not both (--spread is "
                                 "--max-per-node 1)")
    scaling: dict[str, object] = {}
    if replicas is not None:
        scaling["replicas"] = replicas
    if autoscale is not None:
        auto: dict[str, object] = dict(_parse_autoscale(autoscale))
        if target_ongoing is not None:
            auto["target_ongoing_requests"] = target_ongoing
        if downscale_delay is not None:
            auto["downscale_delay_s"] = downscale_delay
        scaling["autoscaling"] = auto
    optional = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_queued_requests": max_queued,
                "max_replicas_per_node": 1 if spread else max_per_node,
                "accelerator_type": accelerator_type,
                "resources": _parse_resources(resource) or None}
    scaling.update({key: value for key, value in optional.items() if value is not None})
    return scaling or None


def deploy(
    endpoint: str = typer.Argument(..., help="Endpoint name (the URL is /v2/models/ENDPOINT)."),
    model_ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    placement: str | None = typer.Option(None, help="colocated (default) or isolated; new endpoints only."),
    replicas: int | None = typer.Option(None, min=1, help="Fixed replica count."),
    autoscale: str | None = typer.Option(None, help="MIN:MAX replicas with autoscaling (MIN 0 scales to zero)."),
    target_ongoing: float | None = typer.Option(
        None, min=0.01, help="Autoscaling: ongoing requests per replica to aim for (default 16)."),
    downscale_delay: float | None = typer.Option(
        None, min=0, help="Autoscaling: seconds of low load before replicas stop (default 30)."),
    max_queued: int | None = typer.Option(
        None, min=1, help="Requests a replica holds waiting; more get 503 with Retry-After."),
    spread: bool = typer.Option(False, "--spread", help="At most one replica per node."),
    max_per_node: int | None = typer.Option(None, min=1, help="At most N replicas per node."),
    resource: list[str] = typer.Option(
        [], "--resource", help="Custom Ray resource each replica needs, NAME=AMOUNT (repeatable); "
                               "nodes offer them with `ray start --resources`."),
    accelerator_type: str | None = typer.Option(
        None, help="GPU type the replicas need (A100, L4 …); needs --num-gpus."),
    num_cpus: float | None = typer.Option(None, min=0, help="CPUs per replica (default 0.5)."),
    num_gpus: float | None = typer.Option(None, min=0, help="GPUs per replica."),
    max_batch_size: int = typer.Option(1, min=1, help="Dynamic batching; 1 turns it off."),
    batch_wait_ms: float = typer.Option(2.0, min=0, help="Longest wait to fill a batch."),
    weight: float | None = typer.Option(None, min=0, max=100, help="Traffic share for an added version."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the endpoint serves it."),
    timeout: float = typer.Option(300, help="Seconds to wait."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Serve a model version on an endpoint (new: all traffic; existing: added at 0%)."""
    if placement not in (None, "colocated", "isolated"):
        raise typer.BadParameter(f"--placement {placement!r} must be colocated or isolated")
    scaling = _scaling_options(
        replicas=replicas, autoscale=autoscale, num_cpus=num_cpus, num_gpus=num_gpus,
        target_ongoing=target_ongoing, downscale_delay=downscale_delay, max_queued=max_queued,
        spread=spread, max_per_node=max_per_node, resource=resource,
        accelerator_type=accelerator_type)
    api = client(url)
    result = api.deploy(endpoint, model_ref, placement=placement, scaling=scaling, weight=weight,
                        batching={"max_batch_size": max_batch_size,
                                  "batch_wait_timeout_ms": batch_wait_ms})
    version = api.resolve(model_ref).version
    if wait:
        from rich.console import Console

        from control_plane.platform import wait_serving

        with Console(stderr=True).status(f"waiting for {endpoint} to load version {version} …"), \
                _saying_why(api, endpoint):
            wait_serving(api.url, endpoint, version, timeout_s=timeout)
    emit(as_json, result, lambda: typer.echo(
        f"{endpoint}: {_routes_text(result.routes)}\n  {result.url}/infer"))


@contextlib.contextmanager
def _saying_why(api: Any, endpoint: str) -> Iterator[None]:
    """A wait that times out says what the control plane last heard from Serve about the
    endpoint (a replica no node can hold, a model that fails to load), not only where to look."""
    from control_plane.errors import ControlPlaneError, ControlPlaneUnavailableError

    try:
        yield
    except ControlPlaneUnavailableError as error:
        try:
            serving = api.get_endpoint(endpoint).serving
        except ControlPlaneError:
            raise error from None
        if serving is None or not serving.error:
            raise
        raise ControlPlaneUnavailableError(
            f"{error.message}; the control plane last saw it {serving.state}: {serving.error}",
            detail=error.detail) from None


def traffic(
    endpoint: str = typer.Argument(..., help="Endpoint name."),
    weights: list[str] = typer.Argument(..., help="VERSION=PERCENT pairs summing to 100, e.g. 3=90 4=10."),
    shadow: list[int] = typer.Option([], "--shadow", help="Version to mirror traffic to (repeatable)."),
    wait: bool = typer.Option(True, "--wait/--no-wait",
                              help="Wait until the endpoint serves the new weights."),
    timeout: float = typer.Option(300, help="Seconds to wait."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Set an endpoint's route table; versions not named are unloaded, new ones loaded."""
    parsed: dict[int, float] = {}
    for pair in weights:
        version, sep, percent = pair.partition("=")
        try:
            parsed[int(version)] = float(percent)
        except ValueError:
            raise typer.BadParameter(f"{pair!r} is not VERSION=PERCENT (for example 3=90)") from None
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not VERSION=PERCENT (for example 3=90)")
    api = client(url)
    result = api.set_traffic(endpoint, parsed, shadows=list(shadow))
    if wait:
        from rich.console import Console

        from control_plane.platform import wait_routes

        with Console(stderr=True).status(f"waiting for {endpoint} to serve the new weights …"), \
                _saying_why(api, endpoint):
            wait_routes(api.url, endpoint, {r.version: r.weight for r in result.routes if not r.shadow},
                        timeout_s=timeout)
    emit(as_json, result, lambda: typer.echo(
        f"{endpoint}: {_routes_text(result.routes)}"))


def undeploy(endpoint: str = typer.Argument(..., help="Endpoint name."),
             url: str | None = UrlOption) -> None:
    """Remove an endpoint and its replicas."""
    client(url).undeploy(endpoint)
    typer.echo(f"undeployed {endpoint}")
