"""The inference core: one endpoint's v2 routes, transport-free.

``InferenceCore.handle`` takes a method, the path below ``/v2/models/{endpoint}``, the
headers and the body, and returns status, headers and body. It decodes, picks the version
(pin, stickiness or weights), validates, runs through the version's backend, encodes,
records statistics and schedules shadows after the answer. Every answer carries the
server's own request id (``x-modelplane-request-id``, and ``modelplane_request_id`` in the
response ``parameters``): feedback joins on it, never on the client's ``id``, so a caller
cannot choose the keys its labels land on. The Serve deployments
(colocated endpoint, isolated router) are thin adapters around it; so are the tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from modelplane.errors import ModelplaneError, error_body
from serving.errors import (
    ForbiddenError,
    InferenceFailedError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
)
from serving.feedback_auth import FeedbackAuthorizer
from serving.monitoring.feedback_wire import parse_feedback
from serving.monitoring.observations import VersionMonitoring, data_age_seconds
from serving.monitoring.routing import ROUTED_PINNED, ROUTED_RANDOMLY, ROUTED_STICKY
from serving.monitoring.stats import ENDPOINT_LEVEL, StatsRecorder, compare_outputs
from serving.names import CALLER_KEY_HEADER, endpoint_route_prefix
from serving.protocol import DecodedRequest, decode_request, encode_response, from_numpy_dtype
from serving.protocol.grpc_messages import HEAVY_MESSAGE_BYTES
from serving.protocol.tensors import held_bytes
from serving.routing import Router
from serving.runners.base import element_count
from serving.schemas import RETRY_AFTER_S, EndpointConfig, TensorSignature, VersionConfig
from serving.validation import (
    check_requested_outputs,
    numpy_dtype,
    rejection_reason,
    validate_inputs,
)

log = logging.getLogger(__name__)
# The Open Inference Protocol's platform names (Triton's backends) for each model kind.
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch",
             "torch_export": "pytorch_libtorch", "python": "python"}
_PATH = re.compile(r"^(?:/versions/(?P<version>[^/]+))?(?P<action>/infer|/ready|/feedback)?/?$")
MAX_SHADOWS_IN_FLIGHT = 256
# And what they hold (inputs, the primary's answer, the bodies binary inputs are views of):
# 256 slow shadows of 64 MiB requests had the replica, and its primary traffic, killed.
MAX_SHADOW_BYTES = 256 << 20
# A request its version has not answered in this long is counted then, as a 504 (stalled),
# in the statistics shipped next: one that never ends would otherwise never be counted, and
# a version hanging on some requests would be judged on those it answers. Its answer, if it
# comes, is still sent, and not counted again. A request its caller abandons sooner is
# counted apart, as abandoned: not as an error (anyone may disconnect early), but a
# rollout compares the candidate's share of them with stable's.
STALLED_AFTER_S = 60.0
# A body past this (or compressed) is decoded off the event loop, as a gRPC message is.
HEAVY_BODY_BYTES = HEAVY_MESSAGE_BYTES
# An answer of more elements than this is encoded off the event loop: as JSON a million
# floats take 0.1 s, and a batch-scoring answer of four million held every other caller of
# the replica (its readiness and health checks too) for seconds.
ENCODE_OFF_LOOP_ELEMENTS = 50_000
REQUEST_ID_HEADER = "x-modelplane-request-id"
REQUEST_ID_PARAMETER = "modelplane_request_id"
MAX_FEEDBACK_BODY_BYTES = 4 * 1024 * 1024
BODY_LIMIT_SETTING = "MODELPLANE_MAX_REQUEST_MB"
_VERSION = re.compile(r"[0-9]{1,9}")  # ASCII: isdigit() takes '²' (int() refuses it), int() takes '٣'
# Takes (endpoint, [(request_id, labels)]) and answers what the Monitor joined.
FeedbackSink = Callable[[str, list[tuple[str, list[Any]]]], Awaitable[dict[str, Any]]]
T = TypeVar("T")


class VersionBackend(Protocol):
    """Where a version runs: in this process (colocated) or behind a handle (isolated)."""

    config: VersionConfig

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    async def mirror(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``infer`` for a shadow: answers the same, and never holds up a primary's call."""
        ...


@dataclass
class HttpResult:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Inferred:
    """An answered inference, before a transport encodes it: ``outputs`` are the ones asked for."""

    endpoint: str
    version: int
    request_id: str
    request: DecodedRequest
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Refused:
    """An inference the core refused or failed, already recorded; ``error`` says why."""

    error: ModelplaneError
    request_id: str


def _check_caller(headers: Mapping[str, str], key_sha256: str) -> None:
    """Refuse a caller without the endpoint's key (a benchmark's scratch endpoint: load
    from anyone else would move the figures a pipeline's benchmark gate acts on)."""
    sent = headers.get(CALLER_KEY_HEADER) or ""
    digest = hashlib.sha256(sent.encode(errors="replace")).hexdigest()
    if not hmac.compare_digest(digest, key_sha256):
        raise ForbiddenError("this is a version benchmark's scratch endpoint: only its "
                             "benchmark may send it requests",
                             detail={"field": CALLER_KEY_HEADER})


def _encode_rest(answer: Inferred) -> HttpResult:
    encoded = encode_response(answer.outputs, model_name=answer.endpoint,
                              model_version=str(answer.version), request=answer.request,
                              response_id=answer.request_id,
                              parameters={REQUEST_ID_PARAMETER: answer.request_id})
    return HttpResult(200, encoded.body, {**encoded.headers, REQUEST_ID_HEADER: answer.request_id})


def _json(status: int, payload: Any) -> HttpResult:
    # No x-request-id header: Serve's proxy sets its own; ours is in the body. default=str:
    # an error's detail holding a NumPy scalar must still give an answer.
    return HttpResult(status, json.dumps(payload, default=str).encode(), {"content-type": "application/json"})


def asks_readiness(subpath: str) -> bool:
    """Whether ``subpath`` (under an endpoint's prefix) is its or a version's ready probe."""
    match = _PATH.fullmatch(subpath)
    return match is not None and match.group("action") == "/ready"


def error_result(error: ModelplaneError, request_id: str) -> HttpResult:
    # The v2 spec's error body is {"error": "<message>"}; tritonclient shows that field,
    # so the message goes there and the stable code beside it.
    result = _json(error.http_status, error_body(error, request_id))
    if request_id:
        result.headers[REQUEST_ID_HEADER] = request_id
    if error.http_status == 503:  # every 503 here is a passing state: say when to ask again
        result.headers["retry-after"] = str(error.detail.get("retry_after_s", RETRY_AFTER_S))
    return result


# A keyed BLAKE2b of a counter is a pseudo-random function: without this process's key
# the next id cannot be guessed, and the counter keeps ids unique. Reading 128 fresh
# random bits per request instead (a getrandom() system call) showed as a sixth of the
# replica's busy samples under load.
_REQUEST_ID_KEY = secrets.token_bytes(32)
_request_numbers = itertools.count()


def new_request_id() -> str:
    """The server's id for one request: 128 pseudo-random bits, so nobody can guess one
    ahead (feedback names the request it labels)."""
    return hashlib.blake2b(next(_request_numbers).to_bytes(8, "little"), key=_REQUEST_ID_KEY,
                           digest_size=16).hexdigest()


def body_too_large(size: int, limit: int, what: str) -> PayloadTooLargeError:
    """The 413 for a body over ``limit``, naming the limit and the setting behind it."""
    return PayloadTooLargeError(
        f"the {what} is {size} bytes or more, over this endpoint's limit of {limit} bytes "
        f"({BODY_LIMIT_SETTING} for infer bodies, {MAX_FEEDBACK_BODY_BYTES} bytes for feedback); "
        "send smaller batches",
        detail={"field": "body", "size": size, "limit": limit},
    )


def tensor_metadata(specs: list[TensorSignature]) -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "datatype": from_numpy_dtype(numpy_dtype(spec.dtype)) if spec.dtype != "string" else "BYTES",
            "shape": [-1 if dim is None else dim for dim in spec.shape],
        }
        for spec in specs
    ]


class InferenceCore:
    """The request path of one endpoint; swap configuration and backends with ``update``."""

    def __init__(self, config: EndpointConfig, backends: Mapping[int, VersionBackend],
                 *, feedback_sink: FeedbackSink | None = None,
                 feedback_authorizer: FeedbackAuthorizer | None = None) -> None:
        # Set when the recorder holds a busy second's observations: the replica's shipper
        # takes it then rather than at its interval, so the request path never runs the
        # kernels over them (see StatsRecorder).
        self.stats_due = asyncio.Event()
        self.recorder = StatsRecorder(when_full=self.stats_due.set)
        self.feedback_sink = feedback_sink
        self._fixed_authorizer = feedback_authorizer
        self.feedback_authorizer = feedback_authorizer or _authorizer_for(config, None)
        self.monitoring: dict[int, VersionMonitoring] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._shadow_bytes = 0  # what the shadows in flight hold
        self.shadows_dropped = 0
        # Requests in their version's hands: ticket -> (version, way routed, started).
        self._in_flight: dict[int, tuple[int, str, float]] = {}
        self._tickets = itertools.count()
        self.update(config, backends)

    def update(self, config: EndpointConfig, backends: Mapping[int, VersionBackend]) -> None:
        """Install a new route table and version set (one assignment: requests see old or new)."""
        self.monitoring = _monitoring_for(config, backends, self.monitoring)
        if self._fixed_authorizer is None:
            self.feedback_authorizer = _authorizer_for(config, self.feedback_authorizer)
        self._state = (config, dict(backends), Router.compile(config.routes))
        self.recorder.enabled = config.monitoring
        self.recorder.monitoring = self.monitoring

    def route(self, config: EndpointConfig) -> None:
        """Install ``config``, which differs from the current one only in its routes and
        generation (the version set and its backends stay)."""
        self.update(config, self._state[1])

    @property
    def config(self) -> EndpointConfig:
        return self._state[0]

    def take_stats(self) -> StatsRecorder:
        """The statistics since the last call, replaced by a fresh recorder; requests
        stalled past :data:`STALLED_AFTER_S` are counted in them."""
        self._count_stalled(time.perf_counter())
        self.stats_due.clear()
        taken, self.recorder = self.recorder, StatsRecorder(
            enabled=self.recorder.enabled, monitoring=self.monitoring,
            when_full=self.stats_due.set)
        return taken

    def _count_stalled(self, now: float, tickets: Iterable[int] | None = None) -> None:
        """Count as stalled the requests in flight past STALLED_AFTER_S (of ``tickets``,
        where given), once."""
        for ticket in list(self._in_flight if tickets is None else tickets):
            version, routed, started = self._in_flight.get(ticket, (0, "", now))
            if now - started > STALLED_AFTER_S:
                del self._in_flight[ticket]
                self.recorder.record(version, 504, now - started, "stalled", routed=routed)

    def body_limit(self, subpath: str) -> int:
        """The largest body this path accepts, checked before the body is read."""
        if subpath.rstrip("/").endswith("/feedback"):
            return MAX_FEEDBACK_BODY_BYTES
        return self.config.max_body_bytes

    def refuse(self, error: ModelplaneError) -> HttpResult:
        """An answer for a request refused before ``handle`` (its body was too large)."""
        request_id = new_request_id()
        self.recorder.record(ENDPOINT_LEVEL, error.http_status, 0.0, error.code)
        self.recorder.record_rejection(ENDPOINT_LEVEL, rejection_reason(error))
        return error_result(error, request_id)

    async def handle(
        self, method: str, subpath: str, headers: Mapping[str, str], body: bytes
    ) -> HttpResult:
        started = time.perf_counter()
        config, backends, router = self._state
        request_id = new_request_id()
        try:
            match = _PATH.fullmatch(subpath)
            if match is None:
                raise ModelNotFoundError(
                    f"no route {subpath!r} under {endpoint_route_prefix(config.endpoint)}")
            pinned = _parse_version(match.group("version"), backends, config.endpoint)
            action = match.group("action")
            if action is None or action == "/ready":
                if method != "GET":
                    raise InvalidRequestError(f"use GET for {subpath or 'metadata'}",
                                              detail={"field": "method"})
                return self._metadata(config, backends, router, pinned, ready=action == "/ready")
            if method != "POST":
                raise InvalidRequestError("inference requests must be POST", detail={"field": "method"})
            if action == "/feedback":
                return await self._feedback(config.endpoint, headers, body)
        except Exception as error:
            failure = self._failed(error, ENDPOINT_LEVEL, ROUTED_RANDOMLY, started, request_id)
            return error_result(failure, request_id)

        def decode(config: EndpointConfig) -> DecodedRequest:
            if len(body) > config.max_body_bytes:
                raise body_too_large(len(body), config.max_body_bytes, "request body")
            return decode_request(body, headers, max_body_bytes=config.max_body_bytes)

        # Inflating and parsing a large or compressed body takes the event loop for as long
        # as it takes (a 64 KiB gzip body holds a second of JSON): off it, so the replica's
        # other requests, readiness and metadata are answered meanwhile.
        heavy = len(body) > HEAVY_BODY_BYTES or bool(
            headers.get("content-encoding", "").strip().lower() not in ("", "identity"))
        outcome = await self.infer(decode, _encode_rest, headers, version=match.group("version"),
                                   started=started, request_id=request_id,
                                   decode_off_loop=heavy)
        if isinstance(outcome, Refused):
            return error_result(outcome.error, outcome.request_id)
        return outcome

    async def infer(self, decode: Callable[[EndpointConfig], DecodedRequest],
                    encode: Callable[[Inferred], T], headers: Mapping[str, str], *,
                    version: str | None = None, started: float | None = None,
                    request_id: str | None = None, decode_off_loop: bool = False) -> T | Refused:
        """One inference, whatever the transport (REST here, gRPC in ``serving.grpc_calls``).

        ``decode`` turns the transport's request into tensors, raising errors that name the
        field; ``encode`` turns the answer into the transport's response (and may refuse an
        output it cannot carry). Between them everything is shared: the version is pinned
        (``version``), sticky (``headers``) or weighted, inputs are checked against its
        signature, it runs, statistics are recorded and shadows start after the answer.
        Errors come back as :class:`Refused`, already recorded.
        """
        started = time.perf_counter() if started is None else started
        request_id = request_id or new_request_id()
        config, backends, router = self._state
        number = ENDPOINT_LEVEL
        routed = ROUTED_RANDOMLY
        counted_stalled = False
        try:
            if config.caller_key_sha256 is not None:
                _check_caller(headers, config.caller_key_sha256)
            pinned = _parse_version(version, backends, config.endpoint)
            request = (await asyncio.to_thread(decode, config) if decode_off_loop
                       else decode(config))
            sticky_key = headers.get(router.sticky_header)
            routed = ROUTED_PINNED if pinned is not None else (
                ROUTED_STICKY if sticky_key else ROUTED_RANDOMLY)
            number = pinned if pinned is not None else router.pick(sticky_key)
            backend = backends[number]
            model = f"{config.endpoint}:{number}"
            arrays = validate_inputs(request, backend.config.inputs, model=model)
            wanted = check_requested_outputs(request, backend.config.outputs, model=model)
            ticket = next(self._tickets)
            self._in_flight[ticket] = (number, routed, started)
            try:
                outputs = await backend.infer(arrays)
                chosen = outputs if wanted is None else {name: outputs[name] for name in wanted}
                inferred = Inferred(config.endpoint, number, request_id, request, chosen)
                answer = (await asyncio.to_thread(encode, inferred)
                          if element_count(chosen) > ENCODE_OFF_LOOP_ELEMENTS
                          else encode(inferred))
            except asyncio.CancelledError:
                # Its caller gave up (a disconnect, a gRPC deadline): a 504 where it had
                # stalled, else abandoned, which no error rate or latency counts (anyone
                # may leave early) but a rollout compares with stable's share.
                self._count_stalled(time.perf_counter(), (ticket,))
                if ticket in self._in_flight:
                    self.recorder.abandon(number, routed)
                raise
            finally:
                counted_stalled = self._in_flight.pop(ticket, None) is None
            if counted_stalled:
                return answer
            elapsed = time.perf_counter() - started
            # A NaN answer to a NaN input is the caller's: anyone could send those.
            self.recorder.record(number, 200, elapsed, routed=routed,
                                 not_finite=not _all_finite(chosen) and _all_finite(arrays))
            age = data_age_seconds(request.parameters, time.time()) if request.parameters else None
            # What the request holds, counted once for the monitoring and every shadow.
            held = (held_bytes([*arrays.values(), *outputs.values()])
                    if self.recorder.enabled or router.shadows else 0)
            self.recorder.observe(number, request_id, arrays, outputs, age, routed, held=held)
            if pinned is None:
                for shadow in router.shadows:
                    self._start_shadow(backends.get(shadow), arrays, outputs, elapsed, held)
            return answer
        except Exception as error:
            return Refused(self._failed(error, number, routed, started, request_id,
                                        record=not counted_stalled), request_id)

    def _failed(self, error: Exception, version: int, routed: str, started: float,
                request_id: str, *, record: bool = True) -> ModelplaneError:
        """Record a failed request (unless it was counted already, as stalled) and return
        the error to answer with."""
        endpoint = self.config.endpoint
        if isinstance(error, ModelplaneError):
            if record:
                self.recorder.record(version, error.http_status, time.perf_counter() - started,
                                     error.code, routed=routed)
            if record and 400 <= error.http_status < 500:
                self.recorder.record_rejection(version, rejection_reason(error))
            if error.http_status >= 500:
                log.warning("request %s to %s failed: %s", request_id, endpoint, error.message)
            return error
        # A backend failure must never take routing down: a 500 naming the request id.
        log.error("request %s to %s failed unexpectedly", request_id, endpoint, exc_info=error)
        if record:
            self.recorder.record(version, 500, time.perf_counter() - started, "internal_error",
                                 routed=routed)
        return InferenceFailedError(
            f"{endpoint}:{version} failed ({type(error).__name__}); request id "
            f"{request_id} is in the replica log"
        )

    async def _feedback(self, endpoint: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        """Ground truth for earlier requests from a label source, handed to the Monitor."""
        # The token first: an anonymous caller learns nothing, not even parse errors.
        await self.feedback_authorizer.check(headers, endpoint)
        if len(body) > MAX_FEEDBACK_BODY_BYTES:
            raise body_too_large(len(body), MAX_FEEDBACK_BODY_BYTES, "feedback body")
        items = parse_feedback(body)
        sink = self.feedback_sink
        if sink is None:
            raise ModelNotReadyError("feedback needs the Monitor, which this replica cannot "
                                     "reach yet; retry in a few seconds")
        return _json(200, await sink(endpoint, items))

    def _metadata(self, config: EndpointConfig, backends: Mapping[int, VersionBackend],
                  router: Router, pinned: int | None, *, ready: bool) -> HttpResult:
        if ready:
            asked = [pinned] if pinned is not None else [v for v, w in config.routes.weights.items()
                                                         if w > 0 and v in backends]
            unloadable = {v: getattr(backends[v], "error", None) for v in asked}
            unloadable = {v: e for v, e in unloadable.items() if e is not None}
            if unloadable:
                return _json(503, {"name": config.endpoint, "ready": False, "error": "; ".join(
                    f"version {v} could not be loaded: {e}" for v, e in sorted(unloadable.items()))})
            return _json(200, {"name": config.endpoint, "ready": True})
        shown = pinned if pinned is not None else (router.versions[0] if router.versions
                                                    else min(backends, default=None))
        if shown is None:
            raise ModelNotFoundError(f"endpoint {config.endpoint!r} has no versions")
        spec = backends[shown].config
        return _json(200, {
            "name": config.endpoint,
            "versions": [str(v) for v in sorted(backends)],
            "platform": PLATFORMS.get(spec.kind, spec.kind),
            "inputs": tensor_metadata(spec.inputs),
            "outputs": tensor_metadata(spec.outputs),
            "parameters": {"version": str(shown), "weights": {str(k): v for k, v in config.routes.weights.items()}},
        })

    def _start_shadow(self, backend: VersionBackend | None, arrays: dict[str, np.ndarray],
                      primary: dict[str, np.ndarray], primary_latency: float,
                      held: int) -> None:
        """Mirror the request to ``backend``; ``held``: the bytes the request keeps alive."""
        if backend is None:
            return
        # One request larger than the bound is mirrored while no other shadow holds any:
        # the endpoint accepted its size, and a shadow never mirroring it failed a rollout.
        if len(self._shadow_tasks) >= MAX_SHADOWS_IN_FLIGHT or \
                (self._shadow_bytes and self._shadow_bytes + held > MAX_SHADOW_BYTES):
            # A slow shadow must not grow memory without bound; the rollout judging it
            # hears of each one it missed.
            self.shadows_dropped += 1
            self.recorder.record_shadow_dropped(backend.config.version)
            return
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(backend, arrays, primary, primary_latency)
        )
        self._shadow_tasks.add(task)
        self._shadow_bytes += held

        def done(finished: asyncio.Task[None]) -> None:
            self._shadow_tasks.discard(finished)
            self._shadow_bytes -= held

        task.add_done_callback(done)

    async def _run_shadow(self, backend: VersionBackend, arrays: dict[str, np.ndarray],
                          primary: dict[str, np.ndarray], primary_latency: float) -> None:
        # Yield first so the primary response goes out before the shadow starts.
        await asyncio.sleep(0)
        started = time.perf_counter()
        version = backend.config.version
        try:
            outputs = await backend.mirror(arrays)
        except Exception as error:
            self.recorder.record_shadow(version, agreed=None, abs_diff=0.0,
                                        latency_delta_s=0.0, failed=True)
            log.debug("shadow %s failed: %s", version, error)
            return
        latency = time.perf_counter() - started
        if not _all_finite(outputs):
            if _not_finite_where_finite(outputs, primary):
                # A broken model answers; its NaNs where the primary has numbers are its failure.
                self.recorder.record_shadow(version, agreed=None, abs_diff=0.0,
                                            latency_delta_s=latency - primary_latency, failed=True)
            # Else the primary answered no number there either (an input both cannot score):
            # no evidence against the shadow, and nothing to compare.
            return
        try:
            agreed, diff = compare_outputs(backend.config.task, primary, outputs)
        except Exception:  # answers no comparison foresaw: no evidence either way, said aloud
            log.warning("could not compare shadow %s with the primary:\n%s", version,
                        traceback.format_exc())
            return
        self.recorder.record_shadow(version, agreed=agreed, abs_diff=diff,
                                    latency_delta_s=latency - primary_latency, failed=False)


def _monitoring_for(config: EndpointConfig, backends: Mapping[int, VersionBackend],
                    previous: dict[int, VersionMonitoring]) -> dict[int, VersionMonitoring]:
    """Per version, how to monitor it; a version whose configuration is unchanged keeps
    its parsed profiles (parsing a profile takes milliseconds, a reconfigure is frequent)."""
    result: dict[int, VersionMonitoring] = {}
    for number, backend in backends.items():
        spec = previous.get(number)
        version = backend.config
        if spec is None or spec.source != VersionMonitoring.source_of(version):
            spec = VersionMonitoring.build(version)
        result[number] = spec
    return result


def _authorizer_for(config: EndpointConfig, current: FeedbackAuthorizer | None) -> FeedbackAuthorizer:
    """The feedback check for ``config``; the current one (and its cache) while unchanged."""
    url = config.control_plane_url.rstrip("/") if config.control_plane_url else None
    if (current is not None and current.authority_url == url
            and current.allows_anonymous == config.feedback_allows_anonymous):
        return current
    return FeedbackAuthorizer(config.control_plane_url,
                              allows_anonymous=config.feedback_allows_anonymous)


def _parse_version(raw: str | None, backends: Mapping[int, VersionBackend], endpoint: str) -> int | None:
    if raw is None:
        return None
    if _VERSION.fullmatch(raw) is None:
        raise InvalidRequestError(
            f"version {raw[:32]!r} is not a version number; use /versions/<digits 0-9>/infer",
            detail={"field": "version"},
        )
    if int(raw) not in backends:
        raise ModelNotFoundError(
            f"endpoint {endpoint!r} has no version {raw!r} loaded; loaded: {sorted(backends)}",
            detail={"field": "version"},
        )
    return int(raw)


def _not_finite_where_finite(answer: Mapping[str, np.ndarray],
                             reference: Mapping[str, np.ndarray]) -> bool:
    """Whether ``answer`` holds a NaN or infinity where ``reference`` holds a number (or an
    output ``reference`` lacks or shapes otherwise)."""
    for name, array in answer.items():
        if getattr(getattr(array, "dtype", None), "kind", "") not in ("f", "c"):
            continue
        broken = ~np.isfinite(array)
        if not broken.any():
            continue
        theirs = reference.get(name)
        if theirs is None or np.shape(theirs) != array.shape:
            return True
        theirs = np.asarray(theirs)
        if theirs.dtype.kind not in ("f", "c") or (broken & np.isfinite(theirs)).any():
            return True
    return False


def _all_finite(arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether every value of the floating-point arrays is finite (no NaN, no infinity)."""
    for array in arrays.values():
        kind = getattr(getattr(array, "dtype", None), "kind", "")
        if kind in ("f", "c") and not np.isfinite(array).all():
            return False
    return True
