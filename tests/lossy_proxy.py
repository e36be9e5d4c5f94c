"""An HTTP proxy on loopback that loses answers: it forwards every request to the
upstream server, and for the first ``losses`` requests matching ``method`` and ``path``
it closes the connection instead of relaying the answer, as a network or a restarting
server does after the upstream has acted."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class LossyProxy:
    def __init__(self, upstream: str, *, method: str, path: str, losses: int = 1) -> None:
        self.forwarded: list[tuple[str, str, int]] = []  # method, path, upstream's status
        self.answers: list[httpx.Response] = []  # the upstream's, lost ones included
        self.lost = 0
        outer = self
        pattern = re.compile(path)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                answer = httpx.request(self.command, upstream + self.path, headers=headers,
                                       content=body, timeout=300)
                outer.forwarded.append((self.command, self.path, answer.status_code))
                outer.answers.append(answer)
                if (self.command == method and pattern.fullmatch(self.path.split("?")[0])
                        and outer.lost < losses):
                    outer.lost += 1
                    self.close_connection = True
                    return
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection",
                                           "content-encoding"):
                        self.send_header(key, value)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
