"""The lean ingress's HTTP server on real sockets: the same answers as the Serve path, and
clients that are slow, malformed, pipelining or gone cost no more than their connection."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.requests import Request

from serving.backlog import Backlog
from serving.endpoint import EndpointServer
from serving.lean_http import LeanServer, PlainReply, text_reply
from serving.lean_ingress import EndpointApp
from tests.unit.serving.monitoring_helpers import infer_body, make_core

PREFIX = "/v2/models/churn"


class Holder:
    def __init__(self, core: Any) -> None:
        self.core = core


async def healthy() -> tuple[bool, str]:
    return True, "success"


async def serving(app: Any, scenario: Callable[[int, LeanServer], Awaitable[Any]], **options: Any) -> Any:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = LeanServer(app, **options)
    await server.start([sock])
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        return await scenario(sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def statuses(raw: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


CASES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("POST", "/infer", infer_body(np.ones((2, 4), np.float32)), {"content-type": "application/json"}),
    ("POST", "/versions/1/infer", infer_body(np.ones((1, 4), np.float32)), {}),
    ("GET", "", b"", {}),
    ("GET", "/ready", b"", {}),
    ("GET", "/versions/1", b"", {}),
    ("POST", "/infer", b"{not json", {}),
    ("POST", "/versions/7/infer", infer_body(np.ones((1, 4), np.float32)), {}),
    ("POST", "/versions/%C2%B2/infer", b"{}", {}),
    ("GET", "/infer", b"", {}),
    ("POST", "/ready", b"", {}),
    ("POST", "/nowhere", b"{}", {}),
    ("POST", "/infer", b'{"inputs":[]}', {"inference-header-content-length": "999"}),
    ("POST", "/feedback", b'{"labels": []}', {}),
    ("POST", "/infer", b"x" * 70_000, {}),  # over the endpoint's limit below
]


def _comparable(response: httpx.Response) -> tuple[int, Any, str]:
    ids = re.compile(r"[0-9a-f]{32}")
    try:
        body: Any = json.loads(ids.sub("ID", response.text))
    except ValueError:
        body = response.text
    return response.status_code, body, response.headers.get("content-type", "")


def test_every_route_answers_as_the_serve_path_does() -> None:
    core = make_core()
    core.update(core.config.model_copy(update={"max_body_bytes": 65_536}), core._state[1])
    adapter = EndpointServer.__new__(EndpointServer)
    adapter.core, adapter._replica = core, "r1"

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        response = await adapter(Request(scope, receive))
        await response(scope, receive, send)

    async def scenario(port: int, server: LeanServer) -> None:
        serve_path = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://r")
        lean = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
        async with serve_path, lean:
            for method, sub, body, headers in CASES:
                url = PREFIX + sub
                want = await serve_path.request(method, url, content=body, headers=headers)
                got = await lean.request(method, url, content=body, headers=headers)
                assert _comparable(got) == _comparable(want), (method, sub)
                assert got.headers["x-modelplane-replica"] == "r1"
                assert ("x-modelplane-request-id" in got.headers) == (
                    "x-modelplane-request-id" in want.headers)

    asyncio.run(serving(EndpointApp(Holder(core), PREFIX, "endpoint-churn", healthy), scenario,
                        extra_headers={"x-modelplane-replica": "r1"}))


def test_health_routes_and_paths_outside_the_prefix_answer_as_serve_does() -> None:
    state = {"healthy": True}

    async def health() -> tuple[bool, str]:
        return (True, "success") if state["healthy"] else (False, "DRAINING")

    async def scenario(port: int, server: LeanServer) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/-/healthz")).text == "success"
            assert (await http.get("/-/routes")).json() == {PREFIX: "endpoint-churn"}
            missing = await http.get("/v2/models/other/infer")
            assert missing.status_code == 404 and "/-/routes" in missing.text
            state["healthy"] = False
            draining = await http.get("/-/healthz")
            assert (draining.status_code, draining.text) == (503, "DRAINING")

    asyncio.run(serving(EndpointApp(Holder(make_core()), PREFIX, "endpoint-churn", health), scenario))


def test_a_loading_replica_answers_503() -> None:
    async def scenario(port: int, server: LeanServer) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.post(PREFIX + "/infer", content=b"{}")
            assert response.status_code == 503 and response.json()["code"] == "model_not_ready"

    asyncio.run(serving(EndpointApp(Holder(None), PREFIX, "endpoint-churn", healthy), scenario))


class Echo:
    """A plain app: describes the request, fails on /boom, waits on /wait until released,
    answers /echo with the body."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    def body_limit(self, method: str, path: str, headers: Any) -> int:
        return 1000

    def refuse(self, path: str, size: int, limit: int, malformed: bool) -> Any:
        return text_reply(400 if malformed else 413, f"refused {size}")

    def counted(self, path: str) -> bool:
        return True

    async def call(self, method: str, path: str, headers: Any, body: bytes) -> Any:
        self.calls += 1
        if path == "/boom":
            raise RuntimeError("app failure")
        if path == "/wait":
            await self.release.wait()
        if path == "/echo":
            return PlainReply(200, body, {"content-type": "application/octet-stream"})
        return PlainReply(200, f"{method} {path} {headers.get('X-Tag')} {len(body)}".encode(),
                          {"content-type": "text/plain"})


def test_keep_alive_pipelining_and_app_failures_leave_the_connection_serving() -> None:
    async def scenario(port: int, server: LeanServer) -> bytes:
        return await exchange(port, b"".join([
            b"GET /a%20b?q=1 HTTP/1.1\r\nX-Tag: t\r\n\r\n",
            b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /boom HTTP/1.1\r\n\r\n",
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n",
        ]))

    raw = asyncio.run(serving(Echo(), scenario))
    assert statuses(raw) == [200, 200, 500, 200, 200]
    assert b"GET /a b t 0" in raw and b"POST /p None 5" in raw and b"POST /c None 3" in raw
    assert raw.endswith(b"GET /last None 0")


def test_an_oversized_body_is_refused_at_once_and_the_rest_dropped() -> None:
    app = Echo()

    async def scenario(port: int, server: LeanServer) -> list[bytes]:
        answers = []
        # A gigabyte announced, a kilobyte sent: the 413 comes without waiting for the rest.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /big HTTP/1.1\r\nContent-Length: 1073741824\r\n\r\n" + b"x" * 1024)
        answers.append(await asyncio.wait_for(reader.readuntil(b"refused 1073741824"), 10))
        writer.write(b"x" * 100_000)  # still read (and dropped) until the body is in
        writer.close()
        chunk = b"400\r\n" + b"y" * 1024 + b"\r\n"
        answers.append(await exchange(port, b"".join([
            b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n",
            b"GET /after HTTP/1.1\r\n\r\n",  # the connection ended with the refused request
        ])))
        answers.append(await exchange(port, b"POST /bad HTTP/1.1\r\nContent-Length: 5\r\n"
                                            b"Content-Length: 7\r\n\r\nabcde"))
        return answers

    announced, chunked, twice = asyncio.run(serving(app, scenario))
    assert statuses(announced) == [413] and b"connection: close" in announced
    assert statuses(chunked) == [413] and chunked.endswith(b"refused 1024")
    assert statuses(twice) == [400]  # two lengths: llhttp refuses the request
    assert app.calls == 0


def test_malformed_oversized_and_slow_requests_are_refused_and_closed() -> None:
    async def scenario(port: int, server: LeanServer) -> list[bytes]:
        return [
            await exchange(port, b"NOT HTTP AT ALL\r\n\r\n"),
            await exchange(port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"),
            await exchange(port, b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"),
            await exchange(port, b"POST /slow HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"),
            await exchange(port, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
        ]

    answers = asyncio.run(serving(Echo(), scenario, read_timeout_s=0.5))
    assert [statuses(a) for a in answers] == [[400], [414], [431], [408], [200]]
    assert all(b"connection: close" in a for a in answers)


def test_a_header_line_that_never_ends_is_refused_as_it_grows() -> None:
    """The parser reports a header only once its line ends: one that never did grew until
    the read timeout, copied over and over on the event loop every connection shares."""
    async def endless(port: int, start: bytes) -> bytes:
        """Send ``start``, then more of its last line, 16 KiB at a time, until answered."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(start)
        answered = asyncio.get_running_loop().create_task(reader.read(65536))
        for _ in range(64):  # 1 MiB
            await asyncio.sleep(0.02)
            if answered.done():
                break
            writer.write(b"a" * 16384)
        answer = await asyncio.wait_for(answered, 10)
        writer.close()
        return answer

    async def scenario(port: int, server: LeanServer) -> list[bytes]:
        return [await endless(port, b"GET / HTTP/1.1\r\nX-A: "),
                await endless(port, b"GET /")]  # a request line too

    answers = asyncio.run(serving(Echo(), scenario, read_timeout_s=30))
    assert [statuses(a) for a in answers] == [[431], [414]]


def test_an_idle_keep_alive_connection_is_closed() -> None:
    async def scenario(port: int, server: LeanServer) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /once HTTP/1.1\r\n\r\n")
        return await asyncio.wait_for(reader.read(), 10)  # returns once the server closes

    assert statuses(asyncio.run(serving(Echo(), scenario, keep_alive_s=0.2))) == [200]


def test_expect_continue_is_answered_before_the_body_and_refused_bodies_close() -> None:
    async def scenario(port: int, server: LeanServer) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /e HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(b"abc")
        writer.write(b"POST /e HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        return interim, await asyncio.wait_for(reader.read(), 10)

    interim, rest = asyncio.run(serving(Echo(), scenario))
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert statuses(rest) == [200, 413] and rest.count(b"connection: close") == 1


def test_a_drain_finishes_requests_in_flight_and_closes_idle_connections() -> None:
    app = Echo()

    async def scenario(port: int, server: LeanServer) -> tuple[bytes, bytes]:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(b"GET /first HTTP/1.1\r\n\r\n")
        await idle_reader.readuntil(b"GET /first None 0")
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(b"GET /wait HTTP/1.1\r\n\r\n")
        while app.calls < 2:
            await asyncio.sleep(0.01)
        server.should_exit = True
        idle_rest = await asyncio.wait_for(idle_reader.read(), 10)  # closed by the drain
        app.release.set()
        busy = await asyncio.wait_for(busy_reader.read(), 10)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        return idle_rest, busy

    idle_rest, busy = asyncio.run(serving(app, scenario))
    assert idle_rest == b""
    assert statuses(busy) == [200] and b"connection: close" in busy


def test_a_client_that_never_reads_does_not_get_more_requests_served() -> None:
    app = Echo()

    async def scenario(port: int, server: LeanServer) -> int:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        big = 1000
        for _ in range(20_000):  # 20 MB of answers: far more than socket buffers hold
            writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (big, b"z" * big))
        for _ in range(100):
            await asyncio.sleep(0.02)
        writer.transport.abort()
        return app.calls

    assert asyncio.run(serving(app, scenario)) < 20_000


def test_the_backlog_counts_requests_read_and_not_yet_begun() -> None:
    seen: list[int] = []

    class Noting(Echo):
        async def call(self, method: str, path: str, headers: Any, body: bytes) -> Any:
            seen.append(server_backlog.waiting)
            return await super().call(method, path, headers, body)

    server_backlog = Backlog()
    app = Noting()

    async def scenario(port: int, server: LeanServer) -> int:
        raw = await exchange(port, b"GET /a HTTP/1.1\r\n\r\n" * 3
                             + b"GET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert statuses(raw) == [200] * 4
        # A connection that closes with requests queued behind one in flight drops them.
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /wait HTTP/1.1\r\n\r\n" + b"GET /a HTTP/1.1\r\n\r\n" * 3)
        await writer.drain()
        while app.calls < 5:
            await asyncio.sleep(0.01)
        assert server_backlog.waiting == 3
        writer.transport.abort()
        await asyncio.sleep(0.1)
        app.release.set()
        await asyncio.sleep(0.1)
        return server_backlog.waiting

    assert asyncio.run(serving(app, scenario, backlog=server_backlog)) == 0
    assert seen[:4] == [3, 2, 1, 0]  # pipelined: the ones behind each request wait
