"""The gRPC inference service on the session's Ray and Serve, driven by ``tritonclient.grpc``."""

from __future__ import annotations

import time
from collections import Counter

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from onnxruntime import InferenceSession
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform

SEEDS = {1: 21, 2: 22}  # version -> the seed its model was built from


@pytest.fixture(scope="module")
def grpc_address(platform: Platform) -> str:
    """The gRPC service on a free port, and endpoint `giris` serving v1 of `grpc-iris`."""
    from control_plane.platform import deploy_grpc_service

    address = deploy_grpc_service(platform.settings.with_overrides(grpc_port=free_port()))
    assert address is not None
    with platform.client() as client:
        for seed in SEEDS.values():
            client.register_version("grpc-iris", linear_classifier(seed=seed),
                                    linear_classifier_manifest())
        client.deploy("giris", "grpc-iris:1")
    platform.wait_endpoint("giris", {1})
    deadline = time.monotonic() + 60
    while True:
        try:
            if grpcclient.InferenceServerClient(address).is_model_ready("giris"):
                return address
        except InferenceServerException:
            pass  # the gRPC replica is still starting
        assert time.monotonic() < deadline, "the gRPC service never saw endpoint giris"
        time.sleep(0.25)


def expected(version: int, data: np.ndarray) -> np.ndarray:
    return InferenceSession(linear_classifier(seed=SEEDS[version])).run(None, {"input": data})[0]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


def infer_input(data: np.ndarray, name: str = "input", datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def refusal(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_tritonclient_grpc_round_trip_raw_and_typed(grpc_address: str) -> None:
    client = grpcclient.InferenceServerClient(grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("giris") and not client.is_model_ready("ghost")
    metadata = client.get_model_metadata("giris", as_json=True)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    data = rows(5)
    result = client.infer("giris", [infer_input(data)], request_id="req-7",
                          outputs=[grpcclient.InferRequestedOutput("probabilities")])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected(1, data), rtol=1e-6)
    response = result.get_response()
    assert response.model_version == "1" and response.id == "req-7"
    server_id = response.parameters["modelplane_request_id"].string_param
    assert len(server_id) == 32

    # Typed contents (no raw_input_contents), through Triton's generated stub.
    with grpc.insecure_channel(grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = pb.ModelInferRequest(model_name="giris")
        tensor = message.inputs.add(name="input", datatype="FP32", shape=[5, 4])
        tensor.contents.fp32_contents.extend(data.ravel().tolist())
        typed, call = stub.ModelInfer.with_call(message)
    answer = grpcclient.InferResult(typed).as_numpy("probabilities")
    np.testing.assert_allclose(answer, expected(1, data), rtol=1e-6)
    trailing = dict(call.trailing_metadata())
    assert trailing["x-modelplane-request-id"] == typed.parameters["modelplane_request_id"].string_param
    assert trailing["x-modelplane-replica"]


def test_bad_input_gets_its_status_naming_the_field_and_the_service_keeps_answering(
        grpc_address: str) -> None:
    client = grpcclient.InferenceServerClient(grpc_address)
    good = rows(2)
    cases = [
        (lambda: client.infer("giris", [infer_input(good.astype(np.float64), datatype="FP64")]),
         "INVALID_ARGUMENT", "input 'input' has datatype FP64"),
        (lambda: client.infer("giris", [infer_input(np.zeros((2, 5), np.float32))]),
         "INVALID_ARGUMENT", "input 'input' has shape [2, 5]"),
        (lambda: client.infer("giris", [infer_input(good, name="features")]),
         "INVALID_ARGUMENT", "input 'features' is not an input"),
        (lambda: client.infer("giris", [infer_input(good)], model_version="9"),
         "NOT_FOUND", "no version '9'"),
        (lambda: client.infer("ghost", [infer_input(good)]),
         "NOT_FOUND", "no endpoint named 'ghost'"),
        (lambda: client.get_model_metadata("ghost"),
         "NOT_FOUND", "no endpoint named 'ghost'"),
    ]
    for _ in range(20):
        for call, code, words in cases:
            status, message = refusal(call)
            assert status == f"StatusCode.{code}" and words in message, (status, message)
    np.testing.assert_allclose(client.infer("giris", [infer_input(good)]).as_numpy("probabilities"),
                               expected(1, good), rtol=1e-6)


def test_a_canary_answers_from_both_versions_and_a_sticky_key_from_one(
        platform: Platform, grpc_address: str) -> None:
    with platform.client() as client:
        client.set_traffic("giris", {1: 50, 2: 50})
    platform.wait_endpoint("giris", {1, 2})
    platform.wait_weights("giris", {1: 50, 2: 50})
    client = grpcclient.InferenceServerClient(grpc_address)
    data = rows(3, seed=4)
    seen: Counter[str] = Counter()
    for _ in range(60):
        result = client.infer("giris", [infer_input(data)])
        version = result.get_response().model_version
        seen[version] += 1
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected(int(version), data),
                                   rtol=1e-6)
    assert set(seen) == {"1", "2"}, seen
    for user in ("alice", "bob"):
        answered = {client.infer("giris", [infer_input(data)], headers={"x-modelplane-key": user})
                    .get_response().model_version for _ in range(15)}
        assert len(answered) == 1, (user, answered)
    pinned = client.infer("giris", [infer_input(data)], model_version="2")
    np.testing.assert_allclose(pinned.as_numpy("probabilities"), expected(2, data), rtol=1e-6)
