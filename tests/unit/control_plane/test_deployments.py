"""Desired serving state in the store, and the reconciler driving a fake Serve."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.deployments import Deployments
from control_plane.errors import ConflictError, InvalidInputError, NotFoundError
from control_plane.reconciler import Reconciler
from control_plane.registry import Registry
from control_plane.schemas import DeployRequest, TrafficUpdate, VersionCreate
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.unit.control_plane.conftest import ALICE, READER


class FakeServe:
    """Records what the reconciler asks of Serve."""

    def __init__(self) -> None:
        self.apps: dict[str, Any] = {}
        self.calls: list[tuple[str, str]] = []
        self.board_up = True  # the route board answers
        self.posted: list[Any] = []  # configurations whose routes went to the board

    def applications(self) -> dict[str, str]:
        return {name: "RUNNING" for name in self.apps}

    def deploy(self, name: str, route_prefix: str | None, app: Any) -> None:
        self.apps[name] = (route_prefix, app)
        self.calls.append(("deploy", name))

    def delete(self, name: str) -> None:
        self.apps.pop(name, None)
        self.calls.append(("delete", name))

    def post_routes(self, endpoint: str, config: Any) -> bool:
        self.calls.append(("post", endpoint))
        if self.board_up:
            self.posted.append(config)
        return self.board_up

    def posted_routes(self, endpoint: str, incarnation: str) -> None:
        return None  # a board that holds nothing newer than the store

    def forget_statistics(self, endpoint: str) -> None:
        self.calls.append(("forget", endpoint))

    def wait_running(self, names: list[str], timeout_s: float) -> None:
        assert all(name in self.apps for name in names)


@pytest.fixture
def deployments(registry: Registry) -> Deployments:
    for seed in range(3):
        info = registry.artifacts.put([linear_classifier(seed=seed)])
        registry.register_version(
            "iris", VersionCreate(artifact_digest=info.digest, manifest=linear_classifier_manifest()),
            ALICE,
        )
    return Deployments(registry.db, registry, base_url="http://cp:8000")


def _weights(endpoint) -> dict[int, float]:
    return {r.version: r.weight for r in endpoint.routes if not r.shadow}


def test_first_deploy_takes_all_traffic_then_versions_join_at_zero(deployments: Deployments) -> None:
    created = deployments.deploy(DeployRequest(endpoint="iris-prod", model_ref="iris:1"), ALICE)
    assert _weights(created) == {1: 100.0}
    assert created.url == "http://cp:8000/v2/models/iris-prod"
    added = deployments.deploy(DeployRequest(endpoint="iris-prod", model_ref="iris:2"), ALICE)
    assert _weights(added) == {1: 100.0, 2: 0.0}
    weighted = deployments.deploy(
        DeployRequest(endpoint="iris-prod", model_ref="iris:3", weight=20), ALICE
    )
    assert _weights(weighted) == {1: 80.0, 2: 0.0, 3: 20.0}
    assert weighted.generation == created.generation + 2


def test_traffic_replaces_the_route_table(deployments: Deployments) -> None:
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    result = deployments.set_traffic("ep", TrafficUpdate(weights={1: 90, 2: 10}, shadows=[3]), ALICE)
    assert _weights(result) == {1: 90.0, 2: 10.0}
    assert [r.version for r in result.routes if r.shadow] == [3]
    result = deployments.set_traffic("ep", TrafficUpdate(weights={2: 100}), ALICE)
    assert [r.version for r in result.routes] == [2]


@pytest.mark.parametrize(
    ("update", "error", "fragment"),
    [
        (TrafficUpdate(weights={1: 60, 2: 30}), InvalidInputError, "sum to 100"),
        (TrafficUpdate(weights={1: 100}, shadows=[1]), InvalidInputError, "both take traffic"),
        (TrafficUpdate(weights={9: 100}), NotFoundError, "no version 9"),
    ],
)
def test_bad_traffic_is_refused_and_nothing_changes(deployments, update, error, fragment) -> None:
    before = deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    with pytest.raises(error, match=fragment):
        deployments.set_traffic("ep", update, ALICE)
    after = deployments.get("ep")
    assert after.routes == before.routes and after.generation == before.generation


def test_rejected_versions_take_no_traffic(deployments: Deployments, registry: Registry) -> None:
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    registry.reject_version("iris", 2, "error rate 20%", ALICE)
    with pytest.raises(ConflictError, match="error rate 20%"):
        deployments.set_traffic("ep", TrafficUpdate(weights={1: 50, 2: 50}), ALICE)


def test_readers_cannot_deploy(deployments: Deployments) -> None:
    from control_plane.errors import PermissionDeniedError

    with pytest.raises(PermissionDeniedError):
        deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), READER)


def test_reconciler_applies_changes_once_and_deletes_leftovers(deployments: Deployments) -> None:
    serve = FakeServe()
    serve.apps["endpoint-stale"] = (None, None)
    serve.apps["control-plane"] = ("/api", None)
    reconciler = Reconciler(deployments.db, serve, base_url="http://cp:8000")
    deployments.deploy(DeployRequest(endpoint="ep", model_ref="iris:1"), ALICE)
    report = reconciler.reconcile()
    assert report.applied == ["endpoint-ep"] and report.deleted == ["endpoint-stale"]
    assert "control-plane" in serve.apps  # not the reconciler's to touch
    assert reconciler.reconcile().applied == []  # steady state: nothing to do
    config = reconciler.desired()["ep"]
    assert config.versions[0].artifact_url.startswith("http://cp:8000/api/artifacts/")
    deployments.set_traffic("ep", TrafficUpdate(weights={1: 90, 2: 10}), ALICE)
    assert reconciler.reconcile().applied == ["endpoint-ep"]
    restarted = Reconciler(deployments.db, serve, base_url="http://cp:8000")
    assert restarted.reconcile().applied == ["endpoint-ep"]  # re-applies once: Serve no-ops
    deployments.undeploy("ep", ALICE)
    assert reconciler.reconcile().deleted == ["endpoint-ep"]


def test_isolated_endpoints_get_an_application_per_version(deployments: Deployments) -> None:
    serve = FakeServe()
    reconciler = Reconciler(deployments.db, serve, base_url="http://cp:8000")
    deployments.deploy(DeployRequest(endpoint="big", model_ref="iris:1", placement="isolated"), ALICE)
    deployments.deploy(DeployRequest(endpoint="big", model_ref="iris:2", weight=10), ALICE)
    reconciler.reconcile()  # the versions are submitted; the router waits until they run
    assert sorted(serve.apps) == ["endpoint-big-v1", "endpoint-big-v2"]
    reconciler.reconcile()
    assert sorted(serve.apps) == ["endpoint-big", "endpoint-big-v1", "endpoint-big-v2"]
    assert serve.calls.index(("deploy", "endpoint-big-v2")) < serve.calls.index(("deploy", "endpoint-big"))
    deployments.set_traffic("big", TrafficUpdate(weights={2: 100}), ALICE)
    report = reconciler.reconcile()
    assert report.deleted == ["endpoint-big-v1"] and "endpoint-big-v2" not in report.applied


@pytest.mark.parametrize("name", ["fraud-v2", "llm-v10"])
def test_an_endpoint_name_that_names_a_version_application_is_refused(
        deployments: Deployments, name: str) -> None:
    """``fraud-v2``'s application would be version 2 of an isolated ``fraud``: each would
    deploy over the other every pass, and ``fraud``'s router would call the wrong replicas."""
    with pytest.raises(InvalidInputError, match="ends in -v<number>") as refused:
        deployments.deploy(DeployRequest(endpoint=name, model_ref="iris:1"), ALICE)
    assert refused.value.detail == {"field": "endpoint"}
    assert deployments.list() == []
    for fine in ("fraud-vault", "fraud-v2x", "fraud_v2", "v2"):
        deployments.deploy(DeployRequest(endpoint=fine, model_ref="iris:1"), ALICE)


def test_an_endpoint_s_version_applications_are_only_its_own() -> None:
    from serving.names import is_endpoint_app

    assert is_endpoint_app("endpoint-fraud-v2", "fraud")
    assert not is_endpoint_app("endpoint-fraud-vault", "fraud")
    assert not is_endpoint_app("endpoint-fraud-vault-v1", "fraud")
