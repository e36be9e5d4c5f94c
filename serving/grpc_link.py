"""gRPC inference on the fast path: the gRPC ingress to an endpoint replica's own listener.

Through a Serve handle, each ``ModelInfer`` cost the gRPC ingress and the replica a Ray
actor call's worth of scheduling and pickling (2.97 ms p50 against REST's 1.13 on the
small MLP). Where HAProxy runs, the ingress instead posts the call's own protobuf bytes
(``ModelInferRequest``, re-serialized) with the cluster's link secret to
``/v2/models/ENDPOINT`` + :data:`GRPC_LINK_PATH` through the node's ingress, where the
endpoint's lean ingress answers it with the same core as REST and gRPC through a handle
(:func:`serving.grpc_calls.answer_grpc`): routing, sticky keys (the call's metadata
travel as JSON in :data:`METADATA_HEADER`), signature checks, monitoring and request ids.
The answer is the ``ModelInferResponse``'s bytes, or the failure's status, code and
message as JSON. Anything else (Serve's proxy reaching the replica, HAProxy without a
replica, a connection that closed) sends the call through the handle, as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from serving.core import InferenceCore, error_result
from serving.errors import ForbiddenError, InvalidRequestError
from serving.grpc_calls import GrpcFailure, GrpcReply, answer_grpc
from serving.lean_http import PlainReply, Reply, json_reply
from serving.link_auth import carries_secret
from serving.protocol.grpc_tensors import GrpcInferAnswer

log = logging.getLogger(__name__)

GRPC_LINK_PATH = "/-/grpc"  # under the endpoint's route prefix; no REST route ends so
PROTOBUF = "application/x-protobuf"
METADATA_HEADER = "x-modelplane-grpc-metadata"
_PROTOBUF_HEADERS = {"content-type": PROTOBUF}


def linked_call_head(metadata: Any) -> bytes:
    """Header lines carrying a call's text metadata (the sticky key among them)."""
    pairs = {key: value for key, value in metadata if isinstance(value, str)}
    if not pairs:
        return f"content-type: {PROTOBUF}\r\n".encode()
    # JSON of printable ASCII (gRPC's rule for text metadata): safe in a header line.
    return (f"content-type: {PROTOBUF}\r\n{METADATA_HEADER}: "
            f"{json.dumps(pairs, ensure_ascii=True)}\r\n").encode()


def _failure_reply(failure: GrpcFailure) -> PlainReply:
    return json_reply(failure.http_status, {"error": failure.message, "code": failure.code,
                                            "request_id": failure.request_id})


async def answer_linked_call(core: InferenceCore | None, headers: Mapping[str, str], body: bytes,
                             replica: str, secret: str | None) -> Reply:
    """An endpoint replica's answer to a ``ModelInfer`` posted by the gRPC ingress."""
    # Imported on the first call: every replica imports this module, few get gRPC calls.
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2 as pb

    from serving.protocol.grpc_messages import read_call_off_loop_if_heavy, response_from_answer

    if not carries_secret(headers, secret):
        error = ForbiddenError("this route carries the gRPC ingress's calls; call the gRPC "
                               "service or POST /v2/models/<endpoint>/infer")
        return error_result(error, "")
    try:
        request = pb.ModelInferRequest.FromString(body)
        metadata = json.loads(headers.get(METADATA_HEADER) or "{}")
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not an object")
    except (DecodeError, ValueError) as error:
        return _failure_reply(GrpcFailure.of(InvalidRequestError(
            f"the linked gRPC call could not be read: {error}", detail={"field": "body"})))
    call = await read_call_off_loop_if_heavy(request, metadata.items())
    reply = await answer_grpc(core, call, replica)
    if isinstance(reply.value, GrpcFailure):
        return _failure_reply(reply.value)
    assert isinstance(reply.value, GrpcInferAnswer)
    return PlainReply(200, response_from_answer(reply.value).SerializeToString(), _PROTOBUF_HEADERS)


def reply_from_link(status: int, content_type: str, payload: bytes, replica: str) -> Any:
    """What the ingress got back: a ``ModelInferResponse``, a :class:`GrpcReply` holding
    the failure, or None where the answer is not the replica's (send it by the handle)."""
    if status == 200 and content_type == PROTOBUF:
        from tritonclient.grpc import service_pb2 as pb

        return pb.ModelInferResponse.FromString(payload)
    if content_type != "application/json" or status == 403:
        return None
    try:
        answer = json.loads(payload)
        failure = GrpcFailure(status, str(answer["code"]), str(answer["error"]),
                              str(answer.get("request_id") or ""))
    except (ValueError, KeyError, TypeError):
        return None
    return GrpcReply(failure, replica)
