"""Endpoints on a real local Ray + Serve, driven through the control plane and tritonclient."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
from scipy import stats

from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def iris(platform: Platform) -> Platform:
    """Model `serve-iris` with three versions; endpoint `iris` serving v1."""
    with platform.client() as client:
        for seed in (1, 2, 3):
            client.register_version("serve-iris", linear_classifier(seed=seed),
                                    linear_classifier_manifest())
        client.deploy("iris", "serve-iris:1")
    platform.wait_endpoint("iris", {1})
    return platform


def triton(platform: Platform) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(f"127.0.0.1:{platform.port}", concurrency=8)


def rows(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_round_trip(iris: Platform, binary: bool) -> None:
    from onnxruntime import InferenceSession

    client = triton(iris)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris")
    metadata = client.get_model_metadata("iris")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    data = rows(5)
    tensor = tc.InferInput("input", [5, 4], "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    wanted = [tc.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("iris", [tensor], outputs=wanted, request_id="req-7")
    expected = InferenceSession(linear_classifier(seed=1)).run(None, {"input": data})[0]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6)
    response = result.get_response()
    assert response["model_version"] == "1" and response["id"] == "req-7"


def test_bad_requests_get_4xx_and_the_server_keeps_serving(iris: Platform) -> None:
    url = f"{iris.url}/v2/models/iris/infer"
    good = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
    bad_bodies = [
        b"{not json",
        b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2]}]}',
        b'{"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
        b'{"inputs": [{"name": "other", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
        b'{"inputs": []}',
    ]
    with httpx.Client(timeout=30) as http:
        before = http.post(url, json=good).headers["x-modelplane-replica"]
        statuses = Counter()
        for index in range(1000):
            body = bad_bodies[index % len(bad_bodies)]
            response = http.post(url, content=body, headers={"content-type": "application/json"})
            statuses[response.status_code] += 1
            assert 400 <= response.status_code < 500, response.text
            assert response.json()["error"]
        lying = http.post(url, content=b'{"inputs":[]}', headers={"inference-header-content-length": "999"})
        assert lying.status_code == 400
        unknown = http.post(f"{iris.url}/v2/models/ghost/infer", json=good)
        assert unknown.status_code == 404 and "ghost" in unknown.json()["error"]
        after = http.post(url, json=good)
        assert after.status_code == 200
        assert after.headers["x-modelplane-replica"] == before, "a replica restarted"
    assert sum(statuses.values()) == 1000


def _versions_seen(platform: Platform, n: int, *, key: str | None = None) -> Counter:
    payload = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}
    headers = {"x-modelplane-key": key} if key else {}

    # One client for all threads (httpx's is thread-safe): building one per request loads
    # the CA bundle each time, tens of ms of CPU. Versions are drawn per request, not per
    # connection, so reused connections see the same split.
    with httpx.Client(timeout=30) as http:
        def one(_: int) -> str:
            response = http.post(f"{platform.url}/v2/models/iris/infer", json=payload, headers=headers)
            assert response.status_code == 200, response.text
            return response.json()["model_version"]

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            return Counter(pool.map(one, range(n)))


def test_weighted_split_stickiness_and_live_changes(iris: Platform) -> None:
    with iris.client() as client:
        client.set_traffic("iris", {1: 90, 2: 10})
    iris.wait_endpoint("iris", {1, 2})
    iris.wait_weights("iris", {1: 90, 2: 10})
    seen = _versions_seen(iris, 2000)
    assert set(seen) == {"1", "2"}
    assert stats.binomtest(seen["2"], 2000, 0.10).pvalue > 1e-4, seen
    for key in ("alice", "bob"):
        assert len(_versions_seen(iris, 30, key=key)) == 1


def test_weight_changes_under_load_lose_no_request(iris: Platform) -> None:
    with iris.client() as client:
        client.set_traffic("iris", {1: 50, 2: 50})
    iris.wait_weights("iris", {1: 50, 2: 50})
    failures: list[str] = []
    answered = Counter()
    replicas: list[set[str]] = [set()]
    stop = threading.Event()

    def load() -> None:
        payload = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{iris.url}/v2/models/iris/infer", json=payload)
                    if response.status_code != 200:
                        failures.append(response.text)
                    else:
                        answered[response.json()["model_version"]] += 1
                        replicas[-1].add(response.headers["x-modelplane-replica"])
                except Exception as error:  # a transport error or an odd body is a failure too
                    failures.append(repr(error))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    # Enough answers before the changes that every replica has answered some.
    wait_for(lambda: sum(answered.values()) >= 200 or failures, 60, "200 answers")
    replicas.append(set())
    try:
        with iris.client() as client:
            for weights in ({1: 10, 2: 90}, {1: 100, 2: 0}, {1: 0, 2: 100}, {1: 50, 2: 50}):
                client.set_traffic("iris", weights)
                iris.wait_weights("iris", weights)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert sum(answered.values()) > 50
    assert replicas[1] and replicas[1] <= replicas[0], f"a replica restarted: {replicas}"


def test_route_changes_skip_serve_and_reach_a_restarted_replica(iris: Platform) -> None:
    import ray

    from control_plane.ownership import serve_details

    with iris.client() as client:
        client.set_traffic("iris", {1: 50, 2: 50})  # both versions loaded (through Serve)
        iris.wait_weights("iris", {1: 50, 2: 50})
        client.set_traffic("iris", {1: 30, 2: 70})  # then the routes alone
    iris.wait_weights("iris", {1: 30, 2: 70})
    deployment = serve_details()["applications"]["endpoint-iris"]["deployments"]["endpoint"]
    in_serve = deployment["deployment_config"]["user_config"]["routes"]["weights"]
    # The route board delivered the table: Serve never reconfigured (so never drained) a replica.
    assert {int(k): v for k, v in in_serve.items()} != {1: 30.0, 2: 70.0}
    killed = {r["replica_id"] for r in deployment["replicas"]}
    for replica in deployment["replicas"]:
        ray.kill(ray.get_actor(replica["actor_name"], namespace="serve"), no_restart=True)
    # Serve starts a replica from its own (older) table; the replica takes the board's newer one.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{iris.url}/v2/models/iris", timeout=5)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200 and (
                response.headers["x-modelplane-replica"] not in killed):
            assert response.json()["parameters"]["weights"] == {"1": 30.0, "2": 70.0}
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no new replica answered within 120 s")
    # The killed replicas said no goodbye: the Monitor names them silent, for both versions
    # they held, so that no rollout judges a window that lost what they had in flight.
    with iris.client() as client:
        def silent() -> bool:
            versions = client.endpoint_stats("iris")["versions"]
            return all(versions.get(v, {}).get("replicas", {}).get("silent", 0) >= len(killed)
                       for v in ("1", "2"))

        wait_for(silent, 60, "the killed replicas reported silent")


@pytest.mark.parametrize("restarts", [True, False])
def test_routes_still_arrive_after_the_route_board_dies(iris: Platform, restarts: bool) -> None:
    import ray

    from serving.route_board import GcsPostings, PostedRoutes, _kept, get_route_board

    def kept() -> PostedRoutes | None:  # the board's posting of 45/55 for iris, as Ray's store keeps it
        tables = [posting for _, endpoint, posting in _kept(GcsPostings())
                  if endpoint == "iris" and '"1":45.0' in posting.routes.replace(" ", "")]
        return max(tables, key=lambda posting: posting.generation, default=None)

    with iris.client() as client:  # route changes of a running endpoint go to the board
        for weights in ({1: 50, 2: 50}, {1: 45, 2: 55}):
            client.set_traffic("iris", weights)
            iris.wait_weights("iris", weights)
    posted = wait_for(kept, 30, "the board to keep its posting in Ray's store")
    ray.kill(get_route_board(), no_restart=not restarts)  # restarted, or gone for good
    if restarts:  # with the postings it had: a replica starting now reads the 45/55 table
        def reread() -> PostedRoutes | None:
            try:
                return ray.get(get_route_board().read.remote("iris", posted.incarnation),
                               timeout=10)
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError,
                    ray.exceptions.GetTimeoutError):
                return None  # still restarting (a new worker process, on a busy host)

        assert wait_for(reread, 60, "the restarted board to answer") == posted
    weights = {1: 40, 2: 60} if restarts else {1: 60, 2: 40}
    with iris.client() as client:
        client.set_traffic("iris", weights)
    iris.wait_weights("iris", weights)
    assert get_route_board() is not None  # made again where it was gone


def test_a_store_that_lost_its_last_changes_is_what_the_replicas_serve(iris: Platform) -> None:
    """A store restored from a backup (or a PostgreSQL failover that lost its last commits)
    counts fewer changes than the replicas hold: the table it has is served all the same."""
    from sqlalchemy import select, update

    from control_plane.leadership import request_apply
    from control_plane.store import Database
    from control_plane.store.models import EndpointRouteRow, EndpointRow, ModelVersionRow

    db = Database(iris.settings.db_url)
    try:
        with iris.client() as client:
            client.set_traffic("iris", {1: 80, 2: 20})
            iris.wait_weights("iris", {1: 80, 2: 20})
            with db.session(readonly=True) as session:
                backup = session.scalar(select(EndpointRow.generation).where(EndpointRow.name == "iris"))
            for weights in ({1: 30, 2: 70}, {1: 20, 2: 80}):  # then lost
                client.set_traffic("iris", weights)
                iris.wait_weights("iris", weights)
        with db.session() as session:  # the store as the backup had it
            endpoint = session.scalar(select(EndpointRow).where(EndpointRow.name == "iris"))
            for route, version in session.execute(
                    select(EndpointRouteRow, ModelVersionRow.version)
                    .join(ModelVersionRow, ModelVersionRow.id == EndpointRouteRow.version_id)
                    .where(EndpointRouteRow.endpoint_id == endpoint.id)).all():
                route.weight = {1: 80.0, 2: 20.0}.get(version, 0.0)
            session.execute(update(EndpointRow).where(EndpointRow.id == endpoint.id)
                            .values(generation=backup))
        request_apply(db, "iris")
        iris.wait_weights("iris", {1: 80, 2: 20})
        with db.session(readonly=True) as session:
            assert session.scalar(select(EndpointRow.generation).where(
                EndpointRow.name == "iris")) > backup + 2  # moved past what the replicas held
    finally:
        db.dispose()


def test_shadows_never_touch_the_primary(iris: Platform) -> None:
    with iris.client() as client:
        client.set_traffic("iris", {1: 100}, shadows=[3])
    iris.wait_endpoint("iris", {1, 3})
    seen = _versions_seen(iris, 200)
    assert seen == Counter({"1": 200})

    def shipped() -> dict | None:  # replicas ship statistics about once a second
        with iris.client() as client:
            versions = client.endpoint_stats("iris", window_s=60)["versions"]
        enough = versions.get("3", {}).get("shadow", {}).get("compared", 0) >= 150 and \
            versions.get("1", {}).get("requests", 0) >= 200
        return versions if enough else None

    stats_now = wait_for(shipped, 30, "the shadow's comparisons in the endpoint's statistics")
    shadow = stats_now["3"]["shadow"]
    assert shadow["compared"] >= 150
    assert 0.0 <= shadow["agreement"] <= 1.0
    primary = stats_now["1"]
    assert primary["requests"] >= 200 and primary["p95_ms"] > 0


def test_metrics_parse_and_name_every_version(iris: Platform) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    # Traffic to every version the endpoint serves now (earlier tests changed which):
    # the Monitor names exactly those, having forgotten the ones it stopped serving.
    with iris.client() as client:
        serving = {str(route.version) for route in client.get_endpoint("iris").routes}
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.1] * 4}]}
    for version in serving:
        for _ in range(5):
            response = httpx.post(f"{iris.url}/v2/models/iris/versions/{version}/infer", json=body,
                                  timeout=30)
            assert response.status_code == 200, response.text

    def named() -> tuple[dict, set[str]] | None:  # once the replicas have shipped them
        text = httpx.get(f"{iris.url}/api/metrics", timeout=30).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        requests = families.get("modelplane_requests")
        versions = {s.labels["version"] for s in requests.samples
                    if s.labels.get("endpoint") == "iris"} if requests else set()
        return (families, versions) if serving and serving <= versions else None

    families, versions = wait_for(named, 30, f"versions {serving} in /api/metrics")
    assert {"modelplane_requests", "modelplane_request_latency_seconds",
            "modelplane_traffic_weight", "modelplane_replicas"} <= set(families)
    assert serving and serving <= versions, (serving, versions)


def test_isolated_placement_batches_and_splits_answers_correctly(platform: Platform) -> None:
    from onnxruntime import InferenceSession
    from ray import serve

    with platform.client() as client:
        client.register_version("iso-model", linear_classifier(seed=8), linear_classifier_manifest())
        client.deploy("iso", "iso-model:1", placement="isolated",
                      scaling={"replicas": 1, "num_cpus": 0.25},
                      batching={"max_batch_size": 8, "batch_wait_timeout_ms": 20})
    platform.wait_endpoint("iso", {1})
    assert {"endpoint-iso", "endpoint-iso-v1"} <= set(serve.status().applications)
    session = InferenceSession(linear_classifier(seed=8))

    def one(index: int) -> tuple[np.ndarray, np.ndarray]:
        data = rows(1 + index % 3, seed=index)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(data.shape),
                            "data": data.ravel().tolist()}]}
        response = httpx.post(f"{platform.url}/v2/models/iso/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        return np.array(output["data"], dtype=np.float32).reshape(output["shape"]), data

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(48)))
    for got, data in answers:
        np.testing.assert_allclose(got, session.run(None, {"input": data})[0], rtol=1e-5, atol=1e-6)
