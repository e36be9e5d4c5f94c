"""Ray token authentication: a client takes its cluster's mode (asked of the dashboard, a
real HTTP server here), else the token's presence where Ray looks for one decides."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from control_plane import ray_auth
from control_plane.ray_auth import (
    AUTH_MODE,
    JOB_DRIVER_SETTING,
    MODE_PATH,
    apply_ray_auth_env,
    cluster_auth_mode,
    dashboard_auth_headers,
    ensure_token,
    ray_auth_env,
    read_token,
    token_available,
)
from modelplane.errors import ConfigurationError
from training.errors import JobSubmissionError
from training.submission import JobClient

TOKEN = "the-heads-token"
JOB = {"type": "SUBMISSION", "submission_id": "j1", "status": "RUNNING", "entrypoint": "python x"}


def test_token_file_turns_token_mode_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_auth_env({}) == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    assert token_available({})
    assert ray_auth_env({}) == {"RAY_AUTH_MODE": "token"}


def test_a_machine_without_a_token_gets_one_only_it_can_read(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    made = ensure_token(home)
    assert made == tmp_path / ".ray" / "auth_token"
    token = made.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 random bits, as Ray makes them
    assert made.stat().st_mode & 0o777 == 0o600
    assert read_token(home) == token and ray_auth_env(home) == {"RAY_AUTH_MODE": "token"}
    assert ensure_token(home) is None and made.read_text() == token  # kept, never replaced
    assert [p.name for p in made.parent.iterdir()] == ["auth_token"]  # nothing staged left


def test_no_token_is_made_where_one_is_given_or_tokens_are_turned_off(tmp_path: Path) -> None:
    assert ensure_token({"HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}) is None
    assert ensure_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "given"}) is None
    elsewhere = tmp_path / "kept" / "token"
    made = ensure_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(elsewhere)})
    assert made == elsewhere and elsewhere.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / ".ray").exists()


def test_explicit_mode_and_other_token_sources(tmp_path: Path) -> None:
    assert ray_auth_env({"RAY_AUTH_TOKEN": "x"}) == {"RAY_AUTH_MODE": "token"}
    token_file = tmp_path / "tok"
    token_file.write_text("x")
    assert ray_auth_env({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == {"RAY_AUTH_MODE": "token"}
    assert ray_auth_env({"RAY_AUTH_TOKEN": "x", "RAY_AUTH_MODE": "disabled"}) == {}


Dashboard = tuple[str, dict[str, object]]


@pytest.fixture
def dashboards() -> Iterator[Callable[[str], Dashboard]]:
    """Real HTTP servers answering as Ray's dashboard does: ``/api/authentication_mode``
    (its answer set through the returned dict), and the job API's version and job reads,
    which in token mode answer 401 or 403 as Ray's do without the head's token."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(mode: str) -> Dashboard:
        said: dict[str, object] = {"body": json.dumps({"authentication_mode": mode}).encode(),
                                   "asked": 0, "authorization": []}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == MODE_PATH:
                    said["asked"] = int(said["asked"]) + 1  # type: ignore[call-overload]
                    self._answer(200, said.pop("first_body", None) or said["body"])
                    return
                sent = self.headers.get("authorization")
                said["authorization"].append(sent)  # type: ignore[attr-defined]
                if b'"token"' in said["body"] and sent != f"Bearer {TOKEN}":  # type: ignore[operator]
                    self._answer(401 if sent is None else 403, b"Unauthorized: Missing "
                                 b"authentication token" if sent is None else b"Forbidden: "
                                 b"Invalid authentication token")
                elif self.path == "/api/version":
                    self._answer(200, b'{"ray_version": "2.60.0", "version": "4"}')
                elif self.path == "/api/jobs/j1":
                    self._answer(200, json.dumps(JOB).encode())
                else:
                    self.send_error(404)

            def _answer(self, status: int, body: object) -> None:
                assert isinstance(body, bytes)
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}", said

    try:
        yield start
    finally:
        for server, thread in servers:
            server.shutdown()
            thread.join(timeout=5)


@pytest.fixture
def dashboard(dashboards: Callable[[str], Dashboard]) -> Dashboard:
    return dashboards("disabled")


@pytest.fixture
def head_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's HOME holds the head's token; no Ray setting is inherited."""
    for name in (AUTH_MODE, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", JOB_DRIVER_SETTING):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(ray_auth, "_mode_set_here", None)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text(TOKEN + "\n")
    return token


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


def test_job_api_calls_carry_the_token_only_where_the_dashboard_asks_for_it(
        dashboards: Callable[[str], Dashboard], head_token: Path) -> None:
    """Per call, not per process: a process that spoke to a cluster without tokens then
    speaks to one with them (and back), whatever Ray's own process mode says."""
    (open_url, open_said), (locked_url, locked_said) = dashboards("disabled"), dashboards("token")
    for url in (open_url, locked_url, open_url):
        assert JobClient(url).status("j1") == "RUNNING"
    assert set(open_said["authorization"]) == {None}  # type: ignore[arg-type]  # never leaked
    assert set(locked_said["authorization"]) == {f"Bearer {TOKEN}"}  # type: ignore[arg-type]
    assert AUTH_MODE not in os.environ  # the job client sets no process-wide mode
    assert dashboard_auth_headers(locked_url) == {"authorization": f"Bearer {TOKEN}"}


def test_a_listener_that_cannot_say_it_wants_the_token_is_never_sent_it(
        dashboard: tuple[str, dict[str, object]], head_token: Path) -> None:
    """Whatever answers on a dashboard's port (another user's listener, an older Ray)
    gets no token unless it says the cluster requires one."""
    url, said = dashboard
    said["body"] = b"<html>not a Ray dashboard</html>"
    assert dashboard_auth_headers(url) == {}
    said["body"] = b'{"authentication_mode": "token"}'
    assert dashboard_auth_headers(url) == {"authorization": f"Bearer {TOKEN}"}
    # One answer lost (a busy dashboard) is asked again, not taken for "cannot say".
    said["first_body"] = b"<html>busy</html>"
    assert dashboard_auth_headers(url) == {"authorization": f"Bearer {TOKEN}"}


def test_a_wrong_or_missing_token_is_a_clear_job_api_error(
        dashboards: Callable[[str], Dashboard], head_token: Path) -> None:
    url, _ = dashboards("token")
    head_token.write_text("a-token-from-another-cluster")
    with pytest.raises(JobSubmissionError, match=r"refused this machine's Ray token \(Forbidden: "
                       r"Invalid authentication token\).*copy its ~/.ray/auth_token"):
        JobClient(url)
    head_token.unlink()
    with pytest.raises(JobSubmissionError, match=r"requires Ray's token authentication and this "
                       r"machine has no token"):
        JobClient(url)


def test_a_mode_set_for_one_cluster_is_decided_again_for_the_next(
        dashboards: Callable[[str], Dashboard], head_token: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The process mode a Ray connection needs (`up`, `down`, `train run`): set for one
    cluster, it is this module's choice, not the user's, and follows the next cluster."""
    (open_url, _), (locked_url, _) = dashboards("disabled"), dashboards("token")
    apply_ray_auth_env(dashboard=open_url)
    assert os.environ[AUTH_MODE] == "disabled"
    apply_ray_auth_env(dashboard=locked_url)
    assert os.environ[AUTH_MODE] == "token"
    head_token.unlink()
    apply_ray_auth_env()  # a new local cluster, no token: Ray's default, no mode at all
    assert AUTH_MODE not in os.environ

    monkeypatch.setenv(AUTH_MODE, "disabled")  # the user's own: never switched
    apply_ray_auth_env(dashboard=locked_url)
    assert os.environ[AUTH_MODE] == "disabled"


def test_up_says_what_to_set_where_it_cannot_make_a_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.platform import _secure_new_head

    (tmp_path / "a-file").write_text("")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv(AUTH_MODE, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "a-file" / "token"))
    said: list[str] = []
    with pytest.raises(ConfigurationError, match="cannot make a Ray token .*RAY_AUTH_TOKEN_PATH"):
        _secure_new_head(None, said.append)
    assert said == [] and AUTH_MODE not in os.environ
