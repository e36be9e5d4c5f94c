"""The client asks again after an answer it lost, and only where that cannot act twice: a
read; a write to a control plane that answers a write sent again with its key once (it
says so in /health); never a write to one older than keys."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from control_plane.client import ASK_AGAIN_TIMES, HEALTH_WAIT_S, Client
from control_plane.errors import ControlPlaneUnavailableError
from control_plane.idempotency import HEALTH_FLAG
from tests.json_http import JsonHandler, serving


def _dropping(honors_keys: bool, answer_after: int | None = None, *, health_fails: int = 0,
              then_in_progress: bool = False) -> type[JsonHandler]:
    """A server that closes the connection instead of answering a POST (until the
    ``answer_after``-th; or after the first, says the first is still being answered), whose
    first ``health_fails`` health answers are a proxy's 503, and that records every POST's
    idempotency key."""

    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"
        posts: list[str | None] = []
        health_asked = 0

        def do_GET(self) -> None:
            Handler.health_asked += 1
            if Handler.health_asked <= health_fails:
                self.answer(503, "<html>no server is available</html>")
                return
            health = {"status": "ok", "version": "0", **({HEALTH_FLAG: "honored"}
                                                         if honors_keys else {})}
            self.answer(200, health)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            Handler.posts.append(self.headers.get("idempotency-key"))
            if answer_after is not None and len(Handler.posts) > answer_after:
                self.answer(201, {"name": "e", "description": "", "tags": {},
                                  "created_at": "2026-12-02T00:00:00Z",
                                  "created_by": "t", "run_count": 0})
                return
            if then_in_progress and len(Handler.posts) > 1:
                self.answer(409, {"error": "still being answered", "code": "request_in_progress",
                                  "detail": {"retry_after_s": 1}})
                return
            self.close_connection = True

    return Handler


def test_a_write_is_sent_again_with_its_key_to_a_control_plane_that_keeps_answers() -> None:
    handler = _dropping(honors_keys=True, answer_after=2)
    with serving(handler) as url, Client(url, "t") as client:
        assert client.create_experiment("e").name == "e"
    keys = handler.posts
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1, keys


def test_a_write_is_never_sent_twice_to_a_control_plane_older_than_keys() -> None:
    handler = _dropping(honors_keys=False)
    with serving(handler) as url, Client(url, "t") as client, \
            pytest.raises(ControlPlaneUnavailableError, match="may have acted"):
        client.create_experiment("e")
    assert len(handler.posts) == 1


def test_asking_again_gives_up_after_its_tries_saying_the_call_may_have_acted() -> None:
    handler = _dropping(honors_keys=True)
    with serving(handler) as url, Client(url, "t") as client, \
            pytest.raises(ControlPlaneUnavailableError, match="may have acted"):
        client.create_experiment("e")
    assert len(handler.posts) == 1 + ASK_AGAIN_TIMES and len(set(handler.posts)) == 1


def test_a_health_answer_from_a_reloading_proxy_is_asked_again() -> None:
    handler = _dropping(honors_keys=True, answer_after=1, health_fails=2)
    with serving(handler) as url, Client(url, "t") as client:
        assert client.create_experiment("e").name == "e"
    assert handler.health_asked == 3 and len(handler.posts) == 2


def test_a_first_call_that_holds_its_key_past_the_wait_may_have_acted() -> None:
    handler = _dropping(honors_keys=True, then_in_progress=True)
    with serving(handler) as url, Client(url, "t", timeout=3) as client, \
            pytest.raises(ControlPlaneUnavailableError, match="may have acted"):
        client.create_experiment("e")
    assert len(handler.posts) >= 2 and len(set(handler.posts)) == 1


def test_a_control_plane_that_stays_away_holds_a_long_call_for_seconds_not_its_timeout() -> None:
    # A registration may take minutes, so its timeout is long; a control plane killed under
    # it must not hold the caller (or a worker thread) for all of that.
    handler = _dropping(honors_keys=True, health_fails=10_000)
    started = time.monotonic()
    with serving(handler) as url, Client(url, "t", timeout=600) as client, \
            pytest.raises(ControlPlaneUnavailableError, match="may have acted"):
        client.create_experiment("e")
    assert time.monotonic() - started < 60
    assert len(handler.posts) == 1 and handler.health_asked <= 2 + HEALTH_WAIT_S / 0.2


def test_a_control_plane_gone_under_a_write_is_not_waited_for(monkeypatch) -> None:
    # Nothing listens after the answer was lost: the server is down, not a proxy reloading,
    # so the client says the write may have acted instead of asking /health for seconds.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def take_one_write_and_go() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        listener.close()
        connection.close()

    server = threading.Thread(target=take_one_write_and_go, daemon=True)
    server.start()
    pauses: list[float] = []
    monkeypatch.setattr("control_plane.client.time.sleep", pauses.append)
    with Client(f"http://127.0.0.1:{port}", "t", timeout=600) as client, \
            pytest.raises(ControlPlaneUnavailableError, match="may have acted"):
        client.create_experiment("e")
    server.join(5)
    # The pause before asking again and the transport's own connect retries (0 and 0.5 s);
    # no wait on /health.
    assert pauses[0] == 0.2 and sum(pauses) < 1.0, pauses


def _silent(answer_after_s: float) -> type[JsonHandler]:
    """A server that reads every call and answers none before ``answer_after_s``."""

    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"
        calls: list[str] = []

        def _hold(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            Handler.calls.append(self.command)
            time.sleep(answer_after_s)
            self.close_connection = True

        do_GET = do_POST = _hold

    return Handler


def test_a_call_the_control_plane_took_and_did_not_answer_in_time_is_not_unreachable() -> None:
    """A read timeout said "cannot reach the control plane; is it running?": the call had
    reached it, and a write may have acted there (or still will)."""
    handler = _silent(answer_after_s=3)
    with serving(handler) as url, Client(url, "t", timeout=0.5) as client:
        with pytest.raises(ControlPlaneUnavailableError) as wrote:
            client.create_experiment("e")
        with pytest.raises(ControlPlaneUnavailableError) as read:
            client.health()
        with pytest.raises(ControlPlaneUnavailableError, match="may have acted"):
            client.send_feedback("e", {"r-1": 1})  # its labels may have been joined
    assert "did not answer within 0.5 s (ReadTimeout) and may have acted" in wrote.value.message
    assert "cannot reach" not in wrote.value.message
    assert "did not answer within 0.5 s (ReadTimeout); it may be overloaded" in read.value.message
    assert "may have acted" not in read.value.message
    assert handler.calls == ["POST", "GET", "POST"]  # none sent again: the first may still act
