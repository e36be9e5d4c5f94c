"""Ray token authentication: a client takes its cluster's mode (asked of the dashboard, a
real HTTP server here), else the token's presence where Ray looks for one decides."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from control_plane.ray_auth import (
    JOB_DRIVER_SETTING,
    MODE_PATH,
    cluster_auth_mode,
    ray_auth_env,
    token_available,
)
from modelplane.errors import ConfigurationError


def test_token_file_turns_token_mode_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_auth_env({}) == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    assert token_available({})
    assert ray_auth_env({}) == {"RAY_AUTH_MODE": "token"}


def test_explicit_mode_and_other_token_sources(tmp_path: Path) -> None:
    assert ray_auth_env({"RAY_AUTH_TOKEN": "x"}) == {"RAY_AUTH_MODE": "token"}
    token_file = tmp_path / "tok"
    token_file.write_text("x")
    assert ray_auth_env({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == {"RAY_AUTH_MODE": "token"}
    assert ray_auth_env({"RAY_AUTH_TOKEN": "x", "RAY_AUTH_MODE": "disabled"}) == {}


@pytest.fixture
def dashboard() -> Iterator[tuple[str, dict[str, object]]]:
    """A real HTTP server answering ``/api/authentication_mode`` as Ray's dashboard does
    (its answer set through the returned dict); anything else is a 404."""
    said: dict[str, object] = {"body": b'{"authentication_mode": "disabled"}', "asked": 0}

    class Dashboard(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != MODE_PATH:
                self.send_error(404)
                return
            said["asked"] = int(said["asked"]) + 1  # type: ignore[call-overload]
            body = said["body"]
            assert isinstance(body, bytes)
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", said
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_a_cluster_without_authentication_keeps_a_client_with_a_token_out_of_token_mode(
        dashboard: tuple[str, dict[str, object]], tmp_path: Path) -> None:
    """A token file made after the cluster started (any local ray.init() makes one) must
    not switch that cluster's clients: their actors would be cancelled before they start."""
    url, said = dashboard
    token_file = tmp_path / "tok"
    token_file.write_text("x")
    with_token = {"RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert ray_auth_env(with_token) == {"RAY_AUTH_MODE": "token"}  # no cluster named: the token decides
    assert ray_auth_env(with_token, dashboard=url) == {"RAY_AUTH_MODE": "disabled"}
    said["body"] = b'{"authentication_mode": "token"}'
    assert ray_auth_env(with_token, dashboard=url) == {"RAY_AUTH_MODE": "token"}
    assert said["asked"] == 2


def test_a_cluster_that_wants_a_token_this_machine_lacks_says_where_to_get_it(
        dashboard: tuple[str, dict[str, object]], tmp_path: Path) -> None:
    url, said = dashboard
    said["body"] = b'{"authentication_mode": "token"}'
    missing = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    with pytest.raises(ConfigurationError, match=r"requires Ray's token authentication.*auth_token"):
        ray_auth_env(missing, dashboard=url)


def test_a_job_driver_and_an_explicit_mode_are_never_switched(
        dashboard: tuple[str, dict[str, object]]) -> None:
    url, said = dashboard
    driver = {JOB_DRIVER_SETTING: "{}", "RAY_AUTH_TOKEN": "x"}  # inherits its cluster's mode
    assert ray_auth_env(driver, dashboard=url) == {}
    assert ray_auth_env({"RAY_AUTH_MODE": "token"}, dashboard=url) == {}
    assert said["asked"] == 0


def test_a_dashboard_that_cannot_say_leaves_the_token_to_decide(
        dashboard: tuple[str, dict[str, object]]) -> None:
    url, said = dashboard
    said["body"] = b"<html>an older Ray</html>"
    assert cluster_auth_mode(url) is None
    assert ray_auth_env({"RAY_AUTH_TOKEN": "x"}, dashboard=url) == {"RAY_AUTH_MODE": "token"}
    said["body"] = b'{"authentication_mode": "kerberos"}'
    assert cluster_auth_mode(url) is None
    assert cluster_auth_mode("http://127.0.0.1:1") is None  # nothing listens there
