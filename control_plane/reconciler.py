"""Make Ray Serve run what the store says should run, idempotently.

The reconciler turns each stored endpoint into an :class:`serving.EndpointConfig` and
applies it through a :class:`ServeBackend`. It remembers the hash of what it applied so a
steady state costs nothing; after a restart, or on taking the control loops' lease back
from another process, that memory is empty and it re-applies every endpoint once, which Serve treats as a no-op for unchanged applications (no replica
restarts). Serve itself is behind the ``ServeBackend`` protocol so the logic is tested with
a fake backend and no cluster.

Each endpoint is applied on its own, under its own lock, and nothing waits for a model to
load: a pass submits applications and reads their status on the next pass. An endpoint
that fails (an exception, Serve's DEPLOY_FAILED, or not running within
``start_timeout_s``) is recorded with its error and retried with exponential backoff
(:meth:`Reconciler.states`, shown by ``modelplane status``), while every other endpoint
goes on; an application whose build or submission was refused is sent again at that
retry, not every pass, unless what it carries changes. An isolated router only ever
points at versions that run: versions that do not run yet are left out of it while they
take no traffic, so a rollback that sets a broken candidate to 0% is applied at once.
Endpoints with a rollout that just ended are applied first in a pass.

A change to an endpoint's routes alone (weights, shadows, stickiness: every rollout step)
is posted to the route board (:mod:`serving.route_board`) instead of Serve: a Serve
reconfigure takes each replica out of the fast ingress while it runs. Serve's own
configuration then lags behind the board until the next change of anything else; the
board is posted to again on every pass, and where it cannot take a table, Serve gets it.

Every application carries this store's id (:mod:`control_plane.ownership`); an application
marked by another store is never changed or deleted, and one without a mark (made before
marks existed) is updated (and so marked) but never deleted.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import select

from control_plane.deployments import Route, read_routes
from control_plane.errors import ControlPlaneUnavailableError
from control_plane.ownership import STORE_ID_ENV, application_owners
from control_plane.store import Database
from control_plane.store.database import FencedOut
from control_plane.store.models import EndpointRow, ModelRow, RolloutRow
from serving.applications import build_endpoint_app, build_version_app
from serving.monitoring.stats import ServedConfig
from serving.names import (
    endpoint_app_name,
    endpoint_route_prefix,
    is_endpoint_app,
    link_route,
    version_app_name,
)
from serving.route_board import PostedRoutes
from serving.schemas import (
    BatchingConfig,
    EndpointConfig,
    RouteTable,
    ScalingConfig,
    TensorSignature,
    VersionConfig,
)

log = logging.getLogger(__name__)
RETRY_BASE_S = 5.0  # first retry of a failed endpoint; doubles per failure
RETRY_MAX_S = 300.0
RECENT_ROLLBACK_S = 600.0  # endpoints whose rollout ended this recently go first in a pass
POST_TIMEOUT_S = 5.0  # a route board slower than this: the routes go through Serve
MAX_GENERATION = 2**31 - 1  # the store's count of an endpoint's changes (32 bits on PostgreSQL)


class GenerationOverflowError(RuntimeError):
    """What runs holds a generation of an endpoint beyond what the store can count to."""


@dataclass(frozen=True)
class ServeApp:
    """What Serve says about one application."""

    status: str  # RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, DELETING …
    message: str = ""
    owner: str | None = None  # the store id it carries; None: unmarked
    # The endpoint configuration its replicas were last given (an endpoint's application).
    configured: ServedConfig | None = None


def _status(status: Any) -> str:
    """``DEPLOYING``, not ``ApplicationStatus.DEPLOYING``: the status a user reads."""
    return str(getattr(status, "value", status))


def _message(app: dict[str, Any]) -> str:
    """Serve's message on an application, else its first deployment's: an application
    still deploying says nothing itself, while its deployment says why (a replica no node
    has the CPUs or GPUs for: what it needs, and what the cluster has)."""
    message = str(app.get("message") or "")
    if message:
        return message
    for deployment in (app.get("deployments") or {}).values():
        if isinstance(deployment, dict) and deployment.get("message"):
            return str(deployment["message"])
    return ""


class ServeBackend(Protocol):
    """The few Serve operations the reconciler needs."""

    def applications(self) -> dict[str, ServeApp]:
        """Every application Serve knows, by name (a plain status string is accepted too)."""

    def deploy(self, name: str, route_prefix: str | None, app: Any) -> None: ...

    def delete(self, name: str) -> None: ...

    def post_routes(self, endpoint: str, config: EndpointConfig) -> bool:
        """Hand ``config``'s route table to the live replicas without a Serve reconfigure
        (:mod:`serving.route_board`); False when that could not be done."""

    def posted_routes(self, endpoint: str, incarnation: str) -> PostedRoutes | None:
        """The route table the board holds for ``incarnation`` of ``endpoint`` (None: none,
        or the board cannot be read)."""

    def forget_statistics(self, endpoint: str) -> None:
        """Have the Monitor drop an undeployed endpoint's statistics (without waiting)."""


@dataclass(frozen=True)
class EndpointApplyState:
    """How applying one endpoint went: ``applied`` (Serve runs it), ``pending`` (submitted,
    not running yet), ``failed`` (``error`` says why; retried at ``retry_at``)."""

    state: Literal["applied", "pending", "failed"]
    error: str | None = None
    retry_at: datetime | None = None
    since: datetime | None = None
    failures: int = 0


@dataclass
class ReconcileReport:
    applied: list[str] = field(default_factory=list)
    routed: list[str] = field(default_factory=list)  # route tables posted, no Serve change
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # endpoint → error
    foreign: list[str] = field(default_factory=list)  # another store's applications, left alone


class Reconciler:
    """Store → Serve, for one cluster."""

    def __init__(self, db: Database, backend: ServeBackend, *, base_url: str,
                 replica_env: dict[str, str] | None = None, stats_interval_s: float = 1.0,
                 version_ready_timeout_s: float = 300.0, feedback_allows_anonymous: bool = False,
                 max_body_bytes: int = 64 * 1024 * 1024, access_log: bool = False,
                 lean_ingress: bool = False, link_address: str | None = None) -> None:
        self.db = db
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self.replica_env = dict(replica_env or {})
        self.stats_interval_s = stats_interval_s
        self.version_ready_timeout_s = version_ready_timeout_s
        # The replicas' edge: where they check feedback tokens, and their body limit.
        self.feedback_allows_anonymous = feedback_allows_anonymous
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log  # Serve's per-request access log in the replicas
        self.lean_ingress = lean_ingress  # endpoint replicas answer on their own server
        # Where isolated routers reach their versions' own listeners (serving.version_link).
        self.link_address = link_address
        self._applied: dict[str, str] = {}
        # Per endpoint application: the digest of what Serve last got, routes excluded, and
        # whether the route board holds a newer table than Serve's (to post it again).
        self._deployed: dict[str, str] = {}
        self._board_ahead: dict[str, EndpointConfig] = {}
        # Per application: the digest of a document whose build or submission was refused,
        # and the error (see _refusal).
        self._refused: dict[str, tuple[str, str]] = {}
        self._states: dict[str, EndpointApplyState] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.store_id: str | None = None
        self.start_timeout_s = self.version_ready_timeout_s  # then it counts as failed
        self._clock: Callable[[], float] = time.time
        # Whether this process may still change Serve (it holds the control loops' lease):
        # asked right before each change, as a pass can outlive its lead (a Serve call
        # that hung), and what it does to Serve is no store write the fence could refuse.
        self.may_act: Callable[[], bool] = lambda: True

    def own(self, store_id: str | None, *, start_timeout_s: float | None = None,
            clock: Callable[[], float] | None = None) -> Reconciler:
        """Mark every application with ``store_id`` and leave other stores' alone (None:
        no marks, every ``endpoint-*`` application is this reconciler's, as in tests)."""
        self.store_id = store_id
        if store_id:
            self.replica_env[STORE_ID_ENV] = store_id
        if start_timeout_s is not None:
            self.start_timeout_s = start_timeout_s
        if clock is not None:
            self._clock = clock
        return self

    def states(self) -> dict[str, EndpointApplyState]:
        """Endpoint → how applying it went, for every endpoint applied since start."""
        return dict(self._states)

    def desired(self, only: str | None = None) -> dict[str, EndpointConfig]:
        """Every stored endpoint (or just ``only``) as the configuration its replicas should run."""
        configs: dict[str, EndpointConfig] = {}
        query = select(EndpointRow)
        if only is not None:
            query = query.where(EndpointRow.name == only)
        with self.db.session(readonly=True) as session:
            for endpoint in session.scalars(query).all():
                model = session.get(ModelRow, endpoint.model_id)
                assert model is not None
                routes = read_routes(session, endpoint)
                if not routes:
                    continue
                configs[endpoint.name] = EndpointConfig(
                    endpoint=endpoint.name,
                    placement=endpoint.placement,  # type: ignore[arg-type]
                    versions=[self._version_config(model.name, route) for route in routes],
                    routes=RouteTable(weights=routes.weights, shadows=routes.shadows),
                    scaling=_scaling(endpoint.config.get("scaling")),
                    stats_interval_s=self.stats_interval_s,
                    control_plane_url=self.base_url,
                    feedback_allows_anonymous=self.feedback_allows_anonymous,
                    max_body_bytes=self.max_body_bytes,
                    link_address=self.link_address if endpoint.placement == "isolated" else None,
                    generation=endpoint.generation,
                    incarnation=incarnation_of(endpoint),
                )
        return configs

    def _version_config(self, model: str, route: Route) -> VersionConfig:
        row = route.version_row
        signature = row.manifest["signature"]
        return VersionConfig(
            version=row.version,
            model=model,
            artifact_url=f"{self.base_url}/api/artifacts/{row.artifact_digest}",
            digest=row.artifact_digest,
            kind=row.manifest.get("kind", "onnx"),
            code=row.manifest.get("code"),
            inputs=[TensorSignature(**spec) for spec in signature["inputs"]],
            outputs=[TensorSignature(**spec) for spec in signature["outputs"]],
            task=row.manifest.get("task", "other"),
            reference_profile=row.manifest.get("reference_profile"),
            class_labels=row.manifest.get("class_labels"),
            batching=BatchingConfig(**route.settings.get("batching", {})),
            scaling=_scaling(route.settings.get("scaling")),
        )

    def reconcile(self, endpoint: str | None = None) -> ReconcileReport:
        """Apply every endpoint (or just ``endpoint``), each on its own, then delete this
        store's applications that nobody wants. Never waits for a model to load."""
        report = ReconcileReport()
        # Serve's view first, the store's after: an application deployed meanwhile by
        # another thread was stored before it was deployed, so the sweep below wants it.
        apps = self._applications()
        names = [endpoint] if endpoint is not None else self._endpoint_names()
        for name in names:
            self._apply_endpoint(name, apps, report)
        wanted: set[str] = set()
        for name, config in self.desired().items():
            wanted.add(endpoint_app_name(name))
            if config.placement == "isolated":
                wanted |= {version_app_name(name, v.version) for v in config.versions}
        for app, seen in apps.items():
            if app in wanted or not is_endpoint_app(app, endpoint):
                continue  # not an endpoint's, still wanted, or not the one endpoint swept
            if self.store_id and seen.owner != self.store_id:
                report.foreign.append(app)  # another store's, or unmarked: never ours to delete
                continue
            self._acting()
            try:
                self.backend.delete(app)
            except Exception as error:  # the others, and the cleanup below, still go; the
                log.warning("could not delete %s (asked again next pass): %s", app, error)
                continue  # next pass finds it unwanted again
            self._forget(app)
            report.deleted.append(app)
        stored = self._names()
        for name in [n for n in list(self._states) if endpoint in (None, n) and n not in stored]:
            # Else its series stay exported (the age of its last request growing) and are
            # snapshot at every scrape until the Monitor restarts.
            self._acting()
            self.backend.forget_statistics(name)
            self._states.pop(name, None)  # undeployed
            for app in [a for a in self._refused if is_endpoint_app(a, name)]:
                self._refused.pop(app)
        return report

    def reconcile_pending(self) -> ReconcileReport:
        """Apply only the endpoints still starting (no sweep): cheap enough to run every
        second, so an isolated router switches soon after its versions run."""
        report = ReconcileReport()
        pending = [name for name, state in list(self._states.items()) if state.state == "pending"]
        if pending:
            apps = self._applications()
            for name in pending:
                self._apply_endpoint(name, apps, report)
        return report

    def _applications(self) -> dict[str, ServeApp]:
        return {name: seen if isinstance(seen, ServeApp) else ServeApp(str(seen))
                for name, seen in self.backend.applications().items()}

    def _names(self) -> set[str]:
        with self.db.session(readonly=True) as session:
            return set(session.scalars(select(EndpointRow.name)).all())

    def _endpoint_names(self) -> list[str]:
        """Every stored endpoint; those whose rollout just ended (a rollback) first."""
        since = datetime.now(UTC) - timedelta(seconds=RECENT_ROLLBACK_S)
        with self.db.session(readonly=True) as session:
            names = sorted(session.scalars(select(EndpointRow.name)).all())
            urgent = set(session.scalars(select(RolloutRow.endpoint).where(
                RolloutRow.state.in_(("rolled_back", "failed")),
                RolloutRow.finished_at >= since)).all())
        return sorted(names, key=lambda name: name not in urgent)

    def _lock(self, endpoint: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(endpoint, threading.Lock())

    def _apply_endpoint(self, endpoint: str, apps: dict[str, ServeApp],
                        report: ReconcileReport) -> None:
        """Apply one endpoint; whatever goes wrong is recorded against it alone."""
        with self._lock(endpoint):
            try:
                # Read under the lock: two passes never apply an older table after a newer.
                config = self.desired(only=endpoint).get(endpoint)
                if config is not None:
                    config = self._past_what_runs(config, apps.get(endpoint_app_name(endpoint)))
                    self._apply(config, apps, report)
            except FencedOut:  # the store write of a pass that outlived its lead: it ends
                raise
            except Exception as error:  # one broken endpoint must not stop the others
                log.warning("applying endpoint %s failed: %s", endpoint, error)
                self._failed(endpoint, f"{type(error).__name__}: {error}", report)

    def _acting(self) -> None:
        if not self.may_act():
            raise FencedOut("this process no longer holds the control loops' lease: Serve is "
                            "left to the holder")

    def _past_what_runs(self, config: EndpointConfig, seen: ServeApp | None) -> EndpointConfig:
        """``config``, its generation first moved past any that its replicas already hold.

        Generations only grow, and replicas, the route board and the Monitor each keep the
        newest they were given: a table of an older generation is taken for a late one and
        ignored. Everything applied was read committed from the store, so replicas ahead of
        it mean the store lost changes (restored from a backup, or a PostgreSQL failover that
        lost its last commits): until the store counted past them, the replicas would keep
        routing by a table the store no longer has, and a rollback would move no traffic.
        Looked at only when there is something to apply: Serve's configuration comes with
        ``seen``, the board's table costs one read."""
        if not self._changed(endpoint_app_name(config.endpoint), config.model_dump_json()):
            return config
        held = [seen.configured] if seen is not None and seen.configured is not None else []
        posted = self.backend.posted_routes(config.endpoint, config.incarnation)
        ahead = max((h.generation for h in [*held, *([posted] if posted else [])]
                     if h.incarnation == config.incarnation), default=0)
        if ahead <= config.generation:
            return config
        if ahead >= MAX_GENERATION:
            raise GenerationOverflowError(
                f"its replicas hold generation {ahead} of this endpoint, beyond what the store "
                f"counts to ({MAX_GENERATION}), so no change of the store's would reach them; "
                "undeploy the endpoint and deploy it again (a new incarnation)")
        log.warning("endpoint %s: its replicas hold generation %d but the store only %d (a "
                    "store restored or failed over loses its last changes); moving the store's "
                    "past it so its table is the one served", config.endpoint, ahead,
                    config.generation)
        with self.db.session() as session:
            row = session.scalar(select(EndpointRow).where(
                EndpointRow.name == config.endpoint).with_for_update())
            if row is not None and row.generation <= ahead:
                row.generation = ahead + 1
        return self.desired(only=config.endpoint).get(config.endpoint) or config

    def _apply(self, config: EndpointConfig, apps: dict[str, ServeApp],
               report: ReconcileReport) -> None:
        endpoint = config.endpoint
        name = endpoint_app_name(endpoint)
        foreign = self._foreign(name, apps, report)
        if foreign is not None:
            self._failed(endpoint, foreign, report)
            return
        for app in [a for a in list(self._applied)
                    if a not in apps and is_endpoint_app(a, endpoint)]:
            self._forget(app)  # gone from Serve (deleted by hand, Serve restarted)
        env = self.replica_env
        retry = self._retry_due(endpoint)
        waiting: dict[int, str] = {}  # version → why it is not running yet
        failure: str | None = None
        held: str | None = None  # a version's refusal, waiting for the endpoint's retry
        if config.placement == "isolated":
            # Versions first: the router must never point at a version that is not up.
            for version in config.versions:
                app = version_app_name(endpoint, version.version)
                foreign = self._foreign(app, apps, report)
                if foreign is not None:
                    failure = failure or foreign
                    waiting[version.version] = f"{app} belongs to another store"
                    continue
                version_document = version.model_dump_json() + f"|link={config.link_address}"
                seen = apps.get(app)
                broken = seen is not None and _failed_status(seen.status)
                refused = self._refusal(endpoint, app, version_document)
                if refused is not None:
                    waiting[version.version] = refused
                    failure = failure or refused
                    held = held or refused
                elif self._changed(app, version_document) or (broken and retry):
                    route = None if config.link_address is None else link_route(endpoint, version.version)
                    self._acting()
                    self._deploy(app, route, version_document, lambda version=version: build_version_app(
                        config, version, env=env, access_log=self.access_log))
                    self._remember(app, version_document)
                    report.applied.append(app)
                    waiting[version.version] = "submitted to Serve"
                elif seen is None or not seen.status.endswith("RUNNING"):
                    status = seen.status if seen else "MISSING"
                    waiting[version.version] = f"{app} is {status}" + (
                        f": {seen.message}" if seen and seen.message else "")
                    if broken:
                        failure = failure or waiting[version.version]
            config = _without(config, set(waiting))
            if config is None:  # a version that takes traffic is not running: keep the router
                self._not_running(endpoint, waiting, failure, report)
                return
        seen = apps.get(name)  # the endpoint's own application (the router when isolated)
        if seen is not None and _failed_status(seen.status):
            failure = failure or f"{name} is {seen.status}" + (
                f": {seen.message}" if seen.message else "")
            if retry:
                self._forget(name)
        elif seen is None or not seen.status.endswith("RUNNING"):
            waiting[0] = f"{name} is {seen.status if seen else 'MISSING'}" + (
                f": {seen.message}" if seen and seen.message else "")
        document = config.model_dump_json()
        self._acting()  # what follows posts routes or deploys
        refused = self._refusal(endpoint, name, document)
        if self._changed(name, document) and self._routes_only(name, config, seen) and \
                self.backend.post_routes(endpoint, config):
            self._remember(name, document)
            self._board_ahead[name] = config
            report.routed.append(name)
        elif refused is not None:
            failure = failure or refused
        elif self._changed(name, document) or (
                name in self._board_ahead and not self.backend.post_routes(endpoint, config)):
            # A board that restarted empty is posted to again each pass; where it cannot
            # be, Serve's own configuration catches up with the routes.
            self._deploy(name, endpoint_route_prefix(endpoint), document,
                         lambda: build_endpoint_app(config, env=env, access_log=self.access_log,
                                                    lean_ingress=self.lean_ingress))
            self._remember(name, document)
            self._deployed[name] = _digest(_structure(config))
            self._board_ahead.pop(name, None)
            report.applied.append(name)
            waiting.setdefault(0, "submitted to Serve")
            # A fresh submission: judged again on the next pass. A version held back
            # keeps the endpoint failed: pending, it was sent again within a second.
            failure = held
        else:
            report.unchanged.append(name)
        if waiting or failure:
            self._not_running(endpoint, waiting, failure, report)
        else:
            previous = self._states.get(endpoint)
            self._states[endpoint] = EndpointApplyState("applied", since=(
                previous.since if previous and previous.state == "applied" else self._now()))

    def _foreign(self, app: str, apps: dict[str, ServeApp], report: ReconcileReport) -> str | None:
        """Why ``app`` must be left alone (another store's), or None when it is ours to change."""
        seen = apps.get(app)
        if not self.store_id or seen is None or seen.owner in (None, self.store_id):
            return None
        report.foreign.append(app)
        return (f"Serve application {app} belongs to another store ({seen.owner}); this control "
                f"plane never changes it. Undeploy it from that store, or delete it through Ray "
                f"Serve (ray.serve.delete({app!r})), and this endpoint is applied")

    def _not_running(self, endpoint: str, waiting: dict[int, str], failure: str | None,
                     report: ReconcileReport) -> None:
        """Pending until ``start_timeout_s``, failed after that or when Serve gave up."""
        previous = self._states.get(endpoint)
        since = previous.since if previous and previous.state != "applied" and previous.since \
            else self._now()
        why = "; ".join(waiting[v] for v in sorted(waiting)) or failure or "not running"
        if failure is None and (self._now() - since).total_seconds() > self.start_timeout_s:
            failure = f"not running after {self.start_timeout_s:.0f}s: {why}"
        if failure is not None:
            self._failed(endpoint, failure, report)
            return
        self._states[endpoint] = EndpointApplyState(
            "pending", error=why, since=since,
            failures=previous.failures if previous else 0)
        report.pending.append(endpoint)

    def _failed(self, endpoint: str, error: str, report: ReconcileReport) -> None:
        previous = self._states.get(endpoint)
        now = self._now()
        report.failed[endpoint] = error
        if previous is not None and previous.state == "failed" and \
                previous.retry_at is not None and previous.retry_at > now:
            # Still failed before its retry: keep the retry time (Serve's message may change
            # every pass, and must not push the retry out forever), show the latest error.
            self._states[endpoint] = replace(previous, error=error[:2000])
            return
        failures = (previous.failures if previous else 0) + 1
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (failures - 1))
        self._states[endpoint] = EndpointApplyState(
            "failed", error=error[:2000], retry_at=now + timedelta(seconds=delay),
            since=previous.since if previous and previous.since else now, failures=failures)

    def _retry_due(self, endpoint: str) -> bool:
        state = self._states.get(endpoint)
        return state is not None and state.state == "failed" and \
            state.retry_at is not None and state.retry_at <= self._now()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _routes_only(self, app: str, config: EndpointConfig, seen: ServeApp | None) -> bool:
        """Whether ``config`` differs from what Serve last got in its routes alone, on an
        application that has not failed (a failed one gets all of it again from Serve)."""
        return seen is not None and not _failed_status(seen.status) and \
            self._deployed.get(app) == _digest(_structure(config))

    def forget_applied(self) -> None:
        """Forget everything applied: taken over, this process cannot know what the
        holders in between gave Serve, so its next pass submits every endpoint again (as
        after a restart). Remembered, a table whose versions match what this process last
        deployed went to the route board alone, onto replicas another holder had rebuilt
        without one of them."""
        self._applied.clear()
        self._deployed.clear()
        self._board_ahead.clear()
        self._refused.clear()

    def _deploy(self, app: str, route_prefix: str | None, document: str,
                build: Callable[[], Any]) -> None:
        """Build ``app`` and submit it. Where the submission fails or goes unanswered it
        may still land later: what was applied there is unknown, so a later pass submits it
        in full rather than compare with what this process last sent (a route change posted
        to the board alone, or a change back to that, would leave it as it lands). A build
        or submission refused (not merely unanswered) waits for the endpoint's retry."""
        try:
            built = build()
        except Exception as error:  # nothing was sent: what Serve has is still known
            self._refuse(app, document, error)
            raise
        try:
            self.backend.deploy(app, route_prefix, built)
        except ControlPlaneUnavailableError:
            self._forget(app)  # unanswered: sent again next pass, once writes go through
            raise
        except Exception as error:
            self._forget(app)
            self._refuse(app, document, error)
            raise
        self._refused.pop(app, None)

    def _refuse(self, app: str, document: str, error: Exception) -> None:
        self._refused[app] = (_digest(document), f"{type(error).__name__}: {error}")

    def _refusal(self, endpoint: str, app: str, document: str) -> str | None:
        """Why ``document`` is not sent to ``app`` this pass: its last build or submission
        was refused and the endpoint's retry is not due. A refusal repeats; sent again every
        pass, each was a write to Serve's controller and a warning in the log, while the
        endpoint's backoff said to wait. A changed document goes at once (a rollback must
        not wait for a retry)."""
        refused = self._refused.get(app)
        state = self._states.get(endpoint)
        if refused is None or refused[0] != _digest(document) or state is None or \
                state.state != "failed" or state.retry_at is None or \
                state.retry_at <= self._now():
            return None
        return f"{app}: {refused[1]} (sent again at its retry)"

    def _forget(self, app: str) -> None:
        """Forget what was applied to ``app``: the next pass submits it to Serve again."""
        self._refused.pop(app, None)
        self._applied.pop(app, None)
        self._deployed.pop(app, None)
        self._board_ahead.pop(app, None)

    def _changed(self, app: str, document: str) -> bool:
        return self._applied.get(app) != _digest(document)

    def _remember(self, app: str, document: str) -> None:
        self._applied[app] = _digest(document)


class RayServeBackend:
    """The real Serve, through its public API, and the route board beside it."""

    def __init__(self) -> None:
        from control_plane.serve_writes import BoundedWrites

        self._writes = BoundedWrites()
        # Made before the first endpoint: its replicas find it at once, not on a later retry.
        self._board: Any = None
        self._route_board()

    def _route_board(self) -> Any:
        from serving.route_board import ensure_route_board

        if self._board is None:
            try:
                self._board = ensure_route_board()
            except Exception as error:  # routes then go through Serve until it can be made
                log.warning("could not make the route board: %s", error)
        return self._board

    def applications(self) -> dict[str, ServeApp]:
        from control_plane.ownership import serve_details

        details = serve_details()
        owners = application_owners(details)
        return {name: ServeApp(_status(app.get("status", "")), _message(app)[:1000],
                               owners[name].store_id, _configured(app))
                for name, app in (details.get("applications") or {}).items()}

    def deploy(self, name: str, route_prefix: str | None, app: Any) -> None:
        # serve.run waits until the application is RUNNING; the reconciler must not (a
        # REST call would hang on a model load), so it submits through the developer API
        # that serve.run itself calls, without the wait.
        from ray.serve.api import RunTarget, _run_many

        self._writes.run(f"the deploy of {name}", lambda: _run_many(
            [RunTarget(target=app, name=name, route_prefix=route_prefix)],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        ))

    def delete(self, name: str) -> None:
        from ray import serve

        self._writes.run(f"the delete of {name}", lambda: serve.delete(name, _blocking=False))

    def forget_statistics(self, endpoint: str) -> None:
        from serving.monitoring.monitor import get_monitor

        try:
            monitor = get_monitor()
            if monitor is not None:
                monitor.endpoint_deleted.remote(endpoint)
        except Exception as error:  # kept until the Monitor restarts: shown, never acted on
            log.warning("could not have the Monitor forget %s: %s", endpoint, error)

    def post_routes(self, endpoint: str, config: EndpointConfig) -> bool:
        import ray

        posted = PostedRoutes(config.incarnation, config.generation, config.routes.model_dump_json())
        board = self._route_board()
        if board is None:
            return False
        try:
            return bool(ray.get(board.post.remote(endpoint, posted), timeout=POST_TIMEOUT_S))
        except Exception as error:  # Serve's reconfigure delivers the routes instead
            log.warning("could not post routes of %s to the route board: %s", endpoint, error)
            self._board = None
            return False

    def posted_routes(self, endpoint: str, incarnation: str) -> PostedRoutes | None:
        import ray

        board = self._route_board()
        if board is None:
            return None
        try:
            posted = ray.get(board.read.remote(endpoint, incarnation), timeout=POST_TIMEOUT_S)
        except Exception as error:  # its table cannot reach replicas either, nor be read
            log.warning("could not read the route board's table of %s: %s", endpoint, error)
            self._board = None
            return None
        return posted if isinstance(posted, PostedRoutes) else None


def _configured(app: dict[str, Any]) -> ServedConfig | None:
    """The endpoint configuration an application's replicas were last given (its
    deployment's ``user_config``), or None where it carries none."""
    for deployment in (app.get("deployments") or {}).values():
        user_config = (deployment.get("deployment_config") or {}).get("user_config") or {}
        try:
            if "generation" in user_config and "incarnation" in user_config:
                return ServedConfig(str(user_config["incarnation"]), int(user_config["generation"]),
                                    tuple(int(v["version"]) for v in user_config.get("versions") or ()))
        except (TypeError, ValueError, KeyError):
            return None
    return None


def _failed_status(status: str) -> bool:
    return status.endswith(("DEPLOY_FAILED", "UNHEALTHY"))


def _without(config: EndpointConfig, missing: set[int]) -> EndpointConfig | None:
    """``config`` without the versions in ``missing``; None if one of them takes traffic."""
    if not missing:
        return config
    if any(config.routes.weights.get(v, 0.0) > 0 for v in missing):
        return None
    routes = config.routes.model_copy(update={
        "weights": {v: w for v, w in config.routes.weights.items() if v not in missing},
        "shadows": [v for v in config.routes.shadows if v not in missing]})
    return config.model_copy(update={
        "versions": [v for v in config.versions if v.version not in missing], "routes": routes})


def _structure(config: EndpointConfig) -> str:
    """Everything in ``config`` that only a Serve reconfigure can change."""
    return config.model_dump_json(exclude={"routes", "generation"})


def _scaling(raw: dict[str, Any] | None) -> ScalingConfig:
    return ScalingConfig.model_validate(raw or {})


def _digest(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def incarnation_of(endpoint: EndpointRow) -> str:
    """Which creation of its name ``endpoint`` is (``EndpointConfig.incarnation``)."""
    return f"{endpoint.created_at.isoformat()}#{endpoint.id}"
