"""The control plane as a Ray Serve application mounted at ``/api``.

``MODELPLANE_CONTROL_PLANE_REPLICAS`` replicas (one by default; several only on
PostgreSQL), each built inside its replica from the settings passed as environment
variables, so the same code runs embedded and on a cluster. All serve the API; the holder
of the store's lease runs the control loops (control_plane.leadership).
"""

from __future__ import annotations

import os
from typing import Any

from modelplane.settings import Settings, make_private_home

APP_NAME = "control-plane"
ROUTE_PREFIX = "/api"


def _build_replica_api() -> Any:
    # Runs inside the replica: settings come from the runtime_env variables.
    from control_plane.api import build_api
    from control_plane.service import ControlPlane
    from modelplane.settings import get_settings

    cp = ControlPlane.start(get_settings())
    cp.attach_serve()
    return build_api(cp)


def control_plane_application(settings: Settings, *, store_id: str,
                              num_cpus: float = 0.25) -> Any:
    """A Serve application (bind()-ed) that serves the REST API for ``settings``.

    Its environment carries the store's id and home (``control_plane.ownership``): that is
    how another ``modelplane up`` sees whose control plane runs.
    """
    from ray import serve

    from control_plane.ownership import STORE_ID_ENV
    from control_plane.replica_env import artifact_store_environment
    from serving.applications import deployment_version

    options: dict[str, Any] = {"ray_actor_options": {
        "num_cpus": num_cpus,
        # On the head: the home folder (tokens, a SQLite store, local artifacts) is on the
        # head's disk, and the head is the cluster's one indispensable node already (its GCS).
        "resources": {"node:__internal_head__": 0.001},
        # Not the operator's own token: the control plane needs none, and a runtime
        # environment is shown on Ray's dashboard. The artifact store's AWS_* variables as
        # `up` sees them: Ray's workers do not inherit those (replica_env.SECRET_VARIABLES).
        "runtime_env": {"env_vars": {**settings.with_overrides(token=None).to_env(),
                                     **artifact_store_environment(os.environ),
                                     STORE_ID_ENV: store_id}},
    }}
    deployment = serve.deployment(serve.ingress(_build_replica_api)())
    # A version from its code and settings: a second `up` with both unchanged leaves the
    # running replica alone instead of replacing it (and draining the old one for 30 s).
    # Serve replaces a dead replica only when a health check fails, every 10 s by default:
    # a lone control plane's API and loops are gone until then. Its check is a bare actor
    # call (no store), so checking every 2 s costs nothing.
    return deployment.options(
        name="ControlPlane", num_replicas=settings.control_plane_replicas,
        max_ongoing_requests=64,
        health_check_period_s=2,
        version=deployment_version("ControlPlane", options), _internal=True, **options,
    ).bind()


def deploy_control_plane(settings: Settings, *, store_id: str | None = None,
                         num_cpus: float = 0.25, wait: bool = True) -> None:
    """Run (or update) the control plane application on the connected Ray cluster.

    ``store_id`` defaults to the identity of the store in ``settings`` (created if new).
    ``wait=False`` submits it and returns (``serving.applications.wait_running`` waits).
    """
    from serving.applications import submit_application

    if store_id is None:
        store_id = read_store_identity(settings)
    # A head started with --num-cpus=0 (usual where the head only coordinates) cannot
    # reserve any CPU: the control plane then reserves none rather than never starting.
    num_cpus = min(num_cpus, _head_cpus())
    submit_application(control_plane_application(settings, store_id=store_id, num_cpus=num_cpus),
                       APP_NAME, ROUTE_PREFIX, wait=wait)


def _head_cpus() -> float:
    import ray

    for node in ray.nodes():
        resources = node.get("Resources") or {}
        if node.get("Alive") and "node:__internal_head__" in resources:
            return float(resources.get("CPU", 0.0))
    return float("inf")  # no head known here: ask for what was asked


def read_store_identity(settings: Settings) -> str:
    """The identity of the store ``settings`` name (migrating it, creating the id if new)."""
    from control_plane.ownership import store_identity
    from control_plane.store import Database

    make_private_home(settings.home)
    db = Database(settings.db_url, migrate=True)
    try:
        return store_identity(db)
    finally:
        db.dispose()
