"""REST routes for endpoints: deploy, traffic, undeploy, status and live statistics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from control_plane.api.deps import CP, Reader, Writer
from control_plane.schemas import DeployRequest, EndpointOut, EndpointServing, TrafficUpdate

router = APIRouter(tags=["serving"])


def _with_serving(cp: Any, endpoint: EndpointOut) -> EndpointOut:
    """``endpoint`` with how applying it to Serve went (error and retry time when failed)."""
    state = cp.serving_states().get(endpoint.name)
    if state is None:
        return endpoint
    return endpoint.model_copy(update={"serving": EndpointServing(
        state=state.state, error=state.error, retry_at=state.retry_at, since=state.since)})


@router.get("/endpoints", response_model=list[EndpointOut])
def list_endpoints(cp: CP, _: Reader) -> list[EndpointOut]:
    return [_with_serving(cp, endpoint) for endpoint in cp.deployments.list()]


@router.post("/endpoints", response_model=EndpointOut, status_code=201)
def deploy(body: DeployRequest, cp: CP, actor: Writer) -> EndpointOut:
    """Serve a model version on an endpoint (new endpoint: 100%; existing: added at 0%).

    Returns once Serve has the change, without waiting for a model to load: ``serving``
    in ``GET /endpoints/{name}`` follows it to running (or says why not). Where Serve
    cannot be reached, once the change is stored: the reconciler's next pass applies it."""
    result = cp.deployments.deploy(body, actor)
    cp.apply_committed(result.name)
    return _with_serving(cp, result)


@router.get("/endpoints/{name}", response_model=EndpointOut)
def get_endpoint(name: str, cp: CP, _: Reader) -> EndpointOut:
    return _with_serving(cp, cp.deployments.get(name))


@router.put("/endpoints/{name}/traffic", response_model=EndpointOut)
def set_traffic(name: str, body: TrafficUpdate, cp: CP, actor: Writer) -> EndpointOut:
    """Replace the route table: weights summing to 100 and shadow versions."""
    result = cp.deployments.set_traffic(name, body, actor)
    cp.apply_committed(result.name)
    return _with_serving(cp, result)


@router.delete("/endpoints/{name}", status_code=204)
def undeploy(name: str, cp: CP, actor: Writer) -> Response:
    cp.deployments.undeploy(name, actor)
    cp.apply_committed(name)
    return Response(status_code=204)


@router.get("/endpoints/{name}/stats")
def endpoint_stats(
    name: str, cp: CP, _: Reader,
    window: Annotated[float, Query(gt=0, le=300, description="Seconds to look back.")] = 60.0,
) -> dict[str, Any]:
    """Live per-version statistics from the Monitor over the last ``window`` seconds."""
    from control_plane.observability import endpoint_stats as read_stats

    cp.deployments.get(name)
    return {"endpoint": name, "window_s": window, "versions": read_stats(name, window)}


@router.get("/endpoints/{name}/stats/history")
def endpoint_history(
    name: str, cp: CP, _: Reader,
    window: Annotated[float, Query(gt=0, le=300, description="Seconds to look back.")] = 300.0,
    step: Annotated[float, Query(ge=1, le=60, description="Seconds per point.")] = 5.0,
) -> dict[str, Any]:
    """Per version, requests, 5xx rate, requests/s and p50/p95/p99 in steps of ``step``
    seconds over the last ``window``, oldest first (``t``: each step's end, Unix seconds)."""
    from control_plane.observability import endpoint_history as read_history

    cp.deployments.get(name)
    return {"endpoint": name, "window_s": window, "step_s": step,
            "versions": read_history(name, window, step)}


@router.get("/metrics", tags=["admin"], response_class=Response)
def metrics(cp: CP) -> Response:
    """Prometheus exposition: request counts, latency quantiles, weights, shadows, replicas."""
    from control_plane.errors import MonitorUnavailableError
    from control_plane.metrics import CONTENT_TYPE, render
    from control_plane.observability import monitor_totals, running_replicas

    alerts = cp.alerts.metrics() if cp.alerts is not None else None
    try:
        rows, monitor_up = monitor_totals(), True
    except MonitorUnavailableError:  # serve what the store and Serve know; say the Monitor is down
        rows, monitor_up = [], False
    body = render(rows, cp.deployments.list(), running_replicas(), alerts, monitor_up=monitor_up)
    return Response(content=body, media_type=CONTENT_TYPE)
