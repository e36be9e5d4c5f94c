"""Version benchmarks without a cluster: settings bounds, request bodies, the rate search,
GPU readings, and scratch application names the reconciler never sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from control_plane.benchmarking.inputs import request_bodies
from control_plane.benchmarking.load import LoadResult, search_rate
from control_plane.benchmarking.schemas import BenchmarkSettings
from control_plane.benchmarking.scratch import parse_nvidia_smi
from serving.names import (
    benchmark_endpoint_name,
    endpoint_app_name,
    is_benchmark_app,
    is_endpoint_app,
)

SIGNATURE = {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 4]}],
             "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 3]}]}


@pytest.mark.parametrize(("values", "field"), [
    ({"rate": 0}, "rate"), ({"rate": 200_000}, "rate"), ({"duration_s": 0}, "duration_s"),
    ({"duration_s": 601}, "duration_s"), ({"rate": 1, "duration_s": 5}, "duration_s"),
    ({"rate": 100_000, "duration_s": 600}, "duration_s"), ({"search_steps": 13}, "search_steps"),
])
def test_settings_out_of_bounds_name_the_field(values: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BenchmarkSettings.model_validate(values)
    assert caught.value.errors()[0]["loc"] == (field,)


def test_bodies_are_what_tritonclient_sends() -> None:
    import tritonclient.http as triton

    for body in request_bodies(SIGNATURE, None, rows=2, count=3):
        sent = json.loads(body)
        (tensor,) = sent["inputs"]
        array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        expected = triton.InferInput("input", [2, 4], "FP32")
        expected.set_data_from_numpy(array, binary_data=False)
        triton_body, _ = triton.InferenceServerClient.generate_request_body([expected])
        assert sent == json.loads(triton_body)


def test_bodies_follow_the_reference_profile() -> None:
    profile = {"version": 1, "features": [
        {"name": f"f{i}", "kind": "numeric", "edges": [10.0 * i, 10.0 * i + 1], "counts": [5],
         "count": 5, "missing": 0, "min": 10.0 * i, "max": 10.0 * i + 1, "sample": []}
        for i in range(4)]}
    for body in request_bodies(SIGNATURE, profile, count=8):
        values = json.loads(body)["inputs"][0]["data"]
        assert all(10 * i <= v <= 10 * i + 1 for i, v in enumerate(values))


def _server(capacity: float):
    """A fake server: p99 10 ms below ``capacity`` req/s, 1 s above it."""
    def measure(rate: float) -> LoadResult:
        result = LoadResult(rate, 1.0, elapsed_s=1.0)
        n = int(rate)
        result.latencies_s = [0.010 if rate <= capacity else 1.0] * n
        return result
    return measure


def test_the_rate_search_doubles_then_bisects() -> None:
    best, steps = search_rate(_server(300), 50, p99_target_ms=50, steps=6)
    assert [s.rate for s in steps] == [50, 100, 200, 400, 300, 350]
    assert best == 300 and [s.held for s in steps] == [True, True, True, False, True, False]


def test_the_rate_search_halves_when_the_first_rate_breaks() -> None:
    best, steps = search_rate(_server(30), 100, p99_target_ms=50, steps=3)
    assert [s.rate for s in steps] == [100, 50, 25] and best == 25


def test_nvidia_smi_memory_of_one_process() -> None:
    output = "1234, 2048\n99, 10\n1234, 512\n"
    assert parse_nvidia_smi(output, 1234) == (2048 + 512) * 1024 * 1024
    assert parse_nvidia_smi(output, 5) is None


def test_scratch_applications_are_never_endpoints() -> None:
    name = endpoint_app_name(benchmark_endpoint_name(7, "0123456789abcdef"))
    assert name == "endpoint-_bench-01234567-7"
    assert is_benchmark_app(name) and is_benchmark_app(f"{name}-v3")
    assert not is_endpoint_app(name) and not is_endpoint_app(f"{name}-v3")
    assert is_endpoint_app("endpoint-iris") and not is_benchmark_app("endpoint-iris")


def test_the_reconciler_sweep_leaves_a_benchmark_alone(db) -> None:
    from control_plane.reconciler import Reconciler, ServeApp

    class Backend:
        def __init__(self) -> None:
            self.apps = {"endpoint-_bench-5": ServeApp("RUNNING"), "endpoint-gone": ServeApp("RUNNING")}
            self.deleted: list[str] = []

        def applications(self) -> dict:
            return dict(self.apps)

        def deploy(self, *args: object) -> None: ...

        def delete(self, name: str) -> None:
            self.deleted.append(name)

        def post_routes(self, *args: object) -> bool:
            return True

        def posted_routes(self, *args: object) -> None:
            return None

        def forget_statistics(self, endpoint: str) -> None: ...

    backend = Backend()
    Reconciler(db, backend, base_url="http://127.0.0.1:1").reconcile()
    assert backend.deleted == ["endpoint-gone"]


@pytest.mark.parametrize("placement", ["colocated", "isolated"])
def test_scratch_replicas_drain_briefly_and_keep_the_replica_environment(placement: str) -> None:
    """Nothing calls a scratch replica after its measurement: each of its applications asks
    Serve for a short direct-ingress drain instead of the default half minute, and keeps
    the environment every replica gets (store mark, artifact token)."""
    from control_plane.benchmarking import scratch
    from control_plane.benchmarking.measure import Cluster, Target, scratch_config
    from control_plane.benchmarking.schemas import BatchSettings, ServedWith

    class Backend:
        def __init__(self) -> None:
            self.deployed: dict[str, object] = {}

        def deploy(self, name: str, prefix: str | None, app: object) -> None:
            self.deployed[name] = app

    signature = {"inputs": [{"name": "x", "dtype": "FP32", "shape": [-1, 4]}],
                 "outputs": [{"name": "y", "dtype": "FP32", "shape": [-1, 2]}]}
    target = Target(model="m", version=3, digest="0" * 64,
                    manifest={"signature": signature})
    cluster = Cluster(backend=Backend(), env={"MODELPLANE_STORE_ID": "s"},
                      base_url="http://127.0.0.1:1")
    served = ServedWith(placement=placement, num_cpus=0.25, num_gpus=0, memory_mb=0,
                        max_ongoing_requests=8, intra_op_threads=1,
                        batching=BatchSettings.model_validate({}))
    config = scratch_config("m-_bench-1", target, served, cluster)
    scratch.deploy(config, cluster.env, cluster.backend)
    assert sorted(cluster.backend.deployed) == scratch.application_names(config)
    for app in cluster.backend.deployed.values():
        env = app._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]
        assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "1"
        assert env["MODELPLANE_STORE_ID"] == "s"
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in cluster.env


def test_the_sweep_spares_a_benchmark_that_starts_while_serve_is_listed(
        registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The running benchmarks are read after Serve's applications are listed: one that
    started in between (its row, then its scratch application) is not a leftover."""
    from types import SimpleNamespace

    from control_plane import ownership
    from control_plane.auth import Principal
    from control_plane.benchmarking.service import Benchmarks
    from control_plane.schemas import Role, VersionCreate
    from control_plane.store.models import ModelVersionRow, VersionBenchmarkRow
    from tests.onnx_models import linear_classifier, linear_classifier_manifest

    info = registry.artifacts.put([linear_classifier(seed=0)])
    registry.register_version("iris", VersionCreate(
        artifact_digest=info.digest, manifest=linear_classifier_manifest()),
        Principal("alice", Role.DEPLOYER))
    started: list[str] = []

    def listed_as_a_benchmark_starts() -> dict:
        with registry.db.session() as session:
            row = VersionBenchmarkRow(version_id=session.scalar(select(ModelVersionRow.id)),
                                      settings={}, created_by="alice")
            session.add(row)
            session.flush()
            started.append(endpoint_app_name(benchmark_endpoint_name(row.id, "store-1")))
        return {"applications": {started[0]: {}, endpoint_app_name(
            benchmark_endpoint_name(999, "store-1")): {}}}

    monkeypatch.setattr(ownership, "serve_details", listed_as_a_benchmark_starts)
    monkeypatch.setattr(ownership, "application_owners",
                        lambda details: {name: ownership.AppOwner("store-1")
                                         for name in details["applications"]})
    deleted: list[str] = []
    Benchmarks(SimpleNamespace(db=registry.db))._sweep(
        SimpleNamespace(delete=deleted.append), "store-1")
    assert deleted == [endpoint_app_name(benchmark_endpoint_name(999, "store-1"))]


def test_a_scratch_delete_serve_refuses_is_asked_again_while_the_wait_lasts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve refused the delete while a deploy that outlived its bound held its writes;
    the application was not listed yet (that deploy had not landed), so the wait ended at
    once and the deploy, landing later, kept its replica until another benchmark ran."""
    import control_plane.ownership
    from control_plane.benchmarking import scratch
    from control_plane.errors import ControlPlaneUnavailableError

    monkeypatch.setattr(control_plane.ownership, "serve_details", lambda: {"applications": {}})
    monkeypatch.setattr(scratch, "POLL_S", 0.01)

    class Refusing:
        def __init__(self, refusals: int) -> None:
            self.refusals, self.asked = refusals, 0

        def delete(self, name: str) -> None:
            self.asked += 1
            if self.asked <= self.refusals:
                raise ControlPlaneUnavailableError("an earlier write to Serve still waits")

    backend = Refusing(refusals=2)
    assert scratch.delete(["bench-x"], backend, wait_s=10) == []
    assert backend.asked == 3
    never = Refusing(refusals=10**6)
    assert scratch.delete(["bench-x"], never, wait_s=0.2) == ["bench-x"]
    assert never.asked > 1
