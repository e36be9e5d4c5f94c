"""The Serve internals the lean ingress borrows (``serving.serve_internals``) are still there
and still mean what it relies on. A Ray upgrade that moves any of them fails here, and the
replica falls back to Serve's own server (``find_replica`` names what is missing)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from serving import serve_internals
from serving.lean_ingress import EndpointApp, _take_over
from serving.serve_internals import REPLICA_ATTRIBUTES, ReplicaSeam
from tests.conftest import free_port
from tests.unit.serving.monitoring_helpers import make_core

replica_module = pytest.importorskip("ray.serve._private.replica")
Replica = replica_module.Replica


def source(function: Any) -> str:
    return inspect.getsource(function)


def test_the_installed_ray_is_the_series_the_internals_were_read_from() -> None:
    assert serve_internals.ray_version().startswith(serve_internals.RAY_SERIES)


def test_the_replica_still_has_every_attribute_the_lean_ingress_uses() -> None:
    init = source(Replica.__init__)
    for name in REPLICA_ATTRIBUTES:
        assert hasattr(Replica, name) or f"self.{name}" in init or f"self.{name}:" in init, name
    assert inspect.iscoroutinefunction(Replica._dataplane_health_check)
    assert "self._replica_impl" in source(replica_module.ReplicaActor.__init__)


def test_serve_starts_its_direct_ingress_server_where_the_lean_ingress_looks_for_it() -> None:
    from ray.serve._private import http_util

    starting = source(Replica._maybe_start_direct_ingress_servers)
    assert "self._direct_ingress_http_server_task" in starting
    assert "self._direct_ingress_http_server," in starting
    assert "start_asgi_http_server" in starting
    # ... after the constructor, before the first reconfigure, as the take-over assumes.
    initialize = source(Replica.initialize)
    assert initialize.index("_on_initialized()") < initialize.index("call_reconfigure(")
    assert "_maybe_start_direct_ingress_servers" in source(Replica._on_initialized)
    assert "uvicorn.Server(" in source(http_util.start_asgi_http_server)


def test_serve_drains_through_should_exit_and_the_task_it_keeps() -> None:
    shutdown = source(Replica._perform_graceful_shutdown)
    assert "self._direct_ingress_http_server.should_exit = True" in shutdown
    assert "self._direct_ingress_http_server_task" in shutdown
    assert "_direct_ingress_http_server.should_exit = True" in source(Replica._stop_accepting_direct_ingress)
    assert "self.get_num_ongoing_requests()" in source(Replica._drain_ongoing_requests)
    assert "DRAINING" in source(Replica._dataplane_health_check)


def test_serve_counts_its_own_direct_ingress_requests_with_start_request() -> None:
    assert "self._start_request(request_metadata)" in source(Replica._direct_ingress_asgi)
    manager = replica_module.ReplicaMetricsManager
    assert "self._num_ongoing_requests" in source(manager._add_autoscaling_metrics_point_async)
    assert "self._num_ongoing_requests += delta" in source(manager._change_num_ongoing_requests)


class FakeReplica:
    """Serve's own admission code (``Replica``'s methods) on a replica of one slot."""

    _start_request = Replica._start_request
    _can_accept_request = Replica._can_accept_request
    _is_replica_quiescing = Replica._is_replica_quiescing
    _track_queued_request = Replica._track_queued_request

    def __init__(self, max_queued: int) -> None:
        self.counted: list[int] = []
        self._semaphore = asyncio.Semaphore(1)
        self._reserved_slots: set[str] = set()
        self._num_queued_requests = 0
        self._quiescing = False
        self._metrics_manager = SimpleNamespace(
            inc_num_ongoing_requests=lambda m: self.counted.append(1),
            dec_num_ongoing_requests=lambda m: self.counted.append(-1))
        self._direct_ingress_http_server = None
        self._route_prefix = "/v2/models/churn"
        self._deployment_id = SimpleNamespace(app_name="endpoint-churn")
        self.limit = max_queued

    @property
    def max_queued_requests(self) -> int:
        return self.limit


class Full(Exception):
    pass


def test_start_request_waits_for_a_slot_and_counts_the_request() -> None:
    fake = FakeReplica(max_queued=-1)  # no bound: every request waits for the slot
    seam = ReplicaSeam(fake)  # builds the request metadata as in a replica

    async def scenario() -> None:
        enter = seam.ongoing(lambda limit: Full(limit))
        async with enter():
            assert fake.counted == [1] and fake._semaphore.locked()
        assert fake.counted == [1, -1] and not fake._semaphore.locked()

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once_and_a_freed_slot_admits_the_waiting_request() -> None:
    fake = FakeReplica(max_queued=1)
    enter = ReplicaSeam(fake).ongoing(lambda limit: Full(limit))

    async def scenario() -> None:
        release_first = asyncio.Event()
        order: list[str] = []

        async def request(name: str, hold: asyncio.Event | None = None) -> None:
            async with enter():
                order.append(name)
                if hold is not None:
                    await hold.wait()

        first = asyncio.create_task(request("first", release_first))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(request("second"))  # waits for the slot: queued
        await asyncio.sleep(0.01)
        assert fake._num_queued_requests == 1
        with pytest.raises(Full) as refused:  # a second one waiting is over the bound
            await request("third")
        assert refused.value.args == (1,)
        release_first.set()
        await asyncio.gather(first, second)
        assert order == ["first", "second"]
        assert fake._num_queued_requests == 0 and fake.counted == [1, -1, 1, -1]
        fake.limit = 5  # a changed bound applies to the next request, in place
        await request("fourth")

    asyncio.run(scenario())


def test_only_the_endpoints_own_routes_wait_for_admission() -> None:
    from serving.lean_ingress import EndpointApp

    app = EndpointApp(Holder(None), "/v2/models/churn", "endpoint-churn", health=None)
    assert app.counted("/v2/models/churn/infer") and app.counted("/v2/models/churn/ready")
    # A replica with a full queue still answers its load balancer's health check.
    assert not app.counted("/-/healthz") and not app.counted("/-/routes")
    assert not app.counted("/v2/models/other/infer")


def test_a_refused_request_is_told_why_and_when_to_retry() -> None:
    import json

    from serving.lean_ingress import overloaded
    from serving.schemas import RETRY_AFTER_S

    reply = overloaded(8).reply
    assert reply.status == 503 and reply.headers["retry-after"] == str(RETRY_AFTER_S)
    body = json.loads(reply.body)
    assert body["code"] == "overloaded" and "max_queued_requests" in body["error"]
    assert body["detail"] == {"max_queued_requests": 8, "retry_after_s": RETRY_AFTER_S}


class Holder:
    def __init__(self, core: Any) -> None:
        self.core = core


def test_the_lean_server_takes_over_serves_own_port_and_stops_as_serve_stops_it() -> None:
    from ray.serve._private.http_util import start_asgi_http_server
    from ray.serve.config import HTTPOptions

    port = free_port()
    ongoing: list[int] = []

    @contextlib.asynccontextmanager
    async def start_request(metadata: Any) -> Any:
        ongoing.append(1)
        yield

    async def health() -> tuple[bool, str]:
        return True, "success"

    async def serve_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"serve"})

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        task, uvicorn_server = await start_asgi_http_server(
            serve_app, HTTPOptions(host="127.0.0.1", port=port), event_loop=loop)
        replica = SimpleNamespace(
            _direct_ingress_http_server=uvicorn_server, _direct_ingress_http_server_task=task,
            _start_request=start_request, _dataplane_health_check=health, _event_loop=loop,
            max_queued_requests=-1, _route_prefix="/v2/models/churn", _deployment_id=SimpleNamespace(app_name="endpoint-churn"))
        seam = ReplicaSeam(replica)
        app = EndpointApp(Holder(make_core()), seam.route_prefix, seam.app_name, seam.health)
        lean = await _take_over(seam, app, {"x-modelplane-replica": "r"})
        assert lean is not None and replica._direct_ingress_http_server is lean
        assert task.done()  # Serve's server stopped; its socket lives on in the lean server
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answer = await http.get("/v2/models/churn/ready")
            assert answer.json() == {"name": "churn", "ready": True}
            assert "server" not in answer.headers and answer.headers["x-modelplane-replica"] == "r"
            assert (await http.get("/-/healthz")).text == "success"
        assert ongoing == [1]  # the model's route counts; the health check does not
        # What Serve's drain does with the server it finds there.
        replica._direct_ingress_http_server.should_exit = True
        await asyncio.wait_for(replica._direct_ingress_http_server_task, 10)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(scenario())


def test_outside_a_replica_find_replica_says_why_and_changes_nothing() -> None:
    async def scenario() -> tuple[Any, str]:
        return serve_internals.find_replica()

    seam, reason = asyncio.run(scenario())
    assert seam is None and reason


def test_a_full_version_behind_a_handle_is_overloaded_not_failed() -> None:
    """Isolated placement: Serve enforces the version's max_queued_requests at the router's
    handle and raises; the client gets 503 overloaded with Retry-After, not a 500."""
    from ray.serve.exceptions import BackPressureError

    from serving.backends import RemoteVersion
    from serving.core import error_result
    from serving.errors import OverloadedError
    from tests.unit.serving.monitoring_helpers import version_config

    class FullHandle:
        class infer:
            @staticmethod
            def remote(arrays: Any) -> Any:
                async def refuse() -> Any:
                    raise BackPressureError(num_queued_requests=4, max_queued_requests=4)
                return refuse()

    version = RemoteVersion(version_config(), FullHandle())
    with pytest.raises(OverloadedError) as refused:
        asyncio.run(version.infer({}))
    answer = error_result(refused.value, "req-1")
    assert answer.status == 503 and answer.headers["retry-after"] == "1"


def test_a_version_with_no_replica_able_to_answer_says_retry_not_failed() -> None:
    """A replica gone mid-call, or a deployment Serve holds unhealthy, was a 500
    internal_error: the caller was not told it could try again."""
    from ray.serve.exceptions import ReplicaUnavailableError

    from serving.backends import RemoteVersion
    from serving.core import error_result
    from serving.errors import ModelNotReadyError
    from tests.unit.serving.monitoring_helpers import version_config

    class GoneHandle:
        class infer:
            @staticmethod
            def remote(arrays: Any) -> Any:
                async def gone() -> Any:
                    raise ReplicaUnavailableError("replica-7")
                return gone()

    with pytest.raises(ModelNotReadyError) as unavailable:
        asyncio.run(RemoteVersion(version_config(), GoneHandle()).infer({}))
    assert unavailable.value.detail["reason"] == "replica_unavailable"

    from ray.exceptions import ActorDiedError

    class DiedMidCall:  # a replica that dies while it runs the call
        class infer:
            @staticmethod
            def remote(arrays: Any) -> Any:
                async def died() -> Any:
                    raise ActorDiedError()
                return died()

    with pytest.raises(ModelNotReadyError):
        asyncio.run(RemoteVersion(version_config(), DiedMidCall()).infer({}))
    answer = error_result(unavailable.value, "req-2")
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
