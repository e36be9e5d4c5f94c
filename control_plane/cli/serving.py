"""``modelplane up|down|status|deploy|traffic|undeploy``: run the platform and its endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from control_plane.cli.output import JsonOption, UrlOption, client, emit, print_table
from serving.names import endpoint_url

if TYPE_CHECKING:
    from control_plane.schemas import EndpointServing, LeadershipOut


def up(
    num_cpus: int | None = typer.Option(None, help="CPUs for a new local Ray head (default: all)."),
    fast_ingress: bool | None = typer.Option(
        None, "--fast-ingress/--default-ingress",
        help="HAProxy + throughput-optimized Serve (default: when HAProxy is available).",
    ),
    take_over: bool = typer.Option(
        False, "--take-over",
        help="Replace a control plane of another store (another home) running on this Ray "
             "cluster; its endpoints keep serving, untouched. Without it, `up` stops and "
             "names both homes.",
    ),
) -> None:
    """Start Ray (if none is reachable), Serve, the Monitor and the control plane at /api."""
    from rich.console import Console

    from control_plane.platform import start_platform
    from modelplane.settings import get_settings

    console = Console()
    settings = get_settings()
    with console.status("starting modelplane …") as status:
        info = start_platform(settings, num_cpus=num_cpus, fast_ingress=fast_ingress,
                              progress=lambda message: status.update(message + " …"),
                              take_over=take_over)
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
    """Endpoints, their versions and weights, whether each is ready, and which control
    plane runs the control loops."""
    api = client(url)
    health = api.health()
    endpoints = api.list_endpoints()
    ready = {e.name: _is_ready(api.url, e.name) for e in endpoints}
    # A version a replica could not load answers 503 with the cause while the others serve.
    unloaded = {e.name: _unloaded_versions(api.url, e.name, [r.version for r in e.routes])
                for e in endpoints}
    leadership = api.leadership()
    payload = {"control_plane": health, "leadership": leadership, "endpoints": endpoints,
               "ready": ready,
               "versions_not_loaded": {name: found for name, found in unloaded.items() if found}}
    emit(as_json, payload, lambda: print_table(
        f"modelplane {health.get('version', '')} at {api.url}; {_leadership_text(leadership)}",
        ["endpoint", "model", "placement", "routes", "ready", "serving", "url"],
        [[e.name, e.model, e.placement,
          _routes_text(e.routes),
          ("yes" if ready[e.name] else "no") + "".join(
              f"; v{v} not loaded: {why[:200]}" for v, why in sorted(unloaded[e.name].items())),
          _serving_text(e.serving), e.url] for e in endpoints],
    ))


def _leadership_text(lease: LeadershipOut) -> str:
    """Who runs the control loops, and whether its lease is current."""
    if lease.holder is None or lease.expires_at is None:
        return "no control plane has run the control loops yet"
    from datetime import UTC, datetime

    left = (lease.expires_at - datetime.now(UTC)).total_seconds()
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
            if body.get("ready") is False and body.get("error"):
                found[version] = str(body["error"])
    return found


def _parse_autoscale(raw: str) -> dict[str, int]:
    low, sep, high = raw.partition(":")
    if not sep or not low.isdigit() or not high.isdigit() or int(high) < max(int(low), 1):
        raise typer.BadParameter(f"--autoscale {raw!r} must be MIN:MAX with MAX >= MIN, MAX >= 1")
    return {"min_replicas": int(low), "max_replicas": int(high)}


def deploy(
    endpoint: str = typer.Argument(..., help="Endpoint name (the URL is /v2/models/ENDPOINT)."),
    model_ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    placement: str | None = typer.Option(None, help="colocated (default) or isolated; new endpoints only."),
    replicas: int | None = typer.Option(None, min=1, help="Fixed replica count."),
    autoscale: str | None = typer.Option(None, help="MIN:MAX replicas with autoscaling."),
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
    if replicas is not None and autoscale is not None:
        raise typer.BadParameter("give --replicas or --autoscale, not both")
    scaling: dict[str, object] | None = None
    if replicas is not None or autoscale is not None or num_cpus is not None or num_gpus is not None:
        scaling = {}
        if replicas is not None:
            scaling["replicas"] = replicas
        if autoscale is not None:
            scaling["autoscaling"] = _parse_autoscale(autoscale)
        if num_cpus is not None:
            scaling["num_cpus"] = num_cpus
        if num_gpus is not None:
            scaling["num_gpus"] = num_gpus
    api = client(url)
    result = api.deploy(endpoint, model_ref, placement=placement, scaling=scaling, weight=weight,
                        batching={"max_batch_size": max_batch_size,
                                  "batch_wait_timeout_ms": batch_wait_ms})
    version = api.resolve(model_ref).version
    if wait:
        from rich.console import Console

        from control_plane.platform import wait_serving

        with Console(stderr=True).status(f"waiting for {endpoint} to load version {version} …"):
            wait_serving(api.url, endpoint, version, timeout_s=timeout)
    emit(as_json, result, lambda: typer.echo(
        f"{endpoint}: {_routes_text(result.routes)}\n  {result.url}/infer"))


def traffic(
    endpoint: str = typer.Argument(..., help="Endpoint name."),
    weights: list[str] = typer.Argument(..., help="VERSION=PERCENT pairs summing to 100, e.g. 3=90 4=10."),
    shadow: list[int] = typer.Option([], "--shadow", help="Version to mirror traffic to (repeatable)."),
    as_json: bool = JsonOption, url: str | None = UrlOption,
) -> None:
    """Set an endpoint's route table; versions not named are unloaded."""
    parsed: dict[int, float] = {}
    for pair in weights:
        version, sep, percent = pair.partition("=")
        try:
            parsed[int(version)] = float(percent)
        except ValueError:
            raise typer.BadParameter(f"{pair!r} is not VERSION=PERCENT (for example 3=90)") from None
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not VERSION=PERCENT (for example 3=90)")
    result = client(url).set_traffic(endpoint, parsed, shadows=list(shadow))
    emit(as_json, result, lambda: typer.echo(
        f"{endpoint}: {_routes_text(result.routes)}"))


def undeploy(endpoint: str = typer.Argument(..., help="Endpoint name."),
             url: str | None = UrlOption) -> None:
    """Remove an endpoint and its replicas."""
    client(url).undeploy(endpoint)
    typer.echo(f"undeployed {endpoint}")
