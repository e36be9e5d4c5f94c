"""The control plane's services wired together from settings."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from control_plane.artifacts import ArtifactStore
from control_plane.auth import TokenService
from control_plane.deployments import Deployments
from control_plane.idempotency_store import IdempotencyStore
from control_plane.observability import served_config, version_stats
from control_plane.ownership import store_identity
from control_plane.registry import Registry
from control_plane.rollouts.controller import RolloutController
from control_plane.store import Database
from control_plane.store.database import FencedOut, fenced_writes, in_fenced_pass
from control_plane.tracking import Tracker
from modelplane.settings import Settings, make_private_home

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    """Everything a REST route or an in-process caller needs, built once per process."""

    settings: Settings
    db: Database
    artifacts: ArtifactStore
    registry: Registry
    tracker: Tracker
    tokens: TokenService
    deployments: Deployments
    rollouts: Any = None
    new_admin_token: str | None = None
    reconciler: Any = None
    # This store's identity (control_plane.ownership), read once at start.
    store_id: str | None = None
    # control_plane.alerts.AlertService: rules, events (``fire_event``), notification.
    alerts: Any = None
    # control_plane.benchmarking.Benchmarks: version benchmarks on scratch replicas.
    benchmarks: Any = None
    # control_plane.pipelines.Pipelines: pipelines, their runs and the loop that moves them.
    pipelines: Any = None
    # control_plane.notifications.NotificationService: every event to the alert receivers.
    notifications: Any = None
    # control_plane.idempotency.IdempotencyStore: the answers kept for writes asked again.
    idempotency: Any = None
    # control_plane.leadership.Lease: whether this process runs the control loops (None:
    # no loops attached, and whatever is called in-process acts).
    lease: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)  # the control loops
    _loops: list[threading.Thread] = field(default_factory=list)
    # The lease's renewals stop last: a pass in flight at shutdown runs under a held lease.
    _lease_stop: threading.Event = field(default_factory=threading.Event)
    _lease_loop: threading.Thread | None = None

    @classmethod
    def start(cls, settings: Settings, *, migrate: bool = True) -> ControlPlane:
        """Open the store (migrating it), clean up partial uploads, make the admin token."""
        make_private_home(settings.home)
        db = Database(settings.db_url, migrate=migrate)
        artifacts = ArtifactStore(settings.artifact_uri, max_bytes=settings.max_artifact_bytes)
        removed = artifacts.remove_partial_writes()
        if removed:
            log.info("removed %d partial artifact upload(s) left by a crash", removed)
        tokens = TokenService(db)
        new_admin = tokens.bootstrap_admin(settings.admin_token_path)
        if new_admin:
            # Only the path: this log is a Serve replica log, which Ray's dashboard serves.
            log.warning("created the admin token and wrote it to %s (mode 0600)",
                        settings.admin_token_path)
        registry = Registry(db, artifacts, model_code=settings.model_code)
        from control_plane.alerts import AlertService

        deployments = Deployments(db, registry, base_url=settings.url)
        plane = cls(
            settings=settings,
            db=db,
            artifacts=artifacts,
            registry=registry,
            tracker=Tracker(db, artifacts),
            tokens=tokens,
            deployments=deployments,
            new_admin_token=new_admin,
            alerts=AlertService(db),
            store_id=store_identity(db),
            idempotency=IdempotencyStore(db),
        )
        from control_plane.notifications import NotificationService

        # Installed for the process: the registry, rollouts and tracking call notify().
        plane.notifications = NotificationService(plane.alerts.notifier,
                                                  base_url=settings.url).install()
        from control_plane.benchmarking import Benchmarks

        plane.benchmarks = Benchmarks(plane)
        plane.rollouts = RolloutController(db, registry, deployments, stats=version_stats,
                                           served=served_config, now=db.now,
                                           apply=plane.apply_committed, alert=plane.raise_alert,
                                           leading=lambda: plane.leading, fenced=plane._fenced)
        from control_plane.pipelines.wiring import build_pipelines

        plane.pipelines = build_pipelines(plane)
        return plane

    def attach_serve(self, *, interval_s: float = 10.0) -> None:
        """Drive Ray Serve from the store: reconcile within half a second of holding the
        control loops' lease (control_plane.leadership), then every ``interval_s`` while
        this process holds it."""
        from control_plane.reconciler import RayServeBackend, Reconciler
        from control_plane.replica_env import link_address, replica_environment

        # Never the store's URL or the operator's token: a read-only token at most.
        env = replica_environment(self.settings, self.tokens)
        self.reconciler = Reconciler(
            self.db, RayServeBackend(), base_url=self.settings.url, replica_env=env,
            feedback_allows_anonymous=self.settings.feedback_allows_anonymous,
            max_body_bytes=self.settings.max_request_bytes, access_log=self.settings.access_log,
            lean_ingress=self.settings.lean_ingress, link_address=link_address(self.settings))
        self.reconciler.own(self.store_id)
        self.reconciler.may_act = lambda: self.leading
        self.start_control_loops(interval_s=interval_s)

    def start_control_loops(self, *, interval_s: float = 10.0, lease_s: float | None = None) -> None:
        """Take part in the lease, and run the reconciler (where Serve is attached), rollout,
        pipeline and alert loops in every pass where this process holds it."""
        from control_plane.leadership import LEASE_S, Lease, this_ray_cluster

        self.lease = Lease(self.db, length_s=lease_s or LEASE_S, cluster=this_ray_cluster())
        self._took_over = threading.Event()
        self._keep_lease()
        self._lease_loop = self._loop(self.lease.renew_every_s, self._keep_lease, "lease",
                                      self._lease_stop)
        if self.reconciler is not None:
            self._every(interval_s, self._leading(self.apply), "reconciler")
            # What control planes that do not lead changed, applied within half a second.
            self._every(0.5, self._leading(self._apply_requested), "apply-requests")
            # Endpoints still starting are looked at every second, not every interval_s.
            self._every(1.0, self._leading(self.reconciler.reconcile_pending),
                        "reconciler-pending")
            from control_plane.abandoned_runs import AbandonedRuns
            from control_plane.job_api import cluster_job_client

            # Runs whose job was killed, or ended unable to say so, end within a minute.
            # Drivers' beats are dated by the store's clock, and judged by it: a leader
            # whose own clock ran ahead ended healthy runs as silent.
            self._every(30.0, self._leading(AbandonedRuns(
                self.tracker, cluster_job_client, tokens=self.tokens,
                now=lambda: self.db.now().timestamp()).sweep), "abandoned-runs")
        # Ticks are cheap (one indexed query when nothing is active); each rollout is
        # analysed at its own interval, so a short tick only bounds reaction time.
        self._every(0.25, self._leading(self.rollouts.tick), "rollout-controller")
        self._every(1.0, self._leading(self.pipelines.tick), "pipelines")
        self.start_alerts()

    @property
    def leading(self) -> bool:
        """Whether this process runs the control loops and applies to Serve."""
        return self.lease is None or self.lease.held

    def _keep_lease(self) -> None:
        """Renew (or take) the lease; a process that just became the holder catches up on
        what was stored while another held it within half a second (``_apply_requested``)."""
        was_leading = self.lease.held
        if self.lease.hold() and not was_leading:
            # Forgotten at once, before any apply as the lead (an API call's): what this
            # process gave Serve before another held the lease is no guide to what it runs.
            if self.reconciler is not None:
                self.reconciler.forget_applied()
            # Applied on the reconciler's own thread (below), not this one: a Serve slow to
            # answer a takeover's full apply held the renewals, and the lease ran out under
            # a live leader.
            self._took_over.set()

    def _apply_requested(self) -> None:
        from control_plane.leadership import take_apply_requests

        if self._took_over.is_set():
            self._took_over.clear()
            try:
                self.apply()
            except BaseException:
                self._took_over.set()  # Serve not ready yet: the next pass tries again
                raise
            return
        requested = take_apply_requests(self.db)
        if None in requested:
            self.apply()
            return
        for endpoint in sorted(e for e in requested if e is not None):
            self.apply(endpoint)

    def _leading(self, work: Callable[[], Any]) -> Callable[[], Any]:
        def only_while_leading() -> Any:
            if not self.leading:
                return None
            with self._fenced():
                return work()
        return only_while_leading

    def _fenced(self) -> AbstractContextManager[None]:
        """The control loops' writes in a pass, refused unless this process still holds
        their lease as each is made, under the term the pass began in (``Lease.fence``).
        Inside a pass already fenced (work it calls fences its own writes too), that
        pass's fence and term stay."""
        if self.lease is None or in_fenced_pass():
            return nullcontext()
        return fenced_writes(functools.partial(self.lease.fence, term=self.lease.term))

    def step_down(self) -> None:
        """Stop the control loops and give their lease up (a graceful shutdown): the next
        control plane takes over at its next renewal instead of a lease length later. A
        pass still running is waited for, the lease renewed meanwhile, for at most a lease's
        length; one still running then is left to end under a lease that is no longer
        renewed and runs out on its own."""
        if self.lease is None:
            return
        self._stop.set()
        evaluator = self.alerts.stop_evaluating() if self.alerts is not None else None
        deadline = time.monotonic() + self.lease.length_s
        me = threading.current_thread()
        passes = [t for t in (*self._loops, evaluator) if t is not None and t is not me]
        for thread in passes:
            thread.join(max(deadline - time.monotonic(), 0.0))
        self._lease_stop.set()
        if any(thread.is_alive() for thread in passes):
            log.warning("a control pass was still running at shutdown; the control loops' "
                        "lease runs out on its own")
            return
        if self._lease_loop is not None and self._lease_loop is not me:
            self._lease_loop.join(max(deadline - time.monotonic(), 1.0))  # no renewal after
        self.lease.release()

    def start_alerts(self) -> None:
        """Evaluate the alert rules against the Monitor in the alerts' own thread."""
        from control_plane.observability import read_version_stats

        self.alerts.start(read_version_stats, lambda: [e.name for e in self.deployments.list()],
                          active=lambda: self.leading, fenced=self._fenced,
                          lease_term=(lambda: self.lease.term) if self.lease is not None else None)

    def raise_alert(self, name: str, *, severity: str, labels: dict[str, str], summary: str,
                    data: dict[str, Any] | None = None) -> None:
        """Raise a one-shot alert through the alerting path (the log when there is none)."""
        if self.alerts is not None:
            self.alerts.fire_event(name, severity=severity, labels=labels, summary=summary, data=data)
        else:
            log.warning("alert %s [%s] %s: %s", name, severity, labels, summary)

    def apply(self, endpoint: str | None = None) -> Any:
        """Make Serve match the store now, for every endpoint or just ``endpoint`` (no-op
        without Serve; where another control plane leads, that one is asked to); returns
        the report (None where asked). Submits and returns: never waits for a model to
        load, and each endpoint is applied under its own lock, not one for all."""
        if self.reconciler is None:
            return None
        if not self.leading:
            from control_plane.leadership import request_apply

            request_apply(self.db, endpoint)
            return None
        return self.reconciler.reconcile(endpoint)

    def apply_committed(self, endpoint: str | None = None) -> None:
        """:meth:`apply`, after a change the store has committed: a failure to reach Serve
        (or, where another control plane leads, to queue the request) is logged, never
        raised. The change stands and the reconciler's next pass applies it; answering the
        change's caller 5xx instead would be untrue, and its retry would be refused (a
        rollback already done)."""
        try:
            self.apply(endpoint)
        except FencedOut:
            if in_fenced_pass():  # a control pass that outlived its lead: the pass ends here
                raise
            # The lead passed while an API call applied its change: the holder applies it.
            from control_plane.leadership import request_apply

            log.info("the lead passed while applying %s; the leading control plane applies "
                     "it", endpoint or "every endpoint")
            try:
                request_apply(self.db, endpoint)
            except Exception as error:
                log.warning("could not ask the leading control plane to apply %s (%s); its "
                            "next pass does", endpoint or "every endpoint", error)
        except Exception as error:
            log.warning("applying %s to Serve now failed (%s: %s); the reconciler's next pass "
                        "applies it", endpoint or "every endpoint", type(error).__name__, error)

    def serving_states(self) -> dict[str, Any]:
        """Endpoint → how applying it to Serve went (``EndpointApplyState``); {} without Serve."""
        return self.reconciler.states() if self.reconciler is not None else {}

    def _every(self, interval_s: float, work: Callable[[], Any], name: str) -> None:
        """Run ``work`` every ``interval_s`` in a daemon thread until the control loops stop
        (:meth:`step_down`, :meth:`close`)."""
        self._loops.append(self._loop(interval_s, work, name, self._stop))

    @staticmethod
    def _loop(interval_s: float, work: Callable[[], Any], name: str,
              stop: threading.Event) -> threading.Thread:
        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    work()
                except FencedOut as lost:  # the lease's successor acts from here on
                    log.warning("%s pass stopped: %s", name, lost)
                except Exception:  # keep going; the next pass may succeed
                    log.exception("%s pass failed", name)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.step_down()
        self._stop.set()
        self._lease_stop.set()
        if self.notifications is not None:
            self.notifications.uninstall()
        if self.alerts is not None:
            self.alerts.stop()
        self.db.dispose()
