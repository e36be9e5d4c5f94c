"""gRPC on the fast path without Ray: the ingress's servicer posts each ModelInfer to the
endpoint replica's own lean server (as it does through HAProxy), the replica answers with
the same core, and the official ``tritonclient.grpc`` sees the same answers and errors as
through a handle; without the cluster's secret, or where the link cannot carry a call, the
handle answers instead."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.core import InferenceCore
from serving.grpc_calls import answer_grpc
from serving.grpc_ingress import EndpointDirectory, InferenceServicer
from serving.grpc_link import GRPC_LINK_PATH, PROTOBUF, answer_linked_call
from serving.lean_http import LeanServer
from serving.lean_ingress import EndpointApp
from serving.link_auth import LINK_HEADER
from serving.link_client import LinkClient
from serving.protocol.grpc_messages import call_from_request
from serving.schemas import EndpointConfig, RouteTable
from tests.conftest import free_port
from tests.unit.serving.test_core import FakeBackend, make_core
from tests.unit.serving.test_grpc_protocol import CoreHandle, request, rows_input
from tests.unit.serving.test_lean_http import Holder, healthy

SECRET = "k" * 64


def _servers(link_secret: str, *, lean: bool = True,
             core: InferenceCore | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ingress's servicer on a real gRPC server and, unless ``lean`` is False, the
    endpoint's lean server on a real socket, both on one loop in a thread."""
    core = core or make_core({1: 100})
    seen: dict[str, Any] = {"handle_calls": 0}
    ready, holder, port = threading.Event(), {}, free_port()

    class Handle(CoreHandle):
        def remote(self, call: Any) -> Any:
            seen["handle_calls"] += 1
            return super().remote(call)

    class Directory(EndpointDirectory):
        async def find(self, model: str) -> Any:
            if model != "iris":
                return await super().find(model)
            return Handle(core)

    async def serve() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        lean = None
        if lean_on:
            app = EndpointApp(Holder(core), "/v2/models/iris", "endpoint-iris", healthy,
                              SECRET, "replica-9")
            lean = LeanServer(app, extra_headers={"x-modelplane-replica": "replica-9"})
            await lean.start([sock])
            lean_task = asyncio.get_running_loop().create_task(lean.serve())
        link = LinkClient(f"127.0.0.1:{sock.getsockname()[1]}", link_secret)
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(Directory(lambda: {}), link), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        holder["stop"], holder["loop"] = asyncio.Event(), asyncio.get_running_loop()
        ready.set()
        await holder["stop"].wait()
        await server.stop(None)
        if lean is not None:
            lean.should_exit = True
            await asyncio.wait_for(lean_task, 10)
        sock.close()

    lean_on = lean
    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"127.0.0.1:{port}", seen
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(10)


@pytest.fixture
def linked() -> Iterator[tuple[str, dict[str, Any]]]:
    yield from _servers(SECRET)


def _infer_with_call(address: str, message: pb.ModelInferRequest,
                     metadata: tuple = ()) -> tuple[pb.ModelInferResponse, dict[str, str]]:
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response, call = stub.ModelInfer.with_call(message, metadata=metadata)
        return response, dict(call.trailing_metadata())


def test_tritonclient_grpc_is_answered_on_the_replicas_own_listener(linked) -> None:
    address, seen = linked
    client = grpcclient.InferenceServerClient(address)
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = client.infer("iris", [rows_input(data)])
    assert result.as_numpy("probabilities").shape == (3, 3)
    # The same answer as the handle gives, the replica's name and request id beside it.
    message = request([rows_input(data)], request_id="call-7")
    response, trailing = _infer_with_call(address, message)
    direct = asyncio.run(answer_grpc(make_core({1: 100}), call_from_request(message), "x"))
    assert response.raw_output_contents == [o.raw for o in direct.value.outputs]
    assert response.id == "call-7" and trailing["x-modelplane-replica"] == "replica-9"
    assert trailing["x-modelplane-request-id"] == response.parameters["modelplane_request_id"].string_param
    assert seen["handle_calls"] == 0
    # Errors are the core's, with the REST statuses' gRPC codes.
    with pytest.raises(InferenceServerException) as bad:
        client.infer("iris", [rows_input(np.ones((1, 4), np.int32), datatype="INT32")])
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and "datatype INT32" in bad.value.message()
    with pytest.raises(InferenceServerException) as ghost:
        client.infer("ghost", [rows_input(np.ones((1, 4), np.float32))])
    assert ghost.value.status() == "StatusCode.NOT_FOUND"
    assert seen["handle_calls"] == 0
    client.close()


def test_a_sticky_key_in_the_calls_metadata_reaches_the_core_over_the_link() -> None:
    backends = {v: FakeBackend(v, answer=v % 3) for v in (1, 2)}
    core = InferenceCore(EndpointConfig(
        endpoint="iris", versions=[b.config for b in backends.values()],
        routes=RouteTable(weights={1: 50, 2: 50}, sticky_header="X-User")), backends)
    servers = _servers(SECRET, core=core)
    address, seen = next(servers)
    try:
        message = request([rows_input(np.ones((1, 4), np.float32))])

        def version(metadata: tuple = ()) -> str:
            response, trailing = _infer_with_call(address, message, metadata)
            assert trailing["x-modelplane-replica"] == "replica-9"
            return response.model_version

        for user in ("alice", "bob", "carol"):
            assert len({version((("x-user", user),)) for _ in range(12)}) == 1
        assert {version() for _ in range(40)} == {"1", "2"}
        assert seen["handle_calls"] == 0
    finally:
        next(servers, None)


@pytest.mark.parametrize("case", ["stale secret", "no lean server"])
def test_where_the_link_cannot_carry_a_call_the_handle_answers(case: str) -> None:
    servers = _servers("stale", lean=True) if case == "stale secret" else _servers(SECRET, lean=False)
    address, seen = next(servers)
    try:
        for _ in range(3):
            response, trailing = _infer_with_call(address, request([rows_input(np.ones((2, 4), np.float32))]))
            assert len(response.raw_output_contents) == 1 and trailing["x-modelplane-replica"] == "replica-1"
        assert seen["handle_calls"] == 3
    finally:
        next(servers, None)


def test_the_replica_refuses_a_linked_call_without_the_secret_or_unreadable() -> None:
    core = make_core({1: 100})
    body = request([rows_input(np.ones((1, 4), np.float32))]).SerializeToString()
    forged = asyncio.run(answer_linked_call(core, {}, body, "r", SECRET))
    assert forged.status == 403 and json.loads(forged.body)["code"] == "forbidden"
    assert core.take_stats().versions == {}  # nothing ran, nothing was counted
    garbled = asyncio.run(answer_linked_call(core, {LINK_HEADER: SECRET}, b"\xff\xff\xff", "r", SECRET))
    assert garbled.status == 400 and "could not be read" in json.loads(garbled.body)["error"]
    good = asyncio.run(answer_linked_call(core, {LINK_HEADER: SECRET}, body, "r", SECRET))
    assert good.status == 200 and good.headers["content-type"] == PROTOBUF
    assert GRPC_LINK_PATH.startswith("/-/")  # never a REST route of the endpoint
