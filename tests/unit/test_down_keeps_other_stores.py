"""`modelplane down` on a cluster it did not start, after this home took the control plane
over (`up --take-over`): the other store's endpoints, promised untouched, keep serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control_plane import platform
from modelplane.settings import Settings
from serving import detached
from serving.names import SERVER_APP


def _app(store_id: str | None, home: str | None = None) -> dict[str, Any]:
    env = {"MODELPLANE_STORE_ID": store_id} if store_id else {}
    if home:
        env["MODELPLANE_HOME"] = home
    return {"deployments": {"d": {"deployment_config": {"ray_actor_options": {
        "runtime_env": {"env_vars": env}}}}}}


@pytest.fixture
def serve_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    from ray import serve

    calls: list[tuple[str, str | None]] = []
    monkeypatch.setattr(serve, "shutdown", lambda: calls.append(("shutdown", None)))
    monkeypatch.setattr(serve, "delete", lambda name: calls.append(("delete", name)))
    monkeypatch.setattr(platform, "_existing_store_identity", lambda settings: "store-b")
    # After its shutdown, Serve's controller is gone (see the test of one that is not).
    monkeypatch.setattr(detached, "named_actor", lambda name, namespace: None)
    return calls


def _details(monkeypatch: pytest.MonkeyPatch, apps: dict[str, Any]) -> None:
    from control_plane import ownership

    monkeypatch.setattr(ownership, "serve_details", lambda: {"applications": apps})


def test_only_this_stores_applications_go_where_another_stores_serve(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        serve_calls: list[tuple[str, str | None]]) -> None:
    _details(monkeypatch, {"control-plane": _app("store-b"), "endpoint-mine": _app("store-b"),
                           "endpoint-theirs": _app("store-a"), SERVER_APP: _app("store-b"),
                           # from before marks: a home's, this one's and another's
                           "endpoint-old": _app(None, str(tmp_path)),
                           "endpoint-old-theirs": _app(None, "/elsewhere"),
                           "someones-own-app": _app(None)})
    said: list[str] = []
    platform._shut_down_serve(Settings(home=tmp_path), said.append, force=False)
    assert serve_calls == [("delete", "control-plane"), ("delete", "endpoint-mine"),
                           ("delete", "endpoint-old")]
    assert "endpoint-theirs" in said[0] and "keep serving" in said[0]


def test_serve_is_shut_down_where_nothing_else_runs_or_when_forced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        serve_calls: list[tuple[str, str | None]]) -> None:
    _details(monkeypatch, {"control-plane": _app("store-b"), "endpoint-mine": _app("store-b")})
    platform._shut_down_serve(Settings(home=tmp_path), lambda _: None, force=False)
    _details(monkeypatch, {"endpoint-theirs": _app("store-a")})
    platform._shut_down_serve(Settings(home=tmp_path), lambda _: None, force=True)
    assert serve_calls == [("shutdown", None), ("shutdown", None)]


def test_a_wedged_serve_controller_costs_down_its_bound_not_for_ever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve's shutdown and delete wait on its controller without a bound: wedged, they
    held `down` (even `--force`, which exists for a controller that cannot say whose its
    applications are) until Ctrl-C."""
    import threading

    from ray import serve

    from control_plane.errors import ControlPlaneUnavailableError

    answered = threading.Event()
    monkeypatch.setattr(serve, "shutdown", lambda: answered.wait(30))
    monkeypatch.setattr(serve, "delete", lambda name: answered.wait(30))
    monkeypatch.setattr(platform, "_existing_store_identity", lambda settings: "store-b")
    monkeypatch.setattr(platform, "DOWN_WRITE_TIMEOUT_S", 0.2)
    try:
        _details(monkeypatch, {"endpoint-theirs": _app("store-a")})
        with pytest.raises(ControlPlaneUnavailableError,
                           match=r"did not take the shutdown of Serve within 0.2 s.*"
                                 r"`modelplane down` again.*`ray stop`"):
            platform._shut_down_serve(Settings(home=tmp_path), lambda _: None, force=True)
        _details(monkeypatch, {"endpoint-mine": _app("store-b"), "endpoint-theirs": _app("store-a")})
        with pytest.raises(ControlPlaneUnavailableError,
                           match=r"did not take the deletion of endpoint-mine within 0.2 s"):
            platform._shut_down_serve(Settings(home=tmp_path), lambda _: None, force=False)
    finally:
        answered.set()


def test_down_says_so_where_serve_s_controller_outlives_its_shutdown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        serve_calls: list[tuple[str, str | None]]) -> None:
    """Serve's shutdown gives up on a controller that does not end within its own 30 s and
    returns as if it had: `down` said Serve was shut down while it still ran."""
    from control_plane.errors import ControlPlaneUnavailableError

    monkeypatch.setattr(detached, "named_actor", lambda name, namespace: object())
    monkeypatch.setattr(platform, "SERVE_GONE_WAIT_S", 0.3)
    _details(monkeypatch, {"control-plane": _app("store-b")})
    with pytest.raises(ControlPlaneUnavailableError, match="still runs.*`modelplane down` again"):
        platform._shut_down_serve(Settings(home=tmp_path), lambda _: None, force=False)
    assert serve_calls == [("shutdown", None)]


def test_serve_s_own_timeout_on_a_delete_is_said_as_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        serve_calls: list[tuple[str, str | None]]) -> None:
    from ray import serve

    from control_plane.errors import ControlPlaneUnavailableError

    def delete(name: str) -> None:
        raise TimeoutError(f"Application {name} did not get deleted within 60 seconds")

    monkeypatch.setattr(serve, "delete", delete)
    _details(monkeypatch, {"endpoint-mine": _app("store-b"), "endpoint-theirs": _app("store-a")})
    with pytest.raises(ControlPlaneUnavailableError,
                       match=r"Serve did not finish the deletion of endpoint-mine: Application "
                             r"endpoint-mine did not get deleted within 60 seconds.*down` again"):
        platform._shut_down_serve(Settings(home=tmp_path), lambda _: None, force=False)


def test_a_serve_controller_that_died_is_said_as_not_reached_not_as_late(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        serve_calls: list[tuple[str, str | None]]) -> None:
    from ray import serve
    from ray.exceptions import RayActorError

    from control_plane.errors import ControlPlaneUnavailableError

    def delete(name: str) -> None:
        raise RayActorError()

    monkeypatch.setattr(serve, "delete", delete)
    _details(monkeypatch, {"endpoint-mine": _app("store-b"), "endpoint-theirs": _app("store-a")})
    with pytest.raises(ControlPlaneUnavailableError,
                       match=r"could not be reached for the deletion of endpoint-mine "
                             r"\(RayActorError.*down` again") as raised:
        platform._shut_down_serve(Settings(home=tmp_path), lambda _: None, force=False)
    assert raised.value.detail["cause"] == "serve_controller_unreached"
