"""Make Ray Serve run what the store says should run, idempotently.

The reconciler turns each stored endpoint into an :class:`serving.EndpointConfig` and
applies it through a :class:`ServeBackend`. It remembers the hash of what it applied so a
steady state costs nothing; after a restart that memory is empty and it re-applies every
endpoint once, which Serve treats as a no-op for unchanged applications (no replica
restarts). Serve itself is behind the ``ServeBackend`` protocol so the logic is tested with
a fake backend and no cluster.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select

from control_plane.store import Database
from control_plane.store.models import EndpointRouteRow, EndpointRow, ModelRow, ModelVersionRow
from serving.applications import (
    build_endpoint_app,
    build_version_app,
    endpoint_app_name,
    endpoint_route_prefix,
    version_app_name,
)
from serving.schemas import (
    BatchingConfig,
    EndpointConfig,
    RouteTable,
    ScalingConfig,
    TensorSignature,
    VersionConfig,
)

log = logging.getLogger(__name__)
ENDPOINT_APP_PREFIX = "endpoint-"


class ServeBackend(Protocol):
    """The few Serve operations the reconciler needs."""

    def applications(self) -> dict[str, str]:
        """Application name → status for every running application."""

    def deploy(self, name: str, route_prefix: str | None, app: Any) -> None: ...

    def delete(self, name: str) -> None: ...

    def wait_running(self, names: list[str], timeout_s: float) -> None: ...


@dataclass
class ReconcileReport:
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class Reconciler:
    """Store → Serve, for one cluster."""

    def __init__(self, db: Database, backend: ServeBackend, *, base_url: str,
                 replica_env: dict[str, str] | None = None, stats_interval_s: float = 1.0,
                 version_ready_timeout_s: float = 300.0, feedback_allows_anonymous: bool = False,
                 max_body_bytes: int = 64 * 1024 * 1024) -> None:
        self.db = db
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self.replica_env = dict(replica_env or {})
        self.stats_interval_s = stats_interval_s
        self.version_ready_timeout_s = version_ready_timeout_s
        # The replicas' edge: where they check feedback tokens, and their body limit.
        self.feedback_allows_anonymous = feedback_allows_anonymous
        self.max_body_bytes = max_body_bytes
        self._applied: dict[str, str] = {}

    def desired(self) -> dict[str, EndpointConfig]:
        """Every stored endpoint as the configuration its replicas should run."""
        configs: dict[str, EndpointConfig] = {}
        with self.db.session(readonly=True) as session:
            for endpoint in session.scalars(select(EndpointRow)).all():
                model = session.get(ModelRow, endpoint.model_id)
                assert model is not None
                rows = session.execute(
                    select(EndpointRouteRow, ModelVersionRow)
                    .join(ModelVersionRow, ModelVersionRow.id == EndpointRouteRow.version_id)
                    .where(EndpointRouteRow.endpoint_id == endpoint.id)
                    .order_by(ModelVersionRow.version)
                ).all()
                if not rows:
                    continue
                versions = [self._version_config(model.name, route, row) for route, row in rows]
                weights = {row.version: route.weight for route, row in rows if not route.shadow}
                shadows = [row.version for route, row in rows if route.shadow]
                configs[endpoint.name] = EndpointConfig(
                    endpoint=endpoint.name,
                    placement=endpoint.placement,  # type: ignore[arg-type]
                    versions=versions,
                    routes=RouteTable(weights=weights, shadows=shadows),
                    scaling=_scaling(endpoint.config.get("scaling")),
                    stats_interval_s=self.stats_interval_s,
                    control_plane_url=self.base_url,
                    feedback_allows_anonymous=self.feedback_allows_anonymous,
                    max_body_bytes=self.max_body_bytes,
                    generation=endpoint.generation,
                )
        return configs

    def _version_config(self, model: str, route: EndpointRouteRow, row: ModelVersionRow) -> VersionConfig:
        signature = row.manifest["signature"]
        return VersionConfig(
            version=row.version,
            model=model,
            artifact_url=f"{self.base_url}/api/artifacts/{row.artifact_digest}",
            digest=row.artifact_digest,
            inputs=[TensorSignature(**spec) for spec in signature["inputs"]],
            outputs=[TensorSignature(**spec) for spec in signature["outputs"]],
            task=row.manifest.get("task", "other"),
            reference_profile=row.manifest.get("reference_profile"),
            class_labels=row.manifest.get("class_labels"),
            batching=BatchingConfig(**route.settings.get("batching", {})),
            scaling=_scaling(route.settings.get("scaling")),
        )

    def reconcile(self) -> ReconcileReport:
        """Apply every endpoint that changed and delete applications nobody wants."""
        report = ReconcileReport()
        desired = self.desired()
        for config in desired.values():
            self._apply(config, report)
        wanted = {endpoint_app_name(name) for name in desired}
        wanted |= {version_app_name(name, v.version) for name, c in desired.items()
                   if c.placement == "isolated" for v in c.versions}
        for app in self.backend.applications():
            if app.startswith(ENDPOINT_APP_PREFIX) and app not in wanted:
                self.backend.delete(app)
                self._applied.pop(app, None)
                report.deleted.append(app)
        return report

    def _apply(self, config: EndpointConfig, report: ReconcileReport) -> None:
        name = endpoint_app_name(config.endpoint)
        env = self.replica_env
        if config.placement == "isolated":
            # Versions first: the router must never point at a version that is not up.
            fresh: dict[str, str] = {}
            for version in config.versions:
                app = version_app_name(config.endpoint, version.version)
                version_document = version.model_dump_json()
                if self._changed(app, version_document):
                    self.backend.deploy(app, None, build_version_app(config, version, env=env))
                    fresh[app] = version_document
            if fresh:
                self.backend.wait_running(list(fresh), self.version_ready_timeout_s)
                for app, version_document in fresh.items():
                    self._remember(app, version_document)
                    report.applied.append(app)
        document = config.model_dump_json()
        if not self._changed(name, document):
            report.unchanged.append(name)
            return
        self.backend.deploy(name, endpoint_route_prefix(config.endpoint),
                            build_endpoint_app(config, env=env))
        self._remember(name, document)
        report.applied.append(name)

    def _changed(self, app: str, document: str) -> bool:
        return self._applied.get(app) != _digest(document)

    def _remember(self, app: str, document: str) -> None:
        self._applied[app] = _digest(document)


class RayServeBackend:
    """The real Serve, through its public API."""

    def applications(self) -> dict[str, str]:
        from ray import serve

        return {name: str(app.status) for name, app in serve.status().applications.items()}

    def deploy(self, name: str, route_prefix: str | None, app: Any) -> None:
        # serve.run waits until the application is RUNNING; the reconciler must not (a
        # REST call would hang on a model load), so it submits through the developer API
        # that serve.run itself calls, without the wait.
        from ray.serve.api import RunTarget, _run_many

        _run_many(
            [RunTarget(target=app, name=name, route_prefix=route_prefix)],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )

    def delete(self, name: str) -> None:
        from ray import serve

        serve.delete(name, _blocking=False)

    def wait_running(self, names: list[str], timeout_s: float) -> None:
        from ray import serve

        deadline = time.monotonic() + timeout_s
        pending = set(names)
        while pending:
            statuses = serve.status().applications
            for name in list(pending):
                status = str(statuses[name].status) if name in statuses else "MISSING"
                if status.endswith("RUNNING"):
                    pending.discard(name)
                elif status.endswith("DEPLOY_FAILED"):
                    raise RuntimeError(f"Serve could not deploy {name}: {statuses[name].message}")
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"{sorted(pending)} not running after {timeout_s:.0f}s")
            if pending:
                time.sleep(0.2)


def _scaling(raw: dict[str, Any] | None) -> ScalingConfig:
    return ScalingConfig.model_validate(raw or {})


def _digest(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()
