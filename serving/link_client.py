"""The isolated placement's data path, on the router's side: link requests to its versions.

An endpoint's router posts each request's arrays (:mod:`serving.link_frames`) to the
version's link route (:mod:`serving.version_link`) through its node's ingress, on
keep-alive HTTP/1.1 connections it keeps open: HAProxy picks the replica. Anything short of
the version's own answer (no ingress on this node, a route HAProxy does not know yet, no
replica running, a connection that closed before the answer) raises
:class:`LinkUnavailable`, and the caller sends the request through Serve's handle instead,
which always works: inference is a pure function of its inputs, so sending it again is
safe. The version's own errors (a model failure, an overloaded replica) come back as the
errors they were.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import httptools
import numpy as np

from modelplane.errors import ModelplaneError
from serving import errors
from serving.link_auth import LINK_HEADER
from serving.link_frames import CONTENT_TYPE, decode_arrays, encode_arrays

log = logging.getLogger(__name__)

# Serve's HAProxy ingress, which the links ride (`modelplane up` sets it on the Ray head).
HAPROXY_SETTING = "RAY_SERVE_ENABLE_HA_PROXY"
MAX_IDLE = 64  # idle connections kept; more concurrent requests open more, then close them
CONNECT_TIMEOUT_S = 2.0
_TENSORS_HEAD = f"content-type: {CONTENT_TYPE}\r\n".encode()
_REPLICA_HEADER = b"x-modelplane-replica"
_ERRORS: dict[str, type[ModelplaneError]] = {
    cls.code: cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, ModelplaneError)}


def ingress_address(host: str, port: int, environ: Mapping[str, str] = os.environ) -> str | None:
    """``host:port`` of the HTTP ingress where it is HAProxy (the links ride Serve's direct
    ingress), with an ingress listening on every address reached on this node's loopback;
    None without HAProxy (the handles carry everything)."""
    if environ.get(HAPROXY_SETTING) != "1":
        return None
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"


class LinkUnavailable(Exception):
    """The link could not carry this request; Serve's handle can."""


class LinkRest:
    """A link's pause after a request it could not carry (a route HAProxy does not know yet,
    no replica running): for ``PAUSE_S`` requests go straight to the handle instead of
    paying for both. The first pause is logged, with why."""

    PAUSE_S = 1.0

    def __init__(self, what: str) -> None:
        self.what = what
        self.until = 0.0

    @property
    def resting(self) -> bool:
        return time.monotonic() < self.until

    def begin(self, why: object) -> None:
        if not self.until:
            log.info("%s go by Serve's handle for now: %s", self.what, why)
        self.until = time.monotonic() + self.PAUSE_S


class VersionLink:
    """One version's link from a router: its route on a shared client, resting after a
    request it could not carry (``LinkRest``)."""

    def __init__(self, client: LinkClient, path: str) -> None:
        self.client, self.path = client, path
        self.rest = LinkRest(f"requests to {path}")
        self.carried = 0  # requests the link answered (the version's errors included)

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The version's answer, or None where the handle must carry the request."""
        if self.rest.resting:
            return None
        try:
            answer = await self.client.infer(self.path, arrays)
        except LinkUnavailable as why:
            self.rest.begin(why)
            return None
        except ModelplaneError:
            self.carried += 1
            raise
        self.carried += 1
        return answer


class LinkClient:
    """Link requests to ``address`` (``host:port`` of the ingress), over pooled connections."""

    def __init__(self, address: str, secret: str) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self._head = f"host: {address}\r\n{LINK_HEADER}: {secret}\r\n".encode()
        self._idle: list[_Connection] = []

    async def infer(self, path: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status, content_type, payload, _ = await self.post(path, encode_arrays(arrays),
                                                           _TENSORS_HEAD)
        if status == 200 and content_type == CONTENT_TYPE:
            return decode_arrays(payload)
        raise _version_error(status, content_type, payload)

    async def post(self, path: str, body: bytes, head: bytes = b"") -> tuple[int, str, bytes, str]:
        """Status, content type, body and answering replica of one link request; ``head``:
        more header lines, each ending in CRLF."""
        request = b"".join((b"POST ", path.encode(), b" HTTP/1.1\r\n", self._head, head,
                            b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body))
        kept = self._kept()
        connection = kept or await self._connect()
        try:
            try:
                status, content_type, payload, replica, keep_alive = await connection.exchange(request)
            except ConnectionError:
                if connection is not kept:
                    raise
                # A kept connection the ingress closed while idle (its keep-alive timeout),
                # perhaps just as this was sent: once more on a new one (inference is pure).
                connection.close()
                connection = await self._connect()
                status, content_type, payload, replica, keep_alive = await connection.exchange(request)
        except ConnectionError as error:
            connection.close()
            raise LinkUnavailable(f"the connection closed before the answer ({error})") from None
        except BaseException:  # cancelled: the answer would arrive on a connection reused
            connection.close()
            raise
        if keep_alive and len(self._idle) < MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.close()
        return status, content_type, payload, replica

    def _kept(self) -> _Connection | None:
        """An idle connection still open, or None (those the other side closed are dropped)."""
        while self._idle:
            connection = self._idle.pop()
            if connection.lost is None and not connection.transport.is_closing():
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as error:
            raise LinkUnavailable(f"cannot connect to {self.address} ({error})") from None
        return connection

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _version_error(status: int, content_type: str, payload: bytes) -> Exception:
    """The version's own error (JSON with its code), or LinkUnavailable where the answer is
    not the version's: HAProxy's 503 page, Serve's 404 for a route it does not know yet,
    Serve's proxy reaching a replica that serves the link only on its own listener, or a
    403 for a secret that changed."""
    if content_type == "application/json" and status != 403:
        try:
            answer = json.loads(payload)
            error_class = _ERRORS.get(answer["code"], errors.ServingError)
            error = error_class(str(answer["error"]), detail=dict(answer.get("detail") or {}))
        except (ValueError, KeyError, TypeError):
            pass
        else:
            return error
    return LinkUnavailable(f"the link answered {status} ({payload[:200]!r})")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, str, bytes, str, bool]] | None = None
        self.body: list[bytes] = []
        self.content_type = ""
        self.replica = ""
        self.lost: BaseException | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionError("closed by the other side")
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(str(self.lost)))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionError(f"unreadable answer: {error}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.content_type = value.decode("latin-1").split(";")[0].strip()
        elif name == _REPLICA_HEADER:
            self.replica = value.decode("latin-1")

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        body, self.body = b"".join(self.body), []
        content_type, self.content_type = self.content_type, ""
        replica, self.replica = self.replica, ""
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), content_type, body, replica,
                               self.parser.should_keep_alive()))

    def _fail(self, error: ConnectionError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    async def exchange(self, request: bytes) -> tuple[int, str, bytes, str, bool]:
        if self.lost is not None or self.transport.is_closing():
            raise ConnectionError("closed while idle")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
