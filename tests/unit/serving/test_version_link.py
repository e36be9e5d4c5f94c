"""The isolated placement's link on real sockets: a router's request reaches the version's
own listener and comes back with the model's arrays, the version's errors arrive as
themselves, a caller without the cluster's secret runs nothing, and whatever the link
cannot carry goes through Serve's handle instead."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import numpy as np
import pytest

from serving.backends import RemoteVersion
from serving.errors import InferenceFailedError, OverloadedError, overloaded_error
from serving.lean_http import LeanServer, text_reply
from serving.link_auth import LINK_HEADER
from serving.link_client import LinkClient, LinkUnavailable, VersionLink
from serving.link_frames import CONTENT_TYPE, encode_arrays
from serving.version_link import LinkApp
from tests.unit.serving.monitoring_helpers import version_config
from tests.unit.serving.test_lean_http import healthy, serving

ROUTE = "/modelplane-link/churn/v1"
SECRET = "s" * 64
ROW = {"input": np.arange(8, dtype=np.float32).reshape(2, 4)}


class Model:
    """Doubles its input; can be made to fail with a given error."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {"output": arrays["input"] * 2}


class Handle:
    """Serve's handle as RemoteVersion calls it: ``handle.infer.remote(arrays)``."""

    def __init__(self) -> None:
        self.calls = 0
        self.infer = self

    def remote(self, arrays: dict[str, np.ndarray]) -> Any:
        self.calls += 1

        async def answer() -> dict[str, np.ndarray]:
            return {"output": arrays["input"] * 2}
        return answer()


def _remote(port: int, secret: str = SECRET) -> tuple[RemoteVersion, Handle]:
    handle = Handle()
    link = VersionLink(LinkClient(f"127.0.0.1:{port}", secret), ROUTE)
    return RemoteVersion(version_config(1), handle, link), handle


def test_the_router_gets_the_versions_answer_on_one_kept_connection() -> None:
    model = Model()
    app = LinkApp(model.infer, ROUTE, healthy, SECRET)

    async def scenario(port: int, server: LeanServer) -> None:
        remote, handle = _remote(port)
        for _ in range(20):
            answer = await remote.infer(ROW)
            np.testing.assert_array_equal(answer["output"], ROW["input"] * 2)
        assert model.calls == app.served == remote.link.carried == 20 and handle.calls == 0
        assert len(server.connections) == 1  # kept alive, not one connection per request
        many = await asyncio.gather(*(remote.infer(ROW) for _ in range(16)))
        assert all(np.array_equal(a["output"], ROW["input"] * 2) for a in many)
        assert handle.calls == 0

    asyncio.run(serving(app, scenario))


def test_without_the_clusters_secret_nothing_runs() -> None:
    model = Model()
    app = LinkApp(model.infer, ROUTE, healthy, SECRET)
    body = encode_arrays(ROW)

    async def scenario(port: int, server: LeanServer) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for headers in ({}, {LINK_HEADER: "guess"}, {LINK_HEADER: SECRET[:-1] + "t"}):
                refused = await http.post(ROUTE, content=body, headers=headers)
                assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
                assert "/v2/models/<endpoint>/infer" in refused.json()["error"]
            assert (await http.get("/-/healthz")).text == "success"  # HAProxy's check needs none
        assert model.calls == 0
        remote, handle = _remote(port, secret="stale")  # a router holding another secret
        np.testing.assert_array_equal((await remote.infer(ROW))["output"], ROW["input"] * 2)
        assert handle.calls == 1 and model.calls == 0

    asyncio.run(serving(app, scenario))


def test_a_bad_body_or_method_is_refused_naming_it() -> None:
    model = Model()
    app = LinkApp(model.infer, ROUTE, healthy, SECRET)

    async def scenario(port: int, server: LeanServer) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={LINK_HEADER: SECRET}) as http:
            bad = await http.post(ROUTE, content=b'{"inputs": []}')
            assert bad.status_code == 400 and bad.json()["detail"] == {"field": "body"}
            assert "bad magic" in bad.json()["error"]
            wrong = await http.get(ROUTE)
            assert wrong.status_code == 400 and wrong.json()["detail"] == {"field": "method"}
            elsewhere = await http.post("/v2/models/churn/infer", content=encode_arrays(ROW))
            assert elsewhere.status_code == 404
        assert model.calls == 0

    asyncio.run(serving(app, scenario))


@pytest.mark.parametrize("error", [InferenceFailedError("churn:1 failed: shape mismatch"),
                                   overloaded_error(4)])
def test_the_versions_errors_arrive_as_themselves(error: Exception) -> None:
    model = Model()
    model.error = error

    async def scenario(port: int, server: LeanServer) -> None:
        remote, handle = _remote(port)
        with pytest.raises(type(error)) as raised:
            await remote.infer(ROW)
        assert str(raised.value) == str(error) and handle.calls == 0
        if isinstance(error, OverloadedError):  # the client is still told when to retry
            assert raised.value.detail == error.detail  # type: ignore[attr-defined]

    asyncio.run(serving(LinkApp(model.infer, ROUTE, healthy, SECRET), scenario))


def test_a_closed_port_sends_requests_through_the_handle_and_pauses_the_link(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe closes

    async def scenario() -> None:
        remote, handle = _remote(port)
        link = remote.link
        assert link is not None
        tried: list[int] = []
        connect = link.client._connect

        async def counted() -> Any:
            tried.append(1)
            return await connect()
        monkeypatch.setattr(link.client, "_connect", counted)
        np.testing.assert_array_equal((await remote.infer(ROW))["output"], ROW["input"] * 2)
        assert link.rest.until > 0  # the refusal began a pause
        link.rest.until = float("inf")  # the pause lasts, however slowly the calls below run
        for _ in range(4):
            np.testing.assert_array_equal((await remote.infer(ROW))["output"], ROW["input"] * 2)
        assert handle.calls == 5 and len(tried) == 1  # paused after the first refusal
        link.rest.until = 0.0  # the pause is over: the link is tried again
        await remote.infer(ROW)
        assert len(tried) == 2 and handle.calls == 6

    asyncio.run(scenario())


def test_answers_that_are_not_the_versions_go_through_the_handle() -> None:
    class NotTheVersion:
        """Serve's proxy or HAProxy: a 503 page, not a link answer."""

        def body_limit(self, method: str, path: str, headers: Any) -> int:
            return 1 << 20

        def refuse(self, path: str, size: int, limit: int, malformed: bool) -> Any:
            return text_reply(413, "too large")

        def counted(self, path: str) -> bool:
            return False

        async def call(self, method: str, path: str, headers: Any, body: bytes) -> Any:
            return text_reply(503, "no server is available to handle this request")

    async def scenario(port: int, server: LeanServer) -> None:
        remote, handle = _remote(port)
        np.testing.assert_array_equal((await remote.infer(ROW))["output"], ROW["input"] * 2)
        assert handle.calls == 1

    asyncio.run(serving(NotTheVersion(), scenario))


def test_a_connection_closed_before_the_answer_goes_through_the_handle() -> None:
    async def scenario() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # a replica killed while it holds the request
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        remote, handle = _remote(port)
        np.testing.assert_array_equal((await remote.infer(ROW))["output"], ROW["input"] * 2)
        assert handle.calls == 1
        with pytest.raises(LinkUnavailable):
            await LinkClient(f"127.0.0.1:{port}", SECRET).infer(ROUTE, ROW)
        server.close()

    asyncio.run(scenario())


def test_a_link_answer_has_the_link_content_type() -> None:
    model = Model()

    async def scenario(port: int, server: LeanServer) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answer = await http.post(ROUTE, content=encode_arrays(ROW), headers={LINK_HEADER: SECRET})
        assert answer.status_code == 200 and answer.headers["content-type"] == CONTENT_TYPE

    asyncio.run(serving(LinkApp(model.infer, ROUTE, healthy, SECRET), scenario))


def test_a_large_body_without_the_secret_is_refused_before_it_is_read() -> None:
    model = Model()

    async def scenario(port: int, server: LeanServer) -> bytes:
        # A gigabyte announced: refused from its Content-Length alone, at once, nothing held.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {ROUTE} HTTP/1.1\r\nhost: x\r\ncontent-length: {1 << 30}\r\n\r\n"
                     .encode() + b"x" * 1024)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        # The router's own large request is read and answered.
        big = {"input": np.ones((20_000, 4), np.float32)}
        remote, handle = _remote(port)
        answer = await remote.infer(big)
        assert answer["output"].shape == (20_000, 4) and handle.calls == 0
        return head

    head = asyncio.run(serving(LinkApp(model.infer, ROUTE, healthy, SECRET), scenario))
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert model.calls == 1


def test_a_kept_connection_the_ingress_closed_while_idle_is_replaced_not_given_up() -> None:
    model = Model()

    async def scenario(port: int, server: LeanServer) -> None:
        remote, handle = _remote(port)
        await remote.infer(ROW)
        kept = remote.link.client._idle[0]  # type: ignore[union-attr]
        deadline = asyncio.get_running_loop().time() + 20
        while kept.lost is None:  # past the server's keep-alive (1 s): it closes the connection
            assert asyncio.get_running_loop().time() < deadline, "the server kept it open"
            await asyncio.sleep(0.05)
        await remote.infer(ROW)
        # A connection closed just as a request goes out on it: sent again on a new one.
        client = remote.link.client  # type: ignore[union-attr]
        stale = client._idle.pop()
        stale.transport.close()
        await asyncio.sleep(0.05)
        client._kept = lambda: stale  # type: ignore[method-assign]
        await remote.infer(ROW)
        assert handle.calls == 0 and remote.link.carried == 3 and model.calls == 3  # type: ignore[union-attr]

    asyncio.run(serving(LinkApp(model.infer, ROUTE, healthy, SECRET), scenario, keep_alive_s=1.0))
