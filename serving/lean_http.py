"""A lean HTTP/1.1 server for the data path: httptools parsing, no ASGI, no per-request wrappers.

An endpoint replica answers every request with one call, ``app.call(method, path, headers,
body)``, so the layers a general server puts around it (ASGI scopes and messages, middleware,
a receive task per request) are pure cost on a model answering in microseconds. This server
parses with httptools (llhttp, the parser uvicorn uses), hands the app plain values and
writes its answer as one buffer. It is transport only: what is answered, and what Serve is
told about it, is the app's business (``serving.replica_ingress``).

Limits that keep a slow or malformed client from costing more than one connection's worth:

- the request line and headers are bounded (``MAX_URL_BYTES``, ``MAX_HEAD_BYTES``,
  ``MAX_HEADERS``), a line that never ends included; over them the answer is 414/431 and
  the connection closes;
- a body over ``app.body_limit`` is refused (413) from ``Content-Length`` before any of it is
  read, and a chunked one as soon as its running size passes the limit, answered at once
  with ``connection: close``; the rest is read and dropped, never held;
- a request must arrive whole within ``read_timeout_s`` and an idle keep-alive connection
  closes after ``keep_alive_s``, both checked by one sweep a second, not a timer per request;
- pipelined requests queue at most ``MAX_PIPELINED`` deep before reading pauses, and a
  client that does not read its answers stops the next one from being served;
- an exception in the app is a 500 for that request; the connection and server go on;
- ``track`` (the replica's admission) may refuse a request with its own answer (``Refused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote

import httptools

from serving.backlog import Backlog

log = logging.getLogger(__name__)

MAX_URL_BYTES = 8 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_PIPELINED = 8
SWEEP_S = 1.0
EXIT_POLL_S = 0.1  # how often ``should_exit`` is looked at, as uvicorn does


class Reply(Protocol):
    status: int
    body: bytes
    headers: Mapping[str, str]


class LeanApp(Protocol):
    """What the server calls; ``serving.replica_ingress`` adapts the inference core to it."""

    def body_limit(self, method: str, path: str, headers: Mapping[str, str]) -> int:
        """The largest body ``path`` accepts (from the request's ``headers``, say who sends
        it), checked before the body is read."""

    def refuse(self, path: str, size: int, limit: int, malformed: bool) -> Reply:
        """The answer for a body over ``limit`` (or a malformed Content-Length)."""

    async def call(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """The answer to one whole request."""

    def counted(self, path: str) -> bool:
        """Whether a request to ``path`` goes through ``track`` (health checks do not: a full
        replica must still answer them, or its load balancer takes it out)."""


class Refused(Exception):
    """Raised by the server's ``track`` context to answer a request without calling the app
    (the replica's queue is full): ``reply`` is the answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Headers(dict[str, str]):
    """Request headers, names lower-cased; ``get`` matches any case, as Starlette's does."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)


class PlainReply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers


def text_reply(status: int, text: str) -> PlainReply:
    return PlainReply(status, text.encode(), {"content-type": "text/plain; charset=utf-8"})


def json_reply(status: int, payload: Any) -> PlainReply:
    return PlainReply(status, json.dumps(payload).encode(), {"content-type": "application/json"})


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line


def encode_reply(reply: Reply, extra: bytes, keep_alive: bool) -> bytes:
    """Status line, the reply's headers, ``extra`` (pre-encoded header lines), length, body."""
    body = reply.body
    parts = [_status_line(reply.status)]
    for name, value in reply.headers.items():
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(extra)
    parts.append(b"content-length: %d\r\n%s\r\n" % (len(body), b"" if keep_alive else b"connection: close\r\n"))
    parts.append(body)
    return b"".join(parts)


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "refused")

    def __init__(self, method: str, path: str, headers: Headers, body: bytes, keep_alive: bool,
                 refused: Reply | None) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.keep_alive, self.refused = keep_alive, refused


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue whole requests, answer them in order."""

    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.reading_paused = False
        self.writable: asyncio.Future[None] | None = None  # set while the client is not reading
        self.closing = False
        # The request being read.
        self.in_message = False
        self.since = 0.0  # when the current request started, or the connection went idle
        self.url = b""
        self.head_size = 0
        self.headers = Headers()
        self.body: list[bytes] = []
        self.body_size = 0
        self.limit = 0
        self.method = ""
        self.path = ""
        self.refused: Reply | None = None
        self.last = False  # no request after the ones queued (an upgrade was asked for)
        self.close_after_read = False  # answered early: close once the request is read
        self.header_count = 0
        self.head_done = False
        self.head_read = 0  # bytes of the head read in whole reads (see _bound_head)
        self.reads = 0
        self.began_in_read = 0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.since = self.loop.time()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # the request is answered; what follows is not HTTP
            self.parser = _Discard()  # type: ignore[assignment]
            self.last = True
            if self.idle:
                self.close()
        except httptools.HttpParserCallbackError as error:  # raised in one of the callbacks below
            cause = error.__context__
            if isinstance(cause, _TooLarge):
                self._fail(cause.status, cause.message)
            else:
                log.error("the lean ingress failed reading a request", exc_info=cause)
                self._fail(500, "the replica failed reading the request; see its log")
        except httptools.HttpParserError as error:
            self._fail(400, f"malformed HTTP request: {error}")
        else:
            self._bound_head(len(data))

    def _bound_head(self, size: int) -> None:
        # The parser reports a header only once its line ends, so a line that never does
        # would grow (and be copied over and over) for ever: a read that leaves the head
        # unfinished, of a request begun in an earlier read, was all head.
        if not self.in_message or self.head_done or self.began_in_read == self.reads:
            return
        self.head_read += size
        if self.head_read > MAX_URL_BYTES + MAX_HEAD_BYTES:
            self._fail(431, f"the request line and headers are over "
                            f"{MAX_URL_BYTES + MAX_HEAD_BYTES} bytes")

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self.head_done = False
        self.head_read = 0
        self.began_in_read = self.reads
        self.since = self.loop.time()
        self.url = b""
        self.head_size = 0
        self.header_count = 0
        self.headers = Headers()
        self.body = []
        self.body_size = 0
        self.refused = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_URL_BYTES:
            raise _TooLarge(414, f"the request line is over {MAX_URL_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        self.header_count += 1
        if self.head_size > MAX_HEAD_BYTES or self.header_count > MAX_HEADERS:
            raise _TooLarge(431, f"the headers are over {MAX_HEAD_BYTES} bytes or "
                                 f"{MAX_HEADERS} fields")
        key = name.decode("latin-1").lower()
        if key not in self.headers:  # the first of repeated fields, as Starlette's get answers
            self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.method = self.parser.get_method().decode("ascii", "replace")
        raw = self.url.split(b"?", 1)[0]
        path = raw.decode("latin-1")
        self.path = unquote(path) if "%" in path else path
        self.limit = self.server.app.body_limit(self.method, self.path, self.headers)
        declared = self.headers.get("content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit() and len(declared) <= 20):
            self._refuse(0, malformed=True)
        elif declared is not None and int(declared) > self.limit:
            self._refuse(int(declared), malformed=False)
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            if self.refused is None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:  # the client waits for our word before sending a body: none will come
                self.parser = _Discard()  # type: ignore[assignment]
                self.in_message = False

    def on_body(self, chunk: bytes) -> None:
        if self.refused is not None:
            return  # read and dropped
        self.body_size += len(chunk)
        if self.body_size > self.limit:
            self.body = []
            self._refuse(self.body_size, malformed=False)
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.refused is not None:  # answered already; the connection ends with this request
            self.parser = _Discard()  # type: ignore[assignment]
            if self.close_after_read:
                self.close()
            return
        keep_alive = self.parser.should_keep_alive() and not self.server.draining
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.queue.append(_Request(self.method, self.path, self.headers, body, keep_alive, self.refused))
        self.server.backlog.waiting += 1
        self.body = []
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        if self.worker is None:
            self.worker = self.loop.create_task(self._answer_queued())

    # -- answering -------------------------------------------------------------------------
    def _refuse(self, size: int, *, malformed: bool) -> None:
        """Answer now, not once the body is in (a client that announced a gigabyte waits for
        the answer), with ``connection: close``; the rest of the body is read and dropped,
        and the connection closes once it is in (closing earlier, with the body unread,
        would reset the connection and could lose the answer)."""
        self.refused = reply = self.server.app.refuse(self.path, size, self.limit, malformed)
        self.body = []
        self.queue.append(_Request(self.method, self.path, self.headers, b"", False, reply))
        if self.worker is None:
            self.worker = self.loop.create_task(self._answer_queued())

    async def _answer_queued(self) -> None:
        try:
            while self.queue and not self.closing:
                request = self.queue.popleft()
                if request.refused is None:
                    self.server.backlog.waiting -= 1
                if self.reading_paused and len(self.queue) < MAX_PIPELINED // 2 and self.transport:
                    self.transport.resume_reading()
                    self.reading_paused = False
                reply = request.refused
                if reply is None:
                    reply = await self.server.answer(request)
                if self.closing or self.transport is None:
                    return
                keep_alive = request.keep_alive and not self.server.draining and not (
                    self.last and not self.queue)
                self.transport.write(encode_reply(reply, self.server.extra_headers, keep_alive))
                if not keep_alive:
                    if self.in_message:  # a refusal answered before its body is in
                        self.close_after_read = True
                    else:
                        self.close()
                    return
                if self.writable is not None and not self.writable.done():
                    await self.writable  # the client is not reading: serve it no further
        finally:
            # Requests left queued on a closing connection are never answered.
            self.server.backlog.waiting -= sum(r.refused is None for r in self.queue)
            self.worker = None
            self.since = self.loop.time()

    def _fail(self, status: int, message: str, reply: Reply | None = None) -> None:
        """A request refused as it is read: answered (after those queued) with ``reply`` or
        ``status`` and ``message``, and the connection closed."""
        if self.transport is None or self.closing:
            return
        self.parser = _Discard()  # type: ignore[assignment]
        reply = reply or text_reply(status, message)
        self.queue.append(_Request("", "", Headers(), b"", False, reply))
        self.in_message = False
        if self.worker is None:
            self.worker = self.loop.create_task(self._answer_queued())

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self.worker is None and not self.queue and not self.in_message

    def sweep(self, now: float) -> None:
        if self.in_message and now - self.since > self.server.read_timeout_s:
            if self.close_after_read:  # answered already
                self.close()
                return
            self.in_message = False
            self._fail(408, f"the request did not arrive within {self.server.read_timeout_s:g} s")
        elif self.idle and now - self.since > self.server.keep_alive_s:
            self.close()


class _Discard:
    """Stands in for the parser once a connection is closing: further bytes are dropped."""

    def feed_data(self, data: bytes) -> None:
        return None


class _TooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class LeanServer:
    """Serves ``app`` on listening sockets until ``should_exit`` is set.

    ``should_exit`` and the task running :meth:`serve` are the two handles a supervisor
    needs (the same two Serve keeps of its uvicorn server): set the flag, and the server
    stops accepting, closes idle connections, answers what it has read with
    ``connection: close`` and returns once every connection is closed.
    """

    def __init__(self, app: LeanApp, *, extra_headers: Mapping[str, str] | None = None,
                 keep_alive_s: float = 5.0, read_timeout_s: float = 60.0,
                 track: Callable[[], Any] | None = None, backlog: Backlog | None = None) -> None:
        self.app = app
        # Requests read and not yet begun, for the app's models (see serving.backlog).
        self.backlog = backlog if backlog is not None else Backlog()
        self.loop = asyncio.get_running_loop()
        self.extra_headers = b"".join(f"{k}: {v}\r\n".encode("latin-1")
                                      for k, v in (extra_headers or {}).items())
        self.keep_alive_s = keep_alive_s
        self.read_timeout_s = read_timeout_s
        # An async context manager factory wrapped around every app call (the supervisor's
        # count of ongoing requests), or None.
        self.track = track
        self.connections: set[_Connection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.should_exit = False
        self.draining = False

    async def start(self, sockets: list[Any]) -> None:
        """Listen on already bound ``sockets``."""
        for sock in sockets:
            self.servers.append(await self.loop.create_server(
                lambda: _Connection(self), sock=sock, backlog=2048))

    async def answer(self, request: _Request) -> Reply:
        try:
            if self.track is None or not self.app.counted(request.path):
                return await self.app.call(request.method, request.path, request.headers, request.body)
            async with self.track():
                return await self.app.call(request.method, request.path, request.headers, request.body)
        except Refused as refused:
            return refused.reply
        except Exception as error:  # one request's failure is that request's 500, nothing more
            log.exception("the lean ingress could not answer %s %s", request.method, request.path)
            return json_reply(500, {"error": f"the replica failed ({type(error).__name__}); "
                                             "see its log", "code": "internal_error",
                                    "request_id": "", "detail": {}})

    async def serve(self) -> None:
        """Run until ``should_exit``; then drain (see the class docstring)."""
        try:
            ticks = 0
            while not self.should_exit:
                await asyncio.sleep(EXIT_POLL_S)
                ticks += 1
                if ticks * EXIT_POLL_S >= SWEEP_S:
                    ticks = 0
                    self._sweep()
            await self._drain()
        except asyncio.CancelledError:  # out of grace: whatever is left is cut
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            raise

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def _drain(self) -> None:
        self.draining = True
        self.stop_accepting()
        while self.connections:
            for connection in list(self.connections):
                if connection.idle:
                    connection.close()
            self._sweep()  # a request still arriving is held to its read timeout
            await asyncio.sleep(EXIT_POLL_S)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in list(self.connections):
            with contextlib.suppress(Exception):  # one connection's trouble is not the sweep's
                connection.sweep(now)

