"""A webhook receiver on loopback that records every JSON body POSTed to it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Records each POST's body and ``Idempotency-Key``. Answers its first ``failures``
    POSTs with ``failure_status``, then ``status`` (200 unless told otherwise: a receiver
    that is down answers 503). ``received`` holds the bodies it acknowledged, ``tries`` the
    key of every POST, acknowledged or not. With ``trickle_s``, an answer's body follows its
    head a byte every ``trickle_s`` (100 bytes); ``answered`` is set once one is whole. With
    ``delay_s``, each answer waits that long (or until the receiver is closed)."""

    def __init__(self, status: int = 200, *, failures: int = 0,
                 failure_status: int = 500, trickle_s: float = 0.0,
                 delay_s: float = 0.0) -> None:
        self.received: list[dict[str, Any]] = []
        self.keys: list[str | None] = []  # of the acknowledged bodies, in order
        self.tries: list[str | None] = []
        self.status, self.failures, self.failure_status = status, failures, failure_status
        self.trickle_s, self.answered, self._closing = trickle_s, threading.Event(), threading.Event()
        self.delay_s = delay_s
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server names handlers so
                body = self.rfile.read(int(self.headers["content-length"]))
                assert self.headers["content-type"] == "application/json"
                key = self.headers.get("idempotency-key")
                outer.tries.append(key)
                if outer.delay_s:
                    outer._closing.wait(outer.delay_s)
                failing = len(outer.tries) <= outer.failures
                status = outer.failure_status if failing else outer.status
                if 200 <= status < 300:  # the key first: wait() watches what was received
                    outer.keys.append(key)
                    outer.received.append(json.loads(body))
                self.send_response(status)
                if not outer.trickle_s:
                    self.end_headers()
                    return
                self.send_header("content-length", "100")
                self.end_headers()
                self.wfile.flush()
                for _ in range(100):
                    if outer._closing.wait(outer.trickle_s):
                        return
                    try:
                        self.wfile.write(b".")
                        self.wfile.flush()
                    except OSError:  # the caller stopped reading
                        return
                outer.answered.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    @property
    def attempts(self) -> int:
        return len(self.tries)

    def wait(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= count, self.received
        return self.received

    def kinds(self) -> list[str]:
        return [body.get("kind") or f"alert.{body['status']}" for body in self.received]

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
