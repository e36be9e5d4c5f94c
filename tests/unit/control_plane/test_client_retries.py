"""The client asks again after an answer it lost, and only where that cannot act twice: a
read; a write to a control plane that answers a write sent again with its key once (it
says so in /health); never a write to one older than keys."""

from __future__ import annotations

import pytest

from control_plane.client import ASK_AGAIN_TIMES, Client
from control_plane.errors import ControlPlaneUnavailableError
from control_plane.idempotency import HEALTH_FLAG
from tests.json_http import JsonHandler, serving


def _dropping(honors_keys: bool, answer_after: int | None = None) -> type[JsonHandler]:
    """A server that closes the connection instead of answering a POST (until the
    ``answer_after``-th), and records every POST's idempotency key."""

    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"
        posts: list[str | None] = []

        def do_GET(self) -> None:
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
