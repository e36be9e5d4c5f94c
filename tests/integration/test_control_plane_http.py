"""The control plane over real HTTP: a real server process, the real client, real files."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.client import Client
from control_plane.errors import (
    AuthenticationError,
    ConflictError,
    InvalidArtifactError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from tests.lossy_proxy import LossyProxy
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.servers import ControlPlaneProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.no_ray


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    home = tmp_path_factory.mktemp("cp") / "home"
    process = ControlPlaneProcess(home, extra_env={"MODELPLANE_MAX_ARTIFACT_MB": "4"}).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def admin(server: ControlPlaneProcess) -> Iterator[Client]:
    with Client(server.url, server.admin_token) as client:
        yield client


def test_register_resolve_and_download(admin: Client, tmp_path: Path) -> None:
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(linear_classifier(seed=11))
    version = admin.register_version("http-iris", model_file, linear_classifier_manifest())
    assert version.version == 1 and version.created_by == "admin"
    admin.set_alias("http-iris", "champion", 1)
    assert admin.resolve("http-iris@champion").artifact_digest == version.artifact_digest
    target = admin.download_artifact(version.artifact_digest, tmp_path / "copy.onnx")
    assert target.read_bytes() == model_file.read_bytes()


def test_errors_arrive_as_typed_exceptions_with_messages(admin: Client, server: ControlPlaneProcess) -> None:
    with pytest.raises(NotFoundError, match="no model named 'ghost'"):
        admin.get_model("ghost")
    with pytest.raises(InvalidArtifactError, match="ONNX Runtime can load"):
        admin.register_version("broken", b"not onnx at all", linear_classifier_manifest())
    with pytest.raises(NotFoundError):
        admin.get_model("broken")  # nothing was written
    with pytest.raises(PayloadTooLargeError, match="4 MiB limit"):
        admin.upload_artifact(os.urandom(5 * 1024 * 1024))
    with pytest.raises(InvalidInputError, match="limit: Input should be less than or equal to 500"):
        admin._request("GET", "/models", params={"limit": 1000})
    with Client(server.url, "mp_wrong") as stranger, pytest.raises(AuthenticationError, match="not known"):
        stranger.create_model("nope")
    body = httpx.post(f"{server.url}/api/models", json={"name": "anon"}).json()
    assert body["code"] == "unauthenticated" and body["request_id"]
    assert "Traceback" not in str(body)


def test_an_answer_names_one_request_id_in_its_header_body_and_log(
        server: ControlPlaneProcess) -> None:
    """The server (``modelplane api``: the API mounted under ``/api``) gave an error's
    body and its log line one request id and the answer's header another, so the id a
    user quoted was not in the log."""
    for headers in ({}, {"x-request-id": "support-ticket-17"}):
        answer = httpx.get(f"{server.url}/api/models/no-such-model", headers=headers,
                           timeout=30)
        assert answer.status_code == 404
        sent = headers.get("x-request-id")
        assert answer.json()["request_id"] == answer.headers["x-request-id"] == (
            sent or answer.headers["x-request-id"])
        assert answer.headers.get_list("x-request-id") == [answer.headers["x-request-id"]]


def test_roles_and_self_approval_over_http(admin: Client, server: ControlPlaneProcess) -> None:
    deployer_secret = admin.create_token("dana", "deployer").token
    approver_secret = admin.create_token("abe", "approver").token
    reader_secret = admin.create_token("rita", "reader").token
    with Client(server.url, deployer_secret) as dana, Client(server.url, approver_secret) as abe:
        dana.create_model("gated", require_approval_for_production=True)
        dana.register_version("gated", linear_classifier(seed=3), linear_classifier_manifest())
        dana.transition_stage("gated", 1, "staging")
        with pytest.raises(PermissionDeniedError, match="requires an approval"):
            dana.transition_stage("gated", 1, "production")
        with pytest.raises(PermissionDeniedError, match="needs approver"):
            dana.approve("gated", 1)
        abe.approve("gated", 1, comment="reviewed")
        assert dana.transition_stage("gated", 1, "production").stage.value == "production"
        assert [a.approver for a in abe.list_approvals("gated", 1)] == ["abe"]
    with Client(server.url, reader_secret) as rita:
        assert rita.get_model("gated").name == "gated"
        with pytest.raises(PermissionDeniedError):
            rita.create_model("forbidden")
    admin.revoke_token("rita")
    with Client(server.url, reader_secret) as rita, pytest.raises(AuthenticationError, match="revoked"):
        rita.whoami()


def test_tracking_over_http(admin: Client) -> None:
    run = admin.start_run("http-exp", name="baseline", params={"lr": 0.01})
    for epoch in range(3):
        admin.log_metrics(run.id, {"loss": 1.0 / (epoch + 1), "accuracy": 0.5 + epoch / 10}, step=epoch)
    admin.log_artifact(run.id, "notes.txt", b"hello")
    admin.end_run(run.id)
    fetched = admin.get_run(run.id)
    assert fetched.status.value == "finished"
    assert fetched.latest_metrics == {"loss": pytest.approx(1 / 3), "accuracy": pytest.approx(0.7)}
    assert fetched.environment["python_version"]
    assert [m.step for m in admin.metric_history(run.id, "loss")] == [0, 1, 2]
    other = admin.start_run("http-exp", params={"lr": 0.1})
    comparison = admin.compare_runs([run.id, other.id])
    assert comparison.params["lr"] == {run.id: 0.01, other.id: 0.1}


def test_where_a_job_ran_is_a_tokens_to_read(admin: Client, server: ControlPlaneProcess) -> None:
    """Host names, the Ray cluster's address and process ids, as /cluster keeps them."""
    from control_plane.schemas import PROCESS_TAG

    run = admin.start_run("where-exp", tags={PROCESS_TAG: "node-7:4026531836.ab:4242:cafe"},
                          environment={"python_version": "3.11", "ray_cluster": {
                              "address": "10.0.0.7:6379", "head": "node-7", "session": "s1"}})
    anonymous = httpx.get(f"{server.url}/api/runs/{run.id}", timeout=30).json()
    assert PROCESS_TAG not in anonymous["tags"] and "ray_cluster" not in anonymous["environment"]
    assert anonymous["environment"]["python_version"] == "3.11"
    listed = httpx.get(f"{server.url}/api/experiments/where-exp/runs", timeout=30).json()
    assert "ray_cluster" not in listed["items"][0]["environment"]
    assert admin.get_run(run.id).environment["ray_cluster"]["head"] == "node-7"
    # Nor through the lineage of a version the run produced.
    admin.register_version("where-iris", linear_classifier(seed=5), linear_classifier_manifest(
        lineage={"run_id": run.id}))
    lineage = httpx.get(f"{server.url}/api/models/where-iris/versions/1/lineage", timeout=30)
    assert lineage.status_code == 200, lineage.text
    assert lineage.json()["run"]["id"] == run.id
    assert PROCESS_TAG not in lineage.json()["run"]["tags"]
    assert "ray_cluster" not in lineage.json()["run"]["environment"]
    assert httpx.get(f"{server.url}/api/leadership", timeout=30).status_code == 401
    assert admin.leadership() is not None  # a token reads it


def test_pagination(admin: Client) -> None:
    for index in range(5):
        admin.create_model(f"page-{index}")
    first = admin.list_models(limit=2, offset=0)
    second = admin.list_models(limit=2, offset=2)
    assert first.total == second.total >= 5
    assert len(first.items) == len(second.items) == 2
    assert {m.name for m in first.items}.isdisjoint(m.name for m in second.items)


def test_concurrent_registrations_are_gapless(tmp_path: Path) -> None:
    """8 clients across two server processes sharing one SQLite file: versions 1..N."""
    home = tmp_path / "home"
    first = ControlPlaneProcess(home).start()
    second = ControlPlaneProcess(home).start()
    try:
        token = first.admin_token
        payloads = [linear_classifier(seed=100 + i) for i in range(24)]

        def register(index: int) -> int:
            url = (first if index % 2 else second).url
            with Client(url, token) as client:
                return client.register_version(
                    "race", payloads[index], linear_classifier_manifest()
                ).version

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            versions = sorted(pool.map(register, range(len(payloads))))
        assert versions == list(range(1, len(payloads) + 1))
        with Client(first.url, token) as client:
            listed = client.list_versions("race", limit=100)
            assert sorted(v.version for v in listed.items) == versions
            digests = {v.artifact_digest for v in listed.items}
            assert digests == {hashlib.sha256(p).hexdigest() for p in payloads}
    finally:
        first.stop()
        second.stop()


def test_sigkill_during_upload_leaves_no_partial_artifact(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ControlPlaneProcess(home).start()
    token = server.admin_token
    payload = os.urandom(3 * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    sent = 0
    artifacts = home / "artifacts"

    def slow_body() -> Iterator[bytes]:
        nonlocal sent
        for start in range(0, len(payload), 256 * 1024):
            if start == 1024 * 1024:
                # Once it writes (on a loaded host the socket's buffers may hold the first
                # megabyte before the server has read any), the server dies with a third
                # of the upload sent.
                wait_for(lambda: any((artifacts / "tmp").glob("*.part")), 15,
                         "the server to start writing the upload")
                server.kill()
            sent += 1
            yield payload[start : start + 256 * 1024]
            time.sleep(0.02)

    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"{server.url}/api/artifacts",
            content=slow_body(),
            headers={"authorization": f"Bearer {token}", "x-artifact-digest": digest},
            timeout=10,
        )
    assert not (artifacts / "sha256" / digest[:2] / digest).exists()
    leftovers = list((artifacts / "tmp").iterdir())
    assert leftovers, "the killed server should have left its partial upload behind"

    restarted = ControlPlaneProcess(home).start()
    try:
        assert list((artifacts / "tmp").iterdir()) == []
        with Client(restarted.url, token) as client:
            assert client.list_models().total == 0
            assert client.upload_artifact(payload).digest == digest
            assert (artifacts / "sha256" / digest[:2] / digest).read_bytes() == payload
    finally:
        restarted.stop()


def test_integrity_check_over_rest_is_for_admins(admin: Client, server: ControlPlaneProcess,
                                                 tmp_path: Path) -> None:
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(linear_classifier(seed=23))
    admin.register_version("integrity-iris", model_file, linear_classifier_manifest())
    url = f"{server.url}/api/integrity"
    answer = httpx.get(url, params={"verify": "true"},
                       headers={"authorization": f"Bearer {server.admin_token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["ok"] is True and report["problems"] == []
    assert report["artifacts_checked"] >= 1
    assert httpx.get(url, timeout=10).status_code == 401
    reader = admin.create_token("integrity-reader", role="reader")
    refused = httpx.get(url, headers={"authorization": f"Bearer {reader.token}"}, timeout=10)
    assert refused.status_code == 403 and "admin" in refused.text


def test_a_jobs_registration_whose_answer_was_lost_registers_one_version(
        admin: Client, server: ControlPlaneProcess) -> None:
    """The registry commits a job's version and the answer never reaches the job (the
    connection drops, a proxy restarts): the job asks again, as it must after hours of
    training, and gets the version it registered, not a second one."""
    from types import SimpleNamespace

    from training.registration import register

    proxy = LossyProxy(server.url, method="POST", path=r"/api/models/[^/]+/versions")
    spec = SimpleNamespace(model_name="lost-answer", experiment=SimpleNamespace(name="e"),
                           model=SimpleNamespace(architecture="mlp"),
                           registration=SimpleNamespace(alias="", description="once"))
    try:
        with Client(proxy.url, server.admin_token) as job:
            version = register(job, spec, linear_classifier(seed=8),  # type: ignore[arg-type]
                               linear_classifier_manifest())
    finally:
        proxy.close()
    registrations = [status for method, path, status in proxy.forwarded
                     if method == "POST" and path.endswith("/versions")]
    assert proxy.lost == 1 and registrations == [201, 201]  # committed twice over the wire
    assert version.version == 1 and admin.get_model("lost-answer").latest_version == 1


# Writes asked again act once: a write sent with an Idempotency-Key, whose answer was lost
# on the way back (a proxy reloading, a dropped connection), is answered again from what
# the first call did.

@pytest.fixture
def raw(server: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/api", timeout=60, headers={
            "authorization": f"Bearer {server.admin_token}"}) as client:
        yield client


def _losing(server: ControlPlaneProcess, method: str, path: str) -> LossyProxy:
    return LossyProxy(server.url, method=method, path=path, losses=1)


def test_a_write_whose_answer_was_lost_acts_once(server: ControlPlaneProcess,
                                                 admin: Client) -> None:
    admin.create_experiment("lost-answers")
    proxy = _losing(server, "POST", "/api/runs")
    try:
        with Client(proxy.url, server.admin_token) as client:
            run = client.start_run("lost-answers", name="once", capture_environment=False)
    finally:
        proxy.close()
    # The first answer was lost after the run was made; the client sent the call again
    # with its key and got the first call's answer, not a second run.
    assert proxy.lost == 1
    assert [status for _, path, status in proxy.forwarded if path == "/api/runs"] == [201, 201]
    first, again = (a for a in proxy.answers if a.request.url.path == "/api/runs")
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert first.request.headers["idempotency-key"] == again.request.headers["idempotency-key"]
    runs = admin.list_runs("lost-answers").items
    assert [r.id for r in runs] == [run.id]


def test_a_key_names_one_request_of_one_caller(server: ControlPlaneProcess, admin: Client,
                                               raw: httpx.Client) -> None:
    key = uuid.uuid4().hex
    made = raw.post("/experiments", json={"name": "keyed-a"}, headers={"idempotency-key": key})
    assert made.status_code == 201, made.text
    again = raw.post("/experiments", json={"name": "keyed-a"}, headers={"idempotency-key": key})
    assert again.status_code == 201 and again.json() == made.json()
    assert again.headers["idempotent-replayed"] == "true"
    # The same key with another body is refused, naming the header; nothing is made.
    other = raw.post("/experiments", json={"name": "keyed-b"}, headers={"idempotency-key": key})
    assert other.status_code == 422, other.text
    assert other.json()["code"] == "idempotency_key_reused"
    assert other.json()["detail"]["field"] == "idempotency-key"
    assert "keyed-b" not in {e.name for e in admin.list_experiments(limit=500).items}
    # A key that is no key.
    bad = raw.post("/experiments", json={"name": "keyed-c"}, headers={"idempotency-key": "x y"})
    assert bad.status_code == 400 and bad.json()["detail"]["field"] == "idempotency-key"
    # Another caller's key is its own: the same key from another token acts.
    deployer = admin.create_token(f"keys-{uuid.uuid4().hex[:6]}", "deployer").token
    theirs = httpx.post(f"{server.url}/api/experiments", json={"name": "keyed-a"}, headers={
        "idempotency-key": key, "authorization": f"Bearer {deployer}"}, timeout=60)
    assert theirs.status_code == 409 and theirs.json()["code"] == "already_exists", theirs.text
    # A replayed refusal is the same refusal.
    assert raw.post("/experiments", json={"name": "keyed-a"},
                    headers={"idempotency-key": key}).json() == made.json()


def test_a_call_asked_again_while_the_first_runs_waits_for_it(
        server: ControlPlaneProcess, admin: Client, raw: httpx.Client) -> None:
    """While a first call holds its key, the same call is told to ask again; the client
    waits, and acts when the first call gives the key up (it failed) without acting."""
    from control_plane.idempotency import fingerprint
    from control_plane.idempotency_store import Hold, IdempotencyStore
    from control_plane.store import Database

    digest = admin.upload_artifact(linear_classifier(seed=4)).digest
    body = json.dumps({"artifact_digest": digest, "description": "",
                       "manifest": linear_classifier_manifest()}).encode()
    key, path = uuid.uuid4().hex, "/models/waited/versions"
    request = fingerprint("POST", f"/api{path}", "", body)
    database = Database(f"sqlite:///{server.home / 'modelplane.db'}", migrate=False)
    store, caller = IdempotencyStore(database), admin.whoami()["name"]
    first = store.reserve(caller, key, request)  # a first call, being answered
    assert isinstance(first, Hold)
    sent = {"content": body, "headers": {"idempotency-key": key,
                                         "content-type": "application/json"}}
    told = raw.post(path, **sent)
    assert told.status_code == 409, told.text
    assert told.json()["code"] == "request_in_progress"
    assert 1 <= told.json()["detail"]["retry_after_s"] <= 2
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(admin._request, "POST", path, timeout=60, **sent)
        time.sleep(1.5)
        assert not waiting.done()
        store.release(first)  # the first call failed
        answered = waiting.result()
    assert answered.status_code == 201 and "idempotent-replayed" not in answered.headers
    assert admin.get_model("waited").latest_version == 1
    again = raw.post(path, **sent)
    assert again.json() == answered.json() and again.headers["idempotent-replayed"] == "true"
    database.dispose()


def test_a_lost_token_is_never_kept_and_the_caller_is_told_what_to_do(
        server: ControlPlaneProcess, admin: Client) -> None:
    proxy = _losing(server, "POST", "/api/tokens")
    try:
        with Client(proxy.url, server.admin_token) as client, \
                pytest.raises(ConflictError, match="secret, which is never kept") as refused:
            client.create_token("lost-secret", "reader")
    finally:
        proxy.close()
    assert refused.value.detail["field"] == "idempotency-key"
    secret = proxy.answers[0].json()["token"]
    assert [t.name for t in admin.list_tokens()].count("lost-secret") == 1
    with sqlite3.connect(server.home / "modelplane.db") as store:
        kept = store.execute("SELECT status, body FROM request_replies").fetchall()
    assert kept and all(secret.encode() not in bytes(body or b"") for _, body in kept)
    assert (409, ) in {(status, ) for status, _ in kept}


def test_keys_keep_no_webhook_url_and_hold_no_upload(server: ControlPlaneProcess,
                                                     raw: httpx.Client) -> None:
    hook = "https://hooks.example.com/services/T000/B000/very-secret-path"
    sent = {"json": {"name": "ops", "url": hook},
            "headers": {"idempotency-key": "receiver-0001"}}
    made = raw.put("/alerts/receivers/ops", **sent)
    assert made.status_code == 200, made.text
    again = raw.put("/alerts/receivers/ops", **sent)
    assert again.status_code == 409 and "never kept" in again.json()["error"]
    # An upload streams to disk under its own limit; a key does not make it read here.
    body = b"not a model, only bytes" * 100
    upload = raw.post("/artifacts", content=body, headers={
        "idempotency-key": "upload-0001", "content-type": "application/octet-stream",
        "x-artifact-digest": hashlib.sha256(body).hexdigest()})
    assert upload.status_code == 201, upload.text
    # Read back from the console's origin, it is saved by a browser, never rendered.
    fetched = raw.get(f"/artifacts/{upload.json()['digest']}")
    assert fetched.status_code == 200 and fetched.content == body
    assert fetched.headers["x-content-type-options"] == "nosniff"
    assert fetched.headers["content-disposition"] == \
        f'attachment; filename="{upload.json()["digest"]}"'
    with sqlite3.connect(server.home / "modelplane.db") as store:
        kept = store.execute("SELECT key, body FROM request_replies").fetchall()
    assert all(hook.encode() not in bytes(body or b"") for _, body in kept)
    assert "upload-0001" not in {key for key, _ in kept}
