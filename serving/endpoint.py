"""Serve deployments of the data plane, thin adapters around :class:`InferenceCore`.

- ``EndpointServer``: the colocated placement. Every replica loads every version of its
  endpoint and makes the weighted choice in-process: one hop.
- ``EndpointRouter`` + ``ModelServer``: the isolated placement. The router makes the same
  choice and forwards through a handle to one deployment per version.
- ``InferenceServer``: ``/v2`` itself (server health and metadata, and 404s for models
  that no endpoint serves).

Configuration arrives as the Serve ``user_config`` (an :class:`EndpointConfig`); Serve
calls ``reconfigure`` on every live replica when it changes, so the version set changes
without restarting any replica. Weights, shadows and stickiness also arrive from the
route board (:mod:`serving.route_board`), which changes them without Serve taking the
replica out of its ingress while it reconfigures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelplane.errors import ModelplaneError
from serving.artifact_cache import ArtifactFetchError
from serving.backends import LocalVersion, RemoteVersion, UnloadableVersion, load_runner
from serving.backlog import Backlog
from serving.cancellation import raise_if_cancelled
from serving.core import (
    HttpResult,
    InferenceCore,
    _json,
    asks_readiness,
    body_too_large,
    error_result,
    new_request_id,
)
from serving.detached import BoundedLookup
from serving.errors import InvalidRequestError, ModelNotFoundError, ModelNotReadyError
from serving.grpc_link import GRPC_LINK_PATH
from serving.lean_ingress import lean_ingress_enabled, start_lean_ingress
from serving.link_auth import link_secret_bounded
from serving.link_client import LinkClient, VersionLink
from serving.monitoring.monitor import get_monitor
from serving.monitoring.observations import attach_profiles
from serving.monitoring.stats import ServedConfig, drop_observations
from serving.names import (
    SERVER_ROUTE,
    endpoint_route_prefix,
    link_route,
    model_server_name,
    version_app_name,
)
from serving.route_board import WAIT_S, PostedRoutes, get_route_board
from serving.schemas import EndpointConfig, VersionConfig
from serving.version_link import LINK_ELSEWHERE, LinkApp, start_version_link

log = logging.getLogger(__name__)


REPLICA_HEADER = "x-modelplane-replica"
# A request reaches ``__call__`` on a replica whose own listener serves the data path only
# while the ingress sends to Serve's proxy, its fallback: in the moment after the replica
# starts (the endpoint answers, but on a slower path than ready promises: not ready yet) and
# while a reconfigure runs on a replica already serving (still ready).
WARMING = ("this replica started moments ago and the ingress does not send to it directly "
           "yet; it answers ready once it does")
BOARD_RETRY_S = 1.0  # how often a replica looks for a route board that is not there
LOOP_RESTART_S = 1.0  # how soon a replica's background loop starts again after an error
# A replica's first configuration waits this long for the board's handle, and as long
# again for its table.
FIRST_READ_TIMEOUT_S = 2.0
# Shipments kept for a Monitor that is not there or does not answer: five minutes at the
# default interval, as far back as the Monitor's windows reach; past them the oldest go.
# Each is taken at its interval and keeps the time it was taken, so the Monitor files it in
# the seconds it was recorded in. The newest UNSENT_OBSERVED keep their observations (the
# rows drift is judged on, the predictions labels join); older ones only their counts and
# latencies, their requests counted as unobserved, so a long outage holds a few MB at most.
UNSENT_LIMIT = 300
UNSENT_OBSERVED = 60
GOODBYE_S = 5.0  # what a stopping replica spends on its goodbye at most
RECORD_TIMEOUT_S = 5.0  # a shipment the Monitor has not answered by then goes again later
# How long a replica waits on a GCS lookup (the Monitor's or the route board's handle)
# before it goes on without one; the lookup itself goes on, for a later attempt to take.
LOOKUP_TIMEOUT_S = 5.0


class Shipped(StrEnum):
    """How a shipment to the Monitor went."""

    SENT = "sent"
    UNANSWERED = "unanswered"  # no answer in time: sent again next time
    GONE = "gone"  # the actor behind the handle is dead: look the Monitor up again


def _to_response(result: HttpResult, replica: str | None = None) -> Response:
    headers = result.headers if replica is None else {**result.headers, REPLICA_HEADER: replica}
    return Response(content=result.body, status_code=result.status, headers=headers)


def _replica_id() -> tuple[str, bool]:
    """This replica's id, and whether it is a Serve replica's (not: a unit test's)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id), True
    except Exception:  # outside a replica (unit tests)
        return f"pid-{os.getpid()}", False


def served_by(config: EndpointConfig) -> ServedConfig:
    """What the Monitor needs to know of the configuration a delta was recorded under."""
    return ServedConfig(config.incarnation, config.generation,
                        tuple(v.version for v in config.versions), config.stats_interval_s)


async def _kept_running(name: str, loop_forever: Callable[[], Awaitable[None]]) -> None:
    """``loop_forever``, started again after any error it did not foresee: a replica whose
    shipper died would keep its statistics (and their memory) for ever, and one whose route
    follower died would miss every route change posted on the board (a rollback's too)."""
    while True:
        try:
            await loop_forever()
            return
        except Exception:
            log.error("%s stopped on an unexpected error; starting it again:\n%s", name,
                      traceback.format_exc())
            await asyncio.sleep(LOOP_RESTART_S)


class _CoreAdapter:
    """HTTP in and out of the core, and the statistics shipped to the Monitor about once a
    second, off the request path (accounted between requests, a step at a time). Shared by
    the colocated endpoint and the isolated router.
    """

    core: InferenceCore | None
    _shipper: asyncio.Task[None] | None = None
    _shipping: asyncio.Lock | None = None  # held while a shipment is taken
    _sending: asyncio.Lock | None = None  # held while kept shipments are sent
    _sender: asyncio.Task[None] | None = None  # the shipper's sending task
    _sequence = 0  # the number of the newest shipment
    _monitor: Any = None  # the Monitor's handle, once looked up
    _monitor_lookups: BoundedLookup | None = None  # the GCS lookups of the Monitor's handle
    _board_lookups: BoundedLookup | None = None  # and of the route board's
    # Shipments the Monitor was not seen to take, oldest first: sent again, in order, each
    # with its number, the configuration it was recorded under and when it was taken.
    _unsent: deque[tuple[int, dict[int, Any], ServedConfig, float]] | None = None
    _dropped = 0  # the oldest kept shipments dropped since the Monitor last took one
    _in_serve = False  # a Serve replica, which says goodbye when Serve stops it
    _goodbye_said = False
    _leaving = False  # set once the goodbye has the shipments: none goes after it
    _replica: str = ""
    _profiles_shipped: frozenset[str] = frozenset()  # reference profiles the Monitor holds
    _follower: asyncio.Task[None] | None = None
    # The newest route board posting seen: applied, or kept until the version it names loads.
    _posted: PostedRoutes | None = None
    _lean: Any = None  # the lean ingress's server (serving.lean_ingress), where it is on
    _backlog: Backlog | None = None  # what the lean ingress counts for the models

    async def __call__(self, request: Request) -> Response:
        core = self.core
        if core is None:
            return _to_response(error_result(ModelNotReadyError("endpoint is loading"), ""))
        subpath = _subpath(request, core.config.endpoint)
        if subpath == GRPC_LINK_PATH:  # the gRPC ingress goes by the handle instead
            return Response(LINK_ELSEWHERE, status_code=503, media_type="text/plain")
        if (self._lean is not None and not self._lean.app.reached and request.method == "GET"
                and asks_readiness(subpath)):
            return _to_response(_json(503, {"name": core.config.endpoint, "ready": False,
                                            "warming": True, "error": WARMING}), self._replica)
        try:
            body = await read_body(request, core.body_limit(subpath)) if request.method == "POST" else b""
        except ModelplaneError as error:
            return _to_response(core.refuse(error), self._replica)
        result = await core.handle(request.method, subpath, request.headers, body)
        return _to_response(result, self._replica)

    async def grpc(self, call: Any) -> Any:
        """A call from the gRPC ingress (``serving.grpc_ingress``), answered by this core."""
        from serving.grpc_calls import answer_grpc

        return await answer_grpc(self.core, call, self._replica)

    async def _start_lean_once(self, first: bool) -> None:
        """With MODELPLANE_LEAN_INGRESS on, the lean ingress takes this replica's port, on the
        first configuration only: Serve tells HAProxy the port after it, so no request is
        in flight on Serve's server when it is replaced."""
        if first and lean_ingress_enabled():
            self._lean = await start_lean_ingress(self, {REPLICA_HEADER: self._replica},
                                                  self._backlog)

    def _new_core(self, config: EndpointConfig, backends: dict[str, Any]) -> InferenceCore:
        return InferenceCore(config, backends, feedback_sink=self._send_feedback)

    async def _send_feedback(self, endpoint: str, items: list[tuple[str, list[Any]]]) -> dict[str, Any]:
        """A label batch to the Monitor, on the shipper's handle where it has one (no GCS
        call per batch), or on one looked up; where the shipper's Monitor has died since
        (replaced by `up`), on the new one's. ModelNotReadyError (503, send again) where
        there is no Monitor, or no answer."""
        from ray.exceptions import RayActorError

        held = self._monitor
        for monitor in (held, None) if held is not None else (None,):
            if monitor is None:
                monitor = await self._monitor_for_feedback()
            try:
                return await asyncio.wait_for(  # type: ignore[no-any-return]
                    asyncio.wrap_future(monitor.feedback.remote(endpoint, items).future()),
                    timeout=10)
            except RayActorError:
                if monitor is held and self._monitor is held:
                    self._monitor = None  # gone: the shipper looks the new one up too
                    continue
                error_name = "RayActorError"
            except Exception as error:  # restarting or overloaded: the label source may retry
                error_name = type(error).__name__
            break
        raise ModelNotReadyError(
            f"the Monitor did not answer ({error_name}); send the same batch again in a few "
            "seconds (safe: a prediction joins one label at most)")

    async def _monitor_for_feedback(self) -> Any:
        config = self.core.config if self.core else None
        try:
            monitor = (await self._monitor_lookup()(config.monitor_actor, config.monitor_namespace,
                                                    timeout_s=LOOKUP_TIMEOUT_S)
                       if config is not None else None)
            raise_if_cancelled()
        except Exception as error:  # the GCS restarting: the label source may retry
            raise ModelNotReadyError(
                f"the Monitor could not be looked up ({type(error).__name__}); send the same "
                "batch again in a few seconds") from None
        if monitor is None:
            raise ModelNotReadyError("the Monitor is not running, so feedback cannot be joined; "
                                     "retry once `modelplane up` has started it")
        return monitor

    def _ensure_shipping(self) -> None:
        loop = asyncio.get_running_loop()
        if self._shipper is None or self._shipper.done():
            self._shipper = loop.create_task(_kept_running("the statistics shipper",
                                                           self._ship_forever))
        if self._follower is None or self._follower.done():
            self._follower = loop.create_task(_kept_running("the route follower",
                                                            self._follow_routes))

    def _with_posted(self, config: EndpointConfig) -> EndpointConfig:
        """``config`` with the route board's routes where those are newer and name only
        versions that ``config`` loads."""
        posted = self._posted
        if posted is not None and posted.newer_than(config):
            return posted.applied_to(config) or config
        return config

    async def _first_posting(self, config: EndpointConfig) -> None:
        """Before a new replica first answers: the board's table, where it is newer than the
        one in Serve's configuration (a route change made while this replica started)."""
        try:
            board = await self._board_lookup()(timeout_s=FIRST_READ_TIMEOUT_S)
            if board is not None:
                posted = await asyncio.wait_for(asyncio.wrap_future(
                    board.read.remote(config.endpoint, config.incarnation).future()),
                    timeout=FIRST_READ_TIMEOUT_S)
                if posted is not None and posted.newer_than(config):
                    posted.applied_to(config)  # raises if it is not a route table
                    self._posted = posted
        except Exception as error:  # the board is an optimisation: Serve's table still serves
            log.warning("could not read the route board: %r", error)

    async def _follow_routes(self) -> None:
        """Long-poll the route board and swap in each newer route table."""
        board: Any = None
        while True:
            raise_if_cancelled()
            core = self.core
            if core is None:
                await asyncio.sleep(1.0)
                continue
            if board is None:
                try:
                    board = await self._board_lookup()(timeout_s=LOOKUP_TIMEOUT_S)
                except TimeoutError:  # the GCS not answering: routes still arrive by Serve
                    log.warning("the route board could not be looked up within %g s; trying "
                                "again", LOOKUP_TIMEOUT_S)
                raise_if_cancelled()
                if board is None:
                    await asyncio.sleep(BOARD_RETRY_S)
                    continue
            config, held = core.config, self._posted
            after = max(config.generation, held.generation if held is not None and
                        held.incarnation == config.incarnation else 0)
            try:
                posted = await asyncio.wait_for(asyncio.wrap_future(board.wait.remote(
                    config.endpoint, config.incarnation, after, WAIT_S).future()),
                    timeout=WAIT_S + 10)
            except Exception as error:  # restarting: look it up again; routes still arrive by Serve
                log.warning("lost the route board (%s); looking it up again", type(error).__name__)
                board = None
                await asyncio.sleep(1.0)
                continue
            if posted is None or self.core is None or not posted.newer_than(self.core.config):
                continue
            try:
                newer = posted.applied_to(self.core.config)
            except ValueError as error:  # not a route table: never held, asked again later
                log.warning("ignoring a malformed route board posting: %s", error)
                await asyncio.sleep(BOARD_RETRY_S)
                continue
            self._posted = posted
            if newer is not None:
                self.core.route(newer)

    async def _ship_forever(self) -> None:
        """Take each interval's statistics (sooner where a busy second's observations wait)
        and keep them for the Monitor, which a sender task of this loop's sends them to.
        Taking never waits on the Monitor or the GCS: while a Monitor did not answer (5 s a
        try) or the GCS a lookup, the next taking waited, and a stop's seconds reached the
        Monitor as one shipment every six."""
        wake = asyncio.Event()
        self._sender = sender = asyncio.get_running_loop().create_task(self._send_forever(wake))
        first = True  # at once: the Monitor knows of a replica that dies in its first second
        try:
            while True:
                raise_if_cancelled()
                if sender.done():  # an error it did not foresee: both start again
                    sender.result()
                    return
                core = self.core
                if core is None:
                    await asyncio.sleep(1.0)
                    continue
                # At the interval, or sooner where a busy second's observations wait.
                if not first:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(core.stats_due.wait(), core.config.stats_interval_s)
                first = False
                if not await self._take(core):
                    return  # the goodbye took everything
                wake.set()
        finally:
            sender.cancel()

    async def _send_forever(self, wake: asyncio.Event) -> None:
        """Send the kept shipments, oldest first, each time one is taken; where there is no
        Monitor (yet, or while it restarts, or while the GCS does not answer the lookup)
        they are only kept, each with its time."""
        monitor_key: tuple[str, str] | None = None
        unanswered_lookup = False
        while True:
            await wake.wait()
            wake.clear()
            raise_if_cancelled()
            core = self.core
            if core is None:
                continue
            key = (core.config.monitor_actor, core.config.monitor_namespace)
            if self._monitor is None or key != monitor_key:
                # Only until a handle is found; takings go on meanwhile.
                try:
                    self._monitor = await self._look_up_monitor(core)
                    unanswered_lookup = False
                except TimeoutError:
                    if not unanswered_lookup:
                        log.warning("the GCS has not answered the lookup of the Monitor within "
                                    "%g s; keeping the statistics for it", LOOKUP_TIMEOUT_S)
                    unanswered_lookup, self._monitor = True, None
                raise_if_cancelled()
                monitor_key = key
            if self._monitor is None:
                continue
            async with self._send_lock():
                if self._leaving:
                    return  # the goodbye sent everything
                if await self._send_unsent(core, self._monitor, self._replica,
                                           False) == Shipped.GONE:
                    self._monitor = None  # replaced by `up`: look the new one up

    async def _look_up_monitor(self, core: InferenceCore) -> Any:
        """The Monitor's handle (None: there is none now), looked up off the event loop (a
        GCS lookup blocks); :class:`TimeoutError` where the GCS did not answer within
        :data:`LOOKUP_TIMEOUT_S`. Perhaps another Monitor than the one shipped to before,
        holding none of the reference profiles: each goes again with its next shipment."""
        self._profiles_shipped = frozenset()
        return await self._monitor_lookup()(core.config.monitor_actor,
                                            core.config.monitor_namespace,
                                            timeout_s=LOOKUP_TIMEOUT_S)

    def _monitor_lookup(self) -> BoundedLookup:
        if self._monitor_lookups is None:  # made on the replica's loop, not where it was built
            self._monitor_lookups = BoundedLookup(get_monitor)
        return self._monitor_lookups

    def _board_lookup(self) -> BoundedLookup:
        if self._board_lookups is None:
            self._board_lookups = BoundedLookup(get_route_board)
        return self._board_lookups

    async def _ship(self, core: InferenceCore, monitor: Any, replica: str,
                    leaving: bool = False) -> Shipped:
        """Ship what ``core`` recorded since the last shipment, empty or not (an empty one
        tells the Monitor this replica is still there: ``serving.monitoring.replica_reports``),
        after any earlier shipment the Monitor was not seen to take. What it did not answer
        is sent again next time, under the same number, so one it took after all (slow, not
        gone) is not counted twice. Without a Monitor (None) the shipment is only kept."""
        if not await self._take(core, leaving):
            return Shipped.SENT  # the goodbye took everything; the Monitor forgot us
        if monitor is None:
            return Shipped.UNANSWERED
        async with self._send_lock():
            return await self._send_unsent(core, monitor, replica, leaving)

    async def _take(self, core: InferenceCore, leaving: bool = False) -> bool:
        """Take what ``core`` recorded since the last taking and keep it to be sent (the
        oldest kept go past :data:`UNSENT_LIMIT`); False, taking nothing, once the goodbye
        took everything (unless this is the goodbye's)."""
        async with self._shipment_lock():  # the goodbye waits for a taking under way
            if self._leaving and not leaving:
                return False
            # When its recording ended, for its age when sent: the replica's own clock,
            # so no clock of another node is read.
            taken_at = time.monotonic()
            # The monitoring kernels run here, a step at a time between requests (see
            # StatsRecorder.to_delta_in_steps).
            delta = await core.take_stats().to_delta_in_steps()
            if self._unsent is None:
                self._unsent = deque()
            self._sequence += 1
            self._unsent.append((self._sequence, delta, served_by(core.config), taken_at))
            if len(self._unsent) > UNSENT_OBSERVED:
                drop_observations(self._unsent[-UNSENT_OBSERVED - 1][1])
            if len(self._unsent) > UNSENT_LIMIT:
                self._unsent.popleft()
                if not self._dropped:
                    log.warning("dropping the oldest statistics kept for the monitor: it has "
                                "not taken %d shipments in a row", UNSENT_LIMIT)
                self._dropped += 1
            return True

    async def _send_unsent(self, core: InferenceCore, monitor: Any, replica: str,
                           leaving: bool) -> Shipped:
        """Send the kept shipments, oldest first, until one goes unanswered."""
        assert self._unsent is not None
        while self._unsent:
            raise_if_cancelled()
            sequence, delta, served, taken_at = self._unsent[0]
            # Profiles travel once, with the first shipment sent to a Monitor that lacks
            # them (one that restarted asks again): attached as it is sent, not as it was
            # taken, for a new Monitor after an outage.
            attach_profiles(delta, core.monitoring, self._profiles_shipped)
            sent = {core.monitoring[v].profile_key for v, d in delta.items()
                    if "profile" in d and v in core.monitoring}
            last = leaving and len(self._unsent) == 1
            try:
                answer = await asyncio.wait_for(
                    asyncio.wrap_future(monitor.record.remote(
                        core.config.endpoint, replica, delta, served, leaving=last,
                        sequence=sequence, age_s=time.monotonic() - taken_at,
                        more=len(self._unsent) > 1).future()),
                    timeout=RECORD_TIMEOUT_S,
                )
            except Exception as error:  # the monitor restarting must not break serving
                log.warning("could not ship statistics to the monitor (%d shipments "
                            "kept to send again): %s", len(self._unsent), error)
                from ray.exceptions import RayActorError

                # A slow Monitor (or a GCS restarting) keeps its handle; a lookup now
                # could fail and stop every replica shipping at once.
                return Shipped.GONE if isinstance(error, RayActorError) else Shipped.UNANSWERED
            if self._unsent and self._unsent[0][0] == sequence:  # not dropped meanwhile
                self._unsent.popleft()
            if self._dropped:
                log.warning("the monitor takes statistics again; %d shipments were dropped "
                            "while it did not", self._dropped)
                self._dropped = 0
            missing = set((answer or {}).get("missing_profiles", ()))
            self._profiles_shipped = frozenset((self._profiles_shipped | sent) - missing)
        return Shipped.SENT

    def _shipment_lock(self) -> asyncio.Lock:
        if self._shipping is None:  # made on the replica's loop, not where it was built
            self._shipping = asyncio.Lock()
        return self._shipping

    def _send_lock(self) -> asyncio.Lock:
        if self._sending is None:
            self._sending = asyncio.Lock()
        return self._sending

    def __del__(self) -> Awaitable[None] | None:
        """Serve stops this replica gracefully (a scale-down, a redeploy), after its last
        request, and awaits what this returns: the goodbye. Python's own call, when the
        object is collected, gets nothing to await."""
        if not self._in_serve or self._goodbye_said:
            return None
        self._goodbye_said = True
        return self._say_goodbye()

    async def _say_goodbye(self) -> None:
        """The last statistics go to the Monitor with a goodbye, so that neither they nor
        this replica count as lost: at once, on the shipper's own handle, as Serve gives
        this the little time left after its drain."""
        core = self.core
        if self._follower is not None:
            self._follower.cancel()
        if self._shipper is None or core is None:
            return
        async with self._shipment_lock():  # cancelled between takings, so none is cut short
            self._shipper.cancel()
            if self._sender is not None:  # a send under way goes again with the goodbye
                self._sender.cancel()
            self._leaving = True  # a shipper that missed its cancellation ships no more
        try:
            await asyncio.wait_for(self._ship_goodbye(core), GOODBYE_S)
        except Exception as error:  # stopping regardless: the Monitor counts it as silent
            log.warning("could not say goodbye to the monitor: %r", error)

    async def _ship_goodbye(self, core: InferenceCore) -> None:
        monitor = self._monitor
        if monitor is None:
            monitor = await self._look_up_monitor(core)
        if monitor is not None:
            await self._ship(core, monitor, self._replica, leaving=True)


class EndpointServer(_CoreAdapter):
    """Colocated endpoint replica: all versions in-process, route table in memory."""

    def __init__(self) -> None:
        self.core: InferenceCore | None = None
        self._replica, self._in_serve = _replica_id()
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="onnx")
        self._backlog = Backlog()  # counted by the lean ingress, where it is on
        self._loaded: dict[tuple[int, str, Any], LocalVersion] = {}

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load new versions, drop removed ones and swap the route table, in place."""
        from kernels import warmup

        config = EndpointConfig.model_validate(user_config)
        backends: dict[int, LocalVersion | UnloadableVersion] = {}
        loop = asyncio.get_running_loop()
        for version in config.versions:
            key = _version_key(version)
            backend = self._loaded.get(key)
            if backend is None:
                backend = await self._load(version)
            backends[version.version] = backend
        await loop.run_in_executor(None, warmup)
        # A version that failed to load is tried again on the next configuration.
        self._loaded = {_version_key(b.config): b for b in backends.values()
                        if isinstance(b, LocalVersion)}
        first = self.core is None
        if self.core is None:
            await self._first_posting(config)
        config = self._with_posted(config)
        if self.core is None:
            self.core = self._new_core(config, backends)
        else:
            self.core.update(config, backends)
        self._ensure_shipping()
        await self._start_lean_once(first)

    async def _load(self, version: VersionConfig) -> LocalVersion | UnloadableVersion:
        """The loaded version, or, when its own code or files fail to load, a stand-in that
        answers 503 with the cause. A download or disk failure is raised instead: Serve starts
        the replica again and the next try may succeed."""
        try:
            runner = await asyncio.get_running_loop().run_in_executor(None, load_runner, version)
        except (ArtifactFetchError, OSError):
            raise  # a download or a full disk: Serve starts the replica again
        except Exception as error:
            log.error("%s:%s could not be loaded; it answers 503 until it is replaced:\n%s",
                      version.model, version.version, traceback.format_exc())
            return UnloadableVersion(version, error)
        local = LocalVersion(version, runner, self._executor, self._backlog)
        await asyncio.get_running_loop().run_in_executor(None, local.warm)
        return local

    def check_health(self) -> None:
        if self.core is None:
            raise RuntimeError("no configuration received yet")


class ModelServer:
    """Isolated placement: one version per deployment, batched, called by the router on
    its link (``serving.version_link``, with ``user_config`` ``{"link": true}``) or through
    Serve's handle (``infer``)."""

    def __init__(self, version: dict[str, Any]) -> None:
        from kernels import warmup

        config = VersionConfig.model_validate(version)
        self._backlog = Backlog()  # counted by the link's lean server, where it runs
        self.local = LocalVersion(config, load_runner(config),
                                  ThreadPoolExecutor(max_workers=4, thread_name_prefix="onnx"),
                                  self._backlog)
        self.local.warm()
        warmup()
        self._link: LinkApp | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The link goes on in the first ``reconfigure``: Serve tells HAProxy this replica's
        port only after it, so no request is in flight on Serve's server when it is replaced."""
        if self._link is None and user_config.get("link"):
            self._link = await start_version_link(self.local.infer, self._backlog)

    async def __call__(self, request: Request) -> Response:
        # Serve's proxy, HAProxy's fallback, reaches the link route here: the router sends
        # the request through the handle instead (serving.link_client).
        return Response(LINK_ELSEWHERE, status_code=503, media_type="text/plain")

    async def infer(self, arrays: dict[str, Any]) -> dict[str, Any]:
        return await self.local.infer(arrays)

    def link_served(self) -> int | None:
        """Requests answered on this replica's link (None: it has none)."""
        return None if self._link is None else self._link.served


class EndpointRouter(_CoreAdapter):
    """Isolated placement: route table in memory, versions on their links or behind handles."""

    def __init__(self) -> None:
        self.core: InferenceCore | None = None
        self._replica, self._in_serve = _replica_id()
        self._link_client: LinkClient | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        from ray import serve

        config = EndpointConfig.model_validate(user_config)
        client = await self._link_to(config.link_address)
        backends = {
            v.version: RemoteVersion(
                v,
                serve.get_deployment_handle(
                    model_server_name(v.version),
                    app_name=version_app_name(config.endpoint, v.version),
                ),
                None if client is None else VersionLink(client, link_route(config.endpoint, v.version)),
            )
            for v in config.versions
        }
        first = self.core is None
        if self.core is None:
            await self._first_posting(config)
        config = self._with_posted(config)
        if self.core is None:
            self.core = self._new_core(config, backends)
        else:
            self.core.update(config, backends)
        self._ensure_shipping()
        await self._start_lean_once(first)

    async def _link_to(self, address: str | None) -> LinkClient | None:
        """The client for the versions' links at ``address`` (kept while it stays the same)."""
        current = self._link_client
        if current is not None and address == current.address:
            return current
        if current is not None:
            current.close()
        self._link_client = None
        if address is None:
            return None
        try:
            secret = await link_secret_bounded()
        except Exception as error:  # the handles still serve every version
            log.warning("no link to the versions (%r); using Serve's handles", error)
            return None
        self._link_client = LinkClient(address, secret)
        return self._link_client


class InferenceServer:
    """``/v2``: server metadata and health; unknown model names get a 404 naming them."""

    async def __call__(self, request: Request) -> Response:
        from modelplane import __version__

        path = _strip_prefix(request, SERVER_ROUTE).rstrip("/")
        if path in ("", "/"):
            return _to_response(_json(200, {"name": "modelplane", "version": __version__,
                                            "extensions": ["binary_tensor_data"]}))
        if path in ("/health/live", "/health/ready"):
            return _to_response(_json(200, {"live": True} if path.endswith("live") else {"ready": True}))
        if path.startswith("/models/"):
            name = path.split("/")[2]
            error = ModelNotFoundError(f"no endpoint named {name!r} is deployed; "
                                       "`modelplane status` lists the endpoints")
            return _to_response(error_result(error, new_request_id()))
        return _to_response(error_result(ModelNotFoundError(f"no route {path!r} under {SERVER_ROUTE}"), ""))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) before it is read when ``Content-Length`` says it is over
    ``limit``, and as soon as a chunked body's running size passes it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 20):
            raise InvalidRequestError("Content-Length must be a whole number of bytes",
                                      detail={"field": "content-length"})
        if int(declared) > limit:
            raise body_too_large(int(declared), limit, "request body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(size, limit, "request body")
        chunks.append(chunk)
    return b"".join(chunks)


def _version_key(config: VersionConfig) -> tuple[int, str, Any]:
    # A version is reloaded only when what it runs changes, not when its route weight does.
    return (config.version, config.digest, (config.batching, config.intra_op_threads))


def _strip_prefix(request: Request, prefix: str) -> str:
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if path.startswith(prefix):
        path = path[len(prefix):]
    return path


def _subpath(request: Request, endpoint: str) -> str:
    return _strip_prefix(request, endpoint_route_prefix(endpoint))
