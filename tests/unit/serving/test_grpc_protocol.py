"""The gRPC protocol without Ray: Triton's messages through the same core as REST, and the
ingress's own gRPC server answering the real ``tritonclient.grpc`` in-process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import InferenceServerException

from serving.core import InferenceCore
from serving.grpc_calls import GrpcFailure, answer_grpc
from serving.grpc_ingress import EndpointDirectory, InferenceServicer, grpc_code
from serving.protocol.grpc_messages import call_from_request, response_from_answer
from serving.protocol.grpc_tensors import GrpcInferAnswer, decode_grpc_call
from serving.schemas import EndpointConfig, RouteTable
from tests.conftest import free_port
from tests.unit.serving.test_core import FakeBackend, make_core


def request(inputs: list[grpcclient.InferInput], *, model: str = "iris", version: str = "",
            outputs: list[grpcclient.InferRequestedOutput] | None = None,
            request_id: str = "") -> pb.ModelInferRequest:
    """The message ``tritonclient.grpc`` sends for ``client.infer(model, inputs, …)``."""
    return _get_inference_request(model, inputs, version, request_id, outputs, 0, False, False,
                                  0, None, None)


def rows_input(data: np.ndarray, name: str = "input", datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def typed(name: str, datatype: str, shape: list[int], field: str, values: list) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="iris")
    tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return message


def answer(core: InferenceCore, message: pb.ModelInferRequest, metadata=()) -> object:
    reply = asyncio.run(answer_grpc(core, call_from_request(message, metadata), "replica-1"))
    assert reply.replica == "replica-1"
    return reply.value


def failure(core: InferenceCore, message: pb.ModelInferRequest) -> GrpcFailure:
    value = answer(core, message)
    assert isinstance(value, GrpcFailure), value
    return value


def test_raw_contents_answer_like_rest_with_ids_and_versions() -> None:
    core = make_core({2: 100})
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    value = answer(core, request([rows_input(data)], request_id="req-9"))
    assert isinstance(value, GrpcInferAnswer)
    result = grpcclient.InferResult(response_from_answer(value))
    assert result.as_numpy("probabilities").tolist() == [[0, 0, 1], [0, 0, 1]]
    response = result.get_response()
    assert response.model_name == "iris" and response.model_version == "2"
    assert response.id == "req-9"
    server_id = response.parameters["modelplane_request_id"].string_param
    assert len(server_id) == 32 and server_id != "req-9"


def test_decoded_tensors_match_for_every_datatype_raw_and_typed() -> None:
    cases = [
        ("BOOL", np.array([[True, False]]), "bool_contents"),
        ("INT8", np.array([[-128, 127]], np.int8), "int_contents"),
        ("INT16", np.array([[-3, 4]], np.int16), "int_contents"),
        ("INT32", np.array([[-3, 4]], np.int32), "int_contents"),
        ("INT64", np.array([[2**40, -1]], np.int64), "int64_contents"),
        ("UINT8", np.array([[0, 255]], np.uint8), "uint_contents"),
        ("UINT16", np.array([[1, 65535]], np.uint16), "uint_contents"),
        ("UINT32", np.array([[1, 2**32 - 1]], np.uint32), "uint_contents"),
        ("UINT64", np.array([[1, 2**64 - 1]], np.uint64), "uint64_contents"),
        ("FP32", np.array([[0.5, -1.25]], np.float32), "fp32_contents"),
        ("FP64", np.array([[0.1, 1e300]], np.float64), "fp64_contents"),
        ("BYTES", np.array([[b"a", "é".encode()]], dtype=object), "bytes_contents"),
    ]
    for datatype, data, field in cases:
        raw = decode_grpc_call(call_from_request(request([rows_input(data, "x", datatype)])))
        contents = decode_grpc_call(call_from_request(
            typed("x", datatype, [1, 2], field, data.ravel().tolist())))
        for decoded in (raw, contents):
            array = decoded.arrays["x"]
            assert array.shape == (1, 2), datatype
            assert array.tolist() == data.tolist(), datatype
            if datatype != "BYTES":
                assert array.dtype == data.dtype, datatype
    fp16 = np.array([[1.5, -2]], np.float16)
    assert decode_grpc_call(call_from_request(request([rows_input(fp16, "x", "FP16")]))) \
        .arrays["x"].tolist() == fp16.tolist()


@pytest.mark.parametrize(("message", "field", "words"), [
    (typed("input", "FP32", [1, 4], "fp32_contents", [1, 2, 3]),
     "inputs[0].contents.fp32_contents", "holds 3 elements"),
    (typed("input", "FP32", [1, 4], "int_contents", [1, 2, 3, 4]),
     "inputs[0].contents.int_contents", "use contents.fp32_contents"),
    (typed("input", "FP32", [1, -4], "fp32_contents", [1, 2, 3, 4]),
     "inputs[0].shape", "0 or more"),
    (typed("input", "FP33", [1, 4], "fp32_contents", [1, 2, 3, 4]),
     "inputs[0].datatype", "not a v2 datatype"),
    (typed("input", "INT8", [1, 2], "int_contents", [1, 300]),
     "inputs[0].contents.int_contents", "out of range for INT8"),
    (pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 4])]), "inputs[0].contents", "carries no data"),
    (pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 4])], raw_input_contents=[b"\0" * 12]),
     "raw_input_contents[0]", "holds 12 bytes but inputs[0] ('input', FP32, shape [1, 4]) needs 16"),
    (pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 4])], raw_input_contents=[b"\0" * 16] * 2),
     "raw_input_contents", "2 entries for 1 inputs"),
    (pb.ModelInferRequest(model_name="iris", id="x" * 257, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[b"\0" * 16]), "id", "at most 256"),
    (typed("input", "FP32", [1] * 33, "fp32_contents", [1]), "inputs[0].shape", "at most 32"),
])
def test_malformed_messages_are_refused_naming_the_field(message, field, words) -> None:
    error = failure(make_core({1: 100}), message)
    assert error.http_status == 400 and error.code == "invalid_request"
    assert field in error.message and words in error.message, error.message
    assert error.request_id  # the server's id, as for REST


def test_the_signature_checks_are_the_rest_ones() -> None:
    core = make_core({1: 100})
    wrong_dtype = failure(core, request([rows_input(np.zeros((1, 4), np.float64), datatype="FP64")]))
    assert "datatype FP64" in wrong_dtype.message and "float32" in wrong_dtype.message
    wrong_shape = failure(core, request([rows_input(np.zeros((1, 5), np.float32))]))
    assert "shape [1, 5]" in wrong_shape.message and "'input'" in wrong_shape.message
    unknown = failure(core, request([rows_input(np.zeros((1, 4), np.float32), name="nope")]))
    assert "'nope' is not an input" in unknown.message
    output = failure(core, request([rows_input(np.zeros((1, 4), np.float32))],
                                   outputs=[grpcclient.InferRequestedOutput("logits")]))
    assert "'logits' is not an output" in output.message
    missing_version = failure(core, request([rows_input(np.zeros((1, 4), np.float32))], version="7"))
    assert missing_version.http_status == 404 and "no version '7'" in missing_version.message
    # Counted by the endpoint's monitoring as REST rejections are, by reason.
    stats = core.take_stats().versions
    assert stats[1].rejected["datatype"] == 1 and stats[1].rejected["shape"] == 1
    assert stats[1].rejected["unknown_input"] == 1 and stats[1].rejected["unknown_output"] == 1


def test_pins_sticky_metadata_and_shadows_follow_the_route_table() -> None:
    backends = {v: FakeBackend(v, answer=v % 3) for v in (1, 2, 3)}
    config = EndpointConfig(endpoint="iris", versions=[b.config for b in backends.values()],
                            routes=RouteTable(weights={1: 50, 2: 50}, shadows=[3],
                                              sticky_header="X-User"))
    core = InferenceCore(config, backends)
    data = np.ones((1, 4), np.float32)

    def version(metadata=(), pin: str = "") -> str:
        value = answer(core, request([rows_input(data)], version=pin), metadata)
        return value.model_version

    assert {version(pin="1") for _ in range(10)} == {"1"}
    for user in ("alice", "bob", "carol"):
        assert len({version([("x-user", user)]) for _ in range(15)}) == 1
    assert {version() for _ in range(60)} == {"1", "2"}


def test_status_codes_follow_the_rest_statuses() -> None:
    assert grpc_code(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(404) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(503) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(413) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(500) == grpc.StatusCode.INTERNAL


class CoreHandle:
    """Stands where a Serve handle on the replicas' ``grpc`` method stands: ``.remote(call)``."""

    def __init__(self, core: InferenceCore | None) -> None:
        self.core = core

    def remote(self, call):
        return answer_grpc(self.core, call, "replica-1")


def test_the_directory_reads_serve_rarely_and_tells_missing_from_loading(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import serving.grpc_ingress
    from serving.grpc_ingress import REFRESH_S

    now = [1000.0]  # the directory's clock, moved by the test alone (the loop keeps its own)
    monkeypatch.setattr(serving.grpc_ingress, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    reads: list[int] = []
    state = {"iris": ("endpoint", True), "big": ("router", False)}

    def read() -> dict:
        reads.append(1)
        return dict(state)

    directory = EndpointDirectory(read, lambda model, deployment: f"{model}/{deployment}",
                                  bind=lambda handle: handle)

    async def scenario() -> None:
        assert await directory.find("iris") == "iris/endpoint"
        assert await directory.find("iris") == "iris/endpoint"  # known and running: no read
        with pytest.raises(Exception, match="no endpoint named 'ghost'"):
            await directory.find("ghost")
        with pytest.raises(Exception, match="'big' is loading"):
            await directory.find("big")
        assert len(reads) == 1  # at most one read every REFRESH_S
        now[0] += REFRESH_S + 0.1
        state["big"] = ("router", True)
        assert await directory.find("big") == "big/router"

    asyncio.run(scenario())
    assert len(reads) == 2


def test_a_wedged_controller_costs_a_call_for_an_unknown_name_its_bound_not_a_slot_for_ever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve's status read has no bound: on a wedged controller each call for a name not
    known to run waited for ever on it, holding one of the ingress's call slots, until calls
    for the endpoints that do run were refused too."""
    import serving.grpc_ingress
    from serving.errors import ModelNotFoundError, ModelNotReadyError

    monkeypatch.setattr(serving.grpc_ingress, "READ_WAIT_S", 1.0)
    monkeypatch.setattr(serving.grpc_ingress, "REFRESH_S", 0.0)
    wedged = threading.Event()
    reads: list[int] = []
    state = {"iris": ("endpoint", True)}

    def read() -> dict:
        reads.append(1)
        if len(reads) > 1:
            wedged.wait(30)  # the controller stopped answering after the first read
        return dict(state)

    directory = EndpointDirectory(read, lambda model, deployment: f"{model}/{deployment}",
                                  bind=lambda handle: handle)

    async def scenario() -> None:
        assert await directory.find("iris") == "iris/endpoint"
        started = asyncio.get_running_loop().time()
        answers = await asyncio.gather(*(directory.find(f"ghost-{i}") for i in range(50)),
                                       return_exceptions=True)
        took = asyncio.get_running_loop().time() - started
        assert all(isinstance(a, ModelNotReadyError) and "did not say within 1 s" in str(a)
                   for a in answers), answers
        assert took < 10, took  # the bound and a loaded host's lag, not the wedge's length
        assert len(reads) == 2  # one read waits on the controller, not one a call
        # Later calls get what is left of the read's bound, not a fresh one each.
        started = asyncio.get_running_loop().time()
        with pytest.raises(ModelNotReadyError):
            await directory.find("ghost-late")
        assert asyncio.get_running_loop().time() - started < 0.9  # not a fresh 1 s
        assert await directory.find("iris") == "iris/endpoint"  # known: answered meanwhile
        state["late"] = ("endpoint", True)
        wedged.set()  # answering again
        for _ in range(100):
            with contextlib.suppress(ModelNotReadyError, ModelNotFoundError):
                if await directory.find("late") == "late/endpoint":
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("a name Serve runs was not found once its controller answered")

    try:
        asyncio.run(scenario())
    finally:
        wedged.set()


@contextlib.contextmanager
def on_a_grpc_server(servicer: InferenceServicer) -> Iterator[str]:
    """``servicer`` on a real gRPC server, in a thread; its address."""
    ready = threading.Event()
    holder: dict = {}
    port = free_port()

    async def serve() -> None:
        server = grpc.aio.server()
        from tritonclient.grpc import service_pb2_grpc

        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        holder["stop"] = asyncio.Event()
        holder["loop"] = asyncio.get_running_loop()
        ready.set()
        await holder["stop"].wait()
        await server.stop(None)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"127.0.0.1:{port}"
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(10)


class FakeDirectory(EndpointDirectory):
    """Endpoints by name: a core, None (loading), "dies" (its replica dies mid-call) or
    "stalls" (its replica never answers)."""

    def __init__(self, cores: dict) -> None:
        super().__init__(lambda: {})
        self.cores = cores

    async def find(self, model):
        if model not in self.cores:
            return await super().find(model)
        if self.cores[model] is None:
            from serving.errors import ModelNotReadyError

            raise ModelNotReadyError(f"endpoint {model!r} is loading")
        if self.cores[model] == "dies":
            return DyingHandle()
        if self.cores[model] == "stalls":
            return StalledHandle()
        return CoreHandle(self.cores[model])


class DyingHandle:
    async def remote(self, call):
        from ray.exceptions import RayActorError

        raise RayActorError()


class StalledHandle:
    async def remote(self, call):
        await asyncio.Event().wait()


@pytest.fixture
def grpc_server() -> Iterator[str]:
    """The ingress's servicer on a real gRPC server, in a thread, over a fake directory."""
    directory = FakeDirectory({"iris": make_core({1: 100}), "loading": None, "dying": "dies"})
    with on_a_grpc_server(InferenceServicer(directory)) as address:
        yield address


def test_tritonclient_grpc_talks_to_the_ingress_servicer(grpc_server: str) -> None:
    client = grpcclient.InferenceServerClient(grpc_server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "modelplane"
    assert client.is_model_ready("iris")
    assert not client.is_model_ready("ghost") and not client.is_model_ready("loading")
    metadata = client.get_model_metadata("iris")
    assert metadata.inputs[0].name == "input" and list(metadata.inputs[0].shape) == [-1, 4]
    result = client.infer("iris", [rows_input(np.ones((3, 4), np.float32))])
    assert result.as_numpy("probabilities").shape == (3, 3)

    def status(call) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(InferenceServerException) as caught:
            call()
        return caught.value.status(), caught.value.message()

    code, message = status(lambda: client.infer("ghost", [rows_input(np.ones((1, 4), np.float32))]))
    assert code == "StatusCode.NOT_FOUND" and "'ghost'" in message
    code, message = status(lambda: client.infer("loading", [rows_input(np.ones((1, 4), np.float32))]))
    assert code == "StatusCode.UNAVAILABLE" and "loading" in message
    # A replica that dies mid-call: UNAVAILABLE (retry), as REST's 503, never UNKNOWN.
    code, message = status(lambda: client.infer("dying", [rows_input(np.ones((1, 4), np.float32))]))
    assert code == "StatusCode.UNAVAILABLE" and "RayActorError" in message
    assert not client.is_model_ready("dying")
    code, message = status(lambda: client.infer("iris", [rows_input(np.ones((1, 4), np.int32), datatype="INT32")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "datatype INT32" in message
    code, message = status(lambda: client.get_model_metadata("iris", "9"))
    assert code == "StatusCode.NOT_FOUND" and "no version '9'" in message
    code, _ = status(lambda: client.get_inference_statistics("iris"))
    assert code == "StatusCode.UNIMPLEMENTED"
    assert client.infer("iris", [rows_input(np.ones((1, 4), np.float32))]).as_numpy("probabilities") is not None
    client.close()


@pytest.mark.parametrize(("rows", "off_loop"), [(4, False), (5000, True)])
def test_a_large_call_is_decoded_off_the_event_loop_as_a_large_body_is(
        monkeypatch: pytest.MonkeyPatch, rows: int, off_loop: bool) -> None:
    """A call of megabytes decoded on the loop held every other request on it."""
    import threading

    import serving.grpc_calls

    threads: list[threading.Thread] = []
    decode = serving.grpc_calls.decode_grpc_call

    def noting_thread(call):
        threads.append(threading.current_thread())
        return decode(call)

    monkeypatch.setattr(serving.grpc_calls, "decode_grpc_call", noting_thread)
    data = np.zeros((rows * 16, 4), np.float32)  # 80,000 rows: 1.28 MB
    answer(make_core({1: 100}), request([rows_input(data)]))
    assert len(threads) == 1 and (threads[0] is not threading.main_thread()) is off_loop


def test_a_large_message_is_read_off_the_event_loop_and_reads_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Typed contents are converted value by value: a large message is read in a thread,
    as a large REST body is decoded, so the ingress's loop goes on serving other calls."""
    import threading

    from serving.protocol import grpc_messages

    read_on: list[int] = []
    real = grpc_messages.call_from_request

    def noting(message, metadata=()):
        read_on.append(threading.get_ident())
        return real(message, metadata)

    monkeypatch.setattr(grpc_messages, "call_from_request", noting)
    values = [float(v) for v in range(300_000)]  # 1.2 MB of fp32_contents
    large = typed("input", "FP32", [75_000, 4], "fp32_contents", values)
    small = typed("input", "FP32", [1, 4], "fp32_contents", values[:4])

    async def read(message: pb.ModelInferRequest) -> tuple[object, int]:
        call = await grpc_messages.read_call_off_loop_if_heavy(message, [("k", "v")])
        return call, threading.get_ident()

    call, loop = asyncio.run(read(small))
    assert read_on[-1] == loop
    call, loop = asyncio.run(read(large))
    assert read_on[-1] != loop
    assert decode_grpc_call(call).inputs[0].data.shape == (75_000, 4)


def test_calls_past_the_ingress_bound_on_bytes_in_flight_are_refused_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One replica answers every endpoint's gRPC calls, out of Serve's reach: calls waiting
    on a stalled endpoint held their messages until the replica was killed for memory."""
    import serving.grpc_ingress

    rows = np.ones((1000, 4), np.float32)  # a 16 KB message
    monkeypatch.setattr(serving.grpc_ingress, "MAX_IN_FLIGHT_BYTES", 40_000)
    servicer = InferenceServicer(FakeDirectory({"stalled": "stalls", "iris": make_core({1: 100})}))
    outcomes: list[str] = []

    def stalled_call() -> None:
        try:
            grpcclient.InferenceServerClient(address).infer("stalled", [rows_input(rows)],
                                                            client_timeout=60)
            outcomes.append("answered")
        except InferenceServerException as error:
            outcomes.append(str(error.status()))

    with on_a_grpc_server(servicer) as address:
        waiting = [threading.Thread(target=stalled_call) for _ in range(2)]
        for thread in waiting:
            thread.start()
        deadline = time.monotonic() + 30
        while servicer.in_flight_bytes < 32_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert servicer.in_flight_bytes >= 32_000  # both stalled calls are held
        client = grpcclient.InferenceServerClient(address)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("iris", [rows_input(rows)], client_timeout=5)
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "retry shortly" in refused.value.message()
        small = client.infer("iris", [rows_input(np.ones((1, 4), np.float32))], client_timeout=30)
        assert small.as_numpy("probabilities").shape == (1, 3)  # room for a small one
    # The server stopped: the stalled calls end, never answered, and give their bytes back.
    for thread in waiting:
        thread.join(30)
    assert len(outcomes) == 2 and "answered" not in outcomes, outcomes
    assert servicer.in_flight_bytes == 0
