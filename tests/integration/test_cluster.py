"""modelplane on a three-node Ray cluster (tests.cluster: a head and two worker nodes on
loopback): replicas spread over the workers, their latencies merged exactly by the Monitor,
autoscaling that follows load down to zero replicas, a full queue shed with 503 and
Retry-After, a two-worker DDP job across the workers that outlives losing one's node, and
a worker node lost under load.

The platform runs as on a cluster: `modelplane up` on the head (Serve's ingress on the head
only, since every node here shares one machine's ports), the control plane pinned to the
head, endpoint replicas on the workers (``--resource worker=…``) fetching their artifacts
from the control plane over HTTP. Every node shares this machine's two cores, so the
figures printed are for reading, not asserted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from control_plane.client import Client
from control_plane.errors import NotFoundError
from control_plane.schemas import ReplicaOut
from modelplane.settings import Settings
from serving.names import MONITOR_NAME, MONITOR_NAMESPACE, ROUTE_BOARD_NAME
from tests.cluster import WORKER_RESOURCE, LoopbackCluster
from tests.conftest import free_port
from tests.databases import PG_URL_VARIABLE, fresh_postgres_database
from tests.exact_latency import RELATIVE_ACCURACY, quantiles_ms
from tests.load import BackgroundLoad
from tests.onnx_models import (
    calibrate_slow,
    linear_classifier,
    linear_classifier_manifest,
    slow_classifier,
)
from tests.s3_server import S3Server
from tests.waiting import wait_for
from training.submission import TERMINAL_STATES

ON_WORKERS = {"resources": {WORKER_RESOURCE: 0.01}, "num_cpus": 0.1}
ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                   "data": [0.1, 0.2, 0.3, 0.4]}]}


@dataclass
class ClusterPlatform:
    cluster: LoopbackCluster
    env: dict[str, str]
    s3: S3Server

    @property
    def url(self) -> str:
        return self.env["MODELPLANE_URL"]

    def client(self) -> Client:
        settings = Settings.from_env(self.env)
        return Client(self.url, settings.resolved_token(), settings=settings)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "modelplane.cli", *args],
                              env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def cli_json(self, *args: str) -> Any:
        out = self.cli(*args, "--json").stdout
        try:
            return json.loads(out)
        except ValueError:
            raise AssertionError(f"`modelplane {' '.join(args)} --json` printed no JSON:\n"
                                 f"{out[:2000]!r}") from None

    def replicas(self, endpoint: str) -> list[ReplicaOut]:
        with self.client() as api:
            return [r for r in api.cluster().replicas if r.endpoint == endpoint]

    def running_on(self, endpoint: str) -> list[str]:
        """The node address of each running replica of ``endpoint``, sorted."""
        return sorted(r.node_address or "" for r in self.replicas(endpoint) if r.state == "RUNNING")


@pytest.fixture(scope="module")
def platform() -> Iterator[ClusterPlatform]:
    """The platform as on a cluster: artifacts in an S3-protocol store, and the store on
    PostgreSQL where one is given (CI), else SQLite on the head."""
    with contextlib.ExitStack() as stack:
        s3 = S3Server().start()
        stack.callback(s3.stop)
        store: dict[str, str] = {}
        if os.environ.get(PG_URL_VARIABLE):
            store["MODELPLANE_DB_URL"] = stack.enter_context(
                fresh_postgres_database())
        # Every node holds credentials for the bucket, as an instance profile would give
        # them: training jobs keep their checkpoints there. `up` hands them to the control
        # plane for the artifacts; replicas fetch artifacts from the control plane.
        # A stopping replica is drained for 3 s, not Serve's 30: nothing here sends load
        # through a scale-down, and scale to zero waits until no replica is left in any
        # state (the drain itself is tested on the session's Ray, tests/faults).
        # A lost node is declared dead after 3 failed health checks a second apart, not
        # Ray's 5 checks 3 s apart: a killed raylet refuses each check at once, and the
        # two tests that lose a node wait out the detection before anything recovers. A
        # live raylet still has Ray's 10 s to answer, however busy the two cores are.
        cluster = LoopbackCluster(num_cpus=2, workers=2, worker_cpus=2, extra_env={
            **s3.env, "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
            "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}).start()
        stack.callback(cluster.stop)
        # 0.0.0.0: replicas on the workers (127.0.0.2-3) listen where the head's ingress
        # reaches them, as on a cluster of machines.
        env = cluster.up_platform(MODELPLANE_GRPC_PORT=str(free_port()),
                                  MODELPLANE_PROXY_LOCATION="HeadOnly",
                                  MODELPLANE_HTTP_HOST="0.0.0.0",
                                  MODELPLANE_ARTIFACT_URI=s3.uri("artifacts"), **store, **s3.env)
        yield ClusterPlatform(cluster, env, s3)


@pytest.fixture(scope="module")
def models(platform: ClusterPlatform) -> dict[str, str]:
    """A fast model and one taking about 30 ms a request, registered once."""
    with platform.client() as api:
        api.register_version("fast", linear_classifier(seed=3), linear_classifier_manifest())
        api.register_version("slow", slow_classifier(calibrate_slow(30.0)),
                             linear_classifier_manifest())
    return {"fast": "fast:1", "slow": "slow:1"}


def _worker_addresses(platform: ClusterPlatform) -> set[str]:
    return {node.address for node in platform.cluster.alive}


def test_replicas_spread_over_the_workers_and_the_monitor_merges_them_exactly(
        platform: ClusterPlatform, models: dict[str, str]) -> None:
    # As an operator would: the CLI's --spread and --resource.
    platform.cli("deploy", "spread", models["fast"], "--replicas", "2", "--spread",
                 "--resource", f"{WORKER_RESOURCE}=0.01", "--num-cpus", "0.1")
    on = wait_for(lambda: len(found := platform.running_on("spread")) == 2 and found,
                  timeout=120, what="both spread replicas running")
    assert set(on) == _worker_addresses(platform), on  # one on each worker

    started = platform.cluster.python("""
        from tests.exact_latency import endpoint_replicas, replica_calls
        start_logging, _ = replica_calls()
        print(json.dumps(ray.get([r.__ray_call__.remote(start_logging)
                                  for r in endpoint_replicas("spread")])))
    """)
    assert len(set(started)) == 2
    # Ready means the head's ingress reaches a worker's replica on the replica's own listener
    # (the lean ingress: no Serve proxy in between, which would name itself in `server`).
    wait_for(lambda: httpx.get(f"{platform.url}/v2/models/spread/ready", timeout=30).status_code
             == 200, timeout=60, what="the endpoint to answer ready")
    for _ in range(4):
        direct = httpx.post(f"{platform.url}/v2/models/spread/infer", json=ROW, timeout=30)
        assert direct.status_code == 200 and "server" not in direct.headers, direct.headers
    requests, failures = 400, []

    def send(count: int) -> None:
        with httpx.Client(timeout=30) as http:
            for _ in range(count):
                answer = http.post(f"{platform.url}/v2/models/spread/infer", json=ROW)
                if answer.status_code != 200:
                    failures.append(answer.text)

    senders = [threading.Thread(target=send, args=(requests // 4,)) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert failures == []

    def monitor() -> dict[str, Any]:
        with platform.client() as api:
            return api.endpoint_stats("spread", window_s=300)["versions"].get("1", {})

    seen = wait_for(lambda: (s := monitor()).get("latency_count", 0) >= requests + 4 and s,
                    timeout=30, what="the Monitor to hold every request")
    per_replica = platform.cluster.python("""
        from tests.exact_latency import endpoint_replicas, replica_calls
        _, logged = replica_calls()
        print(json.dumps(ray.get([r.__ray_call__.remote(logged)
                                  for r in endpoint_replicas("spread")])))
    """)
    assert all(per_replica), [len(v) for v in per_replica]  # both nodes' replicas served
    exact = quantiles_ms(np.concatenate([np.asarray(v) for v in per_replica]))
    assert sum(map(len, per_replica)) == requests + 4 == seen["latency_count"], seen
    reported = np.array([seen["p50_ms"], seen["p95_ms"], seen["p99_ms"]])
    print(f"\nexact p50/p95/p99 ms {exact.round(3).tolist()}, merged by the Monitor "
          f"{reported.round(3).tolist()}, per node {[len(v) for v in per_replica]}")
    assert np.all(np.abs(reported - exact) <= RELATIVE_ACCURACY * exact + 1e-9), (reported, exact)


def test_artifacts_live_in_the_object_store_and_a_changed_one_is_caught(
        platform: ClusterPlatform, models: dict[str, str]) -> None:
    with platform.client() as api:
        digests = {api.resolve(ref).artifact_digest for ref in models.values()}
        victim = api.register_version("victim", linear_classifier(seed=9),
                                      linear_classifier_manifest()).artifact_digest
    keys = platform.s3.keys("artifacts/")
    assert {f"artifacts/sha256/{d[:2]}/{d}" for d in digests | {victim}} <= set(keys), keys
    assert not [key for key in keys if key.startswith("artifacts/tmp/")]  # nothing half-written
    # The worker replicas of the spread test loaded their model from there, through the
    # control plane. Bit rot in the bucket (same size, other bytes) is found by the
    # store's check and by anyone downloading it, never passed off as the artifact.
    key = f"artifacts/sha256/{victim[:2]}/{victim}"
    bucket = platform.s3.client()
    original = bucket.get_object(Bucket=platform.s3.bucket, Key=key)["Body"].read()
    bucket.put_object(Bucket=platform.s3.bucket, Key=key,
                      Body=bytes(b ^ 0xFF for b in original[:64]) + original[64:])
    admin = {"authorization": f"Bearer {Settings.from_env(platform.env).resolved_token()}"}
    report = httpx.get(f"{platform.url}/api/integrity", params={"verify": "true"},
                       headers=admin, timeout=60).json()
    corrupt = [p for p in report["problems"] if p["kind"] == "artifact_corrupt"]
    assert [p["subject"] for p in corrupt] == ["victim:1"], report
    received, failed = b"", None
    try:
        with httpx.stream("GET", f"{platform.url}/api/artifacts/{victim}", timeout=30) as answer:
            assert answer.headers["x-artifact-digest"] == victim
            for chunk in answer.iter_bytes():
                received += chunk
    except httpx.HTTPError as error:  # the server cuts the stream off when it sees the hash
        failed = error
    # The client checks what it got against the digest it asked for (as replicas do).
    assert failed is not None or hashlib.sha256(received).hexdigest() != victim


def test_autoscaling_adds_replicas_under_load_and_removes_them_after(
        platform: ClusterPlatform, models: dict[str, str]) -> None:
    with platform.client() as api:
        api.deploy("elastic", models["slow"], scaling={
            **ON_WORKERS, "autoscaling": {"min_replicas": 1, "max_replicas": 3,
                                          "target_ongoing_requests": 1,
                                          "upscale_delay_s": 1, "downscale_delay_s": 3,
                                          "look_back_period_s": 5}})
    wait_for(lambda: len(platform.running_on("elastic")) == 1, timeout=120,
             what="elastic's first replica")
    with BackgroundLoad(platform.url, "elastic", workers=6) as load:
        started = time.monotonic()
        wait_for(lambda: len(platform.running_on("elastic")) == 3, timeout=90,
                 what="three replicas under six concurrent callers")
        scaled_up_s = time.monotonic() - started
    assert load.failures() == [], load.failures()[:3]
    stopped = time.monotonic()
    wait_for(lambda: len(platform.running_on("elastic")) == 1, timeout=90,
             what="back to one replica once the load stopped")
    # The replicas Serve stopped said goodbye with their last statistics: none is silent,
    # so a rollout is not held by a scale-down.
    with platform.client() as api:
        versions = api.endpoint_stats("elastic", window_s=300)["versions"]
    assert versions and all(v["replicas"]["silent"] == 0 for v in versions.values()), versions
    assert sum(v["requests"] for k, v in versions.items() if k != "0") >= len(load.answers)
    print(f"\nautoscaling 1 -> 3 replicas in {scaled_up_s:.1f}s under load "
          f"({len(load.answers)} answers, all 200), back to 1 in "
          f"{time.monotonic() - stopped:.1f}s after it stopped")


def test_scale_to_zero_answers_the_first_request_after_idle(
        platform: ClusterPlatform, models: dict[str, str]) -> None:
    with platform.client() as api:
        api.deploy("idle", models["fast"], scaling={
            **ON_WORKERS, "autoscaling": {"min_replicas": 0, "max_replicas": 1,
                                          "downscale_delay_s": 1}})
    wait_for(lambda: len(platform.running_on("idle")) == 1, timeout=120, what="idle's replica")
    # Zero: no replica in any state (a stopping one may still answer).
    wait_for(lambda: platform.replicas("idle") == [], timeout=120,
             what="idle to scale to zero replicas")
    started = time.monotonic()
    answer = httpx.post(f"{platform.url}/v2/models/idle/infer", json=ROW, timeout=120)
    cold_start_s = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "1"
    print(f"\nfirst request after scaling to zero answered in {cold_start_s:.1f}s (cold start)")


def test_an_isolated_router_reaches_its_version_on_the_link_across_nodes(
        platform: ClusterPlatform, models: dict[str, str]) -> None:
    import onnxruntime as ort

    with platform.client() as api:
        api.deploy("iso", models["fast"], placement="isolated", scaling=ON_WORKERS)
    wait_for(lambda: httpx.get(f"{platform.url}/v2/models/iso/ready", timeout=30).status_code
             == 200, timeout=180, what="the isolated endpoint to answer ready")
    session = ort.InferenceSession(linear_classifier(seed=3))
    expected = session.run(None, {"input": np.array([ROW["inputs"][0]["data"]], np.float32)})[0]

    def link_served() -> int:
        return int(platform.cluster.python("""
            import asyncio
            from ray import serve

            async def served():  # the cluster's Serve is throughput-optimized: handles need a loop
                handle = serve.get_deployment_handle("model-v1", app_name="endpoint-iso-v1")
                return await handle.link_served.remote()

            print(json.dumps(asyncio.run(served())))
        """))

    with httpx.Client(timeout=30) as http:
        # The router (on a worker) reaches the version's replica (on a worker) through the
        # head's ingress on the link, once HAProxy has the version's route.
        before = wait_for(lambda: http.post(f"{platform.url}/v2/models/iso/infer", json=ROW)
                          .status_code == 200 and (n := link_served()) > 0 and n,
                          timeout=60, what="the version to answer on its link")
        answers = [http.post(f"{platform.url}/v2/models/iso/infer", json=ROW) for _ in range(40)]
    assert [a.status_code for a in answers] == [200] * 40, answers[0].text
    for answer in answers:
        np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected.ravel(), rtol=1e-6)
    # gRPC takes the same fast path: the ingress posts each call to the router's own
    # listener, and the router reaches the version on its link.
    grpc_port = Settings.from_env(platform.env).grpc_port
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([ROW["inputs"][0]["data"]], np.float32))
    for _ in range(10):
        result = client.infer("iso", [tensor])
        np.testing.assert_allclose(result.as_numpy("probabilities").ravel(), expected.ravel(), rtol=1e-6)
    client.close()
    # One driver for both counts (each costs seconds on 2 cores): the 10 calls the gRPC
    # ingress linked, and all 50 answers, so the 40 HTTP ones too, served on the link
    # (none through Serve's handle).
    counted = platform.cluster.python("""
        import asyncio
        from ray import serve

        async def counts():
            linked = serve.get_deployment_handle("grpc", app_name="grpc-ingress").linked_calls.remote()
            served = serve.get_deployment_handle("model-v1", app_name="endpoint-iso-v1").link_served.remote()
            return [await linked, await served]

        print(json.dumps(asyncio.run(counts())))
    """)
    assert counted == [10, before + 50], (counted, before)
    # The link's route answers nobody without the cluster's secret.
    forged = httpx.post(f"{platform.url}/modelplane-link/iso/v1", content=b"MPL1\x00\x00", timeout=30)
    assert forged.status_code == 403 and forged.json()["code"] == "forbidden"
    with platform.client() as api:
        api.undeploy("iso")


def test_a_full_queue_is_shed_with_503_and_retry_after(
        platform: ClusterPlatform, models: dict[str, str]) -> None:
    with platform.client() as api:
        api.deploy("narrow", models["slow"], scaling={
            **ON_WORKERS, "replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 2})
    wait_for(lambda: len(platform.running_on("narrow")) == 1, timeout=120, what="narrow")
    callers, answers = 16, []
    gate = threading.Barrier(callers)

    def call() -> None:
        with httpx.Client(timeout=60) as http:
            gate.wait()
            try:
                answers.append(http.post(f"{platform.url}/v2/models/narrow/infer", json=ROW))
            except httpx.HTTPError as error:
                answers.append(error)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(a, httpx.Response) for a in answers), answers
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) == {200, 503} and statuses[200] >= 1, statuses
    sources: Counter[str] = Counter()
    for refused in (a for a in answers if a.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        if refused.headers.get("content-type", "").startswith("application/json"):
            body = refused.json()  # the replica's own answer (the lean ingress)
            assert body["code"] == "overloaded" and "max_queued_requests" in body["error"], body
            sources["replica"] += 1
        else:  # Serve's, where a request reached the replica through Serve's proxy
            assert "backpressure" in refused.text, refused.text
            sources["serve"] += 1
    # The endpoint goes on serving once the burst is gone.
    assert httpx.post(f"{platform.url}/v2/models/narrow/infer", json=ROW,
                      timeout=30).status_code == 200
    print(f"\n{callers} at once on one replica (1 running, 2 queued at most): {dict(statuses)}, "
          f"refused by {dict(sources)}")


def test_a_ddp_job_spans_the_workers_checkpoints_to_s3_and_outlives_a_lost_node(
        platform: ClusterPlatform, tmp_path) -> None:
    """Two DDP workers, one on each worker node (SPREAD, off the head by the `worker`
    label), checkpoint to the bucket; one's node is killed mid-run and the job finishes from
    the latest checkpoint on the node left (max_failures). A new node then takes the lost
    one's place, as an autoscaler would, for the tests after."""
    bucket, epochs = f"s3://{platform.s3.bucket}/checkpoints", 16
    spec = {
        "experiment": {"name": "spanning"},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": [16]},
        "data": {"dataset": "breast_cancer", "seed": 0},
        # Killed right after its second checkpoint (found over HTTP, not by a Ray client
        # process), it has most of its 16 epochs left to resume.
        "hyperparameters": {"learning_rate": 0.003, "batch_size": 32, "epochs": epochs},
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5,
                      "custom_per_worker": {WORKER_RESOURCE: 0.01},
                      "placement_strategy": "SPREAD", "max_failures": 1,
                      "placement_timeout_s": 120},
        "checkpoint": {"every_n_epochs": 1, "keep": 2, "storage_path": bucket},
    }
    path = tmp_path / "spanning.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    submitted = platform.cli("train", "submit", str(path), "--address",
                             platform.cluster.dashboard).stdout
    job_id = submitted.split("submitted job ")[1].split()[0]

    def workers() -> list[dict[str, Any]]:
        """The job's Ray Train workers: id, state and node address."""
        where = platform.cluster.node_addresses()
        return [{"id": actor["actor_id"], "state": actor["state"], "node": where.get(actor["node_id"])}
                for actor in platform.cluster.state("actors", class_name="RayTrainWorker")]

    def logs() -> str:
        return platform.cli("train", "logs", job_id, "--address", platform.cluster.dashboard).stdout

    with platform.client() as api:
        def checkpointed() -> int:
            runs = _runs(api, "spanning")
            return max((m.step for m in api.metric_history(runs[0].id, "checkpoint_epoch")),
                       default=0) if runs else 0

        try:
            wait_for(lambda: checkpointed() >= 2, timeout=180, interval=0.5,
                     what="the job's second checkpoint")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{logs()[-3000:]}") from None
        first = [w for w in workers() if w["state"] == "ALIVE"]
        assert sorted(w["node"] for w in first) == sorted(_worker_addresses(platform)), first
        lost = next(n for n in platform.cluster.alive if n.address == first[0]["node"])
        killed_after = checkpointed()
        platform.cluster.kill_node(lost)
        # Ray's job API in this process: a CLI process per poll took a core from the job.
        wait_for(lambda: platform.cluster.jobs.status(job_id) in TERMINAL_STATES,
                 timeout=300, interval=1,
                 what="the job to end after its node was lost")
        done = platform.cli_json("train", "status", job_id, "--address", platform.cluster.dashboard)
        assert done["status"] == "SUCCEEDED", f"{done}\n{logs()[-3000:]}"
        run = api.get_run(api.list_runs("spanning").items[0].id)
        steps = [m.step for m in api.metric_history(run.id, "val_loss")]
        version = api.resolve("spanning:1")
    assert run.status == "finished", run
    # Resumed, not restarted: every epoch logged, epoch 1 once; the epochs after the last
    # checkpoint before the loss were run (and logged) again.
    assert sorted(set(steps)) == list(range(1, epochs + 1)) and steps.count(1) == 1, steps
    assert 2 <= killed_after < epochs
    restarted = [w for w in workers() if w["id"] not in {f["id"] for f in first}]
    assert len(restarted) == 2 and {w["node"] for w in restarted} == {
        n.address for n in platform.cluster.alive}, restarted
    keys = platform.s3.keys("checkpoints/")
    assert any("/checkpoint_" in key for key in keys), keys[:10]
    assert version.version == 1 and version.status == "ready"
    print(f"\nDDP job over {sorted(w['node'] for w in first)}: node {lost.name} killed after "
          f"checkpoint {killed_after}; finished on {restarted[0]['node']}, epochs logged "
          f"{steps}; {len(keys)} checkpoint objects in the bucket")
    platform.cluster.add_worker()


def _runs(api: Client, experiment: str) -> list[Any]:
    try:
        return api.list_runs(experiment).items
    except NotFoundError:  # no run yet
        return []


def test_a_lost_worker_node_costs_only_its_requests_in_flight(
        platform: ClusterPlatform, models: dict[str, str]) -> None:
    """Last in the module: the cluster has one worker fewer afterwards."""
    with platform.client() as api:
        api.deploy("failover", models["fast"], scaling={**ON_WORKERS, "replicas": 2})
    wait_for(lambda: len(platform.running_on("failover")) == 2, timeout=120, what="failover")
    placed = set(platform.running_on("failover"))
    assert placed <= _worker_addresses(platform), placed
    # The Monitor and the route board live on the head: a lost worker took the Monitor's
    # figures, and which replicas it had heard from, with it.
    address = platform.cluster.node_addresses()
    placed_on = [address[actor["node_id"]] for name in (MONITOR_NAME, ROUTE_BOARD_NAME)
                 for actor in platform.cluster.state("actors", name=name, state="ALIVE")
                 if actor["ray_namespace"] == MONITOR_NAMESPACE]
    assert len(placed_on) == 2 and not set(placed_on) & _worker_addresses(platform), placed_on
    # Lose a node that runs one of them (Serve spreads them; if both share one, that one).
    lost = next(n for n in platform.cluster.alive if n.address in placed)
    survivor = next(n for n in platform.cluster.alive if n is not lost)

    with BackgroundLoad(platform.url, "failover", workers=3) as load:
        wait_for(lambda: len(load.answers) >= 50, timeout=60, what="load before the loss")
        platform.cluster.kill_node(lost)
        killed_at = time.monotonic()
        wait_for(lambda: platform.running_on("failover") == [survivor.address] * 2,
                 timeout=120, what="both replicas running on the surviving worker")
        recovered_at = time.monotonic()
        recovered = len(load.answers)
        wait_for(lambda: len(load.answers) >= recovered + 100, timeout=60,
                 what="load after recovery")
    failures = load.failures()
    after_recovery = load.failures(recovered)
    print(f"\nnode {lost.name} killed: {len(failures)} failed of {len(load.answers)} "
          f"({[f.error for f in failures][:3]}); replicas rescheduled in "
          f"{recovered_at - killed_at:.1f}s; {len(load.answers) - recovered} answers after")
    # Only requests in flight on the lost node may fail: at most one per load worker.
    assert len(failures) <= load.workers, [f.error for f in failures]
    assert after_recovery == []
    # The lost replica said no goodbye: the Monitor names it silent, so no rollout would
    # judge a window missing what it had in flight.
    with platform.client() as api:
        wait_for(lambda: any(stats["replicas"]["silent"] >= 1 for version, stats in
                             api.endpoint_stats("failover", window_s=300)["versions"].items()
                             if version != "0"),
                 timeout=30, what="the lost replica reported silent")

    def nodes_once_lost() -> dict[str, Any] | None:
        # Ray declares a node dead after its health checks fail (seconds after the kill).
        nodes = {n["address"]: n for n in platform.cli_json("status")["cluster"]["nodes"]}
        return nodes if nodes[lost.address]["alive"] is False else None

    nodes = wait_for(nodes_once_lost, timeout=90, interval=1, what="status to show the lost node")
    assert nodes[survivor.address]["alive"] is True
    on_survivor = [r for r in platform.cli_json("status")["cluster"]["replicas"]
                   if r["endpoint"] == "failover" and r["state"] == "RUNNING"]
    assert [r["node_address"] for r in on_survivor] == [survivor.address] * 2, on_survivor
    text = platform.cli("status").stdout
    lost_nodes = sum(node.lost for node in platform.cluster.nodes)  # the training test's too
    assert "LOST" in text and f"{lost_nodes} lost" in text, text
