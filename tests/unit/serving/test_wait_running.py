"""`up` submits its applications together and waits for them together: it returns once
all run, names the one that failed with Serve's message, and names those still waiting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.serve.schema import ApplicationStatus

from serving.applications import wait_running


def _serve(monkeypatch: pytest.MonkeyPatch, timeline: list[dict[str, tuple[str, str]]]) -> list[int]:
    polls: list[int] = []

    def status() -> SimpleNamespace:
        polls.append(1)
        now = timeline[min(len(polls), len(timeline)) - 1]
        return SimpleNamespace(applications={
            name: SimpleNamespace(status=ApplicationStatus(state), message=message)
            for name, (state, message) in now.items()})

    monkeypatch.setattr("ray.serve.status", status)
    return polls


def test_returns_once_every_application_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    polls = _serve(monkeypatch, [
        {"a": ("DEPLOYING", ""), "b": ("DEPLOYING", "")},
        {"a": ("RUNNING", ""), "b": ("DEPLOYING", "")},
        {"a": ("RUNNING", ""), "b": ("RUNNING", "")},
    ])
    wait_running(["a", "b"], timeout_s=10, poll_s=0.001)
    assert len(polls) == 3


def test_a_failed_application_is_named_with_serves_message(monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, [{"a": ("RUNNING", ""),
                          "grpc-ingress": ("DEPLOY_FAILED", "cannot listen for gRPC on 0.0.0.0:8001")}])
    with pytest.raises(RuntimeError, match="grpc-ingress failed: cannot listen for gRPC"):
        wait_running(["a", "grpc-ingress"], timeout_s=10, poll_s=0.001)


def test_a_timeout_names_what_still_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, [{"a": ("RUNNING", ""), "b": ("DEPLOYING", "")}])
    with pytest.raises(TimeoutError, match=r"b \(DEPLOYING\), c \(not submitted\)"):
        wait_running(["a", "b", "c"], timeout_s=0.05, poll_s=0.001)


@pytest.mark.parametrize(("timeline", "words"), [
    ([{"grpc-ingress": ("DEPLOY_FAILED", "Traceback (most recent call last):\n  OSError: "
                                         "[Errno 98] address already in use")}],
     "grpc-ingress failed: Traceback (most recent call last): … OSError: [Errno 98]"),
    ([{"grpc-ingress": ("DEPLOYING", "")}], "not running after 0 s: grpc-ingress"),
])
def test_up_says_what_serve_said_and_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                timeline: list, words: str) -> None:
    """An application that failed or is late was a raw traceback out of `modelplane up`."""
    from control_plane.errors import ControlPlaneUnavailableError
    from control_plane.platform import wait_platform_apps

    _serve(monkeypatch, timeline)
    with pytest.raises(ControlPlaneUnavailableError) as failed:
        wait_platform_apps(["grpc-ingress"], timeout_s=0.01, poll_s=0.001)
    assert words in failed.value.message and "modelplane up` again" in failed.value.message
    assert "\n" not in failed.value.message
