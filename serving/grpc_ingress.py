"""The Open Inference Protocol over gRPC: one front door that dispatches by model name.

Serve's own gRPC ingress (its proxy, or HAProxy to each replica's direct-ingress server)
picks the application from an ``application`` metadata key, which ``tritonclient.grpc``
never sends: the model's name is inside the request message. So modelplane runs its own
gRPC server, Triton's ``GRPCInferenceService`` from ``tritonclient.grpc.service_pb2_grpc``,
in one Serve replica (:class:`GrpcIngress`, application ``grpc-ingress``) on
``MODELPLANE_GRPC_PORT``. For each call it finds the endpoint's application
(``endpoint-{model}``) in Serve's status, and forwards a plain-value call through a
Serve handle to the endpoint's own replicas (the colocated endpoint or the isolated
router), which answer it with the same core as REST (``serving.grpc_calls``). The
price is one handle hop more than REST's fast ingress; docs/architecture.md measures it.

Status codes: INVALID_ARGUMENT for bad input (the message names the field), NOT_FOUND for
a model no endpoint serves (and an unknown version), UNAVAILABLE while an endpoint loads,
RESOURCE_EXHAUSTED over the size limit. ``ModelReady`` answers ``ready: false`` for those
instead, as Triton does, so ``is_model_ready`` returns False rather than raising.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelplane.errors import ModelplaneError
from serving.core import REQUEST_ID_HEADER
from serving.errors import ModelNotFoundError, ModelNotReadyError, overloaded_error
from serving.grpc_calls import GrpcFailure, GrpcModelCall, GrpcReply
from serving.grpc_link import GRPC_LINK_PATH, linked_call_head, reply_from_link
from serving.link_auth import link_secret_bounded
from serving.link_client import LinkClient, LinkRest, LinkUnavailable, ingress_address
from serving.names import (
    ENDPOINT_APP_PREFIX,
    ENDPOINT_DEPLOYMENTS,
    endpoint_app_name,
    endpoint_route_prefix,
)
from serving.protocol.grpc_messages import (
    metadata_response,
    read_call_off_loop_if_heavy,
    response_from_answer,
)
from serving.protocol.grpc_tensors import GrpcInferAnswer

log = logging.getLogger(__name__)

REPLICA_METADATA = "x-modelplane-replica"
ERROR_CODE_METADATA = "x-modelplane-error-code"
REFRESH_S = 0.5  # Serve's status is read at most this often, however many unknown names come
# A call for a name not known to run waits this long for Serve's status. The read has no
# bound of its own: on a wedged controller every such call waited for ever, each holding
# one of MAX_CONCURRENT_CALLS, until calls for the endpoints that do run were refused.
READ_WAIT_S = 5.0
# The one ingress replica answers every endpoint's gRPC calls, and Serve's limits on ongoing
# requests do not reach it: each call in flight holds its message (and, over the link, a
# serialized copy). Past these, a call is refused at once (RESOURCE_EXHAUSTED), where 50
# calls of 60 MiB waiting on a stalled endpoint had the replica, and gRPC for every
# endpoint, killed for memory.
MAX_CONCURRENT_CALLS = 1024
MAX_IN_FLIGHT_BYTES = 512 << 20
BIND_WAIT_S = 20.0  # a replica being replaced may hold the port this long
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status for the HTTP status the REST path answers the same error with."""
    return _CODES.get(http_status, grpc.StatusCode.INTERNAL)


@dataclass(frozen=True)
class _Endpoint:
    deployment: str
    running: bool
    handle: Any


def read_endpoints() -> dict[str, tuple[str, bool]]:
    """Every endpoint Serve runs: its ingress deployment and whether a replica serves it."""
    from serving.applications import serve_instance_details, serve_state

    found: dict[str, tuple[str, bool]] = {}
    details = serve_instance_details(READ_WAIT_S)  # bounded: the thread reading ends too
    for app, status in (details.get("applications") or {}).items():
        if not app.startswith(ENDPOINT_APP_PREFIX):
            continue
        for name, deployment in (status.get("deployments") or {}).items():
            if name not in ENDPOINT_DEPLOYMENTS:
                continue  # an isolated endpoint's version application
            # A replica being reconfigured (UPDATING) still answers its handle's calls.
            serving = any(serve_state(replica) in ("RUNNING", "UPDATING")
                          for replica in deployment.get("replicas") or ())
            found[app[len(ENDPOINT_APP_PREFIX):]] = (name, serving)
    return found


def _handle(endpoint: str, deployment: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=endpoint_app_name(endpoint))


def _bound(handle: Any) -> Any:
    """``handle`` bound to the replicas' ``grpc`` method, once (``handle.grpc`` builds a new
    handle on every access). On the event loop: binding initialises the handle's router,
    which throughput-optimized Serve runs on the calling loop."""
    return handle.options(method_name="grpc")


class EndpointDirectory:
    """Endpoint name → a handle on its replicas, from Serve's status, read only when a name
    is unknown or still loading (at most every ``REFRESH_S``, one read at a time)."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, bool]]] = read_endpoints,
                 handle: Callable[[str, str], Any] = _handle,
                 bind: Callable[[Any], Any] = _bound) -> None:
        self._read, self._new_handle, self._bind = read, handle, bind
        self._endpoints: dict[str, _Endpoint] = {}
        self._reading: asyncio.Task[None] | None = None
        self._read_at = float("-inf")

    async def find(self, model: str) -> Any:
        """The handle for ``model``; ModelNotFoundError or ModelNotReadyError otherwise."""
        found = self._endpoints.get(model)
        if found is None or not found.running:
            await self._refresh()
            found = self._endpoints.get(model)
        if found is None:
            raise ModelNotFoundError(f"no endpoint named {model!r} is deployed; "
                                     "`modelplane status` lists the endpoints",
                                     detail={"field": "model_name"})
        if not found.running:
            raise ModelNotReadyError(f"endpoint {model!r} is loading: none of its replicas "
                                     "serves yet; retry in a few seconds")
        return found.handle

    def forget(self, model: str) -> None:
        """Drop a handle whose deployment is gone (deleted, or replaced by another placement)."""
        self._endpoints.pop(model, None)

    async def _refresh(self) -> None:
        if self._reading is None or self._reading.done():
            if time.monotonic() - self._read_at < REFRESH_S:
                return
            self._read_at = time.monotonic()
            self._reading = asyncio.get_running_loop().create_task(self._update())
        # What is left of the read's own bound, not a fresh one for every call: calls
        # arriving during a read that hangs fail at once past it, not 5 s each.
        left = max(0.0, READ_WAIT_S - (time.monotonic() - self._read_at))
        try:
            await asyncio.wait_for(asyncio.shield(self._reading), left)
        except TimeoutError:  # the read goes on; the next call past it finds its answer
            raise ModelNotReadyError(
                f"Serve's controller did not say within {READ_WAIT_S:g} s which endpoints run "
                "(restarting or overloaded); endpoints already known keep answering; retry "
                "shortly") from None

    async def _update(self) -> None:
        try:
            seen = await asyncio.to_thread(self._read)
        except Exception as error:  # the controller restarting: keep what is known
            log.warning("could not read Serve's status: %s", error)
            return
        endpoints: dict[str, _Endpoint] = {}
        for model, (deployment, running) in seen.items():
            known = self._endpoints.get(model)
            if known is not None and known.deployment == deployment:
                handle = known.handle
            else:  # a lookup at the controller: off the event loop
                handle = self._bind(await asyncio.to_thread(self._new_handle, model, deployment))
            endpoints[model] = _Endpoint(deployment, running, handle)
        self._endpoints = endpoints


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's ``GRPCInferenceService``: server calls answered here, model calls by the
    endpoint's replicas. Methods not overridden answer UNIMPLEMENTED."""

    def __init__(self, directory: EndpointDirectory, link: LinkClient | None = None) -> None:
        self.directory = directory
        self.link = link  # the endpoints' own listeners through the ingress (serving.grpc_link)
        self._link_rest = LinkRest("gRPC calls")
        self.linked_calls = 0  # ModelInfer calls the endpoints answered over the link
        self.in_flight_bytes = 0  # the messages of the ModelInfer calls being answered

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        from modelplane import __version__

        return pb.ServerMetadataResponse(name="modelplane", version=__version__)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            reply = await self._forward(request.name, GrpcModelCall("ready", request.version))
        except ModelplaneError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=reply.value is True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        reply = await self._answer(request.name, GrpcModelCall("metadata", request.version), context)
        return metadata_response(reply.value)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        size = request.ByteSize()
        if self.in_flight_bytes + size > MAX_IN_FLIGHT_BYTES and self.in_flight_bytes:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"the gRPC ingress holds {self.in_flight_bytes:,} bytes of calls being "
                f"answered, and this one's {size:,} would pass {MAX_IN_FLIGHT_BYTES:,}; "
                "retry shortly"))
        self.in_flight_bytes += size
        try:
            return await self._infer(request, context)
        finally:
            self.in_flight_bytes -= size

    async def _infer(self, request: Any, context: Any) -> Any:
        metadata = context.invocation_metadata() or ()
        if self.link is not None:
            linked = await self._linked(request, metadata, context)
            if linked is not None:
                return linked
        call = await read_call_off_loop_if_heavy(request, metadata)
        reply = await self._answer(request.model_name, call, context)
        answer = reply.value
        assert isinstance(answer, GrpcInferAnswer)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, str(answer.parameters.get(
            "modelplane_request_id", ""))), (REPLICA_METADATA, reply.replica)))
        return response_from_answer(answer)

    async def _linked(self, request: Any, metadata: Any, context: Any) -> Any:
        """The endpoint replica's answer through the HTTP ingress, or None where the call
        must go through the handle (the link resting, or not carrying it)."""
        link = self.link
        if link is None or self._link_rest.resting:
            return None
        try:
            await self.directory.find(request.model_name)  # unknown or loading: said as ever
        except ModelplaneError as error:
            await _abort(context, GrpcFailure.of(error))
        path = endpoint_route_prefix(request.model_name) + GRPC_LINK_PATH
        replica = ""
        try:
            status, content_type, payload, replica = await link.post(
                path, request.SerializeToString(), linked_call_head(metadata))
        except LinkUnavailable as why:
            answer, reason = None, str(why)
        else:
            answer = reply_from_link(status, content_type, payload, replica)
            reason = f"the link answered {status} {content_type}"
        if answer is None:
            self._link_rest.begin(reason)
            return None
        self.linked_calls += 1
        if isinstance(answer, GrpcReply):
            await _abort(context, answer.value, answer.replica)  # type: ignore[arg-type]
        context.set_trailing_metadata(((REQUEST_ID_HEADER, answer.parameters[
            "modelplane_request_id"].string_param), (REPLICA_METADATA, replica)))
        return answer

    async def _answer(self, model: str, call: Any, context: Any) -> GrpcReply:
        """The replica's reply, or the call aborted with the status its failure maps to."""
        try:
            reply = await self._forward(model, call)
        except ModelplaneError as error:
            await _abort(context, GrpcFailure.of(error))
        if isinstance(reply.value, GrpcFailure):
            await _abort(context, reply.value, reply.replica)
        return reply

    async def _forward(self, model: str, call: Any) -> GrpcReply:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
        )

        for attempt in range(2):
            handle = await self.directory.find(model)
            try:
                return await handle.remote(call)  # type: ignore[no-any-return]
            except BackPressureError:
                raise overloaded_error(None) from None
            except (ReplicaUnavailableError, RayActorError) as error:
                # The replica died mid-call, or none could take it: UNAVAILABLE, which a
                # caller may retry, as REST answers 503; not UNKNOWN.
                raise ModelNotReadyError(
                    f"endpoint {model!r} has no replica able to answer now "
                    f"({type(error).__name__}); retry shortly",
                    detail={"reason": "replica_unavailable"}) from None
            except DeploymentUnavailableError:
                # Deleted, or replaced when the endpoint changed placement: look again once.
                self.directory.forget(model)
                if attempt:
                    raise ModelNotReadyError(f"endpoint {model!r} is not available; "
                                             "`modelplane status` says why") from None
        raise AssertionError("unreachable")


async def _abort(context: Any, failure: GrpcFailure, replica: str = "") -> None:
    metadata = [(ERROR_CODE_METADATA, failure.code)]
    if failure.request_id:
        metadata.append((REQUEST_ID_HEADER, failure.request_id))
    if replica:
        metadata.append((REPLICA_METADATA, replica))
    await context.abort(grpc_code(failure.http_status), failure.message, tuple(metadata))


class GrpcIngress:
    """The Serve deployment running the gRPC server (one replica, on the head node)."""

    async def __init__(self, host: str, port: int, max_message_bytes: int,
                       http_port: int | None = None) -> None:
        self.directory = EndpointDirectory()
        link = await _link_to_ingress(host, http_port)
        self.server = grpc.aio.server(maximum_concurrent_rpcs=MAX_CONCURRENT_CALLS, options=[
            # Two servers on one port would split the calls between them silently: a second
            # platform on the same port must fail to start instead.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ])
        self.servicer = InferenceServicer(self.directory, link)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        await _bind(self.server, f"{host}:{port}")
        await self.server.start()
        self.address = f"{host}:{port}"
        log.info("gRPC inference service listening on %s", self.address)

    def linked_calls(self) -> int | None:
        """ModelInfer calls answered over the link (None: this ingress has none)."""
        return None if self.servicer.link is None else self.servicer.linked_calls

    async def __del__(self) -> None:
        # In-flight calls get a few seconds; Serve does not count them, so they would
        # otherwise be cut when the replica stops.
        await self.server.stop(grace=5)


async def _link_to_ingress(host: str, http_port: int | None) -> LinkClient | None:
    """A client for the endpoints' own listeners through this node's HTTP ingress, where it
    is HAProxy (this replica runs on the head, which always runs one); None: the handles."""
    address = None if http_port is None else ingress_address(host, http_port)
    if address is None:
        return None
    try:
        secret = await link_secret_bounded()
    except Exception as error:
        log.warning("gRPC calls go by Serve's handles: no link secret (%r)", error)
        return None
    return LinkClient(address, secret)


async def _bind(server: Any, address: str) -> None:
    """Bind ``address``, waiting while the replica this one replaces still holds it."""
    deadline = time.monotonic() + BIND_WAIT_S
    while True:
        try:
            server.add_insecure_port(address)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cannot listen for gRPC on {address}: the port is taken; free it or set "
                    "MODELPLANE_GRPC_PORT to another port (0 turns gRPC off)") from None
            await asyncio.sleep(0.5)
