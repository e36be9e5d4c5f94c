"""What an endpoint replica does with a call from the gRPC ingress: the REST path's core.

The ingress (``serving.grpc_ingress``) finds the endpoint by the request's model name and
hands its replica a plain-value call through a Serve handle; here the replica answers it
with its own :class:`InferenceCore`. An inference goes through ``InferenceCore.infer``,
the same routing (pin, sticky key from the call's metadata, weights), signature checks,
monitoring, request id and shadows as a REST one; only decoding and encoding differ.
Model metadata and readiness are the REST answers themselves (``InferenceCore.handle``),
so the two protocols cannot disagree about them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modelplane.errors import ModelplaneError
from serving.core import (
    HEAVY_BODY_BYTES,
    REQUEST_ID_PARAMETER,
    InferenceCore,
    Inferred,
    Refused,
    body_too_large,
)
from serving.errors import InvalidRequestError, ModelNotReadyError
from serving.protocol.codec import DecodedRequest
from serving.protocol.grpc_tensors import (
    GrpcInferAnswer,
    GrpcInferCall,
    decode_grpc_call,
    encode_grpc_answer,
)
from serving.schemas import EndpointConfig


@dataclass(frozen=True, slots=True)
class GrpcModelCall:
    """``ModelMetadata`` or ``ModelReady`` for the endpoint, optionally of one version."""

    kind: Literal["metadata", "ready"]
    version: str = ""


@dataclass(frozen=True, slots=True)
class GrpcFailure:
    """An error answer: the REST path's status, stable code and message (naming the field)."""

    http_status: int
    code: str
    message: str
    request_id: str = ""

    @classmethod
    def of(cls, error: ModelplaneError, request_id: str = "") -> GrpcFailure:
        return cls(error.http_status, error.code, error.message, request_id)


@dataclass(frozen=True, slots=True)
class GrpcReply:
    """What the replica sends back: an answer (or a failure) and which replica it was."""

    value: GrpcInferAnswer | dict[str, Any] | bool | GrpcFailure
    replica: str


class CallMetadata(Mapping[str, str]):
    """gRPC metadata as headers: keys compared without case, as HTTP headers are, so the
    route table's sticky header matches however it is spelt."""

    def __init__(self, pairs: Mapping[str, str]) -> None:
        self._pairs = {key.lower(): value for key, value in pairs.items()}

    def __getitem__(self, key: str) -> str:
        return self._pairs[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)


async def answer_grpc(core: InferenceCore | None, call: GrpcInferCall | GrpcModelCall,
                      replica: str) -> GrpcReply:
    """The answer of this replica's core to one call from the gRPC ingress."""
    if core is None:
        return GrpcReply(GrpcFailure.of(ModelNotReadyError("endpoint is loading")), replica)
    if isinstance(call, GrpcInferCall):
        # As for REST: a large call is decoded off the event loop the other calls share.
        outcome = await core.infer(lambda config: _decode(call, config), _encode,
                                   CallMetadata(call.headers), version=call.model_version or None,
                                   decode_off_loop=call.nbytes > HEAVY_BODY_BYTES)
        if isinstance(outcome, Refused):
            return GrpcReply(GrpcFailure.of(outcome.error, outcome.request_id), replica)
        return GrpcReply(outcome, replica)
    return GrpcReply(await _describe(core, call), replica)


def _decode(call: GrpcInferCall, config: EndpointConfig) -> DecodedRequest:
    size = call.nbytes
    if size > config.max_body_bytes:
        raise body_too_large(size, config.max_body_bytes, "request's tensor data")
    return decode_grpc_call(call)


def _encode(answer: Inferred) -> GrpcInferAnswer:
    return encode_grpc_answer(answer.outputs, model_name=answer.endpoint,
                              model_version=str(answer.version),
                              response_id=answer.request.id or answer.request_id,
                              parameters={REQUEST_ID_PARAMETER: answer.request_id})


async def _describe(core: InferenceCore, call: GrpcModelCall) -> dict[str, Any] | bool | GrpcFailure:
    if "/" in call.version:
        error = InvalidRequestError(f"version {call.version[:32]!r} is not a version number",
                                    detail={"field": "version"})
        return GrpcFailure.of(error)
    subpath = f"/versions/{call.version}" if call.version else ""
    if call.kind == "ready":
        subpath += "/ready"
    result = await core.handle("GET", subpath, {}, b"")
    if call.kind == "ready":
        return result.status == 200
    body = json.loads(result.body)
    if result.status != 200:
        return GrpcFailure(result.status, body.get("code", ""), body.get("error", ""),
                           body.get("request_id", ""))
    return body  # type: ignore[no-any-return]
