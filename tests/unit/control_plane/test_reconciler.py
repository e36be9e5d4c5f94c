"""The reconciler against a fake Serve: endpoints apart, nothing waits, failures retried,
isolated routers only on running versions, other stores' applications left alone."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, update

from control_plane.deployments import Deployments
from control_plane.ownership import STORE_ID_ENV, AppOwner, application_owners, store_identity
from control_plane.reconciler import (
    MAX_GENERATION,
    RETRY_BASE_S,
    Reconciler,
    ServeApp,
    _configured,
)
from control_plane.registry import Registry
from control_plane.schemas import DeployRequest, ScaleSettings, TrafficUpdate, VersionCreate
from control_plane.store import Database
from control_plane.store.database import FencedOut, fenced_writes
from control_plane.store.models import EndpointRow, ModelRow, RolloutRow
from serving.monitoring.stats import ServedConfig
from serving.route_board import PostedRoutes, RouteBoard
from serving.schemas import RouteTable
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.unit.control_plane.conftest import ALICE

ME, OTHER = "a" * 32, "b" * 32


class Serve:
    """A Serve whose applications start when told to (``start``) or fail (``fail``).

    It has no way to wait: a reconciler that tried would raise AttributeError.
    """

    def __init__(self, *, owner: str | None = ME) -> None:
        self.apps: dict[str, ServeApp] = {}
        self.calls: list[tuple[str, str]] = []
        self.board_up = True  # the route board answers
        self.posted: list[Any] = []  # configurations whose routes went to the board
        self.board = RouteBoard()  # what the replicas would read
        self.user_configs: dict[str, dict[str, Any]] = {}
        self.autostart = True
        self.owner = owner
        self.prefixes: dict[str, str | None] = {}  # route prefix per deployed application

    def applications(self) -> dict[str, ServeApp]:
        return dict(self.apps)

    def deploy(self, name: str, route_prefix: str | None, app: Any) -> None:
        self.calls.append(("deploy", name))
        self.prefixes[name] = route_prefix
        user_config = app._bound_deployment.user_config or {}  # what its replicas are given
        self.user_configs[name] = user_config
        self.apps[name] = ServeApp("RUNNING" if self.autostart else "DEPLOYING", owner=self.owner,
                                   configured=_configured({"deployments": {"d": {
                                       "deployment_config": {"user_config": user_config}}}}))

    def served_weights(self, endpoint: str) -> tuple[int, dict[int, float]]:
        """The generation and weights the endpoint's replicas route by: the newer of Serve's
        configuration and the board's table (serving.endpoint)."""
        configured = self.user_configs[f"endpoint-{endpoint}"]
        posted = self.board.read(endpoint, configured["incarnation"])
        if posted is not None and posted.generation > configured["generation"]:
            return posted.generation, RouteTable.model_validate_json(posted.routes).weights
        return configured["generation"], RouteTable.model_validate(configured["routes"]).weights

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.apps.pop(name, None)

    def post_routes(self, endpoint: str, config: Any) -> bool:
        self.calls.append(("post", endpoint))
        if self.board_up:
            self.posted.append(config)
            self.board.post(endpoint, PostedRoutes(config.incarnation, config.generation,
                                                   config.routes.model_dump_json()))
        return self.board_up

    def posted_routes(self, endpoint: str, incarnation: str) -> PostedRoutes | None:
        return self.board.read(endpoint, incarnation) if self.board_up else None

    def forget_statistics(self, endpoint: str) -> None:
        self.calls.append(("forget", endpoint))

    def set(self, name: str, status: str, message: str = "") -> None:
        self.apps[name] = ServeApp(status, message, self.apps[name].owner)

    def deploys(self) -> list[str]:
        return [name for kind, name in self.calls if kind == "deploy"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def deployments(registry: Registry) -> Deployments:
    for seed in range(3):
        info = registry.artifacts.put([linear_classifier(seed=seed)])
        registry.register_version(
            "iris", VersionCreate(artifact_digest=info.digest, manifest=linear_classifier_manifest()),
            ALICE)
    return Deployments(registry.db, registry, base_url="http://cp:8000")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def reconciler(deployments: Deployments, serve: Serve, clock: Clock, **options: Any) -> Reconciler:
    return Reconciler(deployments.db, serve, base_url="http://cp:8000").own(
        ME, clock=clock, **options)


def test_an_endpoint_that_never_starts_does_not_hold_the_others(deployments, clock) -> None:
    serve = Serve()
    serve.autostart = False
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="big", model_ref="iris:1", placement="isolated",
                                     scaling=ScaleSettings(num_gpus=8)), ALICE)
    report = rec.reconcile()
    assert report.pending == ["big"] and "endpoint-big" not in serve.apps  # router waits
    assert rec.states()["big"].state == "pending"
    serve.autostart = True
    deployments.deploy(DeployRequest(endpoint="small", model_ref="iris:1"), ALICE)
    report = rec.reconcile("small")
    assert report.applied == ["endpoint-small"] and "big" not in report.applied
    rec.reconcile()
    assert rec.states()["small"].state == "applied" and rec.states()["big"].state == "pending"
    serve.set("endpoint-big-v1", "DEPLOYING", "1 replica pending: GPU 8 not available")
    rec.reconcile()
    assert "GPU 8 not available" in rec.states()["big"].error


def test_an_undeployed_endpoint_s_statistics_are_dropped_by_the_monitor(deployments, clock) -> None:
    """The Monitor forgot an endpoint only when a new incarnation of it shipped: a deleted
    one's series stayed exported (its last request's age growing) until it restarted."""
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="gone", model_ref="iris:1"), ALICE)
    deployments.deploy(DeployRequest(endpoint="kept", model_ref="iris:1"), ALICE)
    rec.reconcile()
    assert not [call for call in serve.calls if call[0] == "forget"]
    deployments.undeploy("gone", ALICE)
    rec.reconcile("gone")
    assert ("delete", "endpoint-gone") in serve.calls and ("forget", "gone") in serve.calls
    rec.reconcile()
    assert [call for call in serve.calls if call[0] == "forget"] == [("forget", "gone")]


def test_a_delete_serve_refuses_leaves_the_rest_of_the_sweep_to_go_on(deployments, clock) -> None:
    """A refused delete (Serve's writes held by one that outlived its bound) ended the
    pass: the other unwanted applications stayed, and their statistics stayed exported."""
    from control_plane.errors import ControlPlaneUnavailableError

    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    for name in ("first", "second"):
        deployments.deploy(DeployRequest(endpoint=name, model_ref="iris:1"), ALICE)
    rec.reconcile()
    for name in ("first", "second"):
        deployments.undeploy(name, ALICE)
    answered = serve.delete

    def refused_for_first(name: str) -> None:
        if name == "endpoint-first":
            raise ControlPlaneUnavailableError("an earlier write to Serve still waits")
        answered(name)

    serve.delete = refused_for_first  # type: ignore[method-assign]
    report = rec.reconcile()
    assert report.deleted == ["endpoint-second"] and "endpoint-first" in serve.apps
    assert {("forget", "first"), ("forget", "second")} <= set(serve.calls)
    serve.delete = answered  # type: ignore[method-assign]
    assert rec.reconcile().deleted == ["endpoint-first"]  # asked again next pass


def test_a_pass_that_outlived_its_lead_changes_nothing_more_in_serve(deployments, clock) -> None:
    """A pass checked the lead once, as it began: one held up in a Serve call past its
    lease went on deploying (an older process's settings) over what the new holder had
    applied, which the new holder never saw to apply again."""
    from control_plane.store.database import FencedOut

    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="first", model_ref="iris:1"), ALICE)
    deployments.deploy(DeployRequest(endpoint="second", model_ref="iris:1"), ALICE)
    leading = [True]
    rec.may_act = lambda: leading[0]
    rec.reconcile()
    assert set(serve.deploys()) == {"endpoint-first", "endpoint-second"}
    deployments.undeploy("second", ALICE)
    leading[0] = False  # the lease ran out while the pass was held up
    calls = list(serve.calls)
    with pytest.raises(FencedOut, match="no longer holds"):
        rec.reconcile()
    assert serve.calls == calls and "endpoint-second" in serve.apps  # left to the holder


def test_only_pending_endpoints_are_looked_at_between_passes(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="big", model_ref="iris:1", placement="isolated"), ALICE)
    deployments.deploy(DeployRequest(endpoint="small", model_ref="iris:1"), ALICE)
    serve.autostart = False
    rec.reconcile()
    serve.set("endpoint-small", "RUNNING")
    assert rec.reconcile_pending().pending == ["big"] and rec.states()["small"].state == "applied"
    serve.set("endpoint-big-v1", "RUNNING")
    assert rec.reconcile_pending().applied == ["endpoint-big"]  # the router, at once
    assert rec.reconcile_pending().applied == [] and rec.reconcile_pending().pending == ["big"]


def test_a_failed_endpoint_shows_its_error_and_is_retried_with_backoff(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    rec.reconcile()
    serve.set("endpoint-ep", "DEPLOY_FAILED", "model failed to load: digest mismatch")
    rec.reconcile()
    state = rec.states()["ep"]
    assert state.state == "failed" and "digest mismatch" in state.error
    assert state.retry_at == datetime.fromtimestamp(clock.now + RETRY_BASE_S, UTC)
    deploys = len(serve.deploys())
    rec.reconcile()
    assert len(serve.deploys()) == deploys  # not before its retry time
    clock.now += RETRY_BASE_S
    rec.reconcile()
    assert len(serve.deploys()) == deploys + 1 and rec.states()["ep"].state == "pending"
    serve.set("endpoint-ep", "DEPLOY_FAILED", "model failed to load: digest mismatch")
    rec.reconcile()
    state = rec.states()["ep"]
    assert state.retry_at == datetime.fromtimestamp(clock.now + 2 * RETRY_BASE_S, UTC)
    serve.set("endpoint-ep", "RUNNING")
    clock.now += 2 * RETRY_BASE_S
    rec.reconcile()
    rec.reconcile()
    assert rec.states()["ep"].state == "applied"


def test_a_changing_error_message_does_not_push_the_retry_out(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    rec.reconcile()
    serve.set("endpoint-ep", "DEPLOY_FAILED", "replica failed after 10s")
    rec.reconcile()
    retry_at = rec.states()["ep"].retry_at
    clock.now += RETRY_BASE_S - 1
    serve.set("endpoint-ep", "DEPLOY_FAILED", "replica failed after 14s")
    rec.reconcile()
    state = rec.states()["ep"]
    assert state.retry_at == retry_at and state.error.endswith("after 14s")
    deploys = len(serve.deploys())
    clock.now += 1
    rec.reconcile()
    assert len(serve.deploys()) == deploys + 1  # retried on time


def test_a_changed_route_table_is_applied_at_once_even_while_a_retry_waits(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:2", weight=10), ALICE)
    rec.reconcile()
    serve.set("endpoint-ep", "DEPLOY_FAILED", "v2 failed to load")
    rec.reconcile()
    deploys = len(serve.deploys())
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 100}), ALICE)  # a rollback
    rec.reconcile("ep")
    assert len(serve.deploys()) == deploys + 1


def test_an_endpoint_pending_past_its_start_timeout_is_failed(deployments, clock) -> None:
    serve = Serve()
    serve.autostart = False
    rec = reconciler(deployments, serve, clock, start_timeout_s=60)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    rec.reconcile()
    clock.now += 30
    rec.reconcile()
    assert rec.states()["ep"].state == "pending"
    clock.now += 31
    rec.reconcile()
    state = rec.states()["ep"]
    assert state.state == "failed" and "not running after 60s" in state.error


def test_an_isolated_router_leaves_out_a_zero_weight_version_that_does_not_run(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="big", model_ref="iris:1", placement="isolated"), ALICE)
    rec.reconcile()
    rec.reconcile()
    assert rec.desired()["big"].routes.weights == {1: 100.0} and "endpoint-big" in serve.apps
    serve.autostart = False
    deployments.deploy(DeployRequest(endpoint="big", model_ref="iris:2", weight=10), ALICE)
    rec.reconcile()
    router_deploys = serve.deploys().count("endpoint-big")
    assert router_deploys == 1  # v2 takes 10% and is not running: the router waits
    deployments.set_traffic("big", TrafficUpdate(weights={1: 100, 2: 0}), ALICE)  # rolled back
    rec.reconcile("big")
    # Applied now, without v2: the router's versions are as before, so only its routes move.
    assert serve.deploys().count("endpoint-big") == 1
    assert [c.generation for c in serve.posted] == [rec.desired()["big"].generation]
    assert rec.states()["big"].state == "pending"  # v2 still starting


def test_other_stores_applications_are_never_changed_or_deleted(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    serve.apps["endpoint-theirs"] = ServeApp("RUNNING", owner=OTHER)
    serve.apps["endpoint-clash"] = ServeApp("RUNNING", owner=OTHER)
    serve.apps["endpoint-legacy"] = ServeApp("RUNNING", owner=None)
    serve.apps["endpoint-mine-gone"] = ServeApp("RUNNING", owner=ME)
    deployments.deploy(DeployRequest(endpoint="clash", model_ref="iris:1"), ALICE)
    report = rec.reconcile()
    assert report.deleted == ["endpoint-mine-gone"]
    assert {"endpoint-theirs", "endpoint-clash", "endpoint-legacy"} <= set(serve.apps)
    assert "endpoint-clash" not in serve.deploys()
    state = rec.states()["clash"]
    assert state.state == "failed" and "belongs to another store" in state.error
    assert OTHER in state.error


def test_an_unmarked_application_of_a_stored_endpoint_is_adopted(deployments, clock) -> None:
    serve = Serve()
    serve.apps["endpoint-ep"] = ServeApp("RUNNING", owner=None)
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    assert rec.reconcile().applied == ["endpoint-ep"] and serve.apps["endpoint-ep"].owner == ME
    assert rec.replica_env[STORE_ID_ENV] == ME


def test_an_endpoint_whose_rollout_just_ended_goes_first(deployments, clock, db: Database) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    for name in ("a", "b", "z"):
        deployments.deploy(DeployRequest(endpoint=name, model_ref="iris:1"), ALICE)
    with db.session() as session:
        model = session.scalar(select(ModelRow))
        session.add(RolloutRow(endpoint="z", model_id=model.id, candidate_version=2, stable_version=1,
                               strategy="canary", state="rolled_back", created_by="alice",
                               finished_at=datetime.now(UTC)))
    rec.reconcile()
    assert serve.deploys() == ["endpoint-z", "endpoint-a", "endpoint-b"]


def test_the_store_identity_is_made_once_and_kept(db: Database) -> None:
    first = store_identity(db)
    assert len(first) == 32 and store_identity(db) == first


def test_owners_are_read_from_each_deployments_runtime_environment() -> None:
    env = {"env_vars": {STORE_ID_ENV: ME, "MODELPLANE_HOME": "/srv/a"}}
    details = {"applications": {
        "control-plane": {"deployments": {"ControlPlane": {"deployment_config": {
            "ray_actor_options": {"runtime_env": env}}}}},
        "endpoint-x": {"deployments": {"endpoint": {"deployment_config": {}}}},
    }}
    owners = application_owners(details)
    assert owners == {"control-plane": AppOwner(ME, "/srv/a"), "endpoint-x": AppOwner(None)}
    assert "/srv/a" in owners["control-plane"].describe()


def canary(deployments: Deployments) -> None:
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:2", weight=10), ALICE)


def test_a_weight_change_goes_to_the_route_board_not_to_serve(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    deploys = len(serve.deploys())
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 50, 2: 50}), ALICE)
    report = rec.reconcile("ep")
    assert report.routed == ["endpoint-ep"] and report.applied == []
    assert len(serve.deploys()) == deploys
    posted = serve.posted[-1]
    assert posted.routes.weights == {1: 50.0, 2: 50.0}
    assert posted.generation == rec.desired()["ep"].generation
    serve.posted.clear()
    rec.reconcile()  # a board that restarted empty gets the table again on every pass
    assert [c.generation for c in serve.posted] == [posted.generation]
    assert len(serve.deploys()) == deploys and rec.states()["ep"].state == "applied"


def test_a_lead_taken_back_gives_serve_everything_again(deployments, clock) -> None:
    """Another holder, in between, rebuilt the endpoint without version 2; version 2 came
    back in the store with the very settings this process last deployed. Sent to the route
    board alone, a tenth of the traffic went to a version no replica held."""
    serve = Serve()
    first, second = reconciler(deployments, serve, clock), reconciler(deployments, serve, clock)
    canary(deployments)
    first.reconcile()
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 100}), ALICE)
    second.reconcile()  # the lead passed to the second: version 2 is gone from Serve
    assert [v["version"] for v in serve.user_configs["endpoint-ep"]["versions"]] == [1]
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:2", weight=10), ALICE)
    first.forget_applied()  # and came back to the first (ControlPlane._apply_requested)
    report = first.reconcile("ep")
    assert report.applied == ["endpoint-ep"], report
    assert [v["version"] for v in serve.user_configs["endpoint-ep"]["versions"]] == [1, 2]


def test_a_deploy_serve_did_not_answer_is_sent_in_full_again_whatever_comes_next(
        deployments, clock) -> None:
    """A deploy that outlived its bound lands when Serve's controller answers. Remembered
    as not applied, the change back (version 3 removed) matched what this process had last
    applied in all but its routes, went to the route board alone, and Serve kept the
    version the store no longer has."""
    from control_plane.errors import ControlPlaneUnavailableError

    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:3", weight=10), ALICE)
    answered = serve.deploy

    def lands_unanswered(name: str, route_prefix: str | None, app: Any) -> None:
        answered(name, route_prefix, app)
        raise ControlPlaneUnavailableError("Serve's controller did not take the deploy")

    serve.deploy = lands_unanswered  # type: ignore[method-assign]
    rec.reconcile("ep")
    assert [v["version"] for v in serve.user_configs["endpoint-ep"]["versions"]] == [1, 2, 3]
    serve.deploy = answered  # type: ignore[method-assign]
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 90, 2: 10}), ALICE)
    clock.now += 3600  # past any retry's backoff
    rec.reconcile("ep")
    assert [v["version"] for v in serve.user_configs["endpoint-ep"]["versions"]] == [1, 2]


def _refusing(serve: Serve, app: str, error: Exception) -> None:
    """Serve refuses every submission of ``app`` with ``error`` (the others go through)."""
    answered = serve.deploy

    def refuse(name: str, route_prefix: str | None, built: Any) -> None:
        if name == app:
            serve.calls.append(("deploy", name))
            raise error
        answered(name, route_prefix, built)

    serve.deploy = refuse  # type: ignore[method-assign]


@pytest.mark.parametrize("placement", ["colocated", "isolated"])
def test_a_refused_submission_is_sent_again_at_its_retry_not_every_pass(
        deployments, clock, placement) -> None:
    """A version's (or the endpoint's) application Serve refuses was built and sent again
    on every pass, at whatever pace the passes ran, while the endpoint's state said it
    waited for its retry."""
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    app = "endpoint-ep-v1" if placement == "isolated" else "endpoint-ep"
    _refusing(serve, app, ValueError("the model's artifact does not load"))
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1", placement=placement), ALICE)
    rec.reconcile()
    assert serve.deploys().count(app) == 1
    for _ in range(5):  # passes before the retry is due
        clock.now += 0.5
        rec.reconcile()
        state = rec.states()["ep"]
        assert state.state == "failed" and "does not load" in state.error, state
    assert serve.deploys().count(app) == 1
    clock.now += RETRY_BASE_S
    rec.reconcile()
    assert serve.deploys().count(app) == 2  # at its retry, once
    rec.reconcile()
    assert serve.deploys().count(app) == 2  # and the next wait is longer
    assert rec.states()["ep"].retry_at == datetime.fromtimestamp(clock.now + 2 * RETRY_BASE_S, UTC)
    del serve.deploy  # Serve's own again
    clock.now += 2 * RETRY_BASE_S
    for _ in range(3):  # submitted, running (an isolated router submitted), running
        rec.reconcile()
    assert serve.deploys().count(app) == 3 and rec.states()["ep"].state == "applied"


def test_a_changed_document_goes_at_once_while_a_refused_one_waits(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    _refusing(serve, "endpoint-ep", ValueError("refused"))
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:3", weight=10), ALICE)
    rec.reconcile("ep")
    rec.reconcile("ep")  # held: its retry is not due
    assert serve.deploys().count("endpoint-ep") == 2
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 100}), ALICE)  # a rollback
    rec.reconcile("ep")
    assert serve.deploys().count("endpoint-ep") == 3


def test_a_held_version_keeps_the_endpoint_failed_while_its_router_is_submitted(
        deployments, clock) -> None:
    """The router submitted without the refused version made the endpoint pending, and the
    pass for pending endpoints (every second) sent the version again at once."""
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1", placement="isolated"), ALICE)
    for _ in range(3):  # the version, then its router, then both running
        rec.reconcile()
    assert rec.states()["ep"].state == "applied"
    serve.board_up = False  # the routes go through Serve: the router is submitted in full
    _refusing(serve, "endpoint-ep-v2", ValueError("refused"))
    # At 0% the router goes on without it (a version taking traffic keeps the old router).
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:2", weight=0), ALICE)
    rec.reconcile("ep")
    retry_at = rec.states()["ep"].retry_at
    routers = serve.deploys().count("endpoint-ep")
    clock.now += 1
    rec.reconcile("ep")
    assert serve.deploys().count("endpoint-ep") == routers + 1  # the router, without v2
    for _ in range(3):
        clock.now += 0.5
        rec.reconcile_pending()
        rec.reconcile("ep")
    state = rec.states()["ep"]
    assert state.state == "failed" and state.retry_at == retry_at and "refused" in state.error
    assert serve.deploys().count("endpoint-ep-v2") == 1


def test_a_version_whose_build_fails_waits_for_its_retry(deployments, clock, monkeypatch) -> None:
    import control_plane.reconciler as reconciler_module

    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    builds = []

    def unbuildable(*args: Any, **kwargs: Any) -> Any:
        builds.append(args)
        raise ValueError("no such preprocess")

    monkeypatch.setattr(reconciler_module, "build_version_app", unbuildable)
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1", placement="isolated"), ALICE)
    for _ in range(4):
        rec.reconcile()
        clock.now += 1
    assert len(builds) == 1 and "no such preprocess" in rec.states()["ep"].error
    clock.now += RETRY_BASE_S
    rec.reconcile()
    assert len(builds) == 2


def test_an_unanswered_submission_is_sent_again_the_next_pass(deployments, clock) -> None:
    """Unanswered is not refused: once Serve's controller answers, the next pass sends it."""
    from control_plane.serve_writes import ServeWriteUnanswered

    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    _refusing(serve, "endpoint-ep", ServeWriteUnanswered("Serve's controller did not answer"))
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    rec.reconcile()
    del serve.deploy  # Serve's own again
    clock.now += 0.5
    rec.reconcile()
    assert serve.deploys().count("endpoint-ep") == 2 and "endpoint-ep" in serve.apps


def test_routes_go_through_serve_when_the_board_cannot_take_them(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    deploys = len(serve.deploys())
    serve.board_up = False
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 50, 2: 50}), ALICE)
    assert rec.reconcile("ep").applied == ["endpoint-ep"] and len(serve.deploys()) == deploys + 1
    serve.board_up = True
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 20, 2: 80}), ALICE)
    assert rec.reconcile("ep").routed == ["endpoint-ep"]
    serve.board_up = False  # lost after it took the table: Serve's configuration catches up
    assert rec.reconcile("ep").applied == ["endpoint-ep"] and len(serve.deploys()) == deploys + 2
    assert rec.reconcile("ep").unchanged == ["endpoint-ep"]  # and only once


def test_anything_but_routes_is_still_applied_by_serve(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 50, 2: 50}), ALICE)
    rec.reconcile()
    deploys = len(serve.deploys())
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:3", weight=0), ALICE)
    assert rec.reconcile("ep").applied == ["endpoint-ep"]  # a new version: Serve loads it
    restarted = reconciler(deployments, serve, clock)
    assert restarted.reconcile("ep").applied == ["endpoint-ep"]  # no memory: Serve gets it all
    assert len(serve.deploys()) == deploys + 2
    serve.set("endpoint-ep", "DEPLOY_FAILED", "v3 failed to load")
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 100, 2: 0, 3: 0}), ALICE)
    assert restarted.reconcile("ep").applied == ["endpoint-ep"]  # a failed app gets all of it


def test_with_a_link_address_isolated_versions_are_routed_for_their_routers(deployments, clock) -> None:
    serve = Serve()
    rec = Reconciler(deployments.db, serve, base_url="http://cp:8000",
                     link_address="127.0.0.1:8000").own(ME, clock=clock)
    deployments.deploy(DeployRequest(endpoint="big", model_ref="iris:1", placement="isolated"), ALICE)
    deployments.deploy(DeployRequest(endpoint="small", model_ref="iris:1"), ALICE)
    rec.reconcile()
    rec.reconcile()  # the router once its version runs
    assert serve.prefixes == {"endpoint-big-v1": "/modelplane-link/big/v1",
                              "endpoint-big": "/v2/models/big", "endpoint-small": "/v2/models/small"}
    desired = rec.desired()
    assert desired["big"].link_address == "127.0.0.1:8000" and desired["small"].link_address is None
    # Without an address (no HAProxy, or the lean ingress off) versions have no route.
    plain = Serve()
    Reconciler(deployments.db, plain, base_url="http://cp:8000").own(ME, clock=clock).reconcile()
    assert plain.prefixes["endpoint-big-v1"] is None and rec.desired()["big"].versions


def _lose_changes_since(deployments: Deployments, weights: dict[int, float], generation: int) -> None:
    """The store as a backup taken at ``generation`` has it (a restore, or a PostgreSQL
    failover that lost its last commits): those weights, that generation."""
    deployments.set_traffic("ep", TrafficUpdate(weights=weights), ALICE)
    with deployments.db.session() as session:
        session.execute(update(EndpointRow).where(EndpointRow.name == "ep").values(
            generation=generation))


@pytest.mark.parametrize("restarted", [True, False], ids=["restarted", "running"])
def test_a_store_that_lost_its_last_changes_is_served_not_the_table_it_lost(
        deployments, clock, restarted: bool) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    backup = rec.desired()["ep"]
    for weights in ({1: 50, 2: 50}, {1: 20, 2: 80}):  # rollout steps: on the board only
        deployments.set_traffic("ep", TrafficUpdate(weights=weights), ALICE)
        assert rec.reconcile("ep").routed == ["endpoint-ep"]
    lost = serve.board.read("ep", backup.incarnation)
    assert lost is not None and lost.generation > backup.generation
    _lose_changes_since(deployments, dict(backup.routes.weights), backup.generation)
    if restarted:
        rec = reconciler(deployments, serve, clock)
    rec.reconcile()
    # Replicas take the newer of Serve's table and the board's: the store's must be newer.
    assert serve.served_weights("ep") == (lost.generation + 1, {1: 90.0, 2: 10.0})
    assert rec.desired()["ep"].generation == lost.generation + 1
    rec.reconcile()
    assert rec.desired()["ep"].generation == lost.generation + 1  # once, not every pass
    assert rec.states()["ep"].state == "applied"


def test_serve_configured_past_the_store_moves_the_store_past_it_too(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    config = rec.desired()["ep"]
    ahead = ServedConfig(config.incarnation, config.generation + 7, (1, 2, 3))  # lost: iris:3 added
    serve.apps["endpoint-ep"] = replace(serve.apps["endpoint-ep"], configured=ahead)
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 70, 2: 30}), ALICE)
    rec.reconcile()
    assert rec.desired()["ep"].generation == ahead.generation + 1
    assert serve.posted[-1].generation == ahead.generation + 1
    # Another incarnation (the name deployed again, or another store's) is not this one's past.
    other = ServedConfig("2020-01-01T00:00:00#99", 10_000, (1,))
    serve.apps["endpoint-ep"] = replace(serve.apps["endpoint-ep"], configured=other)
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 60, 2: 40}), ALICE)
    rec.reconcile()
    assert rec.desired()["ep"].generation == ahead.generation + 2


def test_a_generation_past_what_the_store_counts_fails_the_endpoint_and_says_what_to_do(
        deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    config = rec.desired()["ep"]
    serve.board.post("ep", PostedRoutes(config.incarnation, MAX_GENERATION,
                                        config.routes.model_dump_json()))
    deploys = len(serve.deploys())
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 70, 2: 30}), ALICE)
    report = rec.reconcile("ep")
    assert "undeploy the endpoint and deploy it again" in report.failed["ep"]
    assert rec.states()["ep"].state == "failed" and len(serve.deploys()) == deploys
    assert rec.desired()["ep"].generation == config.generation + 1  # the store untouched


def test_serves_configuration_is_read_from_its_details() -> None:
    user_config = {"incarnation": "2026-12-04T10:00:00#3", "generation": 12,
                   "versions": [{"version": 1}, {"version": 4}], "routes": {}}
    details = {"deployments": {"EndpointDeployment": {"deployment_config": {
        "user_config": user_config}}}}
    assert _configured(details) == ServedConfig("2026-12-04T10:00:00#3", 12, (1, 4))
    assert _configured({"deployments": {"V": {"deployment_config": {"user_config": {"link": True}}}}}) is None
    assert _configured({"deployments": {"V": {"deployment_config": {"user_config": {
        "incarnation": "x", "generation": "twelve"}}}}}) is None
    assert _configured({}) is None


def test_a_pass_that_outlived_its_lead_moves_no_generation(deployments, clock) -> None:
    serve = Serve()
    rec = reconciler(deployments, serve, clock)
    canary(deployments)
    rec.reconcile()
    config = rec.desired()["ep"]
    serve.board.post("ep", PostedRoutes(config.incarnation, config.generation + 5,
                                        config.routes.model_dump_json()))
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 70, 2: 30}), ALICE)

    def lost_lead(session: Any) -> None:
        raise FencedOut("another control plane leads")

    with fenced_writes(lost_lead), pytest.raises(FencedOut):
        rec.reconcile("ep")  # ends the pass: not taken for the endpoint failing
    assert rec.desired()["ep"].generation == config.generation + 1
    assert rec.states()["ep"].state != "failed"
